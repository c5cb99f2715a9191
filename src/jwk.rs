//! Public keys as JWKs (RFC 7517/7518) and their thumbprints (RFC 7638).
//!
//! Pure code: KMS `GetPublicKey` returns a DER SubjectPublicKeyInfo, and this
//! turns it into the JWK registered on the Okta app.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::assertion::Algorithm;

/// A public signing key as Okta stores it on an app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Jwk {
    pub kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    pub alg: &'static str,
    #[serde(rename = "use")]
    pub use_: &'static str,
    pub kid: String,
}

/// The kind of key inside a SubjectPublicKeyInfo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    P521,
}

impl KeyKind {
    /// Whether signatures of `algorithm` can be made with this kind of key.
    pub fn supports(self, algorithm: Algorithm) -> bool {
        matches!(
            (self, algorithm),
            (
                KeyKind::Rsa,
                Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512
            ) | (KeyKind::P256, Algorithm::Es256)
                | (KeyKind::P384, Algorithm::Es384)
                | (KeyKind::P521, Algorithm::Es512)
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublicKeyError {
    #[error("the public key is not a valid SubjectPublicKeyInfo: {0}")]
    Malformed(String),
    #[error("the public key type {0} is not RSA, P-256, P-384 or P-521")]
    UnsupportedKeyType(String),
    #[error("algorithm {algorithm} cannot be used with a {kind:?} key")]
    AlgorithmMismatch { algorithm: Algorithm, kind: KeyKind },
}

const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const SECP256R1: &str = "1.2.840.10045.3.1.7";
const SECP384R1: &str = "1.3.132.0.34";
const SECP521R1: &str = "1.3.132.0.35";

/// Which kind of key a DER SubjectPublicKeyInfo holds.
pub fn key_kind(spki_der: &[u8]) -> Result<KeyKind, PublicKeyError> {
    let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der)
        .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    let algorithm = info.algorithm.oid.to_string();
    match algorithm.as_str() {
        RSA_ENCRYPTION => Ok(KeyKind::Rsa),
        EC_PUBLIC_KEY => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|e| PublicKeyError::Malformed(e.to_string()))?
                .to_string();
            match curve.as_str() {
                SECP256R1 => Ok(KeyKind::P256),
                SECP384R1 => Ok(KeyKind::P384),
                SECP521R1 => Ok(KeyKind::P521),
                other => Err(PublicKeyError::UnsupportedKeyType(format!(
                    "EC curve {other}"
                ))),
            }
        }
        other => Err(PublicKeyError::UnsupportedKeyType(other.to_owned())),
    }
}

/// The JWK for a DER SubjectPublicKeyInfo, to be used with `algorithm`.
/// Its `kid` is the RFC 7638 thumbprint.
pub fn jwk_from_spki(spki_der: &[u8], algorithm: Algorithm) -> Result<Jwk, PublicKeyError> {
    let kind = key_kind(spki_der)?;
    if !kind.supports(algorithm) {
        return Err(PublicKeyError::AlgorithmMismatch { algorithm, kind });
    }
    let mut jwk = Jwk {
        kty: "EC",
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        alg: algorithm.as_str(),
        use_: "sig",
        kid: String::new(),
    };
    match kind {
        KeyKind::Rsa => {
            let (n, e) = rsa_components(spki_der)?;
            jwk.kty = "RSA";
            jwk.n = Some(URL_SAFE_NO_PAD.encode(n));
            jwk.e = Some(URL_SAFE_NO_PAD.encode(e));
        }
        KeyKind::P256 | KeyKind::P384 | KeyKind::P521 => {
            let (crv, x, y) = ec_coordinates(spki_der, kind)?;
            jwk.crv = Some(crv);
            jwk.x = Some(URL_SAFE_NO_PAD.encode(x));
            jwk.y = Some(URL_SAFE_NO_PAD.encode(y));
        }
    }
    jwk.kid = thumbprint(&jwk);
    Ok(jwk)
}

fn rsa_components(spki_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), PublicKeyError> {
    use pkcs1::der::Decode as _;
    let info = spki::SubjectPublicKeyInfoRef::try_from(spki_der)
        .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    let key_bytes = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| PublicKeyError::Malformed("RSA key bit string is not whole bytes".into()))?;
    let key = pkcs1::RsaPublicKeyRef::from_der(key_bytes)
        .map_err(|e| PublicKeyError::Malformed(e.to_string()))?;
    // DER integers are minimal already, apart from a sign byte JWK must not carry.
    let minimal = |bytes: &[u8]| bytes.iter().copied().skip_while(|b| *b == 0).collect();
    Ok((
        minimal(key.modulus.as_bytes()),
        minimal(key.public_exponent.as_bytes()),
    ))
}

fn ec_coordinates(
    spki_der: &[u8],
    kind: KeyKind,
) -> Result<(&'static str, Vec<u8>, Vec<u8>), PublicKeyError> {
    use p256::pkcs8::DecodePublicKey as _;
    let malformed = |e: &dyn std::fmt::Display| PublicKeyError::Malformed(e.to_string());
    // The uncompressed SEC1 point is 0x04 ‖ x ‖ y with both coordinates at full width.
    let (crv, point): (&'static str, Vec<u8>) = match kind {
        KeyKind::P256 => (
            "P-256",
            p256::PublicKey::from_public_key_der(spki_der)
                .map_err(|e| malformed(&e))?
                .to_sec1_bytes()
                .to_vec(),
        ),
        KeyKind::P384 => (
            "P-384",
            p384::PublicKey::from_public_key_der(spki_der)
                .map_err(|e| malformed(&e))?
                .to_sec1_bytes()
                .to_vec(),
        ),
        KeyKind::P521 => (
            "P-521",
            p521::PublicKey::from_public_key_der(spki_der)
                .map_err(|e| malformed(&e))?
                .to_sec1_bytes()
                .to_vec(),
        ),
        KeyKind::Rsa => return Err(PublicKeyError::UnsupportedKeyType("RSA".into())),
    };
    let coordinates = point
        .strip_prefix(&[0x04])
        .filter(|rest| rest.len() % 2 == 0)
        .ok_or_else(|| PublicKeyError::Malformed("EC point is not uncompressed".into()))?;
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    Ok((crv, x.to_vec(), y.to_vec()))
}

