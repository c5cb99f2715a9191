//! The `OktaServiceToken` custom resource: what a team declares, and the
//! status the operator reports for kubectl and GitOps tools.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::assertion::Algorithm;

/// The project's domain: the API group, and the prefix of every label and
/// annotation the operator writes.
pub const DOMAIN: &str = "okta-token-operator.dev";

/// The operator's name: field manager, Event reporter and managed-by label.
pub const OPERATOR_NAME: &str = "okta-token-operator";

/// Condition types.
pub const CONDITION_READY: &str = "Ready";
/// True while the last attempt to renew failed, even if the current token
/// is still valid (and `Ready` therefore still True).
pub const CONDITION_RENEWAL_FAILING: &str = "RenewalFailing";

/// Condition reasons, PascalCase as Kubernetes expects.
pub mod reason {
    pub const TOKEN_ISSUED: &str = "TokenIssued";
    pub const TOKEN_EXPIRED: &str = "TokenExpired";
    pub const PENDING: &str = "Pending";
    pub const RENEWED: &str = "Renewed";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const KMS_SIGNING_FAILED: &str = "KmsSigningFailed";
    pub const KMS_KEY_UNUSABLE: &str = "KmsKeyUnusable";
    pub const TOKEN_REQUEST_REJECTED: &str = "TokenRequestRejected";
    pub const TOKEN_ENDPOINT_UNAVAILABLE: &str = "TokenEndpointUnavailable";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const KUBERNETES_API_ERROR: &str = "KubernetesApiError";
}

// An https URL, or plain http to a loopback host (local tests and demos only).
const ORG_URL_PATTERN: &str = r"^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?)/?$";
const TOKEN_URL_PATTERN: &str = r"^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?)/[^?#\s]*$";
const DURATION_PATTERN: &str = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$";
const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A machine-to-machine Okta access token, kept fresh in a Secret.
// Each printcolumn repeats `type_`; clippy mistakes that for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "okta-token-operator.dev",
    version = "v1alpha1",
    kind = "OktaServiceToken",
    plural = "oktaservicetokens",
    shortname = "ost",
    namespaced,
    status = "OktaServiceTokenStatus",
    doc = "An Okta client_credentials access token, obtained with a private_key_jwt assertion signed by an AWS KMS key, kept fresh in a Secret",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.orgUrl) != has(self.tokenUrl)").message("set exactly one of orgUrl and tokenUrl"))]
#[x_kube(validation = Rule::new("!has(self.authorizationServerId) || has(self.orgUrl)").message("authorizationServerId goes with orgUrl; a tokenUrl already names its authorization server"))]
#[serde(rename_all = "camelCase")]
pub struct OktaServiceTokenSpec {
    /// The Okta org, e.g. https://example.okta.com. The token URL is
    /// ORG/oauth2/v1/token (the org authorization server, the only one that
    /// grants Okta API scopes), or ORG/oauth2/AUTHORIZATION_SERVER_ID/v1/token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = ORG_URL_PATTERN))]
    pub org_url: Option<String>,

    /// A custom authorization server's id (`default` for the built-in one);
    /// absent means the org authorization server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub authorization_server_id: Option<String>,

    /// The exact token endpoint, instead of orgUrl. It is also the
    /// assertion's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TOKEN_URL_PATTERN))]
    pub token_url: Option<String>,

    /// The Okta service app's client id.
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,

    /// The scopes to request.
    #[schemars(length(min = 1), inner(regex(pattern = r"^[!#-\[\]-~]+$")))]
    pub scopes: Vec<String>,

    /// The KMS key that signs client assertions.
    pub signing_key: SigningKeySpec,

    /// The Secret to write the token into; defaults to this resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(max = 253))]
    pub secret_name: Option<String>,

    /// Renew this long before expiry, e.g. 10m or 1h30m. By default a token
    /// is renewed two thirds through its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new("self != ''").message("renewBefore must not be empty"))]
    pub renew_before: Option<String>,
}

/// An AWS KMS asymmetric signing key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningKeySpec {
    /// Key ARN or alias ARN (a key id or alias name works with `region`).
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: String,

    /// AWS region; defaults to the ARN's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// JWS algorithm; defaults to the key's natural one (RS256 for RSA keys,
    /// ES256/ES384/ES512 for P-256/P-384/P-521).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<JwsAlgorithm>,

    /// The `kid` to send; defaults to the key's RFC 7638 thumbprint, which is
    /// what `okta-token-operator jwk` prints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub kid: Option<String>,
}

/// The JWS algorithms Okta accepts for client assertions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwsAlgorithm {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    ES512,
}

impl From<JwsAlgorithm> for Algorithm {
    fn from(algorithm: JwsAlgorithm) -> Self {
        match algorithm {
            JwsAlgorithm::RS256 => Algorithm::Rs256,
            JwsAlgorithm::RS384 => Algorithm::Rs384,
            JwsAlgorithm::RS512 => Algorithm::Rs512,
            JwsAlgorithm::ES256 => Algorithm::Es256,
            JwsAlgorithm::ES384 => Algorithm::Es384,
            JwsAlgorithm::ES512 => Algorithm::Es512,
        }
    }
}

