//! `moto_server` (PyPI `moto`) as a local AWS KMS.
//!
//! The operator reaches it the way it reaches real KMS in a pod: through
//! aws-config's default chain, with `AWS_ENDPOINT_URL_KMS` pointing here.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::{Supervised, free_port, port_open};

pub const REGION: &str = "us-east-1";
const ACCESS_KEY_ID: &str = "testing";
const SECRET_ACCESS_KEY: &str = "testing";

/// A running KMS emulator on loopback.
pub struct Moto {
    port: u16,
    _dir: tempfile::TempDir,
    process: Supervised,
}

impl Moto {
    /// Starts `moto_server` on a free loopback port and waits until it answers.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let port = free_port();
        let program = std::env::var_os("MOTO_SERVER").unwrap_or_else(|| "moto_server".into());
        let mut command = Command::new(program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path());
        let mut process =
            Supervised::spawn("moto_server", command, &dir.path().join("moto.log"))
                .map_err(|e| format!("{e} (run `make python-deps` to install moto[server])"))?;
        process.wait_until_ready("moto_server", Duration::from_secs(60), || port_open(port))?;
        Ok(Self {
            port,
            _dir: dir,
            process,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_owned()
    }

    /// The environment a process needs to use this emulator as its KMS.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_KMS", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            // Keep the SDK away from ~/.aws and from IMDS on a developer machine.
            ("AWS_CONFIG_FILE", "/dev/null".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
        ]
    }

    /// An SDK configuration that talks to this emulator.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        let credentials = aws_sdk_kms::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "moto",
        );
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(
                credentials,
            ))
            .build()
    }

    pub fn client(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::new(&self.sdk_config())
    }

    /// Creates a key with `key_spec` (e.g. `RSA_2048`, `ECC_NIST_P256`) and
    /// `key_usage` (`SIGN_VERIFY` for signing keys); returns its ARN.
    pub async fn create_key(&self, key_spec: &str, key_usage: &str) -> Result<String, String> {
        let output = self
            .client()
            .create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::from(key_spec))
            .key_usage(aws_sdk_kms::types::KeyUsageType::from(key_usage))
            .description("okta-token-operator test key")
            .send()
            .await
            .map_err(|e| {
                format!(
                    "CreateKey {key_spec}: {}",
                    aws_sdk_kms::error::DisplayErrorContext(e)
                )
            })?;
        output
            .key_metadata()
            .and_then(|metadata| metadata.arn())
            .map(str::to_owned)
            .ok_or_else(|| "CreateKey returned no ARN".to_owned())
    }

    /// Creates a signing key.
    pub async fn create_signing_key(&self, key_spec: &str) -> Result<String, String> {
        self.create_key(key_spec, "SIGN_VERIFY").await
    }
}
