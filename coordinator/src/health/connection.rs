//! One accepted agent connection after its TLS handshake, and what bounds
//! it in time.
//!
//! - A connection holds its place ([`super::places`]) from accept to close.
//! - A connection that carries no call (no open HTTP/2 stream) for
//!   [`ConnectionBounds::idle_timeout`] is closed; so is one still open at
//!   [`ConnectionBounds::max_age`] plus [`ConnectionBounds::max_age_grace`]
//!   (at the age itself the server sends GOAWAY, so a well-behaved client
//!   finishes its calls and leaves), one that gives its place to a newer
//!   connection, and one whose credentials were refused, shortly after the
//!   refusal is sent ([`CREDENTIALS_REFUSED_GRACE`]). All close the socket
//!   from below HTTP/2: the reads see end of file, which ends the
//!   connection whatever the peer does.
//! - Open streams and authentication are told by the call gate
//!   ([`super::gate`]) through the connection's [`ConnectionState`], which
//!   every request carries in its extensions ([`AgentConnectInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::connection_state::ConnectionState;
use super::places::Place;
use super::refusals::Refusals;
use crate::metrics::REFUSED_MAX_AGE;

/// How long a connection whose credentials were refused stays open after
/// the refusal: long enough for the answer to leave, too short to send
/// much more. A peer without a valid token has nothing else to do here,
/// and an agent whose token expired reconnects with a fresh one.
pub const CREDENTIALS_REFUSED_GRACE: Duration = Duration::from_millis(250);

/// How long a connection and a call may last; [`Default`] is what the
/// coordinator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBounds {
    /// A connection with no open stream for this long is closed. An agent
    /// opens its one call right after the handshake and closes the
    /// connection after the reply, so it is never idle for long.
    pub idle_timeout: Duration,
    /// At this age the server asks the client to leave (GOAWAY).
    pub max_age: Duration,
    /// ... and closes the connection this long after, if still open.
    pub max_age_grace: Duration,
    /// From a call's headers to its response headers (authentication
    /// included): past it the call is answered DEADLINE_EXCEEDED. An
    /// agent gives up on a check-in after 15 s.
    pub request_deadline: Duration,
}

impl Default for ConnectionBounds {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            // Agents' streams end before their token expires (an hour at
            // most for a projected token's default): an hour plus a minute
            // only ends what outlives its purpose.
            max_age: Duration::from_secs(3600),
            max_age_grace: Duration::from_secs(60),
            request_deadline: Duration::from_secs(15),
        }
    }
}

/// What every request on an agent connection carries in its extensions
/// (tonic puts a connection's [`Connected::connect_info`] there).
#[derive(Debug, Clone)]
pub struct AgentConnectInfo {
    pub peer: Option<SocketAddr>,
    pub state: Arc<ConnectionState>,
}

/// An accepted agent connection with TLS established; holds its [`Place`]
/// until dropped and ends itself when idle, too old, or asked to.
pub struct AgentConnection {
    stream: TlsStream<TcpStream>,
    place: Place,
    info: AgentConnectInfo,
    idle_timeout: Duration,
    /// The next end of [`ConnectionState::next_end`], when there is one.
    end_timer: Pin<Box<Sleep>>,
    /// The forced close: max age plus grace after accept.
    too_old: Pin<Box<Sleep>>,
    refusals: Refusals,
    /// Set once the connection ended itself: reads see end of file, writes
    /// fail, and the refusal is counted once.
    ended: bool,
}

impl AgentConnection {
    pub fn new(
        stream: TlsStream<TcpStream>,
        place: Place,
        bounds: &ConnectionBounds,
        refusals: Refusals,
    ) -> Self {
        let state = Arc::clone(place.state());
        // Idle from now: the handshake's time does not count against it.
        state.restart_idle();
        let now = Instant::now();
        Self {
            stream,
            info: AgentConnectInfo {
                peer: state.peer(),
                state,
            },
            place,
            idle_timeout: bounds.idle_timeout,
            end_timer: Box::pin(tokio::time::sleep_until(now + bounds.idle_timeout)),
            too_old: Box::pin(tokio::time::sleep_until(
                now + bounds.max_age + bounds.max_age_grace,
            )),
            refusals,
            ended: false,
        }
    }

