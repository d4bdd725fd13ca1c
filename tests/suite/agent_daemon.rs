//! The `node-agent run` daemon ([`kata_node_agent::daemon::run_agent`])
//! against the coordinator's real health service over TLS on 127.0.0.1,
//! with its token issued and reviewed by a real API server, probing fake
//! host roots: it checks in on change and on the heartbeat, holds no
//! connection open between check-ins, comes back to a restarted
//! coordinator, and keeps retrying a bad token.
//!
//! Timing is never asserted: waits are on the registry's or the agent's
//! change signals, with a timeout only to turn a hang into a failure.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::path::PathBuf;
use std::time::Duration;

use kata_coordinator::health::{HealthOptions, NodeHealth};
use kata_node_agent::ProbeName;
use kata_node_agent::daemon::{
    AGENT_VERSION, AgentOptions, AgentStatus, Backoff, DaemonError, run_agent_with_status,
};
use kata_proto::health::v1::{HealthReport, ProbeOutcome, ProbeStatus};
use kata_tests::health_fixture::{AGENT_SA, AUDIENCE, HealthFixture, NODE_A, SERVER_NAME};
use kata_tests::host_root::{DROP_IN_DIR, FakeHost};
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const BOOT_ID: &str = "0d9c1f4e-5b7a-4e8e-9a51-2f3c4b5d6e7f";
const PATIENCE: Duration = Duration::from_secs(30);

/// A good root with the machine's real KVM mirrored in when it has one (the
/// KVM probe needs a real device), and a boot id. Returns whether the root
/// is expected to be runtime ready.
fn good_host() -> (FakeHost, bool) {
    let fresh = || FakeHost::good().write("proc/sys/kernel/random/boot_id", format!("{BOOT_ID}\n"));
    match fresh().with_real_kvm() {
        Ok(host) => (host, true),
        Err(err) => {
            println!("NOTE: no usable /dev/kvm ({err}): only the KVM probe fails, so not ready");
            (fresh(), false)
        }
    }
}

/// The agent's CA bundle and token files.
struct Files {
    _dir: TempDir,
    ca: PathBuf,
    token: PathBuf,
}

impl Files {
    fn new(ca_pem: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        let token_path = dir.path().join("token");
        std::fs::write(&ca, ca_pem).unwrap();
        std::fs::write(&token_path, token).unwrap();
        Self {
            _dir: dir,
            ca,
            token: token_path,
        }
    }
}

async fn agent_token(fixture: &HealthFixture) -> String {
    fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await
}

/// Test settings: fast probes and retries; a one-hour heartbeat of its own,
/// so any heartbeat seen is the coordinator's.
fn options(fixture: &HealthFixture, files: &Files, host: &FakeHost) -> AgentOptions {
    let mut options = AgentOptions::new(
        fixture.url(),
        &files.ca,
        &files.token,
        NODE_A,
        host.host_root(),
    );
    options.tls_server_name = Some(SERVER_NAME.to_owned());
    options.runner = FakeHost::runner_options();
    options.probe_interval = Duration::from_millis(200);
    options.heartbeat_interval = Duration::from_secs(3600);
    options.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        ..Backoff::default()
    };
    options
}

/// A running in-process agent.
struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), DaemonError>>,
    status: watch::Receiver<AgentStatus>,
}

impl Agent {
    fn spawn(options: AgentOptions) -> Self {
        let (status_tx, status) = watch::channel(AgentStatus::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_agent_with_status(options, status_tx, async {
            let _ = stopped.await;
        }));
        Self { stop, task, status }
    }

    async fn wait_status(&mut self, check: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        tokio::time::timeout(PATIENCE, self.status.wait_for(check))
            .await
            .expect("the agent never reached the expected state")
            .unwrap()
            .clone()
    }

    /// Stops the agent; it must return `Ok` (a clean shutdown).
    async fn stop(self) {
        self.stop.send(()).unwrap();
        let result = tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the agent did not stop");
        result.unwrap().unwrap();
    }
}

/// A coordinator sending `heartbeat`, a good root, the agent's files (with
/// `token`, or a real token for its node when `None`) and the agent running.
/// Tests bind every field: one left to `..` in a `let` pattern would be
/// dropped at once, deleting the root or the token under the running agent.
struct Setup {
    fixture: HealthFixture,
    host: FakeHost,
    /// Whether the root is runtime ready (it is when KVM could be mirrored).
    ready: bool,
    files: Files,
    agent: Agent,
}

/// The coordinator's default in these tests: long enough that no heartbeat
/// lands in a test that does not wait for one.
const LONG_HEARTBEAT: Duration = Duration::from_secs(3600);

