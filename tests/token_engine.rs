//! The token engine against real servers: moto_server as KMS and an
//! oidc-provider authorization server that verifies `private_key_jwt` the
//! way Okta does. The `jwk` and `mint` commands run as a user runs them.

use std::process::Output;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use okta_token_operator::assertion::{ClientAssertion, DEFAULT_ASSERTION_LIFETIME};
use okta_token_operator::kms::{KeyRef, KmsSigner};
use okta_token_operator::mint::{MintSpec, Minter};
use okta_token_operator::okta::{TokenClient, TokenClientConfig, TokenError};
use serde_json::Value;
use testbed::moto::Moto;
use testbed::oauth_server::OAuthServer;

const SCOPE: &str = "okta.users.read";

struct Servers {
    moto: Moto,
    oauth: OAuthServer,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| Servers {
        moto: Moto::start().expect("moto_server starts"),
        oauth: OAuthServer::start().expect("OAuth server starts"),
    })
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &okta_token_operator::assertion::fresh_jti()[..10]
    )
}

/// Runs the operator binary with the emulator's AWS environment.
fn operator(args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_okta-token-operator"));
    command.args(args).env_remove("RUST_LOG");
    for (name, value) in servers().moto.env() {
        command.env(name, value);
    }
    command.output().expect("operator binary runs")
}

fn stdout_json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is one JSON document")
}

/// A fresh KMS key of `key_spec`, registered with the OAuth server through
/// what `jwk` prints, as a user would paste it into the Okta app.
async fn registered_client(key_spec: &str, ttl_seconds: u64) -> (String, String, Value) {
    let key_arn = servers()
        .moto
        .create_signing_key(key_spec)
        .await
        .expect("CreateKey");
    let jwks = stdout_json(&operator(&["jwk", "--kms-key-id", &key_arn]));
    let client_id = unique("0oa-service");
    servers()
        .oauth
        .register_client(&client_id, &jwks, &[SCOPE, "okta.groups.read"], ttl_seconds)
        .expect("client registered");
    (key_arn, client_id, jwks)
}

fn mint_args<'a>(key_arn: &'a str, client_id: &'a str, token_url: &'a str) -> Vec<&'a str> {
    vec![
        "mint",
        "--kms-key-id",
        key_arn,
        "--client-id",
        client_id,
        "--token-url",
        token_url,
        "--scope",
        SCOPE,
    ]
}

async fn mint_end_to_end(key_spec: &str, expected_alg: &str, kty: &str) {
    let (key_arn, client_id, jwks) = registered_client(key_spec, 900).await;
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["alg"], expected_alg);
    assert_eq!(jwk["kty"], kty);
    assert_eq!(jwk["use"], "sig");

    let token_url = servers().oauth.token_url();
    let summary = stdout_json(&operator(&mint_args(&key_arn, &client_id, &token_url)));
    assert_eq!(summary["token_type"], "Bearer");
    assert_eq!(summary["expires_in"], 900);
    assert_eq!(summary["scope"], SCOPE);
    assert_eq!(summary["kid"], jwk["kid"], "mint sends the kid jwk printed");
    assert_eq!(summary["algorithm"], expected_alg);
    let expires_at: jiff::Timestamp = summary["expires_at"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .expect("expires_at is RFC 3339");
    let lifetime = expires_at.duration_since(jiff::Timestamp::now()).as_secs();
    assert!(
        (890..=900).contains(&lifetime),
        "expires_at is 900 s ahead: {lifetime}"
    );
    assert!(
        summary.get("access_token").is_none(),
        "no token without --show-token: {summary}"
    );

    let mut args = mint_args(&key_arn, &client_id, &token_url);
    args.push("--show-token");
    let shown = stdout_json(&operator(&args));
    let access_token = shown["access_token"].as_str().expect("access_token shown");
    assert_eq!(
        shown["fingerprint"],
        okta_token_operator::okta::fingerprint(access_token.as_bytes())
    );
    let introspection = servers()
        .oauth
        .introspect(access_token)
        .expect("introspect");
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], client_id.as_str());

    let stats = servers().oauth.stats(&client_id).expect("stats");
    assert_eq!(stats.tokens_issued, 2);
    assert_eq!(stats.token_requests, 2, "no retries on success");
}

#[tokio::test]
async fn mint_with_rsa_2048_key() {
    mint_end_to_end("RSA_2048", "RS256", "RSA").await;
}

#[tokio::test]
async fn mint_with_p256_key() {
    mint_end_to_end("ECC_NIST_P256", "ES256", "EC").await;
}

#[tokio::test]
async fn mint_with_p384_key() {
    mint_end_to_end("ECC_NIST_P384", "ES384", "EC").await;
}

