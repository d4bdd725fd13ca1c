//! The review cache: agents' tokens already admitted by a TokenReview.

use std::collections::{HashMap, HashSet};
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
/// first; bounded in size. One entry per Pod: a new token admitted for a
/// Pod replaces its last one, so minting tokens for a Pod cannot grow the
/// cache. Monotonic deadlines: a wall clock set while a token is
/// remembered neither drops it nor keeps it longer.
pub(super) struct ReviewCache {
    pub(super) entries: HashMap<TokenKey, (AgentIdentity, Instant)>,
    /// The token admitted last for each Pod uid.
    by_pod: HashMap<String, TokenKey>,
    capacity: usize,
}

impl ReviewCache {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            by_pod: HashMap::new(),
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
        if let Some(uid) = &identity.pod_uid
            && let Some(replaced) = self.by_pod.remove(uid)
        {
            self.entries.remove(&replaced);
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, until)| *until > now);
            let entries = &self.entries;
            self.by_pod.retain(|_, key| entries.contains_key(key));
        }
        if self.entries.len() < self.capacity {
            if let Some(uid) = &identity.pod_uid {
                self.by_pod.insert(uid.clone(), key);
            }
            self.entries.insert(key, (identity, until));
        }
    }

    /// Forgets the tokens of Pods not in `live`. Tokens of no known Pod
    /// stay: nothing says they are gone.
    pub(super) fn retain_pods(&mut self, live: &HashSet<String>) {
        self.entries.retain(|_, (identity, _)| {
            identity
                .pod_uid
                .as_ref()
                .is_none_or(|uid| live.contains(uid))
        });
        self.by_pod.retain(|uid, _| live.contains(uid));
    }
}
