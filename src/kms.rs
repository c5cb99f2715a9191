//! AWS KMS as the signer of client assertions. The private key never leaves
//! KMS: this module only calls `Sign` and `GetPublicKey`.
//!
//! Credentials come from aws-config's default chain (environment, profile,
//! IRSA web identity, EKS Pod Identity, IMDS) and `AWS_ENDPOINT_URL_KMS`
//! points the SDK at an emulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeyUsageType, MessageType, SigningAlgorithmSpec};

use crate::assertion::Algorithm;
use crate::jwk::{Jwk, PublicKeyError, jwk_from_spki};

/// KMS signs at most 4096 bytes in RAW mode; a JWS signing input is far smaller.
const MAX_RAW_MESSAGE_BYTES: usize = 4096;

/// An alias can be pointed at another key, so public keys are looked up
/// again after a while rather than cached forever.
const PUBLIC_KEY_CACHE_TTL: Duration = Duration::from_secs(15 * 60);

/// A KMS key as a user names it: key id, key ARN, alias name or alias ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef {
    pub key_id: String,
    /// Explicit region; else the ARN's region; else the SDK's default.
    pub region: Option<String>,
}

impl KeyRef {
    pub fn new(key_id: impl Into<String>, region: Option<String>) -> Self {
        Self {
            key_id: key_id.into(),
            region,
        }
    }

    /// The region to call: the explicit one, else the one in the key ARN.
    pub fn region(&self) -> Option<&str> {
        self.region
            .as_deref()
            .filter(|region| !region.is_empty())
            .or_else(|| region_from_arn(&self.key_id))
    }
}

/// `arn:PARTITION:kms:REGION:ACCOUNT:key/ID` (or `:alias/NAME`) → REGION.
pub fn region_from_arn(key_id: &str) -> Option<&str> {
    let mut parts = key_id.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("kms"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("KMS is throttling requests ({code}): {message}")]
    Throttled { code: String, message: String },
    #[error("KMS is unavailable ({code}): {message}")]
    Unavailable { code: String, message: String },
    #[error("cannot reach KMS: {0}")]
    Unreachable(String),
    #[error("the KMS key is disabled: {0}")]
    KeyDisabled(String),
    #[error("the KMS key cannot be used in its current state (for example pending deletion): {0}")]
    KeyInvalidState(String),
    #[error("the KMS key was not found: {0}")]
    KeyNotFound(String),
    #[error("access to the KMS key was denied: {0}")]
    AccessDenied(String),
    #[error("the KMS key is not a signing key (KeyUsage {0}); create it with KeyUsage SIGN_VERIFY")]
    WrongKeyUsage(String),
    #[error("the KMS key does not support {algorithm}; it supports {supported}")]
    AlgorithmNotSupported {
        algorithm: Algorithm,
        supported: String,
    },
    #[error("no AWS region: give one, use a key ARN, or set AWS_REGION")]
    NoRegion,
    #[error("cannot load AWS credentials: {0}")]
    Credentials(String),
    #[error("the message to sign is {0} bytes; KMS signs at most 4096")]
    MessageTooLarge(usize),
    #[error("the KMS public key is unusable: {0}")]
    PublicKey(#[from] PublicKeyError),
    #[error("KMS answered {operation} without {field}")]
    IncompleteResponse {
        operation: &'static str,
        field: &'static str,
    },
    #[error("KMS refused the request ({code}): {message}")]
    Refused { code: String, message: String },
}

impl KmsError {
    /// Whether the same call may succeed later without a configuration change.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KmsError::Throttled { .. } | KmsError::Unavailable { .. } | KmsError::Unreachable(_)
        )
    }

    fn from_sdk<E, R>(error: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        if let SdkError::ServiceError(context) = &error {
            let code = context.err().code().unwrap_or("Unknown").to_owned();
            let message = context.err().message().unwrap_or_default().to_owned();
            return classify(code, message);
        }
        // The SDK's own Debug output is pages long: keep the Display chain, on one line.
        let text = crate::okta::error_chain(&error)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.to_ascii_lowercase().contains("credentials") {
            return KmsError::Credentials(text);
        }
        match error {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => KmsError::Unreachable(text),
            _ => KmsError::Refused {
                code: "ClientError".into(),
                message: text,
            },
        }
    }
}

/// Maps a KMS error code to what it means for the caller.
fn classify(code: String, message: String) -> KmsError {
    match code.as_str() {
        "ThrottlingException" | "LimitExceededException" => KmsError::Throttled { code, message },
        "DependencyTimeoutException" | "KMSInternalException" | "KeyUnavailableException" => {
            KmsError::Unavailable { code, message }
        }
        "DisabledException" => KmsError::KeyDisabled(message),
        "KMSInvalidStateException" => KmsError::KeyInvalidState(message),
        "NotFoundException" => KmsError::KeyNotFound(message),
        "AccessDeniedException" | "UnrecognizedClientException" | "InvalidSignatureException" => {
            KmsError::AccessDenied(format!("{code}: {message}"))
        }
        "InvalidKeyUsageException" => KmsError::WrongKeyUsage(message),
        _ => KmsError::Refused { code, message },
    }
}

