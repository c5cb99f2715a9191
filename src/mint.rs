//! One token exchange: sign a fresh client assertion with KMS and trade it
//! at the token endpoint. Shared by the `mint` command and the reconciler.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::assertion::{
    Algorithm, AssertionError, AssertionParams, ClientAssertion, UnsignedAssertion, fresh_jti,
};
use crate::kms::{KeyRef, KmsError, KmsSigner, SigningKey};
use crate::okta::{IssuedToken, TokenClient, TokenError};

/// Everything that decides which token is minted.
#[derive(Clone, Debug)]
pub struct MintSpec {
    pub client_id: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub key: KeyRef,
    pub algorithm: Option<Algorithm>,
    /// Overrides the `kid` sent; defaults to the key's RFC 7638 thumbprint.
    pub kid: Option<String>,
    pub assertion_lifetime: Duration,
}

/// A token and how it was obtained.
#[derive(Clone, Debug)]
pub struct Minted {
    pub token: IssuedToken,
    pub kid: String,
    pub algorithm: Algorithm,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("KMS: {0}")]
    Kms(#[from] KmsError),
    #[error(transparent)]
    Assertion(#[from] AssertionError),
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl MintError {
    /// Whether the same request may succeed later without a configuration change.
    pub fn is_retryable(&self) -> bool {
        match self {
            MintError::Kms(error) => error.is_retryable(),
            MintError::Assertion(_) => false,
            MintError::Token(error) => error.is_retryable(),
        }
    }
}

/// Signs assertions with KMS and exchanges them for tokens.
#[derive(Clone)]
pub struct Minter {
    kms: Arc<KmsSigner>,
    tokens: TokenClient,
}

impl Minter {
    pub fn new(kms: Arc<KmsSigner>, tokens: TokenClient) -> Self {
        Self { kms, tokens }
    }

    pub fn kms(&self) -> &KmsSigner {
        &self.kms
    }

    pub fn token_client(&self) -> &TokenClient {
        &self.tokens
    }

    /// Builds and signs a client assertion for `spec` with a fresh `jti`.
    pub async fn sign_assertion(
        &self,
        spec: &MintSpec,
        signing_key: &SigningKey,
    ) -> Result<ClientAssertion, MintError> {
        let unsigned = self.unsigned_assertion(spec, signing_key)?;
        let signature = self
            .kms
            .sign(
                &signing_key.key,
                signing_key.algorithm,
                unsigned.signing_input(),
            )
            .await?;
        Ok(unsigned.finish(&signature)?)
    }

    /// The assertion for `spec`, issued now, before signing.
    pub fn unsigned_assertion(
        &self,
        spec: &MintSpec,
        signing_key: &SigningKey,
    ) -> Result<UnsignedAssertion, MintError> {
        let issued_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let params = AssertionParams {
            client_id: &spec.client_id,
            token_url: &spec.token_url,
            kid: spec.kid.as_deref().unwrap_or(&signing_key.jwk.kid),
            algorithm: signing_key.algorithm,
            lifetime: spec.assertion_lifetime,
        };
        Ok(UnsignedAssertion::new(&params, issued_at, &fresh_jti())?)
    }

    /// One token for `spec`. An `invalid_client` answer is retried once
    /// with a fresh assertion and a fresh look at the public key, since a
    /// clock step or a re-pointed alias can cause it; a second one is a
    /// configuration problem.
    pub async fn mint(&self, spec: &MintSpec) -> Result<Minted, MintError> {
        let mut retried = false;
        loop {
            let signing_key = self.kms.signing_key(&spec.key, spec.algorithm).await?;
            let assertion = self.sign_assertion(spec, &signing_key).await?;
            match self
                .tokens
                .request_token(&spec.token_url, &spec.scopes, &assertion)
                .await
            {
                Ok(token) => {
                    return Ok(Minted {
                        token,
                        kid: spec.kid.clone().unwrap_or(signing_key.jwk.kid),
                        algorithm: signing_key.algorithm,
                    });
                }
                Err(error) if !retried && error.oauth_error() == Some("invalid_client") => {
                    tracing::debug!(
                        "token endpoint answered invalid_client; retrying once with a fresh assertion"
                    );
                    self.kms.forget_public_key(&spec.key);
                    retried = true;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
