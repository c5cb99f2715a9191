//! End to end: the operator binary, running with only deploy/'s RBAC,
//! against a real control plane, moto_server as KMS and the oidc-provider
//! OAuth server. Each test has its own namespace and its own operator
//! process watching it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use okta_token_operator::crd::{OktaServiceToken, OktaServiceTokenSpec, SigningKeySpec};
use serde_json::{Value, json};
use testbed::controlplane::{ControlPlane, Options, service_account_user};
use testbed::eventually;
use testbed::moto::Moto;
use testbed::oauth_server::OAuthServer;
use testbed::operator::{OperatorOptions, OperatorProcess};

const OPERATOR_NAMESPACE: &str = "okta-token-operator";
const OPERATOR_ACCOUNT: &str = "okta-token-operator";
const SCOPE: &str = "okta.users.read";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn crd_file() -> PathBuf {
    repo().join("crds/oktaservicetokens.okta-token-operator.dev.yaml")
}

/// Servers shared by every test of this binary.
struct Shared {
    control_plane: &'static ControlPlane,
    moto: Moto,
    oauth: OAuthServer,
    key_arn: String,
    jwks: Value,
    operator_kubeconfig: PathBuf,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Set up on a thread of its own: the callers are inside Tokio runtimes.
        std::thread::spawn(|| {
            let control_plane = ControlPlane::shared_with(&Options::with_crds([crd_file()]));
            let admin = control_plane.kubeconfig_path().to_owned();
            for file in [
                "namespace.yaml",
                "serviceaccount.yaml",
                "clusterrole.yaml",
                "clusterrolebinding.yaml",
            ] {
                kubectl(
                    &admin,
                    &[
                        "apply",
                        "-f",
                        &repo().join("deploy").join(file).to_string_lossy(),
                    ],
                );
            }
            let moto = Moto::start().expect("moto_server starts");
            let oauth = OAuthServer::start().expect("OAuth server starts");
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let key_arn = runtime
                .block_on(moto.create_signing_key("ECC_NIST_P256"))
                .expect("CreateKey");
            let jwks = jwk_set(&moto, &key_arn);
            let operator_kubeconfig = control_plane
                .kubeconfig_as(&service_account_user(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT));
            Shared {
                control_plane,
                moto,
                oauth,
                key_arn,
                jwks,
                operator_kubeconfig,
            }
        })
        .join()
        .expect("shared set-up")
    })
}

fn jwk_set(moto: &Moto, key_arn: &str) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_okta-token-operator"));
    command.args(["jwk", "--kms-key-id", key_arn]);
    for (name, value) in moto.env() {
        command.env(name, value);
    }
    let output = command.output().expect("jwk runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JWK Set")
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One test's world: a namespace, an OAuth client and an operator watching
/// that namespace as the operator's ServiceAccount.
struct Scenario {
    namespace: String,
    client_id: String,
    client: Client,
    operator: OperatorProcess,
    log_dir: tempfile::TempDir,
}

impl Scenario {
    async fn new(prefix: &str, ttl_seconds: u64) -> Self {
        Self::with_oauth(prefix, ttl_seconds, &shared().oauth).await
    }

    async fn with_oauth(prefix: &str, ttl_seconds: u64, oauth: &OAuthServer) -> Self {
        let shared = shared();
        let namespace = shared.control_plane.create_namespace(prefix).await;
        let client_id = format!("0oa-{namespace}");
        oauth
            .register_client(
                &client_id,
                &shared.jwks,
                &[SCOPE, "okta.groups.read"],
                ttl_seconds,
            )
            .expect("client registered");
        let log_dir = tempfile::tempdir().expect("temp dir");
        let operator = start_operator(&namespace, log_dir.path());
        Self {
            client: shared.control_plane.client(),
            namespace,
            client_id,
            operator,
            log_dir,
        }
    }

    fn tokens(&self) -> Api<OktaServiceToken> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn spec(&self, oauth: &OAuthServer) -> OktaServiceTokenSpec {
        OktaServiceTokenSpec {
            org_url: Some(oauth.origin()),
            authorization_server_id: Some("default".into()),
            token_url: None,
            client_id: self.client_id.clone(),
            scopes: vec![SCOPE.into()],
            signing_key: SigningKeySpec {
                kms_key_id: shared().key_arn.clone(),
                region: None,
                algorithm: None,
                kid: None,
            },
            secret_name: Some("okta-token".into()),
            renew_before: None,
        }
    }

    async fn create(&self, name: &str, spec: OktaServiceTokenSpec) -> OktaServiceToken {
        self.tokens()
            .create(&PostParams::default(), &OktaServiceToken::new(name, spec))
            .await
            .expect("resource created")
    }

