//! Command-line flags and the one-shot commands (`jwk`, `mint`).

use std::io::Write as _;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::assertion::{Algorithm, DEFAULT_ASSERTION_LIFETIME};
use crate::jwk::jwk_set;
use crate::kms::{KeyRef, KmsError, KmsSigner};
use crate::mint::{MintError, MintSpec, Minter};
use crate::okta::{TokenClient, TokenClientConfig, TokenError};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "okta-token-operator",
    version,
    about = "Keeps Okta client_credentials tokens fresh in Kubernetes Secrets, signing private_key_jwt assertions with AWS KMS",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The command; without one, `run`.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the OktaServiceToken CustomResourceDefinition as YAML.
    Crd,
    /// Print the KMS key's public key as a JWK Set, ready to add to the Okta app.
    Jwk(JwkArgs),
    /// Exchange one client assertion for an access token, to check a setup.
    Mint(MintArgs),
}

/// The KMS key that signs client assertions.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// KMS key id, key ARN, alias name (alias/NAME) or alias ARN.
    #[arg(long, env = "KMS_KEY_ID")]
    pub kms_key_id: String,
    /// AWS region of the key; defaults to the ARN's region, then AWS_REGION.
    #[arg(long)]
    pub region: Option<String>,
    /// JWS algorithm (RS256, RS384, RS512, ES256, ES384, ES512); defaults to the key's natural one.
    #[arg(long)]
    pub algorithm: Option<Algorithm>,
}

impl KeyArgs {
    fn key(&self) -> KeyRef {
        KeyRef::new(self.kms_key_id.clone(), self.region.clone())
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// How many resources are reconciled at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Address of the /healthz and /readyz endpoints.
    #[arg(long, env = "PROBE_ADDRESS", default_value = "0.0.0.0:8080")]
    pub probe_address: std::net::SocketAddr,
    /// This replica's name in Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct JwkArgs {
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct MintArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// The Okta app's client id (the assertion's iss and sub).
    #[arg(long)]
    pub client_id: String,
    /// The token endpoint, e.g. https://ORG.okta.com/oauth2/v1/token; it is also the assertion's aud.
    #[arg(long)]
    pub token_url: String,
    /// A scope to request; repeat for several.
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The kid to send; defaults to the RFC 7638 thumbprint that `jwk` prints.
    #[arg(long)]
    pub kid: Option<String>,
    /// Print the access token too (it is a credential: mind your terminal history).
    #[arg(long)]
    pub show_token: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Mint(#[from] MintError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render the CRD: {0}")]
    Crd(#[from] serde_yaml::Error),
    #[error("cannot connect to Kubernetes: {0}")]
    KubeConfig(#[source] kube::Error),
    #[error("cannot serve probes on {address}: {source}")]
    Probe {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Controller(#[from] crate::controller::Error),
}

impl Cli {
    pub async fn run(self) -> Result<(), CliError> {
        let Cli {
            log_format,
            command,
            run: default_run,
        } = self;
        match command.unwrap_or(Command::Run(default_run)) {
            Command::Run(args) => {
                telemetry::init(log_format, "info");
                run(args).await
            }
            Command::Crd => {
                std::io::stdout().write_all(crate::crd::crd_yaml()?.as_bytes())?;
                Ok(())
            }
            Command::Jwk(args) => {
                telemetry::init(log_format, "warn");
                jwk(args).await
            }
            Command::Mint(args) => {
                telemetry::init(log_format, "warn");
                mint(args).await
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<(), CliError> {
    let RunArgs {
        namespace,
        concurrency,
        probe_address,
        pod_name,
    } = args;
    let client = kube::Client::try_default()
        .await
        .map_err(CliError::KubeConfig)?;
    let minter = minter_from_environment().await?;
    let reporter = kube::runtime::events::Reporter {
        controller: crate::crd::OPERATOR_NAME.to_owned(),
        instance: pod_name,
    };
    let ctx = Arc::new(crate::controller::Context::new(client, minter, reporter));
    let listener = crate::http::bind(probe_address)
        .await
        .map_err(|source| CliError::Probe {
            address: probe_address,
            source,
        })?;
    let readiness = crate::http::Readiness::default();
    let probes = tokio::spawn(crate::http::serve(listener, readiness.clone()));
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("all"),
        %probe_address,
        "starting the controller"
    );
    let config = crate::controller::ControllerConfig {
        namespace,
        concurrency,
    };
    let result = crate::controller::run(ctx, config, readiness, shutdown_signal()).await;
    probes.abort();
    tracing::info!("stopped");
    Ok(result?)
}

/// Resolves on SIGTERM (the kubelet) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// KMS through the AWS default credential chain, and the token client.
async fn minter_from_environment() -> Result<Minter, CliError> {
    Ok(Minter::new(
        Arc::new(KmsSigner::from_environment().await),
        TokenClient::new(&TokenClientConfig::default())?,
    ))
}

async fn jwk(args: JwkArgs) -> Result<(), CliError> {
    let kms = KmsSigner::from_environment().await;
    let signing_key = kms.signing_key(&args.key.key(), args.key.algorithm).await?;
    print_json(&jwk_set(&signing_key.jwk))
}

async fn mint(args: MintArgs) -> Result<(), CliError> {
    let MintArgs {
        key,
        client_id,
        token_url,
        scopes,
        kid,
        show_token,
    } = args;
    let minter = minter_from_environment().await?;
    let spec = MintSpec {
        client_id,
        token_url,
        scopes,
        key: key.key(),
        algorithm: key.algorithm,
        kid,
        assertion_lifetime: DEFAULT_ASSERTION_LIFETIME,
    };
    let minted = minter.mint(&spec).await?;
    let token = &minted.token;
    let expires_at = jiff::Timestamp::try_from(token.expires_at())
        .map(|at| at.round(jiff::Unit::Second).unwrap_or(at).to_string())
        .unwrap_or_default();
    let mut summary = serde_json::json!({
        "token_type": token.token_type,
        "expires_in": token.expires_in.as_secs(),
        "expires_at": expires_at,
        "scope": token.scope.clone().unwrap_or_else(|| spec.scopes.join(" ")),
        "fingerprint": token.access_token.fingerprint(),
        "kid": minted.kid,
        "algorithm": minted.algorithm.as_str(),
    });
    if show_token {
        summary["access_token"] = token.access_token.expose().into();
    }
    print_json(&summary)
}

fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value).map_err(std::io::Error::from)?;
    writeln!(stdout)?;
    Ok(())
}
