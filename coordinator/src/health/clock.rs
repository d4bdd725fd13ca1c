//! The times in an agent's token read against a clock that may be off.
//!
//! The API server stamps a token's `iat`, `nbf` and `exp` with its own
//! clock; the coordinator reads them with another. The pre-check only
//! refuses early what the TokenReview would refuse anyway, so it allows
//! [`CLOCK_SKEW_LEEWAY`] either way, and how long an admission is
//! remembered is measured from the token's own `iat` where the local clock
//! is behind it, and kept as a monotonic deadline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far the coordinator's clock may be from the API server's before the
/// pre-check refuses a token the review would admit. NTP keeps nodes within
/// a second; a minute is the leeway JWT libraries commonly allow, covers a
/// clock that drifts between syncs, and is small against the shortest
/// projected token (ten minutes), so a token past its expiry is still
/// refused early.
pub const CLOCK_SKEW_LEEWAY: Duration = Duration::from_secs(60);

/// A token's validity as its issuer stamped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub expires_at: SystemTime,
    pub issued_at: Option<SystemTime>,
}

/// Reads `exp` (required), `iat` and `nbf` from a JWT payload and refuses,
/// allowing [`CLOCK_SKEW_LEEWAY`] at `now`, a token expired, not yet valid
/// or issued in the future. The error says which. Pure.
pub fn token_times(
    payload: &serde_json::Map<String, serde_json::Value>,
    now: SystemTime,
) -> Result<TokenTimes, &'static str> {
    let time = |claim: &str| {
        payload
            .get(claim)
            .and_then(serde_json::Value::as_u64)
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
    };
    let expires_at = time("exp").ok_or("no expiry")?;
    if expires_at + CLOCK_SKEW_LEEWAY <= now {
        return Err("expired");
    }
    let future = |at: Option<SystemTime>| at.is_some_and(|at| at > now + CLOCK_SKEW_LEEWAY);
    if future(time("nbf")) {
        return Err("not valid yet");
    }
    let issued_at = time("iat");
    if future(issued_at) {
        return Err("issued in the future");
    }
    Ok(TokenTimes {
        expires_at,
        issued_at,
    })
}

/// How long a token the review just admitted may be remembered, at most
/// `cap`: its lifetime left, counted from its `iat` when the local clock is
/// behind that (an API server's token is never issued after its own now),
/// so a clock behind keeps it no longer than the leeway past its expiry and
/// a clock ahead only forgets it early (costing one more review).
pub fn remember_for(times: TokenTimes, now: SystemTime, cap: Duration) -> Duration {
    let from = times.issued_at.map_or(now, |issued| issued.max(now));
    times
        .expires_at
        .duration_since(from)
        .unwrap_or_default()
        .min(cap)
}

/// How far the local clock is from the API server's, as far as a token the
/// review just admitted tells (the API server's now lies between its `iat`
/// and `exp`): negative when the local clock is behind its `iat`, positive
/// when it is past its `exp`, else 0. Whole seconds. Pure.
pub fn skew_seconds(times: TokenTimes, now: SystemTime) -> i64 {
    let seconds = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if let Some(ahead) = times.issued_at.and_then(|at| at.duration_since(now).ok()) {
        return -seconds(ahead);
    }
    now.duration_since(times.expires_at).map_or(0, seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn payload(claims: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_value(claims).unwrap_or_default()
    }

    #[test]
    fn a_token_issued_30_s_ahead_is_accepted_10_min_ahead_refused() {
        let token = |iat: u64| payload(serde_json::json!({"iat": iat, "exp": iat + 3600}));
        assert!(token_times(&token(NOW + 30), at(NOW)).is_ok());
        assert_eq!(
            token_times(&token(NOW + 600), at(NOW)),
            Err("issued in the future")
        );
        let not_yet = payload(serde_json::json!({"nbf": NOW + 600, "exp": NOW + 3600}));
        assert_eq!(token_times(&not_yet, at(NOW)), Err("not valid yet"));
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let token = |exp: u64| payload(serde_json::json!({"exp": exp}));
        assert!(token_times(&token(NOW - 30), at(NOW)).is_ok());
        assert_eq!(token_times(&token(NOW - 600), at(NOW)), Err("expired"));
        assert_eq!(
            token_times(&payload(serde_json::json!({})), at(NOW)),
            Err("no expiry")
        );
    }

    #[test]
    fn a_clock_behind_remembers_no_longer_than_the_token_lives() {
        let hour = Duration::from_secs(3600);
        let times = |iat: u64, exp: u64| TokenTimes {
            expires_at: at(exp),
            issued_at: Some(at(iat)),
        };
        // In step: what is left of the token.
        assert_eq!(
            remember_for(times(NOW - 600, NOW + 600), at(NOW), hour),
            Duration::from_secs(600)
        );
        // 50 s behind: counted from iat, not from the slow clock.
        assert_eq!(
            remember_for(times(NOW + 50, NOW + 650), at(NOW), hour),
            Duration::from_secs(600)
        );
        assert_eq!(
            remember_for(times(NOW, NOW + 7200), at(NOW), hour),
            hour,
            "capped"
        );
    }

    #[test]
    fn skew_is_read_from_an_admitted_tokens_times() {
        let times = |iat: u64, exp: u64| TokenTimes {
            expires_at: at(exp),
            issued_at: Some(at(iat)),
        };
        assert_eq!(skew_seconds(times(NOW - 10, NOW + 600), at(NOW)), 0);
        assert_eq!(skew_seconds(times(NOW + 45, NOW + 600), at(NOW)), -45);
        assert_eq!(skew_seconds(times(NOW - 600, NOW - 50), at(NOW)), 50);
    }
}