async fn setup(heartbeat: Duration, token: Option<&str>) -> Setup {
    let fixture = HealthFixture::start_with(HealthOptions {
        heartbeat_interval: heartbeat,
        ..HealthOptions::default()
    })
    .await;
    let (host, ready) = good_host();
    let token = match token {
        Some(token) => token.to_owned(),
        None => agent_token(&fixture).await,
    };
    let files = Files::new(&fixture.ca_pem, &token);
    let agent = Agent::spawn(options(&fixture, &files, &host));
    Setup {
        fixture,
        host,
        ready,
        files,
        agent,
    }
}

/// The node's last report once it satisfies `check`.
async fn report_where(
    fixture: &HealthFixture,
    check: impl Fn(&HealthReport) -> bool,
) -> (NodeHealth, HealthReport) {
    fixture
        .wait_for(|registry| {
            let node = registry.get(NODE_A)?;
            let report = node.last_report.clone().filter(|report| check(report))?;
            Some((node, report))
        })
        .await
}

fn outcome(report: &HealthReport, name: ProbeName) -> &ProbeOutcome {
    report
        .outcomes
        .iter()
        .find(|outcome| outcome.name == name.as_str())
        .unwrap()
}

fn runtime_ready(report: &HealthReport) -> bool {
    report.verdicts.as_ref().unwrap().runtime_ready
}

#[kata_test]
async fn agent_says_hello_and_reports_a_ready_node() {
    let Setup {
        fixture,
        host: _host,
        ready,
        files: _files,
        agent,
    } = setup(LONG_HEARTBEAT, None).await;
    let (node, report) = report_where(&fixture, |_| true).await;
    assert!(!node.connected, "a check-in leaves no stream open");
    assert_eq!(node.agent_version, AGENT_VERSION);
    assert_eq!(node.boot_id, BOOT_ID, "read under the host root, trimmed");
    assert_eq!(report.sequence, 1, "the agent's first report");
    let names: Vec<&str> = report.outcomes.iter().map(|o| o.name.as_str()).collect();
    let all: Vec<&str> = ProbeName::ALL.iter().map(|name| name.as_str()).collect();
    assert_eq!(names, all, "every probe, in order");
    let verdicts = report.verdicts.clone().unwrap();
    assert_eq!(verdicts.runtime_ready, ready, "{report:#?}");
    assert_eq!(verdicts.kvm_capable, ready, "{report:#?}");
    assert!(report.probed_at_unix_ms > 0);

    // Nothing changes and no heartbeat falls due: the agent closed its
    // connection after the check-in, so the coordinator holds none for it.
    let closed = tokio::time::timeout(PATIENCE, async {
        while established_to(fixture.port) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{} connections to the coordinator stayed open after the check-in",
        established_to(fixture.port)
    );
    agent.stop().await;
}

/// Established TCP connections whose local port is `port`: the server's
/// ends of its clients' connections, from the kernel's own table.
fn established_to(port: u16) -> usize {
    const ESTABLISHED: &str = "01";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields
                        .get(1)
                        .and_then(|address| address.rsplit(':').next())
                        .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                    local_port == Some(port) && fields.get(3) == Some(&ESTABLISHED)
                })
                .count()
        })
        .sum()
}

#[kata_test]
async fn a_broken_drop_in_is_reported_at_once_and_so_is_the_repair() {
    // The heartbeat never falls due within the test: every report after the
    // first is sent because something changed.
    let Setup {
        fixture,
        host,
        ready,
        files: _files,
        agent,
    } = setup(LONG_HEARTBEAT, None).await;
    let (_, first) = report_where(&fixture, |report| report.sequence == 1).await;
    assert_eq!(runtime_ready(&first), ready);

    let host = host.broken_drop_in();
    let (_, broken) = report_where(&fixture, |report| report.sequence >= 2).await;
    assert_eq!(broken.sequence, 2, "unchanged cycles sent nothing");
    let drop_in = outcome(&broken, ProbeName::CrioDropIn);
    assert_eq!(drop_in.status, ProbeStatus::Fail as i32, "{drop_in:?}");
    assert!(!runtime_ready(&broken));

    let _host = host.remove(&format!("{DROP_IN_DIR}/60-broken"));
    let (_, repaired) = report_where(&fixture, |report| report.sequence >= 3).await;
    assert_eq!(repaired.sequence, 3);
    assert_eq!(runtime_ready(&repaired), ready);
    assert_eq!(
        outcome(&repaired, ProbeName::CrioDropIn),
        outcome(&first, ProbeName::CrioDropIn)
    );
    agent.stop().await;
}