/// The RFC 7638 thumbprint: SHA-256 over the required members in
/// lexicographic order, no whitespace, base64url.
pub fn thumbprint(jwk: &Jwk) -> String {
    let canonical = match jwk.kty {
        "RSA" => serde_json::json!({
            "e": jwk.e.as_deref().unwrap_or_default(),
            "kty": "RSA",
            "n": jwk.n.as_deref().unwrap_or_default(),
        }),
        _ => serde_json::json!({
            "crv": jwk.crv.unwrap_or_default(),
            "kty": jwk.kty,
            "x": jwk.x.as_deref().unwrap_or_default(),
            "y": jwk.y.as_deref().unwrap_or_default(),
        }),
    };
    // serde_json's map keeps keys sorted and prints no whitespace: exactly
    // the canonical form RFC 7638 §3 asks for.
    let canonical = canonical.to_string();
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// A JWK Set with one key, the form Okta's "Add public key" accepts.
pub fn jwk_set(jwk: &Jwk) -> serde_json::Value {
    serde_json::json!({ "keys": [jwk] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 §3.1.
        let jwk = Jwk {
            kty: "RSA",
            crv: None,
            x: None,
            y: None,
            n: Some(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            ),
            e: Some("AQAB".into()),
            alg: "RS256",
            use_: "sig",
            kid: "2011-04-29".into(),
        };
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rsa_key_becomes_jwk_with_minimal_modulus_and_exponent() {
        // A 2048-bit RSA SubjectPublicKeyInfo whose modulus has its high bit
        // set, so DER carries a leading zero byte the JWK must not.
        let key = rcgen_free_rsa_spki();
        let jwk = jwk_from_spki(&key, Algorithm::Rs256).expect("rsa key");
        assert_eq!(jwk.kty, "RSA");
        assert_eq!(jwk.e.as_deref(), Some("AQAB"));
        let n = URL_SAFE_NO_PAD
            .decode(jwk.n.as_deref().expect("n"))
            .expect("base64url");
        assert_eq!(n.len(), 256);
        assert_ne!(n[0], 0);
        assert_eq!(jwk.kid, thumbprint(&jwk));
        assert!(matches!(
            jwk_from_spki(&key, Algorithm::Es256),
            Err(PublicKeyError::AlgorithmMismatch { .. })
        ));
    }

    #[test]
    fn ec_keys_keep_full_width_coordinates() {
        use p256::elliptic_curve::Generate as _;
        use p256::pkcs8::EncodePublicKey as _;
        for _ in 0..20 {
            let secret = p256::SecretKey::generate();
            let der = secret
                .public_key()
                .to_public_key_der()
                .expect("encodes")
                .into_vec();
            let jwk = jwk_from_spki(&der, Algorithm::Es256).expect("p-256 key");
            assert_eq!(jwk.crv, Some("P-256"));
            for coordinate in [&jwk.x, &jwk.y] {
                let bytes = URL_SAFE_NO_PAD
                    .decode(coordinate.as_deref().expect("coordinate"))
                    .expect("base64url");
                assert_eq!(bytes.len(), 32);
            }
        }
        let secret = p384::SecretKey::generate();
        let der = {
            use p384::pkcs8::EncodePublicKey as _;
            secret
                .public_key()
                .to_public_key_der()
                .expect("encodes")
                .into_vec()
        };
        let jwk = jwk_from_spki(&der, Algorithm::Es384).expect("p-384 key");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk.x.as_deref().expect("x"))
                .expect("b64")
                .len(),
            48
        );
        assert!(jwk_from_spki(&der, Algorithm::Es256).is_err());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert!(matches!(
            jwk_from_spki(b"not a key", Algorithm::Rs256),
            Err(PublicKeyError::Malformed(_))
        ));
    }

    /// A fixed RSA-2048 SubjectPublicKeyInfo (modulus with the high bit set).
    fn rcgen_free_rsa_spki() -> Vec<u8> {
        use pkcs1::der::Encode as _;
        let mut modulus = vec![0xC3u8; 256];
        modulus[255] = 0x01; // odd, like every RSA modulus
        let rsa = pkcs1::RsaPublicKey {
            modulus: pkcs1::UintRef::new(&modulus).expect("modulus"),
            public_exponent: pkcs1::UintRef::new(&[0x01, 0x00, 0x01]).expect("exponent"),
        };
        let rsa_der = rsa.to_der().expect("pkcs1");
        let info = spki::SubjectPublicKeyInfo {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: spki::ObjectIdentifier::new_unwrap(RSA_ENCRYPTION),
                parameters: Some(spki::der::asn1::Null.into()),
            },
            subject_public_key: spki::der::asn1::BitString::from_bytes(&rsa_der)
                .expect("bit string"),
        };
        info.to_der().expect("spki")
    }
}
