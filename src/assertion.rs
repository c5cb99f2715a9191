//! The `private_key_jwt` client assertion (RFC 7523), built by hand around a
//! remote signature.
//!
//! Pure code: no clock, no randomness source and no network of its own, so
//! every rule Okta enforces is checked by unit tests. The signature comes from
//! KMS; [`UnsignedAssertion::finish`] turns it into the JWS form.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

/// How long an assertion is valid when nobody says otherwise. Okta accepts
/// up to an hour; a short life limits what a leaked assertion is worth.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Okta refuses an `exp` more than an hour after `iat`.
pub const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// The JWS algorithms Okta accepts for client assertions. Okta lists no PS*.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 6] = [
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::Es512,
    ];

    /// The name in a JWS header and a JWK.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::Es512 => "ES512",
        }
    }

    /// The name of the matching KMS `SigningAlgorithmSpec`.
    pub fn kms_signing_algorithm(self) -> &'static str {
        match self {
            Algorithm::Rs256 => "RSASSA_PKCS1_V1_5_SHA_256",
            Algorithm::Rs384 => "RSASSA_PKCS1_V1_5_SHA_384",
            Algorithm::Rs512 => "RSASSA_PKCS1_V1_5_SHA_512",
            Algorithm::Es256 => "ECDSA_SHA_256",
            Algorithm::Es384 => "ECDSA_SHA_384",
            Algorithm::Es512 => "ECDSA_SHA_512",
        }
    }

    pub fn from_kms_signing_algorithm(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.kms_signing_algorithm() == name)
    }

    pub fn is_ecdsa(self) -> bool {
        matches!(self, Algorithm::Es256 | Algorithm::Es384 | Algorithm::Es512)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported algorithm {0:?}: Okta accepts RS256, RS384, RS512, ES256, ES384 and ES512")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|algorithm| algorithm.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownAlgorithm(name.to_owned()))
    }
}

/// What an assertion says and who signs it.
#[derive(Clone, Debug)]
pub struct AssertionParams<'a> {
    pub client_id: &'a str,
    /// Exactly the token URL the assertion is posted to; Okta compares it
    /// as a string.
    pub token_url: &'a str,
    pub kid: &'a str,
    pub algorithm: Algorithm,
    pub lifetime: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssertionError {
    #[error("assertion lifetime {0:?} is out of range: it must be between 1 second and 1 hour")]
    LifetimeOutOfRange(Duration),
    #[error("KMS returned an empty signature")]
    EmptySignature,
    #[error("KMS returned an ECDSA signature that is not valid DER for {algorithm}: {reason}")]
    MalformedEcdsaSignature {
        algorithm: Algorithm,
        reason: String,
    },
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
}

/// A fresh JWT ID: 256 random bits, base64url. Okta treats `jti` as
/// single-use, so it is never derived from anything that could repeat.
pub fn fresh_jti() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The header and claims of an assertion, waiting for a signature.
pub struct UnsignedAssertion {
    signing_input: String,
    algorithm: Algorithm,
}

impl UnsignedAssertion {
    /// Builds the assertion for `params`, issued at `issued_at` (seconds since
    /// the Unix epoch) with the given `jti`.
    pub fn new(
        params: &AssertionParams<'_>,
        issued_at: u64,
        jti: &str,
    ) -> Result<Self, AssertionError> {
        if params.lifetime < Duration::from_secs(1) || params.lifetime > MAX_ASSERTION_LIFETIME {
            return Err(AssertionError::LifetimeOutOfRange(params.lifetime));
        }
        let header = Header {
            alg: params.algorithm.as_str(),
            kid: params.kid,
            typ: "JWT",
        };
        let claims = Claims {
            iss: params.client_id,
            sub: params.client_id,
            aud: params.token_url,
            iat: issued_at,
            exp: issued_at + params.lifetime.as_secs(),
            jti,
        };
        let signing_input = format!("{}.{}", encode_json(&header), encode_json(&claims));
        Ok(Self {
            signing_input,
            algorithm: params.algorithm,
        })
    }

