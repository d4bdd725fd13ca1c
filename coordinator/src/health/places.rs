//! The places connections hold on the agents' port, from accept to close,
//! and who gives way when they are all taken.
//!
//! - At most [`PlaceLimits::all`] connections, and at most
//!   [`PlaceLimits::per_peer`] from one address.
//! - When all places are taken, a new connection takes the place of the
//!   oldest connection that has not authenticated a call yet; that one is
//!   ended at once. A connection that has authenticated (an agent's) never
//!   gives way. Only when every place is held by an authenticated
//!   connection is a new one refused.
//!
//! Why: a cap that simply refuses the newcomer lets anyone who fills it
//! first keep it. Measured with the shipped cap (docs/BENCHMARKS.md):
//! 2,000 idle TLS connections from 250 addresses kept reconnecting agents
//! out, and 743 of 1,000 nodes lost their runtime label after the grace.
//! With the oldest stranger giving way, an agent's new connection is ended
//! only if `all` newer connections arrive before its first call is
//! authenticated, which on one connection takes a round trip and a token
//! check.
//!
//! Ended connections close promptly but not within the call that ended
//! them, so up to [`PlaceLimits::ending`] of them may still hold memory
//! beyond `all`; past that, a newcomer is refused rather than ending more.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::connection_state::ConnectionState;
use crate::metrics::{REFUSED_CONNECTION_LIMIT, REFUSED_PEER_LIMIT};

/// How many places there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaceLimits {
    pub all: usize,
    pub per_peer: usize,
    /// Connections ended to make room that may still be closing.
    pub ending: usize,
}

/// The places of one listener; clones share them.
#[derive(Debug, Clone)]
pub struct Places {
    held: Arc<Mutex<Held>>,
    limits: PlaceLimits,
}

/// What a new connection got.
#[derive(Debug)]
pub struct Admitted {
    pub place: Place,
    /// The connection that gave its place, ended: its peer, if known.
    pub ended: Option<Option<SocketAddr>>,
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_peer: HashMap<IpAddr, usize>,
    /// Connections that may give way, oldest first (by admission number).
    /// An entry leaves when its connection closes or gives way; one that
    /// authenticated meanwhile leaves when the search for the oldest
    /// stranger meets it.
    strangers: BTreeMap<u64, Arc<ConnectionState>>,
    /// Connections ended to make room and not closed yet.
    ending: BTreeSet<u64>,
    next: u64,
}

impl Held {
    /// The oldest connection still a stranger, taken out of the list.
    fn oldest_stranger(&mut self) -> Option<(u64, Arc<ConnectionState>)> {
        while let Some((number, state)) = self.strangers.pop_first() {
            if !state.is_authenticated() {
                return Some((number, state));
            }
        }
        None
    }
}

impl Places {
    pub fn new(limits: PlaceLimits) -> Self {
        Self {
            held: Arc::new(Mutex::new(Held::default())),
            limits,
        }
    }

    /// A place for a new connection from `peer`, whose state is `state`;
    /// or the refusal reason (a metrics label) when there is none.
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        state: Arc<ConnectionState>,
    ) -> Result<Admitted, &'static str> {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let address = peer.map(|peer| peer.ip().to_canonical());
        let mut held = self.held.lock().map_err(|_| REFUSED_CONNECTION_LIMIT)?;
        if let Some(address) = address
            && held.by_peer.get(&address).copied().unwrap_or(0) >= self.limits.per_peer
        {
            return Err(REFUSED_PEER_LIMIT);
        }
        let mut ended = None;
        if held.all >= self.limits.all {
            if held.ending.len() >= self.limits.ending {
                return Err(REFUSED_CONNECTION_LIMIT);
            }
            let (number, victim) = held.oldest_stranger().ok_or(REFUSED_CONNECTION_LIMIT)?;
            victim.end_now();
            held.ending.insert(number);
            ended = Some(victim.peer());
        }
        let number = held.next;
        held.next += 1;
        held.all += 1;
        if let Some(address) = address {
            *held.by_peer.entry(address).or_insert(0) += 1;
        }
        held.strangers.insert(number, Arc::clone(&state));
        Ok(Admitted {
            place: Place {
                places: self.clone(),
                number,
                address,
                state,
            },
            ended,
        })
    }

    /// The connections `peer`'s address holds.
    pub fn held_by(&self, peer: IpAddr) -> usize {
        self.held.lock().map_or(0, |held| {
            held.by_peer.get(&peer.to_canonical()).copied().unwrap_or(0)
        })
    }

    /// The connections that hold a place now.
    pub fn held(&self) -> usize {
        self.held.lock().map_or(0, |held| held.all)
    }
}

/// One connection's place, given back when dropped.
#[derive(Debug)]
pub struct Place {
    places: Places,
    number: u64,
    address: Option<IpAddr>,
    state: Arc<ConnectionState>,
}

impl Place {
    /// The state of the connection holding the place.
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let Ok(mut held) = self.places.held.lock() else {
            return;
        };
        held.all = held.all.saturating_sub(1);
        held.strangers.remove(&self.number);
        held.ending.remove(&self.number);
        if let Some(address) = self.address
            && let Some(count) = held.by_peer.get_mut(&address)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.by_peer.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests;
