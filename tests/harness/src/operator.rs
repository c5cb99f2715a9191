//! The operator binary as a process, the way a cluster runs it: its own
//! kubeconfig (usually impersonating its ServiceAccount), the AWS
//! environment of the KMS emulator, and probes on a loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{Supervised, free_port};

/// A running `okta-token-operator run`.
pub struct OperatorProcess {
    process: Supervised,
    probe_port: u16,
}

/// How to start the operator.
pub struct OperatorOptions<'a> {
    pub binary: &'a Path,
    pub kubeconfig: &'a Path,
    /// Extra environment, e.g. the KMS emulator's `AWS_*` variables.
    pub env: Vec<(&'static str, String)>,
    /// Watch only this namespace; all when `None`.
    pub namespace: Option<&'a str>,
    pub log_path: PathBuf,
}

impl OperatorProcess {
    /// Starts the operator and waits until `/readyz` answers 200.
    pub fn start(options: OperatorOptions<'_>) -> Result<Self, String> {
        let probe_port = free_port();
        let mut command = Command::new(options.binary);
        command
            .arg("run")
            .arg("--probe-address")
            .arg(format!("127.0.0.1:{probe_port}"))
            .env("KUBECONFIG", options.kubeconfig)
            .env("RUST_LOG", "info,okta_token_operator=debug")
            .env("POD_NAME", "okta-token-operator-test")
            .env_remove("WATCH_NAMESPACE");
        if let Some(namespace) = options.namespace {
            command.arg("--namespace").arg(namespace);
        }
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let mut process = Supervised::spawn("okta-token-operator", command, &options.log_path)
            .map_err(|e| e.to_string())?;
        process.wait_until_ready("the operator's /readyz", Duration::from_secs(60), || {
            probe(probe_port, "/readyz") == Some(200)
        })?;
        Ok(Self {
            process,
            probe_port,
        })
    }

    pub fn probe_port(&self) -> u16 {
        self.probe_port
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Sends SIGTERM, as the kubelet does, and waits for the exit.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// The HTTP status of `GET path` on a loopback port.
pub fn probe(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