    async fn token(&self, name: &str) -> OktaServiceToken {
        self.tokens().get(name).await.expect("resource exists")
    }

    async fn secret_token(&self, secret: &str) -> Option<String> {
        let secret = self.secrets().get_opt(secret).await.ok()??;
        let bytes = secret.data?.get("access_token")?.0.clone();
        String::from_utf8(bytes).ok()
    }

    /// Token requests the OAuth server received from this scenario's client.
    fn token_requests(&self, oauth: &OAuthServer) -> u64 {
        oauth.stats(&self.client_id).expect("stats").token_requests
    }

    fn restart_operator(&mut self) {
        self.operator.stop();
        self.operator = start_operator(&self.namespace, self.log_dir.path());
    }

    fn operator_log(&self) -> String {
        self.operator.log_tail(40)
    }

    async fn events(&self) -> Vec<(String, String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }
}

fn start_operator(namespace: &str, log_dir: &Path) -> OperatorProcess {
    let shared = shared();
    OperatorProcess::start(OperatorOptions {
        binary: Path::new(env!("CARGO_BIN_EXE_okta-token-operator")),
        kubeconfig: &shared.operator_kubeconfig,
        env: shared.moto.env(),
        namespace: Some(namespace),
        log_path: log_dir.join("operator.log"),
    })
    .expect("operator starts")
}

fn condition(token: &OktaServiceToken, type_: &str) -> Option<(String, String)> {
    token
        .status
        .as_ref()?
        .condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_ready(scenario: &Scenario, name: &str) -> OktaServiceToken {
    let what = format!("{name} to become Ready");
    eventually(&what, Duration::from_secs(60), || async {
        let token = scenario.token(name).await;
        (condition(&token, "Ready") == Some(("True".into(), "TokenIssued".into()))).then_some(token)
    })
    .await
}

#[tokio::test]
async fn a_new_resource_becomes_ready_with_a_token_the_server_issued() {
    let scenario = Scenario::new("ready", 600).await;
    let oauth = &shared().oauth;
    scenario.create("api", scenario.spec(oauth)).await;
    let admin = shared().control_plane.kubeconfig_path();
    let waited = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(admin)
        .args([
            "wait",
            "--for=condition=Ready",
            "ost/api",
            "-n",
            &scenario.namespace,
            "--timeout=60s",
        ])
        .output()
        .expect("kubectl wait");
    assert!(
        waited.status.success(),
        "kubectl wait: {}\noperator log:\n{}",
        String::from_utf8_lossy(&waited.stderr),
        scenario.operator_log()
    );

    let token = scenario.token("api").await;
    let status = token.status.clone().expect("status");
    assert_eq!(status.observed_generation, token.metadata.generation);
    assert_eq!(status.secret_name.as_deref(), Some("okta-token"));
    assert_eq!(
        status.token_url.as_deref(),
        Some(oauth.token_url().as_str())
    );
    assert_eq!(
        status.kid.as_deref(),
        shared().jwks["keys"][0]["kid"].as_str()
    );
    assert_eq!(status.algorithm.as_deref(), Some("ES256"));

    let secret = scenario
        .secrets()
        .get("okta-token")
        .await
        .expect("Secret written");
    let data = secret.data.clone().expect("data");
    let access_token = String::from_utf8(data["access_token"].0.clone()).expect("utf-8");
    assert_eq!(data["token_type"].0, b"Bearer");
    assert_eq!(data["scope"].0, SCOPE.as_bytes());
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        status.fingerprint,
        Some(okta_token_operator::okta::fingerprint(
            access_token.as_bytes()
        ))
    );
    let introspection = oauth.introspect(&access_token).expect("introspect");
    assert_eq!(introspection["active"], true, "the server really issued it");
    assert_eq!(introspection["client_id"], scenario.client_id.as_str());
    let owner = &secret.metadata.owner_references.expect("owner")[0];
    assert_eq!(owner.uid, token.metadata.uid.clone().expect("uid"));
    assert_eq!(owner.controller, Some(true));

    let table = kubectl(
        admin,
        &["get", "oktaservicetokens", "-n", &scenario.namespace],
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "REASON", "SECRET", "EXPIRES", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        ["api", "True", "TokenIssued", "okta-token"],
        "{table}"
    );

    let events = scenario.events().await;
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Normal" && reason == "TokenIssued"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(_, _, note)| !note.contains(&access_token)),
        "no Event carries the token"
    );
    assert!(
        !std::fs::read_to_string(scenario.operator.log_path())
            .unwrap_or_default()
            .contains(&access_token),
        "the log never carries the token"
    );
    assert_eq!(scenario.token_requests(oauth), 1);
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_before_expiry_with_one_request_each() {
    let scenario = Scenario::new("renew", 24).await;
    let oauth = &shared().oauth;
    scenario.create("short", scenario.spec(oauth)).await;
    wait_ready(&scenario, "short").await;

    let mut seen = vec![
        scenario
            .secret_token("okta-token")
            .await
            .expect("first token"),
    ];
    let mut expiries = vec![
        scenario
            .token("short")
            .await
            .status
            .and_then(|s| s.expires_at)
            .expect("expiry"),
    ];
    for renewal in 1..=2 {
        let previous = seen.last().cloned().unwrap_or_default();
        let previous_expiry = expiries.last().cloned().expect("expiry").0;
        let next = eventually(
            &format!("renewal {renewal}"),
            Duration::from_secs(40),
            || async {
                let now = jiff::Timestamp::now();
                assert!(
                    now < previous_expiry,
                    "the Secret's token expired before renewal"
                );
                scenario
                    .secret_token("okta-token")
                    .await
                    .filter(|t| *t != previous)
            },
        )
        .await;
        let introspection = oauth.introspect(&next).expect("introspect");
        assert_eq!(
            introspection["active"], true,
            "the server issued the renewed token"
        );
        assert_eq!(introspection["client_id"], scenario.client_id.as_str());
        seen.push(next);
        let status = scenario.token("short").await.status.expect("status");
        expiries.push(status.expires_at.clone().expect("expiry"));
        assert_eq!(
            scenario.token_requests(oauth) as usize,
            seen.len(),
            "exactly one token request per renewal\n{}",
            scenario.operator_log()
        );
    }
}

