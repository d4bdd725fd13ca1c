//! What one agent connection's calls tell it, and what ends it; shared by
//! the connection itself ([`super::connection`]), the places it holds
//! ([`super::places`]) and the call gate ([`super::gate`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::REFUSED_IDLE;

/// What a connection's calls tell it, and what ends it: its open streams
/// and since when it has had none, whether a call on it was authenticated,
/// and an end asked for from outside (to give its place to a newer
/// connection, or after its credentials were refused).
#[derive(Debug)]
pub struct ConnectionState {
    peer: Option<SocketAddr>,
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
    authenticated: AtomicBool,
    end_at: Mutex<Option<Instant>>,
    /// The connection's reader, woken when the last stream closes (its idle
    /// timer starts) or an end is asked for.
    pub(super) reader: AtomicWaker,
    /// Wakes the handshake of a connection asked to end before it has one.
    ending: Notify,
}

/// When a connection ends, and the refusal to count then (None when it was
/// counted where the end was asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub at: Instant,
    pub reason: Option<&'static str>,
}

impl ConnectionState {
    pub fn new(peer: Option<SocketAddr>) -> Self {
        Self {
            peer,
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            authenticated: AtomicBool::new(false),
            end_at: Mutex::new(None),
            reader: AtomicWaker::new(),
            ending: Notify::new(),
        }
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Marks a stream open until the guard is dropped.
    pub fn stream_opened(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenStream(Arc::clone(self))
    }

    /// A call on the connection was authenticated: it is an agent's, and
    /// keeps its place when the places run out ([`super::places`]).
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// Ends the connection at once.
    pub fn end_now(&self) {
        self.end_after(Duration::ZERO);
    }

    /// Ends the connection `delay` from now (or earlier, if asked before).
    pub fn end_after(&self, delay: Duration) {
        let at = Instant::now() + delay;
        if let Ok(mut end_at) = self.end_at.lock() {
            *end_at = Some(end_at.map_or(at, |earlier| earlier.min(at)));
        }
        self.reader.wake();
        self.ending.notify_one();
    }

    /// Resolves once an end was asked for and its time has come.
    pub async fn ended(&self) {
        loop {
            match self.end_at.lock().ok().and_then(|end_at| *end_at) {
                Some(at) => return tokio::time::sleep_until(at).await,
                None => self.ending.notified().await,
            }
        }
    }

    /// The connection's next end: the one asked for, or its idle timeout
    /// when it carries no stream, whichever is first. Pure.
    pub fn next_end(&self, idle_timeout: Duration) -> Option<End> {
        let asked = self
            .end_at
            .lock()
            .ok()
            .and_then(|end_at| *end_at)
            .map(|at| End { at, reason: None });
        let idle = (self.open.load(Ordering::Acquire) == 0)
            .then(|| self.idle_since.lock().ok().map(|since| *since))
            .flatten()
            .map(|since| End {
                at: since + idle_timeout,
                reason: Some(REFUSED_IDLE),
            });
        match (asked, idle) {
            (Some(asked), Some(idle)) if idle.at < asked.at => Some(idle),
            (Some(asked), _) => Some(asked),
            (None, idle) => idle,
        }
    }

    pub(super) fn restart_idle(&self) {
        if let Ok(mut since) = self.idle_since.lock() {
            *since = Instant::now();
        }
    }
}

/// One open stream of a connection (see [`ConnectionState::stream_opened`]).
#[derive(Debug)]
pub struct OpenStream(Arc<ConnectionState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.restart_idle();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}