#[kata_test]
async fn heartbeats_repeat_an_unchanged_report() {
    // One second, the shortest the protocol carries; the agent's own default
    // here is an hour, so these heartbeats also show it took the
    // coordinator's interval.
    let Setup {
        fixture,
        host: _host,
        ready: _ready,
        files: _files,
        mut agent,
    } = setup(Duration::from_secs(1), None).await;
    let (_, first) = report_where(&fixture, |report| report.sequence == 1).await;
    let (_, third) = report_where(&fixture, |report| report.sequence >= 3).await;
    assert_eq!(third.outcomes, first.outcomes, "nothing changed");
    assert_eq!(third.verdicts, first.verdicts);
    let status = agent.wait_status(|s| s.reports_sent >= 3).await;
    assert!(
        status.connected && status.last_error.is_none(),
        "{status:?}"
    );
    agent.stop().await;
}

#[kata_test]
async fn the_agent_comes_back_to_a_restarted_coordinator() {
    // A heartbeat every second: the check-in that finds the coordinator gone.
    let Setup {
        mut fixture,
        host: _host,
        ready,
        files: _files,
        mut agent,
    } = setup(Duration::from_secs(1), None).await;
    let (_, before) = report_where(&fixture, |_| true).await;
    let port = fixture.port;

    fixture.stop_server().await.unwrap();
    let down = agent.wait_status(|s| !s.connected).await;
    assert!(down.last_error.is_some());
    let sent_before_restart = down.reports_sent;

    fixture.start_server().await;
    assert_eq!(fixture.port, port, "same address");
    let status = agent
        .wait_status(|s| s.connected && s.reports_sent > sent_before_restart)
        .await;
    let (node, report) = report_where(&fixture, |r| r.sequence > before.sequence).await;
    assert_eq!(node.boot_id, BOOT_ID);
    assert_eq!(runtime_ready(&report), ready);
    assert!(
        report.sequence <= status.reports_sent,
        "numbered on across the outage: {} of {}",
        report.sequence,
        status.reports_sent
    );
    agent.stop().await;
}

#[kata_test]
async fn a_bad_token_keeps_the_agent_retrying_until_a_good_one_appears() {
    let Setup {
        fixture,
        host: _host,
        ready: _ready,
        files,
        mut agent,
    } = setup(LONG_HEARTBEAT, Some("not-a-token")).await;

    let status = agent.wait_status(|s| s.connect_attempts >= 3).await;
    assert_eq!(status.reports_sent, 0);
    let error = status.last_error.unwrap();
    assert!(error.contains("Unauthenticated"), "{error}");
    assert!(!agent.task.is_finished(), "the agent keeps going");
    assert!(fixture.registry.get(NODE_A).is_none());
    assert!(fixture.registry.snapshot().is_empty());

    // The token file is read at every attempt, as a rotated projected token
    // must be: a good token lets the next attempt in.
    std::fs::write(&files.token, agent_token(&fixture).await).unwrap();
    let (_, report) = report_where(&fixture, |_| true).await;
    assert_eq!(report.sequence, 1);
    assert!(agent.wait_status(|s| s.connected).await.reports_sent >= 1);
    agent.stop().await;
}

#[kata_test]
async fn a_reprobe_request_from_the_coordinator_probes_at_once() {
    // The request rides on the reply to the next check-in: the heartbeat,
    // every second here.
    let fixture = HealthFixture::start_with(HealthOptions {
        heartbeat_interval: Duration::from_secs(1),
        ..HealthOptions::default()
    })
    .await;
    let (host, ready) = good_host();
    let token = agent_token(&fixture).await;
    let files = Files::new(&fixture.ca_pem, &token);
    let mut options = options(&fixture, &files, &host);
    // No probe cycle falls due within the test (heartbeats resend the last
    // cycle): only the coordinator's request can make the agent look again.
    options.probe_interval = Duration::from_secs(3600);
    let agent = Agent::spawn(options);
    let (_, first) = report_where(&fixture, |report| report.sequence == 1).await;
    assert_eq!(runtime_ready(&first), ready);

    let _host = host.broken_drop_in();
    assert!(
        fixture
            .registry
            .request_reprobe(NODE_A, "the node now runs rendered-kata-oc-2")
    );
    // The check-in that carries the request away still reports the old
    // cycle; the one after it, the cycle the request caused.
    let (_, after) = report_where(&fixture, |report| {
        outcome(report, ProbeName::CrioDropIn).status == ProbeStatus::Fail as i32
    })
    .await;
    assert!(after.sequence >= 3, "{after:?}");
    assert!(!runtime_ready(&after));
    agent.stop().await;
}
