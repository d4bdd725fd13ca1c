//! What `jsonwebtoken` leaves to this crate: the signatures it checks, done
//! by ring (the crypto rustls already brings here, so no second stack is
//! linked), and the header's algorithm and key id as plain strings.
//!
//! The library's `Header` only names the algorithms it implements; a token
//! of another one the issuer may use (ES512, on a P-521 key) must still be
//! told apart from junk, so that the review, not a guess, decides it.

use std::sync::Once;

use base64::Engine as _;
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self, EcdsaVerificationAlgorithm, RsaParameters, UnparsedPublicKey};
use serde::Deserialize;

/// The members of a JOSE header that say how a token claims to be signed.
#[derive(Debug, Deserialize)]
pub(super) struct JoseHeader {
    pub alg: String,
    pub kid: Option<String>,
}

/// The header of a compact JWS, whatever algorithm it names; `None` when the
/// first segment is not base64url-encoded JSON with an `alg`.
pub(super) fn header(token: &str) -> Option<JoseHeader> {
    let segment = token.split('.').next()?;
    serde_json::from_slice(&decode_segment(segment)?).ok()
}

/// Whether `segment` is unpadded base64url, as every JWS segment is.
pub(super) fn is_base64url(segment: &str) -> bool {
    decode_segment(segment).is_some()
}

fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .ok()
}

/// Makes ring the process's provider for `jsonwebtoken`. Every path that
/// verifies goes through [`super::issuer_keys::IssuerKeys::parse`], which
/// calls this: without a provider the library panics.
pub(super) fn install_ring_provider() {
    static INSTALL: Once = Once::new();
    // Another provider installed first (none is, in this binary) would
    // still verify; only ours is known to, so its refusal is ignored.
    INSTALL.call_once(|| {
        let _ = CryptoProvider::install_default(&RING);
    });
}

static RING: CryptoProvider = CryptoProvider {
    // The coordinator never signs a token.
    signer_factory: no_signer,
    verifier_factory: ring_verifier,
    // Only thumbprints and keys read from PEM need these; neither is used.
    key_utils: KeyUtils::new_unimplemented(),
};

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Err(ErrorKind::UnsupportedAlgorithm.into())
}

/// A public key ring verifies with, for one algorithm.
enum RingKey {
    Rsa {
        params: &'static RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        alg: &'static EcdsaVerificationAlgorithm,
        /// The uncompressed point: 0x04, x, y.
        point: Vec<u8>,
    },
}

struct RingVerifier {
    algorithm: Algorithm,
    key: RingKey,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        let verified = match &self.key {
            RingKey::Rsa { params, n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            RingKey::Ec { alg, point } => UnparsedPublicKey::new(*alg, point)
                .verify(message, signature)
                .is_ok(),
        };
        if verified {
            Ok(())
        } else {
            Err(jsonwebtoken::signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

/// The verifier for `algorithm` with `key`: only public-key algorithms
/// whose family is the key's. HMAC is refused outright, so a token naming
/// HS256 can never be checked with a public key as its secret.
fn ring_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if key.family() != algorithm.family() || key.family() == AlgorithmFamily::Hmac {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match (algorithm, key.kind()) {
        (_, DecodingKeyKind::RsaModulusExponent { n, e }) => RingKey::Rsa {
            params: rsa_parameters(*algorithm).ok_or(ErrorKind::UnsupportedAlgorithm)?,
            n: n.clone(),
            e: e.clone(),
        },
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => RingKey::Ec {
            alg: &signature::ECDSA_P256_SHA256_FIXED,
            point: point.clone(),
        },
        (Algorithm::ES384, DecodingKeyKind::SecretOrDer(point)) => RingKey::Ec {
            alg: &signature::ECDSA_P384_SHA384_FIXED,
            point: point.clone(),
        },
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        key,
    }))
}

fn rsa_parameters(algorithm: Algorithm) -> Option<&'static RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn refused(algorithm: Algorithm, key: &DecodingKey) -> bool {
        ring_verifier(&algorithm, key).is_err()
    }

    #[test]
    fn no_verifier_for_hmac_or_for_a_key_of_another_family() {
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc5; 256], &[1, 0, 1]);
        let ec = DecodingKey::from_ec_der(&[4; 65]);
        let secret = DecodingKey::from_rsa_der(&[0xc5; 256]);
        assert!(!refused(Algorithm::RS256, &rsa));
        assert!(!refused(Algorithm::PS512, &rsa));
        assert!(!refused(Algorithm::ES256, &ec));
        // HS256 keyed with the RSA key's bytes: the classic confusion.
        assert!(refused(Algorithm::HS256, &rsa));
        assert!(refused(Algorithm::HS256, &secret));
        assert!(refused(Algorithm::ES256, &rsa));
        assert!(refused(Algorithm::RS256, &ec));
        assert!(refused(Algorithm::EdDSA, &ec));
        let hmac = DecodingKey::from_secret(b"secret").unwrap();
        assert!(refused(Algorithm::HS256, &hmac));
    }

    #[test]
    fn the_header_is_read_whatever_algorithm_it_names() {
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let token = format!("{}.e30.c2ln", encode(r#"{"alg":"ES512","kid":"k"}"#));
        let read = header(&token).map(|h| (h.alg, h.kid));
        assert_eq!(read, Some(("ES512".into(), Some("k".into()))));
        assert!(header(&format!("{}.e30.c2ln", encode(r#"{"kid":"k"}"#))).is_none());
        assert!(header("!!.e30.c2ln").is_none());
        assert!(!is_base64url("c2ln="));
        assert!(is_base64url("c2ln"));
    }
}
