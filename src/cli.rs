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
    about = "Keeps Okta client_credentials tokens fresh in Kubernetes Secrets, signing private_key_jwt assertions with AWS KMS"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
}

impl Cli {
    pub async fn run(self) -> Result<(), CliError> {
        let Cli {
            log_format,
            command,
        } = self;
        telemetry::init(log_format, "warn");
        match command {
            Command::Jwk(args) => jwk(args).await,
            Command::Mint(args) => mint(args).await,
        }
    }
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
    let minter = Minter::new(
        Arc::new(KmsSigner::from_environment().await),
        TokenClient::new(&TokenClientConfig::default())?,
    );
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
