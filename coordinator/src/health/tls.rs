//! TLS for the agents' channel, terminated here rather than by tonic so that
//! nothing a peer does before it is authenticated can hold more than a
//! bounded share of the coordinator.
//!
//! - The accept loop never stops: each connection gets its own task.
//! - At most [`Limits::max_connections`] connections exist at once, and at
//!   most [`Limits::max_connections_per_peer`] from one address, counted
//!   from accept to close. At the first cap the oldest connection that has
//!   not authenticated a call gives its place to the new one, strangers
//!   from addresses no agent used lately first; at the second, or when
//!   every place is an agent's, the new one is closed at once, unless it
//!   comes from an address an agent used lately: that one may wait a
//!   little for a place ([`super::places`]).
//! - A peer has [`Limits::client_hello_timeout`] to send its ClientHello,
//!   holding nothing but its socket meanwhile; only then does it wait for one
//!   of [`Limits::handshake_concurrency`] handshake slots (the CPU-bound
//!   part: a few dozen at a time finish as fast as thousands on two cores and
//!   keep the heap compact when every agent reconnects together), and the
//!   whole handshake must end within [`Limits::handshake_timeout`].
//!   Connections from addresses an agent used lately have slots of their
//!   own, so a queue of strangers never holds an agent's handshake up.
//! - Accepted sockets get TCP keepalive, so a peer that vanished without a
//!   FIN is noticed by the kernel even if HTTP/2 pings are not answered.
//! - After the handshake, [`ConnectionBounds`] end idle and old connections
//!   ([`super::connection`]).
//! - The certificate is re-read when its files change (service-ca rotates
//!   it under a running coordinator): see [`ReloadingCert`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, HandshakeKind, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use super::connection::{AgentConnection, ConnectionBounds};
use super::connection_state::ConnectionState;
use super::places::{
    Admitted, KNOWN_FOR, KNOWN_WAIT, NoPlace, Place, PlaceLimits, Places, Standing, Waiting,
};
use super::refusals::Refusals;
use crate::metrics::{
    HANDSHAKE_FAILED, HANDSHAKE_FULL, HANDSHAKE_RESUMED, KindLabel, Metrics, REFUSED_EVICTED,
};
use prometheus_client::metrics::counter::Counter;

/// Handshakes in progress at once.
pub const HANDSHAKE_CONCURRENCY: usize = 64;
/// How long a client may take to complete its handshake, from accept (or,
/// for one that waited for a place, from when it got one).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections at once, at most: every agent of a 5,000-node cluster, twice
/// over (a reconnect overlaps the old connection), with room to spare. The
/// coordinator's cap is lower under a memory limit
/// ([`super::connection::connection_cap`]).
pub const MAX_CONNECTIONS: usize = 12_000;
/// Connections at once from one address. An agent holds one (two while a
/// retry overlaps); every agent Pod has an address of its own.
pub const MAX_CONNECTIONS_PER_PEER: usize = 16;

/// What the accept loop allows a peer; [`Limits::default`] is what the
/// coordinator uses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub handshake_concurrency: usize,
    pub client_hello_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Idle time before the first TCP keepalive probe; probes then go
    /// every `tcp_keepalive / 3`, three times.
    pub tcp_keepalive: Duration,
    /// What bounds a connection after its handshake.
    pub bounds: ConnectionBounds,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_connections_per_peer: MAX_CONNECTIONS_PER_PEER,
            handshake_concurrency: HANDSHAKE_CONCURRENCY,
            client_hello_timeout: CLIENT_HELLO_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            tcp_keepalive: Duration::from_secs(60),
            bounds: ConnectionBounds::default(),
        }
    }
}

