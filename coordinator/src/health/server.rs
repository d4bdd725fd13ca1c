//! The `NodeHealth` gRPC service and the TLS server that carries it.
//!
//! A check-in (the agents' channel) or a stream (older agents') is accepted
//! only after (1) its bearer token passes [`AgentAuthenticator`], in the
//! gate in front of the service ([`super::gate`]), from the call's headers
//! before any of its body is read, (2) the
//! Pod the token is bound to is not known to be deleted, and (3) its Hello
//! names the node the token is bound to. A refusal is the call's status, so
//! an agent sees exactly why. A check-in is answered with the expected
//! configuration and any pending re-probe request; a stream carries those
//! and the agent's reports for as long as it stays open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use kata_proto::health::v1::node_health_server::{NodeHealth as NodeHealthRpc, NodeHealthServer};
use kata_proto::health::v1::{
    AgentMessage, CheckInRequest, CheckInResponse, CoordinatorMessage, ExpectedConfig, Hello,
    ReprobeRequest, agent_message, coordinator_message,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::auth::{AgentAuthenticator, AgentIdentity, Authenticated};
use super::gate::GateLayer;
use super::hello::validate_hello;
use super::pods::{BoundPods, PodFollower};
use super::refusals::Refusals;
use super::registry::{HealthRegistry, Mailbox};
use super::tls::{AcceptCounters, Limits};
use crate::metrics::{Metrics, REPORT_CHANGED, REPORT_HEARTBEAT};
use kata_proto::contract;
use prometheus_client::metrics::counter::Counter;

/// Settings sent to agents or governing their streams.
#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// How often an agent reports when nothing changes.
    pub heartbeat_interval: Duration,
    pub minimum_qemu_version: String,
    /// How long an authenticated stream may stay open without a Hello, so a
    /// stuck or hostile client cannot hold a task forever.
    pub hello_timeout: Duration,
    /// The OS extension the rollout backend installs, which agents are told
    /// to expect (the wiring sets it from the backend; empty names none).
    pub extension_name: String,
    /// How many connections may exist, and for how long.
    pub limits: Limits,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            minimum_qemu_version: contract::MINIMUM_QEMU_VERSION.into(),
            hello_timeout: Duration::from_secs(30),
            extension_name: String::new(),
            limits: Limits::default(),
        }
    }
}