#[tokio::test]
async fn refused_scope_fails_naming_invalid_scope() {
    let (key_arn, client_id, _) = registered_client("ECC_NIST_P256", 900).await;
    let token_url = servers().oauth.token_url();
    let mut args = mint_args(&key_arn, &client_id, &token_url);
    args.extend(["--scope", "okta.users.manage"]);
    let output = operator(&args);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing on stdout on failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("invalid_scope"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn kms_configuration_problems_are_one_clear_line() {
    let encrypt_key = servers()
        .moto
        .create_key("RSA_2048", "ENCRYPT_DECRYPT")
        .await
        .expect("CreateKey");
    let missing_key = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    for (key, expected) in [
        (encrypt_key.as_str(), "not a signing key"),
        (missing_key, "not found"),
    ] {
        let output = operator(&["jwk", "--kms-key-id", key]);
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(expected), "{key}: {stderr}");
    }
    let p256 = servers()
        .moto
        .create_signing_key("ECC_NIST_P256")
        .await
        .expect("CreateKey");
    let output = operator(&["jwk", "--kms-key-id", &p256, "--algorithm", "RS256"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("does not support RS256"), "{stderr}");
}

/// The library's lower-level pieces, to send deliberately broken assertions.
struct Engine {
    minter: Minter,
    spec: MintSpec,
}

async fn engine(key_spec: &str) -> Engine {
    let (key_arn, client_id, _) = registered_client(key_spec, 900).await;
    let kms = Arc::new(KmsSigner::new(servers().moto.sdk_config()));
    let tokens = TokenClient::new(&TokenClientConfig::default()).expect("http client");
    Engine {
        minter: Minter::new(kms, tokens),
        spec: MintSpec {
            client_id,
            token_url: servers().oauth.token_url(),
            scopes: vec![SCOPE.to_owned()],
            key: KeyRef::new(key_arn, None),
            algorithm: None,
            kid: None,
            assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
        },
    }
}

impl Engine {
    async fn assertion_for(&self, spec: &MintSpec) -> ClientAssertion {
        let key = self
            .minter
            .kms()
            .signing_key(&spec.key, None)
            .await
            .expect("public key");
        self.minter
            .sign_assertion(spec, &key)
            .await
            .expect("signed")
    }

    async fn post(&self, assertion: &ClientAssertion) -> Result<String, TokenError> {
        self.minter
            .token_client()
            .request_token(&self.spec.token_url, &self.spec.scopes, assertion)
            .await
            .map(|token| token.access_token.fingerprint())
    }
}

fn assert_invalid_client(result: Result<String, TokenError>, what: &str) {
    match result {
        Err(TokenError::Rejected { status, error, .. }) => {
            assert_eq!(status, 401, "{what}");
            assert_eq!(error, "invalid_client", "{what}");
        }
        other => panic!("{what}: expected invalid_client, got {other:?}"),
    }
}

#[tokio::test]
async fn server_rejects_an_audience_other_than_the_token_url() {
    let engine = engine("ECC_NIST_P256").await;
    let good = engine.assertion_for(&engine.spec).await;
    assert!(engine.post(&good).await.is_ok(), "the control case works");

    for wrong_aud in [
        servers().oauth.issuer(),
        format!("{}/", engine.spec.token_url),
    ] {
        let spec = MintSpec {
            token_url: wrong_aud.clone(),
            ..engine.spec.clone()
        };
        let assertion = engine.assertion_for(&spec).await;
        assert_invalid_client(engine.post(&assertion).await, &format!("aud {wrong_aud}"));
    }
}

#[tokio::test]
async fn server_rejects_a_replayed_jti() {
    let engine = engine("RSA_2048").await;
    let assertion = engine.assertion_for(&engine.spec).await;
    assert!(engine.post(&assertion).await.is_ok(), "first use works");
    assert_invalid_client(engine.post(&assertion).await, "replayed assertion");
}

#[tokio::test]
async fn server_rejects_a_der_encoded_ecdsa_signature() {
    let engine = engine("ECC_NIST_P256").await;
    let key = engine
        .minter
        .kms()
        .signing_key(&engine.spec.key, None)
        .await
        .expect("public key");
    let unsigned = engine
        .minter
        .unsigned_assertion(&engine.spec, &key)
        .expect("assertion");
    let der = engine
        .minter
        .kms()
        .sign(&key.key, key.algorithm, unsigned.signing_input())
        .await
        .expect("KMS signs");
    assert!(der.len() > 64 && der[0] == 0x30, "KMS returns DER");
    let signing_input = String::from_utf8(unsigned.signing_input().to_vec()).expect("ascii");
    let der_jws =
        ClientAssertion::from_compact(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&der)));
    assert_invalid_client(engine.post(&der_jws).await, "DER signature");

    // The same signature converted to r‖s is accepted: only the encoding was wrong.
    let fixed = unsigned.finish(&der).expect("DER converts");
    assert!(engine.post(&fixed).await.is_ok(), "r‖s signature accepted");
}

#[tokio::test]
async fn server_rejects_a_base64_wrapped_jwt() {
    let engine = engine("ECC_NIST_P384").await;
    let assertion = engine.assertion_for(&engine.spec).await;
    let wrapped = ClientAssertion::from_compact(STANDARD.encode(assertion.expose()));
    assert_invalid_client(engine.post(&wrapped).await, "base64-wrapped JWT");
    assert!(
        engine.post(&assertion).await.is_ok(),
        "the JWT as it is works"
    );
}

#[tokio::test]
async fn every_mint_sends_a_fresh_jti() {
    let engine = engine("ECC_NIST_P256").await;
    let first = engine.minter.mint(&engine.spec).await.expect("first mint");
    let second = engine.minter.mint(&engine.spec).await.expect("second mint");
    assert_ne!(
        first.token.access_token.fingerprint(),
        second.token.access_token.fingerprint()
    );
    let stats = servers()
        .oauth
        .stats(&engine.spec.client_id)
        .expect("stats");
    assert_eq!(stats.token_requests, 2, "no replay rejections, no retries");
    assert_eq!(stats.tokens_issued, 2);
}
