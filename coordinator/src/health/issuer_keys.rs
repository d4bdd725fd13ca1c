//! The cluster's token-signing keys, as the API server publishes them for
//! service-account issuer discovery (`GET /openid/v1/jwks`, a JWK set), so
//! that a bearer none of them signed is refused without a TokenReview.
//!
//! A filter in front of the review, never a substitute for it. A token whose
//! signature verifies still goes to the review, which alone knows that the
//! bound Pod still exists and the ServiceAccount is not gone. When the keys
//! cannot be read (the endpoint refused, the API server down) or the issuer
//! signs with an algorithm this cannot verify (ES512: ring has no P-521),
//! every well-shaped token goes to the review, as it would without the
//! filter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use super::jose::{base64url, json_segment};

/// Where kube-apiserver serves its verification keys.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// How often the keys are read, at most. A token naming a key the set does
/// not hold (one rotated in since) makes the next check read them again; a
/// stranger inventing key ids gets no more than one read in this time.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What the issuer's keys say of a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Made by one of the issuer's keys.
    Verified,
    /// Not made by any key the issuer publishes for the token's algorithm
    /// and key id: a forgery, or a token of another cluster.
    Forged,
    /// Names a key id the set does not hold.
    UnknownKey,
    /// Made with an algorithm a published key signs with but this cannot
    /// verify: the review decides.
    Unverifiable,
}

/// The issuer's published keys. Pure: parsed from the JWK set's bytes.
#[derive(Debug)]
pub struct IssuerKeys {
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    /// The JWS algorithm the key verifies (`RS256`, `ES256`, ...).
    alg: String,
    /// `None` for a key this cannot verify with.
    verifier: Option<Verifier>,
}

#[derive(Debug)]
enum Verifier {
    Rsa {
        params: &'static RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        alg: &'static signature::EcdsaVerificationAlgorithm,
        /// The uncompressed point: 0x04, x, y.
        point: Vec<u8>,
    },
}

