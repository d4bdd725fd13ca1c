//! `node-agent run`: the long-running agent that probes its node and checks
//! in with the coordinator.
//!
//! A check-in is one `CheckIn` call (Hello and report) on a connection that
//! is closed after the reply: after the first probe cycle, whenever a
//! probe's status or reason or a verdict changes (probing every
//! `probe_interval`), and as a heartbeat every `heartbeat_interval` (the
//! coordinator's value once it has sent one). No connection is held open
//! between check-ins, so the coordinator keeps no connection state per agent
//! (an idle HTTP/2 + TLS connection costs it about 30 KiB; 140 MiB at 5,000
//! nodes). The reply's `ExpectedConfig` is applied from the next cycle; a
//! `ReprobeRequest` in it gets a cycle and a check-in at once. A failed
//! check-in is tried again after a jittered exponential backoff; the token
//! and CA files are read afresh for every attempt, because projected tokens
//! and service-CA bundles rotate under a running agent.
//!
//! With a metrics address, the agent also serves `GET /metrics` there
//! ([`crate::metrics`]): its probes, verdicts and stream, and the Kata
//! sandboxes' own metrics, relayed from their shims.
//!
//! [`run_agent`] is the whole daemon minus signal handling, so tests and
//! benchmarks run many agents in one process. The decisions live in
//! [`policy`] as pure functions.

pub mod policy;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kata_proto::health::v1 as proto;
use proto::node_health_client::NodeHealthClient;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ExpectedConfig;
use crate::liveness::{self, Liveness};
use crate::metrics::{AgentMetrics, MetricsEndpoint};
use crate::probe::HostRoot;
use crate::runner::{ProbeRunner, RunnerOptions};
use crate::sandbox_metrics::{SandboxScraper, ScrapeLimits};
pub use policy::{Backoff, Cycle, Directive, ReportTracker, SendReason};

/// The version sent in `Hello`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the kernel publishes the current boot's id (under the host root).
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// How long a check-in may take once connected: the coordinator answers
/// from memory, or after one TokenReview.
const CHECK_IN_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything `node-agent run` needs; build with [`AgentOptions::new`] and
/// adjust the public fields.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `https://HOST:PORT` of the coordinator's health service.
    pub coordinator: String,
    /// PEM bundle the coordinator's certificate must chain to.
    pub ca_file: PathBuf,
    /// The projected ServiceAccount token, re-read at every connect.
    pub token_file: PathBuf,
    /// The name to verify in the coordinator's certificate, when it is not
    /// the host of `coordinator`.
    pub tls_server_name: Option<String>,
    pub node_name: String,
    pub host_root: HostRoot,
    pub runner: RunnerOptions,
    /// What to expect until the coordinator sends its own configuration.
    pub expected: ExpectedConfig,
    pub probe_interval: Duration,
    /// Until the coordinator sends its own.
    pub heartbeat_interval: Duration,
    pub backoff: Backoff,
    /// For TCP connect plus the TLS handshake.
    pub connect_timeout: Duration,
    /// Where to serve `GET /metrics` (port 0: any free port, published in
    /// [`AgentStatus::metrics_address`]); `None` serves none.
    pub metrics_address: Option<SocketAddr>,
    /// Bounds of the Kata sandbox scrape behind each `/metrics` request.
    pub sandbox_metrics: ScrapeLimits,
    /// How long without a probe cycle or a connection attempt before
    /// `/healthz` fails; `None`: [`liveness::stall_limit`] of the intervals.
    pub liveness_stall_limit: Option<Duration>,
}

impl AgentOptions {
    pub fn new(
        coordinator: impl Into<String>,
        ca_file: impl Into<PathBuf>,
        token_file: impl Into<PathBuf>,
        node_name: impl Into<String>,
        host_root: HostRoot,
    ) -> Self {
        Self {
            coordinator: coordinator.into(),
            ca_file: ca_file.into(),
            token_file: token_file.into(),
            tls_server_name: None,
            node_name: node_name.into(),
            host_root,
            runner: RunnerOptions::default(),
            expected: ExpectedConfig::default(),
            probe_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            metrics_address: None,
            sandbox_metrics: ScrapeLimits::default(),
            liveness_stall_limit: None,
        }
    }
}