    /// The bytes the signer signs: `base64url(header) "." base64url(claims)`.
    pub fn signing_input(&self) -> &[u8] {
        self.signing_input.as_bytes()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Appends the signature KMS produced, in the form JWS requires.
    pub fn finish(self, kms_signature: &[u8]) -> Result<ClientAssertion, AssertionError> {
        let signature = jose_signature(self.algorithm, kms_signature)?;
        Ok(ClientAssertion(format!(
            "{}.{}",
            self.signing_input,
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

fn encode_json(value: &impl Serialize) -> String {
    // Serializing these plain structs of strings and integers cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Converts a KMS signature into the JWS signature bytes (RFC 7518 §3).
///
/// RSASSA-PKCS1-v1_5 signatures are used as KMS returns them. KMS returns
/// ECDSA signatures as DER `SEQUENCE { r, s }` of variable length; JWS wants
/// `r ‖ s`, each left-padded to the curve's width. The DER is decoded, never
/// sliced.
pub fn jose_signature(
    algorithm: Algorithm,
    kms_signature: &[u8],
) -> Result<Vec<u8>, AssertionError> {
    if kms_signature.is_empty() {
        return Err(AssertionError::EmptySignature);
    }
    let malformed = |error: &dyn fmt::Display| AssertionError::MalformedEcdsaSignature {
        algorithm,
        reason: error.to_string(),
    };
    Ok(match algorithm {
        Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512 => kms_signature.to_vec(),
        Algorithm::Es256 => p256::ecdsa::Signature::from_der(kms_signature)
            .map_err(|e| malformed(&e))?
            .to_bytes()
            .to_vec(),
        Algorithm::Es384 => p384::ecdsa::Signature::from_der(kms_signature)
            .map_err(|e| malformed(&e))?
            .to_bytes()
            .to_vec(),
        Algorithm::Es512 => p521::ecdsa::Signature::from_der(kms_signature)
            .map_err(|e| malformed(&e))?
            .to_bytes()
            .to_vec(),
    })
}

/// A signed client assertion: a bearer credential for the next minutes, so
/// it never prints.
pub struct ClientAssertion(String);

impl ClientAssertion {
    /// Wraps a compact JWS built elsewhere, as it is.
    pub fn from_compact(compact: String) -> Self {
        Self(compact)
    }

    /// The compact JWS, exactly as it goes into the `client_assertion` form
    /// field: three base64url segments, never encoded again.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn params(lifetime: Duration) -> AssertionParams<'static> {
        AssertionParams {
            client_id: "0oa1service",
            token_url: "https://example.okta.com/oauth2/v1/token",
            kid: "key-1",
            algorithm: Algorithm::Es256,
            lifetime,
        }
    }

    fn decode_segment(segment: &str) -> serde_json::Value {
        let bytes = URL_SAFE_NO_PAD.decode(segment).expect("base64url segment");
        serde_json::from_slice(&bytes).expect("json segment")
    }

    fn p256_der(r: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
        fn integer(bytes: &[u8]) -> Vec<u8> {
            let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
            let mut content = trimmed;
            if content.first().is_some_and(|b| b & 0x80 != 0) {
                content.insert(0, 0);
            }
            let mut out = vec![0x02, content.len() as u8];
            out.extend(content);
            out
        }
        let body: Vec<u8> = [integer(r), integer(s)].concat();
        let mut out = vec![0x30, body.len() as u8];
        out.extend(body);
        out
    }

    #[test]
    fn claims_name_the_client_and_the_exact_token_url() {
        let unsigned =
            UnsignedAssertion::new(&params(DEFAULT_ASSERTION_LIFETIME), 1_700_000_000, "jti-1")
                .expect("valid params");
        let input = std::str::from_utf8(unsigned.signing_input()).expect("ascii");
        let (header, claims) = input.split_once('.').expect("two segments");
        let header = decode_segment(header);
        let claims = decode_segment(claims);
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": "key-1", "typ": "JWT"})
        );
        assert_eq!(claims["iss"], "0oa1service");
        assert_eq!(claims["sub"], "0oa1service");
        assert_eq!(claims["aud"], "https://example.okta.com/oauth2/v1/token");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_300);
        assert_eq!(claims["jti"], "jti-1");
        assert!(!input.contains('='), "segments carry no padding");
    }

    #[test]
    fn lifetime_is_bounded_by_one_hour() {
        assert!(UnsignedAssertion::new(&params(MAX_ASSERTION_LIFETIME), 0, "j").is_ok());
        assert_eq!(
            UnsignedAssertion::new(&params(Duration::from_secs(3601)), 0, "j").err(),
            Some(AssertionError::LifetimeOutOfRange(Duration::from_secs(
                3601
            )))
        );
        assert!(UnsignedAssertion::new(&params(Duration::ZERO), 0, "j").is_err());
    }

    #[test]
    fn every_jti_is_fresh_and_long_enough() {
        let jtis: HashSet<String> = (0..1000).map(|_| fresh_jti()).collect();
        assert_eq!(jtis.len(), 1000);
        for jti in &jtis {
            let bits = URL_SAFE_NO_PAD.decode(jti).expect("base64url").len() * 8;
            assert!(bits >= 128, "jti has only {bits} bits");
        }
    }

    #[test]
    fn finished_assertion_is_a_compact_jws_not_wrapped_again() {
        let unsigned = UnsignedAssertion::new(
            &AssertionParams {
                algorithm: Algorithm::Rs256,
                ..params(DEFAULT_ASSERTION_LIFETIME)
            },
            1,
            "j",
        )
        .expect("valid");
        let input = String::from_utf8(unsigned.signing_input().to_vec()).expect("ascii");
        let assertion = unsigned.finish(&[7u8; 256]).expect("rsa signature");
        let parts: Vec<&str> = assertion.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(format!("{}.{}", parts[0], parts[1]), input);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url"),
            vec![7u8; 256]
        );
        assert!(
            parts[0].starts_with("eyJ"),
            "header is JSON, not base64 of a JWT"
        );
        assert_eq!(
            format!("{assertion:?}"),
            "ClientAssertion(<redacted>)",
            "an assertion never prints"
        );
    }

    #[test]
    fn der_ecdsa_signature_becomes_fixed_width_r_s() {
        let mut r = [0x11u8; 32];
        let mut s = [0x22u8; 32];
        r[0] = 0x00; // r shorter than 32 bytes in DER
        r[1] = 0x05;
        s[0] = 0x9f; // high bit set: DER adds a leading zero
        let der = p256_der(&r, &s);
        assert_eq!(der.len(), 2 + (2 + 31) + (2 + 33));
        let raw = jose_signature(Algorithm::Es256, &der).expect("valid DER");
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..32], &r);
        assert_eq!(&raw[32..], &s);
    }

    #[test]
    fn der_signatures_of_other_curves_have_their_widths() {
        // r = 1, s = 2: the shortest possible DER, padded to the full width.
        let der = [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02];
        let raw = jose_signature(Algorithm::Es384, &der).expect("valid");
        assert_eq!(raw.len(), 96);
        assert_eq!(raw[47], 1);
        assert_eq!(raw[95], 2);
        let raw = jose_signature(Algorithm::Es512, &der).expect("valid");
        assert_eq!(raw.len(), 132);
        assert_eq!(raw[65], 1);
        assert_eq!(raw[131], 2);
    }

    #[test]
    fn raw_or_garbled_ecdsa_signature_is_refused() {
        let already_raw = [0x30u8; 64];
        assert!(matches!(
            jose_signature(Algorithm::Es256, &already_raw),
            Err(AssertionError::MalformedEcdsaSignature { .. })
        ));
        assert_eq!(
            jose_signature(Algorithm::Rs256, &[]),
            Err(AssertionError::EmptySignature)
        );
    }

    #[test]
    fn algorithms_parse_and_map_to_kms() {
        assert_eq!("es384".parse::<Algorithm>().ok(), Some(Algorithm::Es384));
        assert!("PS256".parse::<Algorithm>().is_err());
        for algorithm in Algorithm::ALL {
            assert_eq!(
                Algorithm::from_kms_signing_algorithm(algorithm.kms_signing_algorithm()),
                Some(algorithm)
            );
        }
    }
}