impl Verifier {
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            Self::Rsa { params, n, e } => RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            Self::Ec { alg, point } => UnparsedPublicKey::new(*alg, point)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The members of a JWK (RFC 7517, 7518) that say how to verify.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn rsa_parameters(alg: &str) -> Option<&'static RsaParameters> {
    Some(match alg {
        "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
        "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

impl Key {
    /// The key a JWK describes; `None` for one that cannot sign tokens
    /// (another use, an unknown type or curve). Without an `alg`, the one
    /// kube-apiserver signs with for the key's type: RS256 for RSA, ES256,
    /// ES384 or ES512 by curve.
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
            return None;
        }
        let bytes = |member: &Option<String>| member.as_deref().and_then(base64url);
        let kid = jwk.kid.clone();
        match jwk.kty.as_str() {
            "RSA" => {
                let alg = jwk.alg.clone().unwrap_or_else(|| "RS256".into());
                let verifier = match (rsa_parameters(&alg), bytes(&jwk.n), bytes(&jwk.e)) {
                    (Some(params), Some(n), Some(e)) => Some(Verifier::Rsa { params, n, e }),
                    _ => None,
                };
                Some(Self { kid, alg, verifier })
            }
            "EC" => {
                let (curve_alg, ring_alg, size): (_, Option<&'static _>, _) =
                    match jwk.crv.as_deref()? {
                        "P-256" => ("ES256", Some(&signature::ECDSA_P256_SHA256_FIXED), 32),
                        "P-384" => ("ES384", Some(&signature::ECDSA_P384_SHA384_FIXED), 48),
                        "P-521" => ("ES512", None, 66),
                        _ => return None,
                    };
                // A curve signs with one algorithm only; a JWK claiming
                // another is not a key any token could verify against.
                if jwk.alg.as_deref().is_some_and(|alg| alg != curve_alg) {
                    return None;
                }
                let verifier = match (ring_alg, bytes(&jwk.x), bytes(&jwk.y)) {
                    (Some(alg), Some(x), Some(y)) if x.len() == size && y.len() == size => {
                        let point = [&[4u8][..], &x, &y].concat();
                        Some(Verifier::Ec { alg, point })
                    }
                    _ => None,
                };
                Some(Self {
                    kid,
                    alg: curve_alg.into(),
                    verifier,
                })
            }
            // Another type (Ed25519, say) that names its algorithm: tokens
            // signed with it go to the review.
            _ => jwk.alg.clone().map(|alg| Self {
                kid,
                alg,
                verifier: None,
            }),
        }
    }
}

/// Why the issuer's keys could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IssuerKeysError {
    #[error("not a JWK set: {0}")]
    NotAKeySet(#[source] serde_json::Error),
    #[error("the JWK set holds no signing key")]
    NoSigningKey,
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl IssuerKeys {
    /// Reads a JWK set; an error when it is not one or holds no signing key.
    pub fn parse(jwks: &[u8]) -> Result<Self, IssuerKeysError> {
        let set: JwkSet = serde_json::from_slice(jwks).map_err(IssuerKeysError::NotAKeySet)?;
        let keys: Vec<Key> = set.keys.iter().filter_map(Key::from_jwk).collect();
        if keys.is_empty() {
            return Err(IssuerKeysError::NoSigningKey);
        }
        Ok(Self { keys })
    }

    /// How many keys were read (never 0: [`Self::parse`] refuses an empty set).
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether one of the keys made the JWS `token`'s signature, by the
    /// algorithm and key id its header names. A token naming an algorithm
    /// no key signs with is forged: the issuer cannot have made it.
    pub fn check(&self, token: &str) -> Signature {
        let Some((signed, signature)) = token.rsplit_once('.') else {
            return Signature::Forged;
        };
        let header = signed.split('.').next().and_then(json_segment);
        let alg = header
            .as_ref()
            .and_then(|h| h.get("alg"))
            .and_then(serde_json::Value::as_str);
        let (Some(alg), Some(signature)) = (alg, base64url(signature)) else {
            return Signature::Forged;
        };
        let kid = header
            .as_ref()
            .and_then(|h| h.get("kid"))
            .and_then(serde_json::Value::as_str);
        if let Some(kid) = kid
            && !self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
        {
            return Signature::UnknownKey;
        }
        let mut unverifiable = false;
        let candidates = self
            .keys
            .iter()
            .filter(|key| key.alg == alg && (kid.is_none() || key.kid.as_deref() == kid));
        for key in candidates {
            match &key.verifier {
                Some(verifier) if verifier.verifies(signed.as_bytes(), &signature) => {
                    return Signature::Verified;
                }
                Some(_) => {}
                None => unverifiable = true,
            }
        }
        if unverifiable {
            Signature::Unverifiable
        } else {
            Signature::Forged
        }
    }
}

/// The issuer's keys as last read from the API server, read again when a
/// token names a key they do not hold.
#[derive(Clone)]
pub struct IssuerKeySource {
    client: kube::Client,
    timeout: Duration,
    state: Arc<Mutex<KeysRead>>,
    /// One read at a time: the others wait for it and use what it read.
    reading: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct KeysRead {
    keys: Option<Arc<IssuerKeys>>,
    last_attempt: Option<Instant>,
    /// Whether the last read failed: logged when reads start failing and
    /// when they work again, not at every attempt.
    failing: bool,
}

impl IssuerKeySource {
    pub fn new(client: kube::Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            state: Arc::default(),
            reading: Arc::default(),
        }
    }

    /// Gives up on a read after `timeout`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What the keys say of `token`, reading them first when none are held
    /// or the token names one not held (at most once every
    /// [`REFRESH_INTERVAL`]). `None` when no keys could ever be read.
    pub async fn check(&self, token: &str) -> Option<Signature> {
        let verdict = self.held().map(|keys| keys.check(token));
        match verdict {
            None | Some(Signature::UnknownKey) => {
                let keys = self.read_if_due().await?;
                Some(keys.check(token))
            }
            known => known,
        }
    }

    fn held(&self) -> Option<Arc<IssuerKeys>> {
        self.state.lock().ok()?.keys.clone()
    }

    async fn read_if_due(&self) -> Option<Arc<IssuerKeys>> {
        let _reading = self.reading.lock().await;
        {
            let state = self.state.lock().ok()?;
            if state
                .last_attempt
                .is_some_and(|at| at.elapsed() < REFRESH_INTERVAL)
            {
                return state.keys.clone();
            }
        }
        let read = self.read().await;
        let mut state = self.state.lock().ok()?;
        state.last_attempt = Some(Instant::now());
        match read {
            Ok(keys) => {
                if state.failing || state.keys.is_none() {
                    tracing::info!(
                        keys = keys.len(),
                        "read the service-account issuer's signing keys: tokens they did not \
                         sign are refused without a TokenReview"
                    );
                }
                state.failing = false;
                state.keys = Some(Arc::new(keys));
            }
            Err(error) => {
                if !state.failing {
                    tracing::warn!(
                        %error,
                        held = state.keys.is_some(),
                        "cannot read the service-account issuer's signing keys (GET {JWKS_PATH}): \
                         until they are read, every well-shaped token costs a TokenReview; \
                         trying again in {REFRESH_INTERVAL:?}"
                    );
                }
                state.failing = true;
            }
        }
        state.keys.clone()
    }

    async fn read(&self) -> Result<IssuerKeys, IssuerKeysError> {
        let request = http::Request::get(JWKS_PATH).body(Vec::new())?;
        let text = tokio::time::timeout(self.timeout, self.client.request_text(request))
            .await
            .map_err(|_| IssuerKeysError::NoAnswer(self.timeout))??;
        IssuerKeys::parse(text.as_bytes())
    }
}

#[cfg(test)]
mod tests;
