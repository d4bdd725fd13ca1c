//! What can be read of a bearer before anyone vouches for it.

use std::time::SystemTime;

use super::{AuthError, MAX_TOKEN_BYTES};
use crate::health::clock::{TokenTimes, token_times};
use crate::health::jose;

/// What [`precheck`] read from a bearer. Unverified: it only serves to
/// refuse early and to end the stream at the token's expiry; the review
/// decides whether the token is genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub expires_at: SystemTime,
    pub issued_at: Option<SystemTime>,
}

impl TokenClaims {
    pub(super) fn times(&self) -> TokenTimes {
        TokenTimes {
            expires_at: self.expires_at,
            issued_at: self.issued_at,
        }
    }
}

/// Refuses a bearer that cannot be a live projected token for `audience`
/// without asking anyone: not three base64url JWT segments, a header
/// without a signing algorithm (or `none`), no `exp`, an `exp` past or an
/// `iat` or `nbf` to come (allowing [`super::clock::CLOCK_SKEW_LEEWAY`]), no
/// `aud` naming `audience`, or longer than [`MAX_TOKEN_BYTES`].
/// Pure.
pub fn precheck(token: &str, audience: &str, now: SystemTime) -> Result<TokenClaims, AuthError> {
    let refuse = |why: &str| {
        Err(AuthError::Unauthenticated(format!(
            "not an agent token: {why}"
        )))
    };
    if token.len() > MAX_TOKEN_BYTES {
        return refuse("too long");
    }
    let mut parts = token.split('.');
    let (Some(_), Some(_), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse("not a JWT");
    };
    if signature.is_empty() || !jose::is_base64url(signature) {
        return refuse("no signature");
    }
    let header = jose::header(token);
    let payload = jsonwebtoken::dangerous::insecure_decode_claims::<
        serde_json::Map<String, serde_json::Value>,
    >(token);
    let (Some(header), Ok(payload)) = (header, payload) else {
        return refuse("not a JWT");
    };
    if header.alg.eq_ignore_ascii_case("none") {
        return refuse("unsigned");
    }
    let names_audience = match payload.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !names_audience {
        return refuse("not for this audience");
    }
    match token_times(&payload, now) {
        Ok(times) => Ok(TokenClaims {
            expires_at: times.expires_at,
            issued_at: times.issued_at,
        }),
        Err(why) => refuse(why),
    }
}
