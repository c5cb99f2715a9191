//! The OAuth server launcher end to end: start it, register a client with a
//! key made here, get a token with a hand-signed ES256 assertion, and check
//! what the server counted and says about the token, across a restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, SigningKey as _};
use serde_json::{Value, json};
use testbed::oauth_server::{ClientStats, OAuthServer};

const CLIENT_ID: &str = "0oa-harness-test";
const KID: &str = "harness-test-key";
const SCOPE: &str = "okta.users.read";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The public JWK of a P-256 key: its raw public key is the uncompressed point.
fn public_jwk(key: &KeyPair) -> Value {
    let point = key.public_key_raw();
    assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
    json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
        "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..]),
    })
}

/// ECDSA-Sig-Value (DER `SEQUENCE { r INTEGER, s INTEGER }`, short form
/// lengths as P-256 needs) to the fixed-width r‖s that JWS wants.
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "DER sequence");
    assert_eq!(der[1] as usize, der.len() - 2, "sequence length");
    let mut raw = Vec::with_capacity(64);
    let mut rest = &der[2..];
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02, "DER integer");
        let (int, tail) = rest[2..].split_at(rest[1] as usize);
        let int = &int[int.len().saturating_sub(32)..]; // drop a sign byte
        raw.extend(std::iter::repeat_n(0, 32 - int.len()));
        raw.extend_from_slice(int);
        rest = tail;
    }
    raw
}

/// A fresh client assertion; `der_signature` leaves the signature as rcgen
/// (like KMS) returns it, which the server must reject.
fn assertion(key: &KeyPair, aud: &str, der_signature: bool) -> String {
    let header = json!({"alg": "ES256", "kid": KID, "typ": "JWT"});
    let iat = now();
    let jti = unique_id();
    let claims = json!({"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": aud, "iat": iat, "exp": iat + 300, "jti": jti});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let der = key.sign(input.as_bytes()).unwrap();
    let signature = if der_signature { der } else { der_to_raw(&der) };
    format!("{input}.{}", B64URL.encode(signature))
}

/// A `jti` no other assertion of this test binary uses.
fn unique_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn request_token(
    server: &OAuthServer,
    client_assertion: &str,
) -> (u16, ureq::http::HeaderMap, Value) {
    let mut response = ureq::post(server.token_url())
        .config()
        .http_status_as_error(false)
        .build()
        .send_form([
            ("grant_type", "client_credentials"),
            ("scope", SCOPE),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", client_assertion),
        ])
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[test]
fn launcher_serves_tokens_counts_them_and_survives_a_restart() {
    let mut server = OAuthServer::start().unwrap();
    assert!(server.token_url().starts_with("http://127.0.0.1:"));
    assert!(server.token_url().ends_with("/oauth2/default/v1/token"));
    let discovery: Value = ureq::get(format!(
        "{}/.well-known/openid-configuration",
        server.issuer()
    ))
    .call()
    .unwrap()
    .body_mut()
    .read_json()
    .unwrap();
    assert_eq!(discovery["issuer"], server.issuer());
    assert_eq!(discovery["token_endpoint"], server.token_url());

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    server
        .register_client(
            CLIENT_ID,
            &json!({"keys": [public_jwk(&key)]}),
            &[SCOPE],
            30,
        )
        .unwrap();

    let (status, _, token) = request_token(&server, &assertion(&key, &server.token_url(), false));
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 30);
    assert_eq!(token["scope"], SCOPE);
    let access_token = token["access_token"].as_str().unwrap().to_owned();

    let info = server.introspect(&access_token).unwrap();
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], CLIENT_ID);
    assert_eq!(info["scope"], SCOPE);
    assert!(
        info["exp"].as_u64().unwrap().abs_diff(now() + 30) <= 2,
        "{info}"
    );
    assert_eq!(server.introspect("not-a-token").unwrap()["active"], false);

    // KMS-style DER signatures and a wrong audience are refused, and counted.
    let (status, _, error) = request_token(&server, &assertion(&key, &server.token_url(), true));
    assert_eq!(
        (status, error["error"].as_str()),
        (401, Some("invalid_client")),
        "{error}"
    );
    let (status, _, error) = request_token(&server, &assertion(&key, &server.issuer(), false));
    assert_eq!(
        (status, error["error"].as_str()),
        (401, Some("invalid_client")),
        "{error}"
    );
    assert_eq!(
        server.stats(CLIENT_ID).unwrap(),
        ClientStats {
            token_requests: 3,
            tokens_issued: 1
        }
    );

    // An injected rate limit answers like Okta, then the endpoint recovers.
    let reset = SystemTime::now() + Duration::from_secs(60);
    server.inject_rate_limit(1, reset).unwrap();
    let (status, headers, error) =
        request_token(&server, &assertion(&key, &server.token_url(), false));
    assert_eq!(status, 429);
    assert_eq!(error["errorCode"], "E0000047");
    let reset_header = headers["x-rate-limit-reset"].to_str().unwrap();
    assert_eq!(
        reset_header,
        reset
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    );
    assert_eq!(
        request_token(&server, &assertion(&key, &server.token_url(), false)).0,
        200
    );
    server.inject_faults(5, 503, &[], None).unwrap();
    assert_eq!(
        request_token(&server, &assertion(&key, &server.token_url(), false)).0,
        503
    );
    server.clear_faults().unwrap();

    // Down: connections are refused. Back on the same port: same clients,
    // tokens and counters.
    let token_url = server.token_url();
    server.stop();
    assert!(!server.is_running());
    assert!(ureq::post(&token_url).send_form([("a", "b")]).is_err());
    server.restart().unwrap();
    assert_eq!(server.token_url(), token_url);
    assert_eq!(server.introspect(&access_token).unwrap()["active"], true);
    assert_eq!(
        request_token(&server, &assertion(&key, &server.token_url(), false)).0,
        200
    );
    assert_eq!(
        server.stats(CLIENT_ID).unwrap(),
        ClientStats {
            token_requests: 7,
            tokens_issued: 3
        }
    );
}

#[test]
fn launcher_survives_the_thread_that_started_it() {
    let mut server = std::thread::spawn(|| OAuthServer::start().unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.is_running(), "{}", server.log_tail(20));
    assert_eq!(
        server.stats("nobody").unwrap(),
        ClientStats {
            token_requests: 0,
            tokens_issued: 0
        }
    );
}