/// A key ready to sign with: the algorithm chosen and the JWK Okta knows it by.
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub key: KeyRef,
    pub algorithm: Algorithm,
    pub jwk: Jwk,
}

/// What `GetPublicKey` says about a key.
#[derive(Clone, Debug)]
pub struct PublicKeyInfo {
    pub spki_der: Vec<u8>,
    pub key_usage: String,
    pub key_spec: String,
    pub signing_algorithms: Vec<String>,
}

/// The algorithm to sign with: the requested one if the key supports it,
/// else the natural one for the key spec.
pub fn choose_algorithm(
    info: &PublicKeyInfo,
    requested: Option<Algorithm>,
) -> Result<Algorithm, KmsError> {
    if info.key_usage != KeyUsageType::SignVerify.as_str() {
        return Err(KmsError::WrongKeyUsage(info.key_usage.clone()));
    }
    let supported: Vec<Algorithm> = info
        .signing_algorithms
        .iter()
        .filter_map(|name| Algorithm::from_kms_signing_algorithm(name))
        .collect();
    let algorithm = match requested {
        Some(algorithm) => algorithm,
        None => match info.key_spec.as_str() {
            "ECC_NIST_P256" => Algorithm::Es256,
            "ECC_NIST_P384" => Algorithm::Es384,
            "ECC_NIST_P521" => Algorithm::Es512,
            spec if spec.starts_with("RSA_") => Algorithm::Rs256,
            _ => *supported
                .first()
                .ok_or_else(|| KmsError::AlgorithmNotSupported {
                    algorithm: Algorithm::Rs256,
                    supported: describe_supported(&info.signing_algorithms),
                })?,
        },
    };
    if supported.contains(&algorithm) {
        Ok(algorithm)
    } else {
        Err(KmsError::AlgorithmNotSupported {
            algorithm,
            supported: describe_supported(&info.signing_algorithms),
        })
    }
}

fn describe_supported(names: &[String]) -> String {
    if names.is_empty() {
        "no signing algorithm".into()
    } else {
        names.join(", ")
    }
}

struct CachedPublicKey {
    info: Arc<PublicKeyInfo>,
    fetched_at: Instant,
}

/// Signs with KMS keys and looks up their public keys.
pub struct KmsSigner {
    sdk_config: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, aws_sdk_kms::Client>>,
    public_keys: Mutex<HashMap<KeyRef, CachedPublicKey>>,
}

impl KmsSigner {
    /// Loads the AWS configuration from the default chain.
    pub async fn from_environment() -> Self {
        let sdk_config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        Self::new(sdk_config)
    }

    pub fn new(sdk_config: aws_config::SdkConfig) -> Self {
        Self {
            sdk_config,
            clients: Mutex::new(HashMap::new()),
            public_keys: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, key: &KeyRef) -> Result<aws_sdk_kms::Client, KmsError> {
        let region = match key.region() {
            Some(region) => region.to_owned(),
            None => self
                .sdk_config
                .region()
                .map(|region| region.to_string())
                .ok_or(KmsError::NoRegion)?,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let client = clients.entry(region.clone()).or_insert_with(|| {
            let config = aws_sdk_kms::config::Builder::from(&self.sdk_config)
                .region(aws_sdk_kms::config::Region::new(region))
                .build();
            aws_sdk_kms::Client::from_conf(config)
        });
        Ok(client.clone())
    }

    /// `GetPublicKey`, cached per key for a while.
    pub async fn public_key_info(&self, key: &KeyRef) -> Result<Arc<PublicKeyInfo>, KmsError> {
        if let Some(cached) = self
            .public_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|cached| cached.fetched_at.elapsed() < PUBLIC_KEY_CACHE_TTL)
        {
            return Ok(cached.info.clone());
        }
        let output = self
            .client(key)?
            .get_public_key()
            .key_id(&key.key_id)
            .send()
            .await
            .map_err(KmsError::from_sdk)?;
        let missing = |field| KmsError::IncompleteResponse {
            operation: "GetPublicKey",
            field,
        };
        let info = Arc::new(PublicKeyInfo {
            spki_der: output
                .public_key()
                .ok_or_else(|| missing("PublicKey"))?
                .as_ref()
                .to_vec(),
            key_usage: output
                .key_usage()
                .ok_or_else(|| missing("KeyUsage"))?
                .as_str()
                .to_owned(),
            key_spec: output
                .key_spec()
                .map(|spec| spec.as_str().to_owned())
                .unwrap_or_default(),
            signing_algorithms: output
                .signing_algorithms()
                .iter()
                .map(|spec| spec.as_str().to_owned())
                .collect(),
        });
        self.public_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.clone(),
                CachedPublicKey {
                    info: info.clone(),
                    fetched_at: Instant::now(),
                },
            );
        Ok(info)
    }

