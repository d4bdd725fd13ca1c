//! The places connections hold on the agents' port, from accept to close,
//! and who gives way when they are all taken.
//!
//! - At most [`PlaceLimits::all`] connections, and at most
//!   [`PlaceLimits::per_peer`] from one address.
//! - When all places are taken, a new connection takes the place of the
//!   oldest connection that has not authenticated a call yet (a stranger);
//!   that one is ended at once. A connection that has authenticated (an
//!   agent's) never gives way. Only when no stranger may give way is a new
//!   one refused.
//! - Strangers from a *known* address (one whose connection authenticated
//!   within [`PlaceLimits::known_for`]) give way only to newcomers from
//!   known addresses, and only once no stranger from an unknown address is
//!   left. An agent opens a connection for every check-in, so until its
//!   call is authenticated each one is a stranger; remembering the address
//!   its last one came from keeps a flood of strangers from ending it.
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
//! Measured without known addresses (docs/BENCHMARKS.md): attackers
//! reopening some 500 connections a second ended honest agents'
//! connections before their calls were authenticated, and 563 to 1,053 of
//! their check-ins failed in 135 s.
//!
//! Ended connections close promptly but not within the call that ended
//! them, so up to [`PlaceLimits::ending`] of them may still hold memory
//! beyond `all`; past that, a newcomer is refused rather than ending more.
//! Newcomers from known addresses have a budget of their own, so strangers
//! churning at the cap cannot use it all up and get an agent refused.
//!
//! A newcomer from a known address that finds no place (its budget spent,
//! or every place an agent's) waits up to [`PlaceLimits::wait`] for one,
//! holding nothing but its socket, instead of being refused at once.
//! Measured (docs/BENCHMARKS.md): under idle TLS connections churning at
//! the cap, ended connections closed within 10 ms mostly and within 1 s
//! always, but agents' check-ins come in bursts, and a burst of newcomers
//! spent the budget of 64 faster than the connections ended for them
//! closed: up to 24 agents' check-ins of 4,000 were refused in 120 s.
//! Waiting keeps the bound on memory (the budget) and admits the agent as
//! soon as one of them closes. At most [`PlaceLimits::ending`] wait at
//! once, and each counts against its address's [`PlaceLimits::per_peer`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::connection_state::ConnectionState;
use crate::metrics::{
    REFUSED_CONNECTION_LIMIT, REFUSED_KNOWN_CONNECTION_LIMIT, REFUSED_PEER_LIMIT,
};

/// How long an address stays known: twenty of an agent's 30 s heartbeats,
/// and longer than any of its backoffs, so a failover or an outage of a
/// few minutes does not make its agents strangers again.
pub const KNOWN_FOR: Duration = Duration::from_secs(600);

/// How long a newcomer from a known address may wait for a place: as
/// long as a stranger may take to send its ClientHello, and well inside an
/// agent's 15 s check-in deadline.
pub const KNOWN_WAIT: Duration = Duration::from_secs(2);

/// How many places there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaceLimits {
    pub all: usize,
    pub per_peer: usize,
    /// Connections ended to make room that may still be closing, for
    /// newcomers of each standing.
    pub ending: usize,
    /// Addresses remembered as known at once, at most; past that the one
    /// known longest ago is forgotten. Only an authenticated call adds one.
    pub known: usize,
    /// How long an address stays known after its last authenticated
    /// connection closed.
    pub known_for: Duration,
    /// How long a newcomer from a known address may wait for a place.
    pub wait: Duration,
}

/// How a connection's address ranks when places run out: known when a
/// connection from it authenticated lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// No connection from the address has authenticated lately.
    Unknown,
    /// A connection from the address authenticated within
    /// [`PlaceLimits::known_for`].
    Known,
}

/// The places of one listener; clones share them.
#[derive(Debug, Clone)]
pub struct Places {
    held: Arc<Mutex<Held>>,
    /// Told when a connection closes, for newcomers waiting for a place.
    closed: Arc<Notify>,
    limits: PlaceLimits,
}

/// What a new connection got.
#[derive(Debug)]
pub struct Admitted {
    pub place: Place,
    /// The connection that gave its place, ended: its peer, if known.
    pub ended: Option<Option<SocketAddr>>,
}

