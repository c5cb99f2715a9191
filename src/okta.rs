//! The token client: one `client_credentials` request to an Okta token
//! endpoint, authenticated with a signed client assertion.
//!
//! Response parsing is pure ([`parse_token_response`]) so hostile bodies are
//! covered by unit tests; [`TokenClient`] adds the HTTP call with timeouts
//! and a cap on what it reads.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::assertion::ClientAssertion;

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Token responses are a few kilobytes; anything far larger is not one.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// An OAuth access token. It prints only as a short fingerprint, so it can
/// travel through logs, errors and status without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The token itself, for the Secret and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sha256:` and the first 16 hex digits of the token's SHA-256: enough
    /// to tell tokens apart, useless to an attacker.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

/// The fingerprint [`AccessToken::fingerprint`] shows, for any token bytes.
pub fn fingerprint(token: &[u8]) -> String {
    let digest = Sha256::digest(token);
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken({})", self.fingerprint())
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

/// A token Okta issued.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub access_token: AccessToken,
    pub token_type: String,
    pub expires_in: Duration,
    /// The granted scopes, space-separated, when the server said.
    pub scope: Option<String>,
    /// When the response arrived; `expires_in` counts from here.
    pub received_at: SystemTime,
}

impl IssuedToken {
    pub fn expires_at(&self) -> SystemTime {
        self.received_at + self.expires_in
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{error}: {description} (HTTP {status})", description = description.as_deref().unwrap_or("no description"))]
    Rejected {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error(
        "{error}: the Okta app requires DPoP (Demonstrating Proof of Possession), which this operator does not send; turn off \"Require DPoP header in token requests\" on the app (HTTP {status})"
    )]
    DpopRequired { status: u16, error: String },
    #[error("rate limited by the token endpoint (HTTP 429){}", retry_hint(*.retry_at))]
    RateLimited { retry_at: Option<SystemTime> },
    #[error("the token endpoint is unavailable (HTTP {status})")]
    Unavailable { status: u16 },
    #[error("cannot reach the token endpoint: {0}")]
    Transport(String),
    #[error("the token endpoint sent an invalid response (HTTP {status}): {reason}")]
    InvalidResponse { status: u16, reason: String },
}

fn retry_hint(retry_at: Option<SystemTime>) -> String {
    match retry_at.and_then(|at| jiff::Timestamp::try_from(at).ok()) {
        Some(at) => format!("; retry after {at}"),
        None => String::new(),
    }
}

impl TokenError {
    /// Whether the same request may succeed later without a configuration
    /// change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TokenError::RateLimited { .. }
                | TokenError::Unavailable { .. }
                | TokenError::Transport(_)
        )
    }

    /// The OAuth error code, when the server sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { error, .. } | TokenError::DpopRequired { error, .. } => {
                Some(error)
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    error_description: Option<String>,
}

/// The rate-limit headers of a 429 (or any response), as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders<'a> {
    /// `X-Rate-Limit-Reset`: UTC epoch seconds when the window resets.
    pub reset: Option<&'a str>,
    /// `Retry-After`: seconds, or an HTTP date.
    pub retry_after: Option<&'a str>,
}

/// When to try again after a 429: Okta's `X-Rate-Limit-Reset` when present,
/// else `Retry-After`.
pub fn parse_retry_at(headers: &RateLimitHeaders<'_>, now: SystemTime) -> Option<SystemTime> {
    if let Some(epoch) = headers.reset.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(SystemTime::UNIX_EPOCH + Duration::from_secs(epoch));
    }
    let retry_after = headers.retry_after?.trim();
    if let Ok(seconds) = retry_after.parse::<u64>() {
        return Some(now + Duration::from_secs(seconds));
    }
    // RFC 9110 IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    jiff::fmt::rfc2822::parse(retry_after)
        .ok()
        .map(|zoned| SystemTime::from(zoned.timestamp()))
}