#[tokio::test]
async fn a_spec_change_remints_at_once_and_a_restart_mints_nothing() {
    let mut scenario = Scenario::new("change", 600).await;
    let oauth = &shared().oauth;
    scenario.create("api", scenario.spec(oauth)).await;
    wait_ready(&scenario, "api").await;
    let first = scenario.secret_token("okta-token").await.expect("token");

    scenario.restart_operator();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        scenario.token_requests(oauth),
        1,
        "restart re-minted a fresh token"
    );
    assert_eq!(
        scenario.secret_token("okta-token").await.as_deref(),
        Some(first.as_str())
    );

    // Someone labels the Secret and the resource: events, not reasons to mint.
    let label = json!({"metadata": {"labels": {"team": "a"}}});
    scenario
        .secrets()
        .patch("okta-token", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("Secret labelled");
    scenario
        .tokens()
        .patch("api", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("resource labelled");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        scenario.token_requests(oauth),
        1,
        "a Secret or metadata event minted a token"
    );

    let patch = json!({"spec": {"scopes": [SCOPE, "okta.groups.read"]}});
    scenario
        .tokens()
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("spec patched");
    let second = eventually(
        "a new token for the new scopes",
        Duration::from_secs(20),
        || async {
            scenario
                .secret_token("okta-token")
                .await
                .filter(|t| *t != first)
        },
    )
    .await;
    let introspection = oauth.introspect(&second).expect("introspect");
    assert_eq!(introspection["scope"], "okta.users.read okta.groups.read");
    let token = wait_ready(&scenario, "api").await;
    assert_eq!(
        token.status.and_then(|s| s.observed_generation),
        token.metadata.generation
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scenario.token_requests(oauth), 2);
}