/// What the coordinator tells every agent to expect on its node; it comes
/// from the [`contract`], the rollout backend's extension and the runtime
/// profiles in force, as the host configuration does, so agent and host
/// configuration can never disagree.
pub fn expected_config(options: &HealthOptions, registry: &HealthRegistry) -> ExpectedConfig {
    ExpectedConfig {
        runtime_handler: contract::RUNTIME_HANDLER.into(),
        extension_name: options.extension_name.clone(),
        drop_in_path: contract::DROP_IN_PATH.into(),
        // At least one second: zero would make an agent report in a busy loop.
        heartbeat_interval_seconds: u32::try_from(options.heartbeat_interval.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
        minimum_qemu_version: options.minimum_qemu_version.clone(),
        extension_packages: vec![contract::EXTENSION_PACKAGE.into()],
        runtime_profiles: registry
            .profiles()
            .get()
            .map(|p| p.to_vec())
            .unwrap_or_default(),
    }
}

/// The stream is bound to the token's node: an agent may only speak for the
/// node its Pod runs on, whatever its Hello says. A Hello whose fields are
/// out of bounds ([`validate_hello`]) is refused before anything else.
pub fn check_hello(identity: &AgentIdentity, hello: &Hello) -> Result<(), Status> {
    validate_hello(hello)?;
    if hello.node_name == identity.node_name {
        return Ok(());
    }
    warn!(
        token_node = %identity.node_name,
        claimed_node = ?hello.node_name,
        pod = %identity.pod_name,
        "agent claims to be a node its token is not bound to; refused"
    );
    Err(Status::permission_denied(format!(
        "token is bound to node {}, not {}",
        identity.node_name, hello.node_name
    )))
}

/// The reports counters, looked up once: every stream holds a pointer to
/// them, not a copy of every metric.
#[derive(Debug, Default)]
struct ReportCounters {
    changed: Counter,
    heartbeat: Counter,
}

impl ReportCounters {
    fn of(metrics: &Metrics) -> Self {
        let counter = |kind: &str| {
            metrics
                .reports_received
                .get_or_create_owned(&crate::metrics::KindLabel { kind: kind.into() })
        };
        ReportCounters {
            changed: counter(REPORT_CHANGED),
            heartbeat: counter(REPORT_HEARTBEAT),
        }
    }

    fn count(&self, kind: &str) {
        if kind == REPORT_HEARTBEAT {
            self.heartbeat.inc();
        } else {
            self.changed.inc();
        }
    }
}

/// The gRPC service; one per server (tonic shares it between connections).
pub struct HealthService {
    authenticator: AgentAuthenticator,
    registry: HealthRegistry,
    options: HealthOptions,
    reports: Arc<ReportCounters>,
    handshakes: super::tls::HandshakeCounters,
    refusals: Refusals,
    /// Set to true on shutdown so open streams end and the graceful shutdown
    /// of the transport (which waits for them) can complete.
    stopping: Arc<watch::Sender<bool>>,
    /// The watch of the agents' Pods, started with the first stream (it
    /// needs the runtime, which `new` may not run in).
    pods: std::sync::OnceLock<BoundPods>,
}

impl HealthService {
    pub fn new(
        authenticator: AgentAuthenticator,
        registry: HealthRegistry,
        options: HealthOptions,
    ) -> Self {
        Self {
            authenticator,
            registry,
            options,
            reports: Arc::default(),
            handshakes: super::tls::HandshakeCounters::default(),
            refusals: Refusals::default(),
            stopping: Arc::new(watch::Sender::new(false)),
            pods: std::sync::OnceLock::new(),
        }
    }

    fn bound_pods(&self) -> &BoundPods {
        self.pods.get_or_init(|| {
            let (client, namespace, service_account) = self.authenticator.agents();
            let admissions = self.authenticator.clone();
            BoundPods::start(client.clone(), namespace, service_account, move |live| {
                admissions.forget_pods_except(live);
            })
        })
    }

    /// Counts the agents' reports, the TLS handshakes and the refusals in
    /// `metrics` (the authenticator counts the TokenReviews: give it the
    /// same metrics).
    #[must_use]
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.reports = Arc::new(ReportCounters::of(metrics));
        self.handshakes = super::tls::HandshakeCounters::of(metrics);
        self.refusals = Refusals::of(metrics);
        self
    }

    /// Setting the returned flag ends every open stream with `Unavailable`,
    /// telling agents to reconnect.
    fn stopper(&self) -> Arc<watch::Sender<bool>> {
        Arc::clone(&self.stopping)
    }
}

