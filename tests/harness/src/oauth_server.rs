//! The OAuth 2.0 authorization server the tests and the demo run against.
//!
//! `tests/oauth-server/server.mjs` is oidc-provider (OpenID-certified) mounted
//! under Okta-shaped paths (`/oauth2/default/v1/token`, …) and verifying
//! `private_key_jwt` client assertions the way Okta does. [`OAuthServer`]
//! runs it with `node` on a free loopback port, with a state file so that
//! [`OAuthServer::restart`] (the token endpoint going down and coming back)
//! keeps registered clients, issued tokens and counters. Its test-only admin
//! API registers clients, counts token requests and injects faults.
//!
//! ```no_run
//! use testbed::oauth_server::OAuthServer;
//! # let jwks = serde_json::json!({"keys": []});
//! let server = OAuthServer::start().unwrap();
//! server.register_client("0oa-test", &jwks, &["okta.users.read"], 30).unwrap();
//! // … point the code under test at server.token_url() …
//! assert_eq!(server.stats("0oa-test").unwrap().tokens_issued, 1);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::process::Supervised;

/// The built-in confidential client that may introspect any token.
pub const INTROSPECTOR_ID: &str = "introspector";
pub const INTROSPECTOR_SECRET: &str = "introspector-secret";

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restart keeps trying to bind the port it had before.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server counted for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests that reached the token endpoint for the client, including
    /// rejected ones and ones answered by an injected fault.
    pub token_requests: u64,
    /// Access tokens issued to the client.
    pub tokens_issued: u64,
}

/// A running `server.mjs`; stopped when dropped.
pub struct OAuthServer {
    dir: tempfile::TempDir,
    state_path: PathBuf,
    port: u16,
    running: Option<Supervised>,
    http: ureq::Agent,
}

impl OAuthServer {
    /// Starts the server on a free port with a fresh state file.
    pub fn start() -> Result<Self, String> {
        let dir = temp_dir()?;
        let state_path = dir.path().join("state.json");
        Self::launch(dir, state_path)
    }

    /// Starts the server on a free port with `state_file`, which is created
    /// when missing and kept afterwards (clients registered in an earlier run
    /// are known at once; the issuer changes with the port, though).
    pub fn start_with_state(state_file: &Path) -> Result<Self, String> {
        Self::launch(temp_dir()?, state_file.to_owned())
    }