    /// Resolves the algorithm and the JWK (whose `kid` is the RFC 7638
    /// thumbprint) for signing with `key`.
    pub async fn signing_key(
        &self,
        key: &KeyRef,
        requested: Option<Algorithm>,
    ) -> Result<SigningKey, KmsError> {
        let info = self.public_key_info(key).await?;
        let algorithm = choose_algorithm(&info, requested)?;
        let jwk = jwk_from_spki(&info.spki_der, algorithm)?;
        Ok(SigningKey {
            key: key.clone(),
            algorithm,
            jwk,
        })
    }

    /// Forgets a cached public key, e.g. after Okta rejected its `kid`.
    pub fn forget_public_key(&self, key: &KeyRef) {
        self.public_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// `Sign` in RAW mode (KMS hashes). Returns the signature as KMS gives
    /// it: PKCS#1 v1.5 bytes for RSA, DER for ECDSA.
    pub async fn sign(
        &self,
        key: &KeyRef,
        algorithm: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        if message.len() > MAX_RAW_MESSAGE_BYTES {
            return Err(KmsError::MessageTooLarge(message.len()));
        }
        let output = self
            .client(key)?
            .sign()
            .key_id(&key.key_id)
            .message(Blob::new(message))
            .message_type(MessageType::Raw)
            .signing_algorithm(SigningAlgorithmSpec::from(
                algorithm.kms_signing_algorithm(),
            ))
            .send()
            .await
            .map_err(KmsError::from_sdk)?;
        output
            .signature()
            .map(|signature| signature.as_ref().to_vec())
            .ok_or(KmsError::IncompleteResponse {
                operation: "Sign",
                field: "Signature",
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(key_spec: &str, usage: &str, algorithms: &[&str]) -> PublicKeyInfo {
        PublicKeyInfo {
            spki_der: Vec::new(),
            key_usage: usage.into(),
            key_spec: key_spec.into(),
            signing_algorithms: algorithms.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn region_comes_from_the_arn_unless_given() {
        let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(KeyRef::new(arn, None).region(), Some("eu-west-1"));
        assert_eq!(
            KeyRef::new(arn, Some("us-east-2".into())).region(),
            Some("us-east-2")
        );
        assert_eq!(
            KeyRef::new("arn:aws-cn:kms:cn-north-1:1:alias/okta", None).region(),
            Some("cn-north-1")
        );
        assert_eq!(KeyRef::new("alias/okta", None).region(), None);
        assert_eq!(KeyRef::new("1234abcd-12ab", None).region(), None);
    }

    #[test]
    fn algorithm_follows_the_key_spec_when_not_given() {
        let ec = info("ECC_NIST_P384", "SIGN_VERIFY", &["ECDSA_SHA_384"]);
        assert_eq!(choose_algorithm(&ec, None).ok(), Some(Algorithm::Es384));
        let rsa = info(
            "RSA_2048",
            "SIGN_VERIFY",
            &[
                "RSASSA_PSS_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
        );
        assert_eq!(choose_algorithm(&rsa, None).ok(), Some(Algorithm::Rs256));
        assert_eq!(
            choose_algorithm(&rsa, Some(Algorithm::Rs512)).ok(),
            Some(Algorithm::Rs512)
        );
    }

    #[test]
    fn unusable_keys_are_configuration_errors() {
        let encrypt = info("RSA_2048", "ENCRYPT_DECRYPT", &[]);
        let error = choose_algorithm(&encrypt, None).expect_err("not a signing key");
        assert!(matches!(error, KmsError::WrongKeyUsage(_)));
        assert!(!error.is_retryable());

        let ec = info("ECC_NIST_P256", "SIGN_VERIFY", &["ECDSA_SHA_256"]);
        let error = choose_algorithm(&ec, Some(Algorithm::Rs256)).expect_err("wrong algorithm");
        assert_eq!(
            error.to_string(),
            "the KMS key does not support RS256; it supports ECDSA_SHA_256"
        );
    }

    #[test]
    fn kms_error_codes_say_whether_to_retry() {
        for code in [
            "ThrottlingException",
            "DependencyTimeoutException",
            "KMSInternalException",
            "KeyUnavailableException",
        ] {
            assert!(
                classify(code.into(), String::new()).is_retryable(),
                "{code}"
            );
        }
        for code in [
            "DisabledException",
            "KMSInvalidStateException",
            "NotFoundException",
            "InvalidKeyUsageException",
            "AccessDeniedException",
        ] {
            assert!(
                !classify(code.into(), String::new()).is_retryable(),
                "{code}"
            );
        }
        assert!(matches!(
            classify("KMSInvalidStateException".into(), "pending deletion".into()),
            KmsError::KeyInvalidState(_)
        ));
    }
}