/// What the gate in front of the service ([`super::gate`]) found the call's
/// bearer to be, from its headers, before any of its body was read.
fn admitted<T>(request: &Request<T>) -> Result<Authenticated, Status> {
    request
        .extensions()
        .get::<Authenticated>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// Refuses the token of a Pod that is gone.
fn pod_deleted(identity: &AgentIdentity) -> Status {
    info!(pod = %identity.pod_name, "agent refused: its pod was deleted");
    Status::unauthenticated("the pod the token is bound to was deleted")
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeHealthRpc for HealthService {
    type ReportStream = ReportStream;

    async fn check_in(
        &self,
        request: Request<CheckInRequest>,
    ) -> Result<Response<CheckInResponse>, Status> {
        let identity = admitted(&request)?.identity;
        if identity
            .pod_uid
            .as_deref()
            .is_some_and(|uid| self.bound_pods().is_deleted(uid))
        {
            return Err(pod_deleted(&identity));
        }
        let CheckInRequest { hello, report } = request.into_inner();
        let (Some(hello), Some(report)) = (hello, report) else {
            return Err(Status::invalid_argument(
                "a check-in carries a Hello and a report",
            ));
        };
        check_hello(&identity, &hello)?;
        debug!(node = %identity.node_name, sequence = report.sequence, "agent check-in");
        let checked = self
            .registry
            .check_in(&identity.node_name, &hello, report, Instant::now());
        self.reports.count(checked.kind);
        Ok(Response::new(CheckInResponse {
            expected_config: Some(expected_config(&self.options, &self.registry)),
            reprobe: checked.reprobe.map(|reason| ReprobeRequest { reason }),
        }))
    }

    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let authenticated = admitted(&request)?;
        let token_expires = stream_deadline(authenticated.expires_at, SystemTime::now());
        let identity = authenticated.identity;
        // Followed from before the Hello: a deletion meanwhile is not missed.
        let pod = match identity.pod_uid.as_deref() {
            Some(uid) => Some(
                self.bound_pods()
                    .follow(uid)
                    .ok_or_else(|| pod_deleted(&identity))?,
            ),
            None => None,
        };
        let mut inbound = request.into_inner();

        let first = tokio::time::timeout(self.options.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello received in time"))??;
        let Some(AgentMessage {
            message: Some(agent_message::Message::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        check_hello(&identity, &hello)?;

        let node = identity.node_name;
        let session = self.registry.connect(&node, &hello, Instant::now());
        info!(
            %node,
            agent_version = ?hello.agent_version,
            boot_id = ?hello.boot_id,
            "agent connected"
        );
        let agent = AgentStream {
            mailbox: self.registry.attach(&node, session),
            inbound,
            registry: self.registry.clone(),
            reports: Arc::clone(&self.reports),
            node,
            session,
            stopping: self.stopping.subscribe(),
            config: Some(expected_config(&self.options, &self.registry)),
            finished: false,
            token_expires,
            pod,
        };
        let outbound = futures::stream::unfold(agent, |mut agent| async move {
            let message = agent.next().await?;
            Some((message, agent))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// One agent's open stream, both ways. The response stream that hyper polls
/// also reads the agent's messages, so an agent costs one state machine, not
/// a task and a channel besides: the coordinator holds thousands of these.
/// Dropping it (the agent went away, or the stream ended) marks the node
/// disconnected.
struct AgentStream {
    inbound: Streaming<AgentMessage>,
    mailbox: Arc<Mailbox>,
    registry: HealthRegistry,
    reports: Arc<ReportCounters>,
    node: String,
    session: u64,
    stopping: watch::Receiver<bool>,
    /// Sent first, then None.
    config: Option<ExpectedConfig>,
    /// Set after a final status, which ends the stream.
    finished: bool,
    /// When the agent's token stops being valid: the stream ends then and
    /// the agent reconnects with its rotated token.
    token_expires: tokio::time::Instant,
    /// The Pod the token is bound to: its deletion ends the stream.
    pod: Option<PodFollower>,
}

impl AgentStream {
    /// The next message for the agent, reading the agent's messages until
    /// there is one; None ends the stream.
    async fn next(&mut self) -> Option<Result<CoordinatorMessage, Status>> {
        if self.finished {
            return None;
        }
        if let Some(config) = self.config.take() {
            return Some(Ok(CoordinatorMessage {
                message: Some(coordinator_message::Message::ExpectedConfig(config)),
            }));
        }
        let Self {
            inbound,
            mailbox,
            registry,
            reports,
            node,
            session,
            stopping,
            token_expires,
            pod,
            ..
        } = self;
        let last_word = loop {
            tokio::select! {
                () = tokio::time::sleep_until(*token_expires) => {
                    break Status::unauthenticated("the token expired: reconnect with a fresh one");
                }
                () = async {
                    match pod {
                        Some(pod) => pod.deleted().await,
                        None => std::future::pending().await,
                    }
                } => {
                    break Status::unauthenticated("the pod the token is bound to was deleted");
                }
                // The watch guard is not Send: drop it inside the branch future.
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    break Status::unavailable("coordinator shutting down");
                }
                () = mailbox.woken() => {
                    if let Some(reason) = mailbox.take_reprobe() {
                        return Some(Ok(CoordinatorMessage {
                            message: Some(coordinator_message::Message::Reprobe(ReprobeRequest { reason })),
                        }));
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(AgentMessage { message: Some(agent_message::Message::Report(report)) })) => {
                        debug!(%node, sequence = report.sequence, "health report");
                        match registry.report(node, *session, report, Instant::now()) {
                            Some(kind) => reports.count(kind),
                            // A newer stream for this node took over.
                            None => return None,
                        }
                    }
                    Ok(Some(AgentMessage { message: Some(agent_message::Message::Hello(_)) })) => {
                        break Status::invalid_argument("Hello may only be sent once");
                    }
                    // A message kind from a newer agent: ignore, for compatibility.
                    Ok(Some(AgentMessage { message: None })) => {}
                    Ok(None) => return None,
                    Err(status) => {
                        debug!(%node, ?status, "agent stream failed");
                        return None;
                    }
                },
            }
        };
        self.finished = true;
        Some(Err(last_word))
    }
}

impl Drop for AgentStream {
    fn drop(&mut self) {
        self.registry.disconnect(&self.node, self.session);
        info!(node = %self.node, "agent disconnected");
    }
}

/// When a stream authenticated with a token expiring at `expires_at` must
/// end: a little before, by up to a tenth of the time left (at most a
/// minute), so agents whose tokens were issued together do not all
/// reconnect in the same second.
fn stream_deadline(expires_at: SystemTime, now: SystemTime) -> tokio::time::Instant {
    let left = expires_at.duration_since(now).unwrap_or_default();
    let window = (left / 10).min(Duration::from_secs(60));
    let spread = u64::from(
        now.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos(),
    );
    let window_nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1);
    let jitter = Duration::from_nanos(spread % window_nanos);
    tokio::time::Instant::now() + left.saturating_sub(jitter)
}

/// Streams one connection may carry: an agent needs one (two while a
/// reconnect overlaps).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 2;
/// Flow-control windows before authentication: what a peer can make the
/// coordinator buffer per stream and per connection. A report is a few KiB.
pub const STREAM_WINDOW: u32 = 64 * 1024;
pub const CONNECTION_WINDOW: u32 = 128 * 1024;
/// The largest header block (the bearer token is about 1 KiB).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// The largest agent message accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// HTTP/2 pings on idle connections: a peer that vanished (node down,
/// partition) is dropped after the timeout instead of holding its state.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams a peer may make the server reset for protocol errors before the
/// connection is closed (h2's default is 1,024; RUSTSEC-2024-0003 style
/// floods need many).
pub const MAX_LOCAL_ERROR_RESETS: usize = 32;
/// Streams a peer may open and reset before they are accepted.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 16;

/// Serves the health channel over TLS on `listener` until `shutdown`
/// resolves; then ends open agent streams and returns once they are closed.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: HealthService,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let stopper = service.stopper();
    let limits = service.options.limits;
    let counters = AcceptCounters {
        handshakes: service.handshakes.clone(),
        refusals: service.refusals.clone(),
    };
    let gate = GateLayer::new(
        service.authenticator.clone(),
        service.refusals.clone(),
        limits.bounds.request_deadline,
    );
    Server::builder()
        // At the maximum age the connection is asked to go (GOAWAY); the
        // connection itself closes if still open after the grace
        // (`super::connection`). tonic's own grace would skip the GOAWAY.
        .max_connection_age(limits.bounds.max_age)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_adaptive_window(Some(false))
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
        .accept_http1(false)
        .layer(gate)
        .add_service(NodeHealthServer::new(service).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(
            super::tls::incoming_with(listener, acceptor, limits, counters),
            async move {
                shutdown.await;
                stopper.send_replace(true);
            },
        )
        .await
}

#[cfg(test)]
mod tests;