/// What the agent has done so far, published for tests, benchmarks and
/// anyone embedding the agent (the CLI ignores it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Check-in attempts, successful or not.
    pub connect_attempts: u64,
    /// Whether the last check-in was accepted.
    pub connected: bool,
    /// Reports the coordinator accepted (one per successful check-in).
    pub reports_sent: u64,
    /// Why the last failed check-in failed.
    pub last_error: Option<String>,
    /// Where `/metrics` is served, once listening.
    pub metrics_address: Option<SocketAddr>,
}

/// Why the agent stopped, or why one check-in failed (the agent itself only
/// stops on a configuration it can never connect with).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid coordinator address {address:?}: {detail}")]
    InvalidCoordinator { address: String, detail: String },
    #[error("cannot serve metrics on {address}: {source}")]
    MetricsAddress {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {detail}")]
    BadToken { path: String, detail: &'static str },
    /// With the error's whole chain: tonic's own message is only
    /// "transport error", which tells an operator nothing.
    #[error("cannot connect to the coordinator: {0}")]
    Connect(String),
    #[error("the coordinator refused the check-in: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
}

impl DaemonError {
    fn connect(error: &tonic::transport::Error) -> Self {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Layers often repeat their inner error's words; say them once.
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        DaemonError::Connect(text)
    }

    fn read(path: &Path, source: io::Error) -> Self {
        DaemonError::Read {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs the agent until `shutdown` resolves (then returns `Ok`), retrying
/// every connection or stream failure. Returns an error only when the
/// options can never work (a malformed or non-TLS coordinator address).
pub async fn run_agent(
    options: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_agent_with_status(
        options,
        watch::Sender::new(AgentStatus::default()),
        shutdown,
    )
    .await
}

/// [`run_agent`], publishing its progress on `status`.
pub async fn run_agent_with_status(
    options: AgentOptions,
    status: watch::Sender<AgentStatus>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let span = info_span!("node_agent", node = %options.node_name);
    async move {
        let endpoint = endpoint(&options)?;
        let metrics = AgentMetrics::default();
        let liveness = Liveness::new(options.liveness_stall_limit.unwrap_or_else(|| {
            liveness::stall_limit(
                options.probe_interval,
                options.backoff.max,
                options.connect_timeout,
            )
        }));
        // Aborted when the agent returns, so the port closes with it.
        let _server = match options.metrics_address {
            Some(address) => {
                let endpoint = metrics_endpoint(&options, metrics.clone(), liveness.clone());
                let server = serve_metrics(address, endpoint).await?;
                status.send_modify(|s| s.metrics_address = Some(server.address));
                Some(server)
            }
            None => None,
        };
        let mut agent = Agent::new(options, endpoint, status, metrics, liveness);
        agent.run(shutdown).await;
        info!("shut down");
        Ok(())
    }
    .instrument(span)
    .await
}

/// The `/metrics` server task; dropping it stops the server.
struct MetricsServer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `address` (failing the agent: a port it was told to use and
/// cannot is a configuration to fix, not to ignore) and serves on it.
async fn serve_metrics(
    address: SocketAddr,
    endpoint: MetricsEndpoint,
) -> Result<MetricsServer, DaemonError> {
    let bind_error = |source| DaemonError::MetricsAddress { address, source };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let endpoint = Arc::new(endpoint);
    info!(address = %bound, "serving metrics");
    let task = tokio::spawn(crate::metrics::serve(listener, endpoint).in_current_span());
    Ok(MetricsServer {
        address: bound,
        task,
    })
}

/// `/metrics` with the sandboxes under the host root, and `/healthz`.
fn metrics_endpoint(
    options: &AgentOptions,
    metrics: AgentMetrics,
    liveness: Liveness,
) -> MetricsEndpoint {
    let scraper = SandboxScraper::new(options.host_root.clone(), options.sandbox_metrics);
    MetricsEndpoint::new(metrics, Some(scraper)).with_liveness(liveness)
}

/// The coordinator's endpoint without TLS (added per connect, as the CA file
/// may change). Plain `http` is refused: reports and the token must not
/// travel in clear.
fn endpoint(options: &AgentOptions) -> Result<Endpoint, DaemonError> {
    let invalid = |detail: String| DaemonError::InvalidCoordinator {
        address: options.coordinator.clone(),
        detail,
    };
    let endpoint = Endpoint::from_shared(options.coordinator.clone())
        .map_err(|err| invalid(err.to_string()))?;
    if endpoint.uri().scheme_str() != Some("https") {
        return Err(invalid("the scheme must be https".to_owned()));
    }
    if endpoint.uri().host().is_none() {
        return Err(invalid("no host".to_owned()));
    }
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        // A coordinator that vanished without closing the connection (node
        // down, network partition) is noticed by the missing pings instead
        // of leaving the agent waiting on a dead stream.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Reads the boot id under the host root; empty when unreadable (a missing
/// id only costs the coordinator its reboot detection).
pub fn read_boot_id(root: &HostRoot) -> String {
    match root.read_file(BOOT_ID_PATH, 256) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(error) => {
            warn!(%error, "cannot read the boot id; sending none");
            String::new()
        }
    }
}

/// The `authorization` value for a token file's contents.
pub fn bearer_value(path: &Path, token: &str) -> Result<MetadataValue<Ascii>, DaemonError> {
    let bad = |detail| DaemonError::BadToken {
        path: path.display().to_string(),
        detail,
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(bad("the token file is empty"));
    }
    // Stricter than a header value (which admits Latin-1 and spaces): a
    // token is base64url, and anything else is a wrong file.
    let not_token = || bad("the token is not printable ASCII without spaces");
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(not_token());
    }
    let mut value: MetadataValue<Ascii> =
        format!("Bearer {token}").parse().map_err(|_| not_token())?;
    // HPACK "never indexed": the token is not kept in either side's header
    // compression table for the connection's life (the coordinator holds
    // thousands of connections), nor exposed to compression side channels.
    value.set_sensitive(true);
    Ok(value)
}

struct Agent {
    options: AgentOptions,
    endpoint: Endpoint,
    /// The endpoint with TLS for the CA bundle it was built from. Kept
    /// across check-ins because its TLS client keeps the session ticket of
    /// the last handshake, so the next one resumes (no certificate to send
    /// or verify); rebuilt when the bundle changes.
    tls_endpoint: Option<(Vec<u8>, Endpoint)>,
    runner: ProbeRunner,
    heartbeat: Duration,
    probe_interval: Duration,
    status: watch::Sender<AgentStatus>,
    metrics: AgentMetrics,
    liveness: Liveness,
}

impl Agent {
    fn new(
        options: AgentOptions,
        endpoint: Endpoint,
        status: watch::Sender<AgentStatus>,
        metrics: AgentMetrics,
        liveness: Liveness,
    ) -> Self {
        let runner = ProbeRunner::with_options(
            options.expected.clone(),
            options.host_root.clone(),
            options.runner.clone(),
        );
        Self {
            heartbeat: options.heartbeat_interval.max(policy::MIN_INTERVAL),
            probe_interval: options.probe_interval.max(policy::MIN_INTERVAL),
            endpoint,
            tls_endpoint: None,
            runner,
            options,
            status,
            metrics,
            liveness,
        }
    }

    /// The endpoint with TLS for the CA bundle `ca`: the last one while the
    /// bundle is the same.
    fn tls_endpoint(&mut self, ca: Vec<u8>) -> Result<Endpoint, DaemonError> {
        if let Some((built_for, endpoint)) = &self.tls_endpoint
            && *built_for == ca
        {
            return Ok(endpoint.clone());
        }
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        if let Some(name) = &self.options.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = self
            .endpoint
            .clone()
            .tls_config(tls)
            .map_err(|err| DaemonError::connect(&err))?;
        self.tls_endpoint = Some((ca, endpoint.clone()));
        Ok(endpoint)
    }

    /// Probes and checks in until `shutdown`. A check-in that fails is
    /// tried again after the backoff, with the latest cycle; the failure
    /// count starts again at the next one that succeeds.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tracker = ReportTracker::new();
        let mut latest: Option<Cycle> = None;
        let mut probe_at = Instant::now();
        let mut requested = false;
        let mut failures = 0u32;
        // After a failed check-in: when to try again.
        let mut retry_at: Option<Instant> = None;
        loop {
            let check_in_at = retry_at.or_else(|| tracker.heartbeat_due(self.heartbeat));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                () = sleep_until(probe_at) => {
                    let outcomes = self.runner.run_cycle().await;
                    let cycle = Cycle::new(outcomes, SystemTime::now());
                    let ready = if cycle.verdicts.runtime_ready {
                        self.runner.ready_profiles().await
                    } else {
                        Vec::new()
                    };
                    let cycle = cycle.with_ready_profiles(ready);
                    self.liveness.progress();
                    self.metrics.observe_cycle(
                        &cycle.outcomes,
                        cycle.verdicts,
                        self.runner.last_durations(),
                    );
                    latest = Some(cycle);
                    probe_at = Instant::now() + self.probe_interval;
                }
                () = until(check_in_at) => {}
            }
            let Some(cycle) = &latest else { continue };
            let now = Instant::now();
            let reason = match retry_at {
                Some(at) if now < at => continue,
                Some(_) => Some(SendReason::Retry),
                None => tracker.decide(cycle, requested, now, self.heartbeat),
            };
            let Some(reason) = reason else { continue };
            if reason == SendReason::Retry {
                self.metrics.observe_retry();
            }
            let report = policy::build_report(tracker.sequence() + 1, cycle);
            let outcome = tokio::select! {
                biased;
                () = &mut shutdown => return,
                outcome = self.check_in(report) => outcome,
            };
            match outcome {
                Ok(reply) => {
                    failures = 0;
                    retry_at = None;
                    requested = false;
                    let sequence = tracker.record(cycle, Instant::now());
                    debug!(
                        sequence,
                        ?reason,
                        kvm_capable = cycle.verdicts.kvm_capable,
                        runtime_ready = cycle.verdicts.runtime_ready,
                        "checked in"
                    );
                    for directive in policy::interpret_reply(reply) {
                        match self.apply(directive) {
                            Then::Nothing => {}
                            Then::Probe => probe_at = Instant::now(),
                            Then::ProbeAndReport => {
                                probe_at = Instant::now();
                                requested = true;
                            }
                        }
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self.options.backoff.delay(failures, rand::random::<f64>());
                    warn!(%error, retry_in = ?delay, failures, "check-in failed; will retry");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(error.to_string());
                    });
                    self.metrics.set_connected(false);
                    retry_at = Some(Instant::now() + delay);
                }
            }
        }
    }

    /// One check-in on a connection of its own, closed when it returns, so
    /// the coordinator holds nothing for this agent between check-ins. The
    /// token and CA are read afresh: both rotate under a running agent.
    async fn check_in(
        &mut self,
        report: proto::HealthReport,
    ) -> Result<proto::CheckInResponse, DaemonError> {
        self.liveness.progress();
        self.status.send_modify(|s| s.connect_attempts += 1);
        let options = &self.options;
        let token = tokio::fs::read_to_string(&options.token_file)
            .await
            .map_err(|err| DaemonError::read(&options.token_file, err))?;
        let bearer = bearer_value(&options.token_file, &token)?;
        let ca = tokio::fs::read(&options.ca_file)
            .await
            .map_err(|err| DaemonError::read(&options.ca_file, err))?;
        let hello = proto::Hello {
            node_name: options.node_name.clone(),
            agent_version: AGENT_VERSION.to_owned(),
            boot_id: read_boot_id(&options.host_root),
        };
        let channel: Channel = self
            .tls_endpoint(ca)?
            .connect()
            .await
            .map_err(|err| DaemonError::connect(&err))?;
        let mut request = Request::new(proto::CheckInRequest {
            hello: Some(hello),
            report: Some(report),
        });
        request.metadata_mut().insert("authorization", bearer);
        request.set_timeout(CHECK_IN_TIMEOUT);
        let reply = tokio::time::timeout(
            CHECK_IN_TIMEOUT,
            NodeHealthClient::new(channel).check_in(request),
        )
        .await
        .map_err(|_| DaemonError::Refused {
            code: tonic::Code::DeadlineExceeded,
            message: "no reply to the check-in in time".to_owned(),
        })?
        .map_err(|status| DaemonError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        })?
        .into_inner();
        self.status.send_modify(|s| {
            s.connected = true;
            s.reports_sent += 1;
        });
        self.metrics.set_connected(true);
        self.metrics.observe_report(SystemTime::now());
        Ok(reply)
    }
}