/// Interprets a token endpoint response.
pub fn parse_token_response(
    status: u16,
    content_type: Option<&str>,
    rate_limit: &RateLimitHeaders<'_>,
    body: &[u8],
    received_at: SystemTime,
) -> Result<IssuedToken, TokenError> {
    let invalid = |reason: String| TokenError::InvalidResponse { status, reason };
    if status == 429 {
        return Err(TokenError::RateLimited {
            retry_at: parse_retry_at(rate_limit, received_at),
        });
    }
    let is_json = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !(200..300).contains(&status) {
        if let Some(error) = is_json
            .then(|| serde_json::from_slice::<ErrorBody>(body).ok())
            .flatten()
        {
            if error.error == "invalid_dpop_proof" || error.error == "use_dpop_nonce" {
                return Err(TokenError::DpopRequired {
                    status,
                    error: error.error,
                });
            }
            if status < 500 {
                return Err(TokenError::Rejected {
                    status,
                    error: error.error,
                    description: error.error_description.map(|d| truncate(&d, 300)),
                });
            }
        }
        if status >= 500 {
            return Err(TokenError::Unavailable { status });
        }
        return Err(invalid(format!(
            "expected an OAuth error object, got {}",
            describe_body(content_type, body)
        )));
    }
    if !is_json {
        return Err(invalid(format!(
            "expected JSON, got {}",
            describe_body(content_type, body)
        )));
    }
    let parsed: SuccessBody = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the JSON is not a token response: {e}")))?;
    let access_token = parsed
        .access_token
        .filter(|token| !token.is_empty())
        .ok_or_else(|| invalid("the response has no access_token".into()))?;
    let token_type = parsed
        .token_type
        .ok_or_else(|| invalid("the response has no token_type".into()))?;
    let expires_in = parsed
        .expires_in
        .as_ref()
        .and_then(expires_in_seconds)
        .filter(|seconds| *seconds > 0)
        .ok_or_else(|| invalid("the response has no positive expires_in".into()))?;
    Ok(IssuedToken {
        access_token: AccessToken::new(access_token),
        token_type,
        expires_in: Duration::from_secs(expires_in),
        scope: parsed.scope,
        received_at,
    })
}