    fn launch(dir: tempfile::TempDir, state_path: PathBuf) -> Result<Self, String> {
        let mut server = Self {
            dir,
            state_path,
            port: 0,
            running: None,
            http: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(HTTP_TIMEOUT))
                .build()
                .into(),
        };
        server.run(0)?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/oauth2/default`, as in discovery.
    pub fn issuer(&self) -> String {
        format!("{}/oauth2/default", self.origin())
    }

    /// The token endpoint, the exact URL a client assertion's `aud` must be.
    pub fn token_url(&self) -> String {
        format!("{}/v1/token", self.issuer())
    }

    pub fn introspection_url(&self) -> String {
        format!("{}/v1/introspect", self.issuer())
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/v1/keys", self.issuer())
    }

    /// Registers `client_id` (or replaces it, effective immediately) as a
    /// `private_key_jwt` client with the public keys `jwks` (`{"keys": […]}`),
    /// the scopes it may request and the lifetime of its access tokens.
    pub fn register_client(
        &self,
        client_id: &str,
        jwks: &Value,
        scopes: &[&str],
        ttl_seconds: u64,
    ) -> Result<(), String> {
        let body = json!({
            "client_id": client_id,
            "jwks": jwks,
            "scopes": scopes,
            "token_ttl_seconds": ttl_seconds,
        });
        let request = self.http.post(format!("{}/admin/clients", self.origin()));
        self.expect_ok("register a client", request.send_json(&body))
            .map(drop)
    }

    /// What the server counted for `client_id` (zeros for an unknown client).
    pub fn stats(&self, client_id: &str) -> Result<ClientStats, String> {
        let request = self
            .http
            .get(format!("{}/admin/stats", self.origin()))
            .query("client_id", client_id);
        let stats = self.expect_ok("read stats", request.call())?;
        let count = |name: &str| {
            stats[name]
                .as_u64()
                .ok_or_else(|| format!("stats without {name}: {stats}"))
        };
        Ok(ClientStats {
            token_requests: count("token_requests")?,
            tokens_issued: count("tokens_issued")?,
        })
    }

    /// Makes the next `count` token requests answer `status` with `headers`
    /// and `body` (JSON; a JSON string is sent as plain text, `None` sends no
    /// body) instead of reaching the OAuth logic. Replaces earlier faults.
    pub fn inject_faults(
        &self,
        count: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(), String> {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), Value::from(*value)))
            .collect();
        let mut fault = json!({ "count": count, "status": status, "headers": headers });
        if let Some(body) = body {
            fault["body"] = body.clone();
        }
        let request = self.http.post(format!("{}/admin/faults", self.origin()));
        self.expect_ok("inject faults", request.send_json(&fault))
            .map(drop)
    }

    /// Okta's rate limit: the next `count` token requests get 429 with
    /// `X-Rate-Limit-Limit/Remaining/Reset` (reset = `reset_at` in epoch
    /// seconds) and Okta's E0000047 body.
    pub fn inject_rate_limit(&self, count: u32, reset_at: SystemTime) -> Result<(), String> {
        let reset = reset_at
            .duration_since(UNIX_EPOCH)
            .map_err(|error| format!("reset before the epoch: {error}"))?
            .as_secs()
            .to_string();
        let body = json!({
            "errorCode": "E0000047",
            "errorSummary": "API call exceeded rate limit due to too many requests.",
            "errorLink": "E0000047",
            "errorId": "sampleRateLimit",
            "errorCauses": [],
        });
        self.inject_faults(
            count,
            429,
            &[
                ("X-Rate-Limit-Limit", "600"),
                ("X-Rate-Limit-Remaining", "0"),
                ("X-Rate-Limit-Reset", &reset),
            ],
            Some(&body),
        )
    }

    /// Removes any injected faults that are left.
    pub fn clear_faults(&self) -> Result<(), String> {
        let request = self.http.delete(format!("{}/admin/faults", self.origin()));
        self.expect_ok("clear faults", request.call()).map(drop)
    }

    /// RFC 7662 introspection as the built-in introspector: `active`, and for
    /// an active token `client_id`, `scope`, `exp`, `iat`, `iss`, `token_type`.
    pub fn introspect(&self, token: &str) -> Result<Value, String> {
        let request = self.http.post(self.introspection_url()).header(
            "authorization",
            basic_auth(INTROSPECTOR_ID, INTROSPECTOR_SECRET),
        );
        self.expect_ok("introspect", request.send_form([("token", token)]))
    }

    /// Stops the server; the token endpoint refuses connections until
    /// [`restart`](Self::restart). Does nothing when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            running.stop();
        }
    }

    /// Stops the server if it runs and starts it again on the same port with
    /// the same state: clients, issued tokens, spent `jti`s and counters are
    /// kept; injected faults are not.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.run(self.port) {
                // The old process's connections can hold the port for a moment.
                Err(error) if error.contains("EADDRINUSE") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.running
            .as_mut()
            .is_some_and(|running| running.ensure_running().is_ok())
    }

    /// The server's log (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("oauth-server.log")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }

    /// Starts `server.mjs` on `port` (0: any) and waits for its ready line.
    fn run(&mut self, port: u16) -> Result<(), String> {
        let server_dir = server_dir();
        if !server_dir
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            return Err(format!(
                "{}/node_modules is missing: run `make node-deps` (npm ci --prefix tests/oauth-server)",
                server_dir.display()
            ));
        }
        let log_path = self.log_path();
        // The ready line of this run is the first one after the current end.
        let log_start = std::fs::metadata(&log_path).map_or(0, |meta| meta.len());
        let mut command = Command::new(node());
        command
            .arg(server_dir.join("server.mjs"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--state")
            .arg(&self.state_path)
            .current_dir(&server_dir);
        // Supervised spawns from a long-lived thread, so the server outlives
        // whichever short-lived thread (a tokio blocking thread) started it.
        let mut running = Supervised::spawn("oauth-server", command, &log_path)
            .map_err(|error| format!("{error} (is Node.js 20+ installed?)"))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(bound) = ready_port(&log_path, log_start) {
                self.port = bound;
                self.running = Some(running);
                return Ok(());
            }
            if let Err(error) = running.ensure_running() {
                running.stop();
                return Err(error);
            }
            if Instant::now() >= deadline {
                let tail = running.log_tail(40);
                running.stop();
                return Err(format!(
                    "oauth-server printed no `listening` line within {START_TIMEOUT:?}; last log lines:\n{tail}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The JSON body of a 2xx answer, or an error naming `what` failed.
    fn expect_ok(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, String> {
        let mut response = response.map_err(|error| {
            format!(
                "cannot {what} at the OAuth server {}: {error}",
                self.origin()
            )
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|error| format!("cannot {what}: reading the answer failed: {error}"))?;
        if !status.is_success() {
            return Err(format!(
                "cannot {what}: the OAuth server answered {status}: {text}"
            ));
        }
        serde_json::from_str(&text)
            .map_err(|error| format!("cannot {what}: the answer is not JSON ({error}): {text}"))
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port in the first `listening http://127.0.0.1:PORT` line after `start`.
fn ready_port(log_path: &Path, start: u64) -> Option<u16> {
    let log = std::fs::read(log_path).ok()?;
    let new = String::from_utf8_lossy(log.get(start as usize..)?);
    new.lines()
        .find_map(|line| line.strip_prefix("listening http://127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
}

/// `<repo>/tests/oauth-server`.
fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../oauth-server")
}

fn node() -> String {
    std::env::var("OKTA_TEST_NODE").unwrap_or_else(|_| "node".to_owned())
}

fn temp_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("okta-token-operator-oauth-")
        .tempdir()
        .map_err(|error| format!("cannot create a directory for oauth-server: {error}"))
}

fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}