/// Why a new connection has no place now.
#[derive(Debug)]
pub enum NoPlace {
    /// Refused, for this reason (a metrics label).
    Refused(&'static str),
    /// From a known address: it may wait for a place ([`Waiting::place`]).
    Wait(Waiting),
}

#[derive(Debug, Default)]
struct Held {
    all: usize,
    by_peer: HashMap<IpAddr, usize>,
    /// Connections that may give way, oldest first (by admission number),
    /// from unknown and from known addresses. An entry leaves when its
    /// connection closes or gives way; one that authenticated meanwhile
    /// leaves when the search for the oldest stranger meets it.
    strangers: BTreeMap<u64, Arc<ConnectionState>>,
    known_strangers: BTreeMap<u64, Arc<ConnectionState>>,
    /// Addresses whose connection authenticated, and when the last such
    /// connection closed.
    known: HashMap<IpAddr, Instant>,
    /// Connections ended to make room and not closed yet.
    /// Each with the standing of the newcomer it was ended for.
    ending: BTreeMap<u64, Standing>,
    /// Newcomers from known addresses waiting for a place.
    waiting: usize,
    next: u64,
}

impl Held {
    /// The oldest connection still a stranger that may give way to a
    /// newcomer of `standing`, taken out of its list.
    fn oldest_stranger(&mut self, standing: Standing) -> Option<(u64, Arc<ConnectionState>)> {
        fn pop(
            list: &mut BTreeMap<u64, Arc<ConnectionState>>,
        ) -> Option<(u64, Arc<ConnectionState>)> {
            std::iter::from_fn(|| list.pop_first()).find(|(_, state)| !state.is_authenticated())
        }
        pop(&mut self.strangers).or_else(|| match standing {
            Standing::Known => pop(&mut self.known_strangers),
            Standing::Unknown => None,
        })
    }

    fn standing(&self, address: Option<IpAddr>, known_for: Duration) -> Standing {
        match address.and_then(|address| self.known.get(&address)) {
            Some(since) if since.elapsed() <= known_for => Standing::Known,
            _ => Standing::Unknown,
        }
    }

    /// Remembers `address` as known from now, within `limits`.
    fn remember(&mut self, address: IpAddr, limits: &PlaceLimits) {
        if self.known.len() >= limits.known && !self.known.contains_key(&address) {
            self.known
                .retain(|_, since| since.elapsed() <= limits.known_for);
            if self.known.len() >= limits.known
                && let Some(oldest) = self
                    .known
                    .iter()
                    .min_by_key(|(_, since)| **since)
                    .map(|(address, _)| *address)
            {
                self.known.remove(&oldest);
            }
        }
        if limits.known > 0 {
            self.known.insert(address, Instant::now());
        }
    }
}

impl Places {
    pub fn new(limits: PlaceLimits) -> Self {
        Self {
            held: Arc::new(Mutex::new(Held::default())),
            closed: Arc::new(Notify::new()),
            limits,
        }
    }

    /// A place for a new connection from `peer`, whose state is `state`;
    /// or why there is none.
    pub fn admit(
        &self,
        peer: Option<SocketAddr>,
        state: Arc<ConnectionState>,
    ) -> Result<Admitted, NoPlace> {
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let address = peer.map(|peer| peer.ip().to_canonical());
        let mut held = self
            .held
            .lock()
            .map_err(|_| NoPlace::Refused(REFUSED_CONNECTION_LIMIT))?;
        if let Some(address) = address
            && held.by_peer.get(&address).copied().unwrap_or(0) >= self.limits.per_peer
        {
            return Err(NoPlace::Refused(REFUSED_PEER_LIMIT));
        }
        let standing = held.standing(address, self.limits.known_for);
        match self.take(&mut held, address, standing, state) {
            Ok(admitted) => {
                count_peer(&mut held, address);
                Ok(admitted)
            }
            Err(state) if standing == Standing::Known && held.waiting < self.limits.ending => {
                held.waiting += 1;
                count_peer(&mut held, address);
                Err(NoPlace::Wait(Waiting {
                    places: self.clone(),
                    address,
                    state: Some(state),
                }))
            }
            Err(_) => Err(NoPlace::Refused(refusal(standing))),
        }
    }