/// PEM certificate chain and private key of the coordinator's server cert.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerTls {
    // Never print the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the certificate file holds no PEM certificate")]
    NoCertificate,
    #[error("the certificate file is not valid PEM: {0}")]
    Certificate(String),
    #[error("the key file holds no PEM private key: {0}")]
    Key(String),
    #[error("the certificate and key are not usable together: {0}")]
    Config(#[from] rustls::Error),
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl ServerTls {
    /// A TLS acceptor offering HTTP/2 by ALPN, as gRPC clients expect, with
    /// this certificate for good. Fails, saying why, on a certificate or key
    /// that cannot serve.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let resolver = ReloadingCert {
            files: None,
            state: Mutex::new(Loaded {
                key: certified_key(&self.cert_pem, &self.key_pem)?,
                stamp: None,
                checked: std::time::Instant::now(),
            }),
        };
        acceptor_with(Arc::new(resolver))
    }

    /// Like [`ServerTls::acceptor`], from PEM files that are read again
    /// whenever they change. The first read must succeed.
    pub fn reloading(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
        acceptor_with(Arc::new(ReloadingCert::from_files(cert_file, key_file)?))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn acceptor_with(resolver: Arc<ReloadingCert>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Agents check in every heartbeat, each time on a new connection: a
    // TLS 1.3 resumption with the ticket from the last handshake skips the
    // certificate signature (with service-ca's RSA-2048 keys, the costly
    // part). Stateless tickets (encrypted under keys rotated every 6 h), so
    // nothing is stored per agent; an agent uses one per handshake.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.send_tls13_tickets = 1;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
}

/// How often, at most, the certificate files are looked at (a stat each,
/// on a handshake).
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The server certificate, re-read from its files when they change: a
/// Kubernetes Secret volume swaps a symlink, so the files' identity (inode,
/// size, modification time) changes. A new pair that does not load (say,
/// the key written before the certificate) is logged and the one in use
/// kept until the pair loads.
#[derive(Debug)]
pub struct ReloadingCert {
    files: Option<(PathBuf, PathBuf)>,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Of the pair last tried, loaded or not.
    stamp: Option<[FileStamp; 2]>,
    checked: std::time::Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl ReloadingCert {
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let stamp = stamps(cert_file, key_file)?;
        let key = read_pair(cert_file, key_file)?;
        Ok(Self {
            files: Some((cert_file.to_owned(), key_file.to_owned())),
            state: Mutex::new(Loaded {
                key,
                stamp: Some(stamp),
                checked: std::time::Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, reloaded first if its files changed.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        let mut loaded = self.state.lock().ok()?;
        if let Some((cert_file, key_file)) = &self.files
            && loaded.checked.elapsed() >= CERT_CHECK_INTERVAL
        {
            loaded.checked = std::time::Instant::now();
            match stamps(cert_file, key_file) {
                Ok(stamp) if Some(stamp) != loaded.stamp => {
                    loaded.stamp = Some(stamp);
                    match read_pair(cert_file, key_file) {
                        Ok(key) => {
                            loaded.key = key;
                            tracing::info!(cert = %cert_file.display(), "serving certificate reloaded");
                        }
                        Err(error) => {
                            warn!(%error, "the changed certificate does not load; serving the previous one");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => debug!(%error, "cannot look at the certificate files"),
            }
        }
        Some(Arc::clone(&loaded.key))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn stamps(cert_file: &Path, key_file: &Path) -> Result<[FileStamp; 2], TlsError> {
    let stamp = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path)
            .map(|meta| FileStamp {
                inode: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
            })
            .map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
    };
    Ok([stamp(cert_file)?, stamp(key_file)?])
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    certified_key(&read(cert_file)?, &read(key_file)?)
}

/// What the accept loop counts: handshakes, and the connections it
/// refuses or ends. [`Default`] counts into counters nobody exports.
#[derive(Debug, Clone, Default)]
pub struct AcceptCounters {
    pub handshakes: HandshakeCounters,
    pub refusals: Refusals,
}

/// Handshakes by how they went; [`Default`] counts into counters nobody
/// exports.
#[derive(Debug, Clone, Default)]
pub struct HandshakeCounters {
    full: Counter,
    resumed: Counter,
    failed: Counter,
}

impl HandshakeCounters {
    pub fn of(metrics: &Metrics) -> Self {
        let counter = |kind: &str| {
            metrics
                .tls_handshakes
                .get_or_create_owned(&KindLabel { kind: kind.into() })
        };
        Self {
            full: counter(HANDSHAKE_FULL),
            resumed: counter(HANDSHAKE_RESUMED),
            failed: counter(HANDSHAKE_FAILED),
        }
    }

    fn count<T>(&self, handshake: &Result<TlsStream<T>, HandshakeError>) {
        let counter = match handshake {
            Ok(stream) if stream.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) => {
                &self.resumed
            }
            Ok(_) => &self.full,
            Err(_) => &self.failed,
        };
        counter.inc();
    }
}

/// The connections accepted on `listener`, TLS established, within
/// `limits`. A refused, failed or timed-out connection is logged and
/// dropped; the stream never fails, and accepting stops when it is dropped.
pub fn incoming_with(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    counters: AcceptCounters,
) -> impl Stream<Item = Result<AgentConnection, io::Error>> + Send + 'static {
    let (ready, established) = mpsc::channel(limits.handshake_concurrency.max(1));
    tokio::spawn(accept_loop(listener, acceptor, limits, counters, ready));
    ReceiverStream::new(established)
}

/// What a new connection from `tcp` gets: a place (perhaps another's, ended
/// for it), a turn to wait for one, or nothing, counted as a refusal.
fn place_for(tcp: &TcpStream, places: &Places, refusals: &Refusals) -> Option<Admission> {
    let peer = tcp.peer_addr().ok();
    match places.admit(peer, Arc::new(ConnectionState::new(peer))) {
        Ok(admitted) => Some(Admission::Now(taken(admitted, refusals))),
        Err(NoPlace::Wait(waiting)) => Some(Admission::Wait(waiting)),
        Err(NoPlace::Refused(reason)) => {
            refusals.refuse(reason, peer, "no place for the connection; closed");
            None
        }
    }
}

/// A place had now, or to wait for.
enum Admission {
    Now(Place),
    Wait(Waiting),
}

impl Admission {
    /// The place, once there is one; None, counted as a refusal, when a
    /// wait for one ended without.
    async fn place(self, refusals: &Refusals) -> Option<Place> {
        match self {
            Self::Now(place) => Some(place),
            Self::Wait(waiting) => {
                let peer = waiting.peer();
                match waiting.place().await {
                    Ok(admitted) => Some(taken(admitted, refusals)),
                    Err(reason) => {
                        refusals.refuse(
                            reason,
                            peer,
                            "no place for the connection in time; closed",
                        );
                        None
                    }
                }
            }
        }
    }
}

/// The place `admitted` got; the connection that gave it, if any, is
/// counted as ended.
fn taken(admitted: Admitted, refusals: &Refusals) -> Place {
    if let Some(ended) = admitted.ended {
        refusals.refuse(
            REFUSED_EVICTED,
            ended,
            "all places taken: a connection that had not authenticated gave its place to a newer one",
        );
    }
    admitted.place
}

fn set_keepalive(tcp: &TcpStream, limits: &Limits) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(limits.tcp_keepalive)
        .with_interval(limits.tcp_keepalive / 3)
        .with_retries(3);
    if let Err(error) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        debug!(%error, "cannot set TCP keepalive");
    }
    let _ = tcp.set_nodelay(true);
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    limits: Limits,
    counters: AcceptCounters,
    ready: mpsc::Sender<Result<AgentConnection, io::Error>>,
) {
    let places = Places::new(PlaceLimits {
        all: limits.max_connections,
        per_peer: limits.max_connections_per_peer,
        ending: limits.handshake_concurrency.max(1),
        known: limits.max_connections,
        known_for: KNOWN_FOR,
        wait: KNOWN_WAIT,
    });
    let handshakes = HandshakeSlots::new(limits.handshake_concurrency.max(1));
    let config = Arc::clone(acceptor.config());
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            // Out of file descriptors, say: this connection is lost, the
            // next accept may succeed; pause so the loop does not spin.
            Err(error) => {
                warn!(%error, "accepting an agent connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(admission) = place_for(&tcp, &places, &counters.refusals) else {
            continue;
        };
        set_keepalive(&tcp, &limits);
        let (config, handshakes, ready, counters) = (
            Arc::clone(&config),
            handshakes.clone(),
            ready.clone(),
            counters.clone(),
        );
        tokio::spawn(async move {
            let Some(place) = admission.place(&counters.refusals).await else {
                return;
            };
            let peer = place.state().peer();
            // A connection ended for a newer one stops here, handshake or not.
            let handshake = tokio::select! {
                handshake = handshake(tcp, config, handshakes.of(place.standing()), &limits) => handshake,
                () = place.state().ended() => Err(HandshakeError::Ended),
            };
            counters.handshakes.count(&handshake);
            match handshake {
                Ok(stream) => {
                    let connection =
                        AgentConnection::new(stream, place, &limits.bounds, counters.refusals);
                    let _ = ready.send(Ok(connection)).await;
                }
                Err(why) => debug!(?peer, why = %why, "TLS handshake failed"),
            }
        });
    }
}

/// The slots handshakes take turns in: connections from known addresses
/// have their own, so strangers queued for a slot never hold up an agent's
/// handshake (at most twice `handshake_concurrency` run at once).
#[derive(Clone)]
struct HandshakeSlots {
    strangers: Arc<Semaphore>,
    known: Arc<Semaphore>,
}

impl HandshakeSlots {
    fn new(each: usize) -> Self {
        Self {
            strangers: Arc::new(Semaphore::new(each)),
            known: Arc::new(Semaphore::new(each)),
        }
    }

    fn of(&self, standing: Standing) -> &Semaphore {
        match standing {
            Standing::Unknown => &self.strangers,
            Standing::Known => &self.known,
        }
    }
}

/// Why an agent's TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no ClientHello in time")]
    NoClientHello,
    #[error("handshake not done in time")]
    TooSlow,
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The connection gave its place to a newer one.
    #[error("ended to give its place to a newer connection")]
    Ended,
    /// The handshake slots were closed: the server is stopping.
    #[error(transparent)]
    Stopping(#[from] tokio::sync::AcquireError),
}

/// The ClientHello within its deadline (holding no slot), then the rest of
/// the handshake in one of the slots; all within the handshake deadline.
async fn handshake(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    slots: &Semaphore,
    limits: &Limits,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let whole = async {
        let start = tokio::time::timeout(
            limits.client_hello_timeout,
            LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
        )
        .await
        .map_err(|_| HandshakeError::NoClientHello)??;
        let _slot = slots.acquire().await?;
        Ok(start.into_stream(config).await?)
    };
    tokio::time::timeout(limits.handshake_timeout, whole)
        .await
        .map_err(|_| HandshakeError::TooSlow)?
}