/// What the operator observed and did, for kubectl and GitOps health checks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OktaServiceTokenStatus {
    /// `Ready` (kstatus-compatible) and `RenewalFailing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The token endpoint used (also the assertion's audience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    /// The `kid` sent in the assertion header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The JWS algorithm used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// `sha256:` and a prefix of the current token's SHA-256 (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When the current token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the operator renews it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<Time>,
    /// When the current token was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,
    /// Failed attempts since the last success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_count: Option<i32>,
    /// When the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// When the operator tries again after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
}

impl OktaServiceTokenSpec {
    /// The token URL: the explicit one, else derived from the org URL.
    pub fn resolved_token_url(&self) -> Option<String> {
        if let Some(token_url) = &self.token_url {
            return Some(token_url.clone());
        }
        let org = self.org_url.as_deref()?.trim_end_matches('/');
        Some(match self.authorization_server_id.as_deref() {
            Some(server) => format!("{org}/oauth2/{server}/v1/token"),
            None => format!("{org}/oauth2/v1/token"),
        })
    }
}

impl OktaServiceTokenStatus {
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// The CRD as YAML, for `okta-token-operator crd` and crds/.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by `okta-token-operator crd`; do not edit.\n{}",
        serde_yaml::to_string(&OktaServiceToken::crd())?
    ))
}

/// A minimal valid spec for unit tests across modules.
#[cfg(test)]
pub(crate) fn example_spec() -> OktaServiceTokenSpec {
    OktaServiceTokenSpec {
        org_url: Some("https://example.okta.com/".into()),
        authorization_server_id: None,
        token_url: None,
        client_id: "0oa1".into(),
        scopes: vec!["okta.users.read".into()],
        signing_key: SigningKeySpec {
            kms_key_id: "arn:aws:kms:eu-west-1:1:key/k".into(),
            region: None,
            algorithm: None,
            kid: None,
        },
        secret_name: None,
        renew_before: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource as _;

    fn spec() -> OktaServiceTokenSpec {
        example_spec()
    }

    #[test]
    fn api_group_is_the_domain() {
        assert_eq!(OktaServiceToken::group(&()), DOMAIN);
        assert_eq!(
            OktaServiceToken::crd_name(),
            "oktaservicetokens.okta-token-operator.dev"
        );
    }

    #[test]
    fn token_url_from_org_and_authorization_server() {
        assert_eq!(
            spec().resolved_token_url().as_deref(),
            Some("https://example.okta.com/oauth2/v1/token")
        );
        let custom = OktaServiceTokenSpec {
            authorization_server_id: Some("aus1abc".into()),
            ..spec()
        };
        assert_eq!(
            custom.resolved_token_url().as_deref(),
            Some("https://example.okta.com/oauth2/aus1abc/v1/token")
        );
        let explicit = OktaServiceTokenSpec {
            org_url: None,
            token_url: Some("https://example.okta.com/oauth2/default/v1/token".into()),
            ..spec()
        };
        assert_eq!(
            explicit.resolved_token_url().as_deref(),
            Some("https://example.okta.com/oauth2/default/v1/token")
        );
    }

    #[test]
    fn url_patterns_allow_http_only_on_loopback() {
        let org = regex_lite(ORG_URL_PATTERN);
        assert!(org("https://example.okta.com"));
        assert!(org("http://127.0.0.1:8080"));
        assert!(org("http://localhost:1"));
        assert!(!org("http://example.okta.com"));
        assert!(!org("ftp://example.okta.com"));
        let token = regex_lite(TOKEN_URL_PATTERN);
        assert!(token("https://example.okta.com/oauth2/v1/token"));
        assert!(token("http://127.0.0.1:3000/oauth2/default/v1/token"));
        assert!(!token("http://10.0.0.1/oauth2/v1/token"));
        assert!(!token("https://example.okta.com/oauth2/v1/token?x=1"));
    }

    fn regex_lite(pattern: &'static str) -> impl Fn(&str) -> bool {
        let regex = regex::Regex::new(pattern).expect("pattern compiles");
        move |text| regex.is_match(text)
    }

    #[test]
    fn duration_pattern_matches_what_the_parser_accepts() {
        let duration = regex_lite(DURATION_PATTERN);
        for good in ["10m", "1h30m", "90s", "2h"] {
            assert!(duration(good), "{good}");
        }
        for bad in ["10", "1d", "-5m", "m", "5m1h"] {
            assert!(!duration(bad), "{bad}");
        }
    }

    #[test]
    fn crd_yaml_parses_back_to_the_crd() {
        let yaml = crd_yaml().expect("yaml");
        let parsed: serde_json::Value = serde_yaml::from_str(&yaml).expect("valid yaml");
        let json = serde_json::to_value(OktaServiceToken::crd()).expect("json");
        assert_eq!(parsed, json);
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("shortNames"));
    }
}