#[tokio::test]
async fn an_outage_keeps_the_last_token_then_recovers() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut oauth =
        OAuthServer::start_with_state(&state.path().join("state.json")).expect("OAuth server");
    let scenario = Scenario::with_oauth("outage", 20, &oauth).await;
    scenario.create("api", scenario.spec(&oauth)).await;
    let ready = wait_ready(&scenario, "api").await;
    let last_good = scenario.secret_token("okta-token").await.expect("token");
    let expires_at = ready.status.and_then(|s| s.expires_at).expect("expiry").0;

    oauth.stop();
    let failing = eventually("renewal to fail", Duration::from_secs(30), || async {
        let token = scenario.token("api").await;
        (condition(&token, "RenewalFailing").map(|c| c.0).as_deref() == Some("True"))
            .then_some(token)
    })
    .await;
    if jiff::Timestamp::now() < expires_at {
        assert_eq!(
            condition(&failing, "Ready").map(|c| c.0).as_deref(),
            Some("True"),
            "still valid: still Ready"
        );
    }
    assert_eq!(
        condition(&failing, "RenewalFailing")
            .map(|c| c.1)
            .as_deref(),
        Some("TokenEndpointUnavailable")
    );
    assert_eq!(
        scenario.secret_token("okta-token").await.as_deref(),
        Some(last_good.as_str())
    );

    let expired = eventually(
        "Ready to turn False at expiry",
        Duration::from_secs(40),
        || async {
            let token = scenario.token("api").await;
            (condition(&token, "Ready").map(|c| c.0).as_deref() == Some("False")).then_some(token)
        },
    )
    .await;
    assert!(
        jiff::Timestamp::now() >= expires_at,
        "Ready turned False before expiry"
    );
    assert_eq!(
        condition(&expired, "Ready").map(|c| c.1).as_deref(),
        Some("TokenExpired")
    );
    assert_eq!(
        scenario.secret_token("okta-token").await.as_deref(),
        Some(last_good.as_str()),
        "the last good token is never removed"
    );
    let events = scenario.events().await;
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == "TokenEndpointUnavailable"),
        "{events:?}"
    );

    oauth.restart().expect("OAuth server back");
    eventually("recovery", Duration::from_secs(90), || async {
        let token = scenario.token("api").await;
        (condition(&token, "Ready").map(|c| c.0).as_deref() == Some("True")).then_some(())
    })
    .await;
    let fresh = scenario.secret_token("okta-token").await.expect("token");
    assert_ne!(fresh, last_good);
    assert_eq!(
        oauth.introspect(&fresh).expect("introspect")["active"],
        true
    );
}

#[tokio::test]
async fn a_foreign_secret_is_never_overwritten() {
    let scenario = Scenario::new("conflict", 600).await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("okta-token".into()),
            ..ObjectMeta::default()
        },
        string_data: Some([("access_token".to_owned(), "someone else's".to_owned())].into()),
        ..Secret::default()
    };
    scenario
        .secrets()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("foreign Secret");
    scenario.create("api", scenario.spec(&shared().oauth)).await;
    eventually("SecretConflict", Duration::from_secs(30), || async {
        let token = scenario.token("api").await;
        (condition(&token, "Ready") == Some(("False".into(), "SecretConflict".into())))
            .then_some(())
    })
    .await;
    assert_eq!(
        scenario.secret_token("okta-token").await.as_deref(),
        Some("someone else's")
    );
    assert_eq!(scenario.token_requests(&shared().oauth), 0);
    let events = scenario.events().await;
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == "SecretConflict"),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_api_server_rejects_resources_that_can_never_work() {
    let shared = shared();
    let namespace = shared.control_plane.create_namespace("schema").await;
    let client = shared.control_plane.client();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        &namespace,
        &kube::discovery::ApiResource::erase::<OktaServiceToken>(&()),
    );
    let valid = json!({
        "apiVersion": "okta-token-operator.dev/v1alpha1",
        "kind": "OktaServiceToken",
        "metadata": {"name": "valid"},
        "spec": {
            "orgUrl": "https://example.okta.com",
            "clientId": "0oa1",
            "scopes": [SCOPE],
            "signingKey": {"kmsKeyId": "arn:aws:kms:eu-west-1:111122223333:key/k"}
        }
    });
    let object = |value: &Value| -> kube::api::DynamicObject {
        serde_json::from_value(value.clone()).expect("a dynamic object")
    };
    api.create(&PostParams::default(), &object(&valid))
        .await
        .expect("a valid resource is accepted");
    let broken: [(&str, Value); 8] = [
        ("http-org", json!({"orgUrl": "http://example.okta.com"})),
        ("no-scopes", json!({"scopes": []})),
        (
            "both-urls",
            json!({"tokenUrl": "https://example.okta.com/oauth2/v1/token"}),
        ),
        (
            "bad-alg",
            json!({"signingKey": {"kmsKeyId": "k", "algorithm": "PS256"}}),
        ),
        ("bad-duration", json!({"renewBefore": "10 minutes"})),
        ("space-scope", json!({"scopes": ["a b"]})),
        ("no-client", json!({"clientId": ""})),
        ("no-key", json!({"signingKey": {}})),
    ];
    for (name, change) in broken {
        let mut resource = valid.clone();
        resource["metadata"]["name"] = name.into();
        for (field, value) in change.as_object().expect("object") {
            resource["spec"][field] = value.clone();
        }
        let error = api
            .create(&PostParams::default(), &object(&resource))
            .await
            .expect_err(&format!("{name} must be rejected"));
        match error {
            kube::Error::Api(status) => assert_eq!(status.code, 422, "{name}: {status:?}"),
            other => panic!("{name}: {other}"),
        }
    }
}

