//! The cluster's token-signing keys, as the API server publishes them for
//! service-account issuer discovery (`GET /openid/v1/jwks`, a JWK set), so
//! that a bearer none of them signed is refused without a TokenReview.
//!
//! A filter in front of the review, never a substitute for it. A token whose
//! signature verifies still goes to the review, which alone knows that the
//! bound Pod still exists and the ServiceAccount is not gone. When the keys
//! cannot be read (the endpoint refused, the API server down) or the issuer
//! signs with an algorithm this cannot verify (ES512: neither ring nor
//! jsonwebtoken has P-521), every well-shaped token goes to the review, as
//! it would without the filter.
//!
//! The set and the tokens are read and checked by `jsonwebtoken`, with the
//! algorithm pinned by the key the token names, never by its header alone
//! (signatures by ring, [`super::jose`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};

use super::clock::CLOCK_SKEW_LEEWAY;
use super::jose;

/// Where kube-apiserver serves its verification keys.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

/// How often the keys are read, at most. A token naming a key the set does
/// not hold (one rotated in since) makes the next check read them again; a
/// stranger inventing key ids gets no more than one read in this time.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What the issuer's keys say of a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// Made by one of the issuer's keys, for the audience, within its times.
    Verified,
    /// Made by one of the issuer's keys, but its claims refuse it: expired
    /// or not yet valid (beyond [`CLOCK_SKEW_LEEWAY`]), or for another
    /// audience.
    Refused,
    /// Not made by any key the issuer publishes for the token's algorithm
    /// and key id: a forgery, or a token of another cluster.
    Forged,
    /// Names a key id the set does not hold.
    UnknownKey,
    /// Made with an algorithm a published key signs with but this cannot
    /// verify: the review decides.
    Unverifiable,
}

impl Signature {
    /// Why a token is refused without a review, if it is.
    pub fn refusal(self) -> Option<&'static str> {
        match self {
            Self::Forged | Self::UnknownKey => {
                Some("not signed by the cluster's service-account issuer")
            }
            Self::Refused => Some("expired, not yet valid or for another audience, as signed"),
            Self::Verified | Self::Unverifiable => None,
        }
    }
}

/// The issuer's published keys. Pure: parsed from the JWK set's bytes.
#[derive(Debug)]
pub struct IssuerKeys {
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Key {
    kid: Option<String>,
    /// The JWS algorithm the key verifies (`RS256`, `ES256`, ...), as a
    /// token's header names it.
    alg: String,
    /// `None` for a key this cannot verify with.
    verifier: Option<(Algorithm, DecodingKey)>,
}

impl Key {
    /// The key a JWK describes; `None` for one that cannot sign tokens
    /// (another use, a symmetric key, an unknown type or curve, an
    /// algorithm of another type). Without an `alg`, the one kube-apiserver
    /// signs with for the key's type: RS256 for RSA, ES256, ES384 or ES512
    /// by curve.
    fn from_jwk(jwk: &Jwk) -> Option<Self> {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|usage| *usage != PublicKeyUse::Signature)
        {
            return None;
        }
        let kid = jwk.common.key_id.clone();
        let declared = jwk.common.key_algorithm;
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => {
                let alg = rsa_algorithm(declared.unwrap_or(KeyAlgorithm::RS256))?;
                Some(Self {
                    kid,
                    alg: format!("{alg:?}"),
                    verifier: DecodingKey::from_jwk(jwk).ok().map(|key| (alg, key)),
                })
            }
            AlgorithmParameters::EllipticCurve(params) => {
                let (name, alg, size) = match params.curve {
                    EllipticCurve::P256 => ("ES256", Some(Algorithm::ES256), 32),
                    EllipticCurve::P384 => ("ES384", Some(Algorithm::ES384), 48),
                    // The library reads any `alg` it lacks (ES512) as unknown.
                    EllipticCurve::P521 => ("ES512", None, 66),
                    _ => return None,
                };
                // A curve signs with one algorithm only; a JWK claiming
                // another is not a key any token could verify against.
                if declared.is_some_and(|declared| {
                    alg.map_or(declared != KeyAlgorithm::UNKNOWN_ALGORITHM, |alg| {
                        declared != KeyAlgorithm::from(alg)
                    })
                }) {
                    return None;
                }
                let verifier = alg.zip(DecodingKey::from_jwk(jwk).ok()).filter(|(_, key)| {
                    matches!(key.kind(), DecodingKeyKind::SecretOrDer(point) if point.len() == 1 + 2 * size)
                });
                Some(Self {
                    kid,
                    alg: name.into(),
                    verifier,
                })
            }
            // A symmetric key is nobody's public key: never one to check with.
            AlgorithmParameters::OctetKey(_) => None,
            // Another type (Ed25519, say) that names its algorithm: tokens
            // signed with it go to the review.
            _ => declared
                .filter(|alg| *alg != KeyAlgorithm::UNKNOWN_ALGORITHM)
                .map(|alg| Self {
                    kid,
                    alg: alg.to_string(),
                    verifier: None,
                }),
        }
    }
}

/// The signing algorithm an RSA key declares, if it is one.
fn rsa_algorithm(declared: KeyAlgorithm) -> Option<Algorithm> {
    Some(match declared {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        _ => return None,
    })
}

/// What a token verified with `alg` must also say of itself: `audience` in
/// `aud`, an `exp`, and its `exp` and `nbf` against the clock with the same
/// leeway as [`super::auth::precheck`].
fn validation(alg: Algorithm, audience: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = CLOCK_SKEW_LEEWAY.as_secs();
    validation.validate_nbf = true;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    validation
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
        jose::install_ring_provider();
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
    /// algorithm and key id its header names, and its claims hold for
    /// `audience` now. A token naming an algorithm no key signs with is
    /// forged: the issuer cannot have made it.
    pub fn check(&self, token: &str, audience: &str) -> Signature {
        let Some(header) = jose::header(token) else {
            return Signature::Forged;
        };
        let kid = header.kid.as_deref();
        if let Some(kid) = kid
            && !self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
        {
            return Signature::UnknownKey;
        }
        let mut unverifiable = false;
        let candidates = self
            .keys
            .iter()
            .filter(|key| key.alg == header.alg && (kid.is_none() || key.kid.as_deref() == kid));
        for key in candidates {
            let Some((alg, decoding)) = &key.verifier else {
                unverifiable = true;
                continue;
            };
            let decoded = jsonwebtoken::decode::<serde::de::IgnoredAny>(
                token,
                decoding,
                &validation(*alg, audience),
            );
            match decoded.map_err(|error| error.into_kind()) {
                Ok(_) => return Signature::Verified,
                // Claims are looked at only once the signature verified.
                Err(
                    ErrorKind::ExpiredSignature
                    | ErrorKind::ImmatureSignature
                    | ErrorKind::InvalidAudience
                    | ErrorKind::MissingRequiredClaim(_)
                    | ErrorKind::InvalidClaimFormat(_),
                ) => return Signature::Refused,
                Err(_) => {}
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
    pub async fn check(&self, token: &str, audience: &str) -> Option<Signature> {
        let verdict = self.held().map(|keys| keys.check(token, audience));
        match verdict {
            None | Some(Signature::UnknownKey) => {
                let keys = self.read_if_due().await?;
                Some(keys.check(token, audience))
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
