//! The review cache: agents' tokens already admitted by a TokenReview.

use std::collections::HashMap;
use std::time::Instant;

use super::AgentIdentity;

pub(super) type TokenKey = [u8; 32];

pub(super) fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Admitted tokens by SHA-256 (the tokens themselves are never kept),
/// each until its token's expiry or [`super::REVIEW_CACHE_TTL`], whichever is
/// first; bounded in size. Monotonic deadlines: a wall clock set while a
/// token is remembered neither drops it nor keeps it longer.
pub(super) struct ReviewCache {
    pub(super) entries: HashMap<TokenKey, (AgentIdentity, Instant)>,
    capacity: usize,
}

impl ReviewCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    pub(super) fn get(&self, key: &TokenKey, now: Instant) -> Option<AgentIdentity> {
        self.entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(identity, _)| identity.clone())
    }

    pub(super) fn insert(
        &mut self,
        key: TokenKey,
        identity: AgentIdentity,
        until: Instant,
        now: Instant,
    ) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, until)| *until > now);
        }
        if self.entries.len() < self.capacity {
            self.entries.insert(key, (identity, until));
        }
    }
}