/// `expires_in` is a JSON number by RFC 6749, but some servers send a string.
fn expires_in_seconds(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn describe_body(content_type: Option<&str>, body: &[u8]) -> String {
    let kind = content_type.unwrap_or("no content type");
    if body.is_empty() {
        format!("an empty body ({kind})")
    } else {
        format!("{} bytes of {kind}", body.len())
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// HTTP settings of the token client.
#[derive(Clone, Debug)]
pub struct TokenClientConfig {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for TokenClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// Posts client-credentials requests to token endpoints.
#[derive(Clone)]
pub struct TokenClient {
    http: reqwest::Client,
}

impl TokenClient {
    pub fn new(config: &TokenClientConfig) -> Result<Self, TokenError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("okta-token-operator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::Transport(error_chain(&e)))?;
        Ok(Self { http })
    }

    /// Exchanges `assertion` for an access token with `scopes`.
    pub async fn request_token(
        &self,
        token_url: &str,
        scopes: &[String],
        assertion: &ClientAssertion,
    ) -> Result<IssuedToken, TokenError> {
        let scope = scopes.join(" ");
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", scope.as_str()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", assertion.expose()),
        ];
        let mut response = self
            .http
            .post(token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Transport(error_chain(&e)))?;
        let received_at = SystemTime::now();
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type");
        let reset = header("x-rate-limit-reset");
        let retry_after = header("retry-after");

        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| TokenError::Transport(error_chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(TokenError::InvalidResponse {
                    status,
                    reason: format!("the body is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        parse_token_response(
            status,
            content_type.as_deref(),
            &RateLimitHeaders {
                reset: reset.as_deref(),
                retry_after: retry_after.as_deref(),
            },
            &body,
            received_at,
        )
    }
}

/// An error and its sources on one line, e.g. "error sending request: connection refused".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json;charset=UTF-8");
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }
    fn parse(
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<IssuedToken, TokenError> {
        parse_token_response(
            status,
            content_type,
            &RateLimitHeaders::default(),
            body.as_bytes(),
            now(),
        )
    }

    #[test]
    fn okta_success_response() {
        let token = parse(
            200,
            JSON,
            r#"{"token_type":"Bearer","expires_in":3600,"access_token":"eyJ.secret.token","scope":"okta.users.read"}"#,
        )
        .expect("valid response");
        assert_eq!(token.access_token.expose(), "eyJ.secret.token");
        assert_eq!(token.token_type, "Bearer");
        assert_eq!(token.expires_in, Duration::from_secs(3600));
        assert_eq!(token.scope.as_deref(), Some("okta.users.read"));
        assert_eq!(token.expires_at(), now() + Duration::from_secs(3600));
    }

    #[test]
    fn token_never_prints() {
        let token = AccessToken::new("eyJ.secret.token".into());
        let shown = format!("{token} {token:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("sha256:"));
        assert_eq!(token.fingerprint().len(), "sha256:".len() + 16);
        assert_ne!(
            token.fingerprint(),
            AccessToken::new("other".into()).fingerprint()
        );
    }

    #[test]
    fn hostile_success_bodies_are_typed_errors() {
        for (content_type, body) in [
            (
                JSON,
                r#"{"token_type":"Bearer","expires_in":0,"access_token":"t"}"#,
            ),
            (
                JSON,
                r#"{"token_type":"Bearer","expires_in":-5,"access_token":"t"}"#,
            ),
            (JSON, r#"{"token_type":"Bearer","access_token":"t"}"#),
            (JSON, r#"{"token_type":"Bearer","expires_in":3600}"#),
            (
                JSON,
                r#"{"token_type":"Bearer","expires_in":3600,"access_token":""}"#,
            ),
            (JSON, r#"{"expires_in":3600,"access_token":"t"}"#),
            (JSON, "[1,2,3]"),
            (JSON, "{not json"),
            (JSON, ""),
            (Some("text/html"), "<html><body>Sign in</body></html>"),
            (None, "whatever"),
        ] {
            match parse(200, content_type, body) {
                Err(TokenError::InvalidResponse { status: 200, .. }) => {}
                other => panic!("{body:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn expires_in_as_string_is_accepted() {
        let token = parse(
            200,
            JSON,
            r#"{"token_type":"Bearer","expires_in":"300","access_token":"t"}"#,
        )
        .expect("string expires_in");
        assert_eq!(token.expires_in, Duration::from_secs(300));
    }

    #[test]
    fn oauth_errors_carry_status_code_and_description() {
        let error = parse(
            400,
            JSON,
            r#"{"error":"invalid_scope","error_description":"The following scopes are not allowed: okta.users.manage"}"#,
        )
        .expect_err("an error");
        assert!(!error.is_retryable());
        assert_eq!(error.oauth_error(), Some("invalid_scope"));
        assert_eq!(
            error.to_string(),
            "invalid_scope: The following scopes are not allowed: okta.users.manage (HTTP 400)"
        );
    }

    #[test]
    fn dpop_errors_explain_what_to_change() {
        for code in ["invalid_dpop_proof", "use_dpop_nonce"] {
            let body = format!(
                r#"{{"error":"{code}","error_description":"The DPoP proof JWT header is missing."}}"#
            );
            let error = parse(400, JSON, &body).expect_err("an error");
            assert!(matches!(error, TokenError::DpopRequired { .. }));
            assert!(error.to_string().contains("requires DPoP"), "{error}");
        }
    }

    #[test]
    fn server_errors_and_html_error_pages() {
        assert!(matches!(
            parse(503, Some("text/html"), "<html>down</html>"),
            Err(TokenError::Unavailable { status: 503 })
        ));
        assert!(parse(502, None, "").expect_err("error").is_retryable());
        assert!(matches!(
            parse(404, Some("text/html"), "<html>not found</html>"),
            Err(TokenError::InvalidResponse { status: 404, .. })
        ));
    }

    #[test]
    fn rate_limit_reset_is_okta_epoch_seconds() {
        let headers = RateLimitHeaders {
            reset: Some("1800000042"),
            retry_after: Some("5"),
        };
        let error = parse_token_response(429, JSON, &headers, b"{}", now()).expect_err("429");
        match error {
            TokenError::RateLimited { retry_at } => {
                assert_eq!(retry_at, Some(now() + Duration::from_secs(42)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_seconds_or_date() {
        let seconds = RateLimitHeaders {
            reset: None,
            retry_after: Some("30"),
        };
        assert_eq!(
            parse_retry_at(&seconds, now()),
            Some(now() + Duration::from_secs(30))
        );
        let date = RateLimitHeaders {
            reset: None,
            retry_after: Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        };
        assert_eq!(
            parse_retry_at(&date, now()),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        let garbage = RateLimitHeaders {
            reset: Some("soon"),
            retry_after: Some("later"),
        };
        assert_eq!(parse_retry_at(&garbage, now()), None);
    }
}