    /// A place in `held` for a connection of `standing`, perhaps another's
    /// that is ended for it; its state back when there is none. The
    /// caller counts the connection against its address.
    fn take(
        &self,
        held: &mut Held,
        address: Option<IpAddr>,
        standing: Standing,
        state: Arc<ConnectionState>,
    ) -> Result<Admitted, Arc<ConnectionState>> {
        let mut ended = None;
        if held.all >= self.limits.all {
            let ending_for = held.ending.values().filter(|s| **s == standing).count();
            if ending_for >= self.limits.ending {
                return Err(state);
            }
            let Some((number, victim)) = held.oldest_stranger(standing) else {
                return Err(state);
            };
            victim.end_now();
            held.ending.insert(number, standing);
            ended = Some(victim.peer());
        }
        let number = held.next;
        held.next += 1;
        held.all += 1;
        match standing {
            Standing::Unknown => held.strangers.insert(number, Arc::clone(&state)),
            Standing::Known => held.known_strangers.insert(number, Arc::clone(&state)),
        };
        Ok(Admitted {
            place: Place {
                places: self.clone(),
                number,
                address,
                standing,
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
    standing: Standing,
    state: Arc<ConnectionState>,
}

impl Place {
    /// The state of the connection holding the place.
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }

    /// Whether its address was known when the connection was admitted.
    pub fn standing(&self) -> Standing {
        self.standing
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let Ok(mut held) = self.places.held.lock() else {
            return;
        };
        held.all = held.all.saturating_sub(1);
        held.strangers.remove(&self.number);
        held.known_strangers.remove(&self.number);
        held.ending.remove(&self.number);
        if let Some(address) = self.address
            && self.state.is_authenticated()
        {
            held.remember(address, &self.places.limits);
        }
        uncount_peer(&mut held, self.address);
        if held.waiting > 0 {
            self.places.closed.notify_waiters();
        }
    }
}

/// A newcomer from a known address waiting for a place; counted against
/// its address until it has one or gives up.
#[derive(Debug)]
pub struct Waiting {
    places: Places,
    address: Option<IpAddr>,
    /// Taken when the place is.
    state: Option<Arc<ConnectionState>>,
}

impl Waiting {
    /// The waiting connection's peer.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.state.as_ref().and_then(|state| state.peer())
    }

    /// A place, as soon as a connection closes and leaves one within
    /// [`PlaceLimits::wait`]; the refusal reason when none does.
    pub async fn place(mut self) -> Result<Admitted, &'static str> {
        let deadline = tokio::time::Instant::now() + self.places.limits.wait;
        loop {
            // Registered before looking, so a close in between is not missed.
            let closed = self.places.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let mut held = self
                    .places
                    .held
                    .lock()
                    .map_err(|_| REFUSED_KNOWN_CONNECTION_LIMIT)?;
                let state = self.state.take().ok_or(REFUSED_KNOWN_CONNECTION_LIMIT)?;
                match self
                    .places
                    .take(&mut held, self.address, Standing::Known, state)
                {
                    Ok(admitted) => {
                        // Its count against the address passes to the place.
                        held.waiting = held.waiting.saturating_sub(1);
                        return Ok(admitted);
                    }
                    Err(state) => self.state = Some(state),
                }
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return Err(REFUSED_KNOWN_CONNECTION_LIMIT);
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // A place taken has already settled the counts.
        if self.state.is_none() {
            return;
        }
        let Ok(mut held) = self.places.held.lock() else {
            return;
        };
        held.waiting = held.waiting.saturating_sub(1);
        uncount_peer(&mut held, self.address);
    }
}

fn refusal(standing: Standing) -> &'static str {
    match standing {
        Standing::Unknown => REFUSED_CONNECTION_LIMIT,
        Standing::Known => REFUSED_KNOWN_CONNECTION_LIMIT,
    }
}

fn count_peer(held: &mut Held, address: Option<IpAddr>) {
    if let Some(address) = address {
        *held.by_peer.entry(address).or_insert(0) += 1;
    }
}

fn uncount_peer(held: &mut Held, address: Option<IpAddr>) {
    if let Some(address) = address
        && let Some(count) = held.by_peer.get_mut(&address)
    {
        *count = count.saturating_sub(1);
        if *count == 0 {
            held.by_peer.remove(&address);
        }
    }
}

#[cfg(test)]
mod tests;