#[tokio::test]
async fn deleting_the_resource_deletes_its_secret() {
    let scenario = Scenario::new("delete", 600).await;
    scenario.create("api", scenario.spec(&shared().oauth)).await;
    wait_ready(&scenario, "api").await;
    scenario
        .tokens()
        .delete("api", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually(
        "garbage collection of the Secret",
        Duration::from_secs(60),
        || async {
            scenario
                .secrets()
                .get_opt("okta-token")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn the_operator_role_allows_nothing_more() {
    let shared = shared();
    let namespace = shared.control_plane.create_namespace("rbac").await;
    let operator = shared
        .control_plane
        .service_account_client(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT);
    let forbidden = |result: Result<(), kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{what}"),
        other => panic!("{what} must be forbidden, got {other:?}"),
    };
    let config_maps: Api<ConfigMap> = Api::namespaced(operator.clone(), &namespace);
    forbidden(
        config_maps.list(&ListParams::default()).await.map(drop),
        "listing ConfigMaps",
    );
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), &namespace);
    forbidden(
        secrets
            .delete("anything", &DeleteParams::default())
            .await
            .map(drop),
        "deleting a Secret",
    );
    let tokens: Api<OktaServiceToken> = Api::namespaced(operator, &namespace);
    forbidden(
        tokens
            .delete("anything", &DeleteParams::default())
            .await
            .map(drop),
        "deleting an OktaServiceToken",
    );
    assert!(
        tokens.list(&ListParams::default()).await.is_ok(),
        "reading its resources is allowed"
    );
}

#[tokio::test]
async fn a_configuration_error_backs_off_and_a_spec_fix_retries_at_once() {
    let scenario = Scenario::new("config", 600).await;
    let oauth = &shared().oauth;
    let mut spec = scenario.spec(oauth);
    spec.scopes = vec!["okta.users.manage".into()];
    scenario.create("api", spec).await;
    let rejected = eventually("TokenRequestRejected", Duration::from_secs(30), || async {
        let token = scenario.token("api").await;
        (condition(&token, "Ready") == Some(("False".into(), "TokenRequestRejected".into())))
            .then_some(token)
    })
    .await;
    let message = rejected
        .status
        .as_ref()
        .and_then(|s| s.condition("Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("invalid_scope"), "{message}");
    let events = scenario.events().await;
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "TokenRequestRejected"
            && note.contains("invalid_scope")),
        "{events:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        scenario.token_requests(oauth),
        1,
        "a configuration error is not retried in a hot loop"
    );

    let patch = json!({"spec": {"scopes": [SCOPE]}});
    scenario
        .tokens()
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("spec fixed");
    let fixed = wait_ready(&scenario, "api").await;
    assert_eq!(fixed.status.and_then(|s| s.failure_count), None);
    assert_eq!(scenario.token_requests(oauth), 2);
}

#[tokio::test]
async fn a_rate_limit_waits_for_oktas_reset_time() {
    let state = tempfile::tempdir().expect("temp dir");
    let oauth =
        OAuthServer::start_with_state(&state.path().join("state.json")).expect("OAuth server");
    let scenario = Scenario::with_oauth("ratelimit", 600, &oauth).await;
    let reset_at = std::time::SystemTime::now() + Duration::from_secs(8);
    oauth
        .inject_rate_limit(1, reset_at)
        .expect("rate limit armed");
    scenario.create("api", scenario.spec(&oauth)).await;
    let limited = eventually("RateLimited", Duration::from_secs(30), || async {
        let token = scenario.token("api").await;
        (condition(&token, "RenewalFailing") == Some(("True".into(), "RateLimited".into())))
            .then_some(token)
    })
    .await;
    let next_attempt = limited
        .status
        .and_then(|s| s.next_attempt_time)
        .expect("next attempt time")
        .0;
    let reset = jiff::Timestamp::try_from(reset_at).expect("timestamp");
    assert!(
        next_attempt
            >= reset.round(jiff::Unit::Second).unwrap_or(reset)
                - jiff::SignedDuration::from_secs(1),
        "waits for the reset: {next_attempt} vs {reset}"
    );
    let ready = wait_ready(&scenario, "api").await;
    assert!(
        jiff::Timestamp::now() >= reset,
        "retried before Okta's reset time"
    );
    assert!(ready.status.and_then(|s| s.fingerprint).is_some());
    assert_eq!(
        scenario.token_requests(&oauth),
        2,
        "one limited request, one after the reset"
    );
}