    /// Whether the connection must end now; if not, the task is woken when
    /// that may change.
    fn must_end(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ended {
            return true;
        }
        let reason = if self.too_old.as_mut().poll(cx).is_ready() {
            Some(Some(REFUSED_MAX_AGE))
        } else {
            self.place.state().reader.register(cx.waker());
            match self.place.state().next_end(self.idle_timeout) {
                Some(end) => {
                    if self.end_timer.deadline() != end.at {
                        self.end_timer.as_mut().reset(end.at);
                    }
                    self.end_timer
                        .as_mut()
                        .poll(cx)
                        .is_ready()
                        .then_some(end.reason)
                }
                None => None,
            }
        };
        if let Some(reason) = reason {
            self.ended = true;
            if let Some(reason) = reason {
                self.refusals
                    .refuse(reason, self.info.peer, "connection closed by the server");
            }
        }
        self.ended
    }
}

impl Connected for AgentConnection {
    type ConnectInfo = AgentConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.must_end(cx) {
            // End of file: HTTP/2 ends the connection, and with it the socket.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection ended by the server",
    )
}

impl AsyncWrite for AgentConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.ended {
            return Poll::Ready(Err(ended()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// What one connection may cost the coordinator at most, for sizing the
/// connection cap from the memory limit. A connection holds its TLS and
/// HTTP/2 state (about 30 KiB idle: rustls' buffers, h2's and hyper's) and
/// whatever the peer sends that is not read yet, up to the 128 KiB
/// connection flow-control window, plus the message buffers of its two
/// streams once admitted. Measured: 2,000 connections each holding two
/// streams of 64 KiB messages missing their last byte grew a release
/// coordinator from 33 to 441 MB, 204 KiB a connection; 256 KiB leaves room.
pub const CONNECTION_COST_BYTES: u64 = 256 * 1024;
/// What the rest of the coordinator is given before connections are
/// counted: caches of Nodes and Pods, the registry of 5,000 nodes, the
/// TokenReview cache, the runtime. The release coordinator idles at about
/// 35 MB with 1,000 agents.
pub const RESERVED_BYTES: u64 = 128 * 1024 * 1024;
/// The fewest connections the cap allows, however small the memory limit.
pub const MIN_CONNECTIONS: usize = 256;

/// The connection cap for a memory limit: what is left after
/// [`RESERVED_BYTES`] in [`CONNECTION_COST_BYTES`] steps, between
/// [`MIN_CONNECTIONS`] and `most`; `most` without a limit. Pure.
pub fn connection_cap(memory_limit: Option<u64>, most: usize) -> usize {
    let Some(limit) = memory_limit else {
        return most;
    };
    let affordable = limit.saturating_sub(RESERVED_BYTES) / CONNECTION_COST_BYTES;
    usize::try_from(affordable)
        .unwrap_or(usize::MAX)
        .clamp(MIN_CONNECTIONS.min(most), most)
}

/// The memory limit of this process's cgroup, as seen from inside its
/// container: cgroup v2's `/sys/fs/cgroup/memory.max`, else cgroup v1's
/// `/sys/fs/cgroup/memory/memory.limit_in_bytes` (whose "unlimited" is a
/// huge number, which the cap's upper bound absorbs); None when unlimited
/// (`max`) or neither is readable.
pub fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .into_iter()
    .find_map(|path| std::fs::read_to_string(path).ok())
    .and_then(|contents| parse_memory_max(&contents))
}

/// `memory.max`'s contents: bytes, or `max`. Pure.
pub fn parse_memory_max(contents: &str) -> Option<u64> {
    contents.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_memory_limit() {
        const MIB: u64 = 1024 * 1024;
        // The deployment's 512 MiB: (512 - 128) MiB in 256 KiB steps.
        assert_eq!(connection_cap(Some(512 * MIB), 12_000), 1_536);
        assert_eq!(connection_cap(Some(64 * MIB), 12_000), MIN_CONNECTIONS);
        assert_eq!(connection_cap(Some(64 * 1024 * MIB), 12_000), 12_000);
        assert_eq!(connection_cap(None, 12_000), 12_000);
        assert_eq!(connection_cap(Some(64 * MIB), 10), 10);
        assert_eq!(parse_memory_max("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_memory_max("max\n"), None);
    }
}