/// What a coordinator message leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    /// Probe at once; report if something changed.
    Probe,
    /// Probe at once and report whatever the result.
    ProbeAndReport,
}

impl Agent {
    fn apply(&mut self, directive: Directive) -> Then {
        match directive {
            Directive::Configure { config, heartbeat } => {
                if let Some(heartbeat) = heartbeat {
                    self.heartbeat = heartbeat.max(policy::MIN_INTERVAL);
                }
                match config {
                    Ok(config) if config != *self.runner.config() => {
                        info!(?config, heartbeat = ?self.heartbeat, "expected configuration from the coordinator");
                        self.runner.set_config(config);
                        Then::Probe
                    }
                    Ok(_) => Then::Nothing,
                    Err(error) => {
                        warn!(%error, "invalid expected configuration from the coordinator; keeping the current one");
                        Then::Nothing
                    }
                }
            }
            Directive::Reprobe { reason } => {
                info!(%reason, "re-probe requested by the coordinator");
                Then::ProbeAndReport
            }
            Directive::Ignore => {
                debug!("unknown message from the coordinator ignored");
                Then::Nothing
            }
        }
    }
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bearer_value_trims_and_refuses_what_cannot_be_a_header() {
        let path = Path::new("/var/run/secrets/token");
        assert_eq!(
            bearer_value(path, "abc.def\n").unwrap().to_str().unwrap(),
            "Bearer abc.def"
        );
        assert!(
            bearer_value(path, "abc.def").unwrap().is_sensitive(),
            "the token must be sent as a never-indexed header"
        );
        for bad in ["", " \n", "tok\u{e9}n", "a\nb", "a b"] {
            let err = bearer_value(path, bad).unwrap_err();
            assert!(
                err.to_string().starts_with("/var/run/secrets/token: "),
                "{err}"
            );
        }
    }

    #[test]
    fn boot_id_is_trimmed_and_empty_when_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        assert_eq!(read_boot_id(&root), "");
        let file = dir.path().join(BOOT_ID_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "6f1c8a7e-2b1d-4a57-9d4c-0e6a3c1b2d3f\n").unwrap();
        assert_eq!(read_boot_id(&root), "6f1c8a7e-2b1d-4a57-9d4c-0e6a3c1b2d3f");
    }

    #[tokio::test]
    async fn addresses_that_can_never_work_stop_the_agent_at_once() {
        for address in ["http://127.0.0.1:1", "not a url", "https://"] {
            let options = AgentOptions::new(
                address,
                "/ca",
                "/token",
                "worker-0",
                HostRoot::new("/nonexistent"),
            );
            let result = run_agent(options, std::future::pending()).await;
            assert!(
                matches!(result, Err(DaemonError::InvalidCoordinator { .. })),
                "{address}: {result:?}"
            );
        }
    }
}
