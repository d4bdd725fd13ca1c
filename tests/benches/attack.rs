//! The health channel under attack: 1,000 simulated agents checked in with
//! one coordinator process against the real control plane, their nodes
//! labelled runtime-ready, and then, one after another, seven attacks by a
//! client holding no valid token (but, for (d), a stolen one); (e) to (g),
//! past the TLS handshake, are in `attack/after_handshake.rs`; and (h), one
//! node's kubelet minting genuine tokens for its agent's Pod at 50 a second,
//! in `attack/minted_tokens.rs`. Prints figures; asserts nothing.
//!
//! `make bench-attack`; `ATTACK_PHASES=baseline,e` runs only the phases it
//! lists. The coordinator is the release binary, as its own
//! process (so its RSS is its own); the attacker runs on its own thread and
//! runtime in this process, as another process would compete for the two
//! cores. For the baseline and each attack, from a reset peak
//! (`/proc/<pid>/clear_refs`):
//!
//! - the coordinator's peak RSS (VmHWM) over the window;
//! - the TokenReviews it issued (by outcome) and the bearers it settled
//!   without one;
//! - how long a fresh real node-agent (`run_agent_with_status` on a fake
//!   good root, with a pod-bound token never seen before, so it needs a
//!   TokenReview) takes from its start to its first accepted check-in, and
//!   the same for a fresh simulated agent;
//! - the fewest of the 1,000 nodes carrying the runtime label, polled every
//!   second, and the connected agents' failed check-ins;
//! - the coordinator's log lines about refusals per second (it logs at
//!   info, the production default).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kata_coordinator::api::KataConfig;
use kata_coordinator::metrics::{
    REFUSAL_REASONS, REVIEW_AUTHENTICATED, REVIEW_ERROR, REVIEW_REJECTED, TOKEN_CACHED,
    TOKEN_LIMITED, TOKEN_QUEUE_FULL, TOKEN_REFUSED_UNREVIEWED,
};
use kata_coordinator::names;
use kata_node_agent::daemon::{AgentOptions, AgentStatus, run_agent_with_status};
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    AgentMessage, CheckInRequest, HealthReport, Hello, ProbeOutcome, ProbeStatus, agent_message,
};
use kata_tests::api_objects::create_node;
use kata_tests::api_objects::pod_bound_token;
use kata_tests::bench_support::{
    AgentCounts, BoxError, SimulatedAgent, healthy_outcomes, memory, reset_peak,
};
use kata_tests::coordinator::CoordinatorProcess;
use kata_tests::demo_world::{
    AGENT_ACCOUNT, AUDIENCE, NAMESPACE, create_agent_identity, free_addr,
};
use kata_tests::eventually;
use kata_tests::host_root::FakeHost;
use kata_tests::http::http_get;
use kata_tests::http::metric_value;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::pki::{TlsFiles, forge};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[path = "attack/after_handshake.rs"]
mod after_handshake;
#[path = "attack/minted_tokens.rs"]
mod minted_tokens;

const AGENTS: usize = 1000;
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long each attack (and the baseline) lasts, at least.
const WINDOW: Duration = Duration::from_secs(30);
/// From the attack's start to the fresh agents' start: the attack is in
/// full swing when they come.
const RAMP: Duration = Duration::from_secs(2);
/// How long a fresh agent is given for its first check-in.
const FRESH_PATIENCE: Duration = Duration::from_secs(60);
const SETUP_CONCURRENCY: usize = 32;
const SERVER_NAME: &str = "localhost";
const CONNECTED: &str = "kata_operator_connected_agents";
const REVIEWS: &str = "kata_operator_token_reviews_total";
const NOT_REVIEWED: &str = "kata_operator_tokens_not_reviewed_total";
const REFUSED: &str = "kata_operator_health_refused_total";

/// Attack (a): junk-bearer calls, over few connections, many in flight.
const JUNK_CALLS: u64 = 50_000;
const JUNK_CONNECTIONS: usize = 4;
const JUNK_IN_FLIGHT: usize = 256;
/// Attack (b): connections that never finish the TLS handshake.
const STALLED_HANDSHAKES: usize = 1000;
/// Attack (c): idle sockets, all replaced every second.
const IDLE_SOCKETS: usize = 64;
/// Attack (d): the size of each message, and senders at once per bearer.
const HUGE_MESSAGE: usize = 16 * 1024 * 1024;
const HUGE_SENDERS: usize = 2;

/// How long each attack past the handshake ((e) to (h)) lasts, at least.
const LONG_WINDOW: Duration = Duration::from_secs(120);
/// Connections one address may hold: above the 1,000 agents' (all on
/// 127.0.0.1, and all at once when they start), below what attack (g)
/// opens from its one address.
const PER_PEER_CAP: usize = 1100;

const TARGET_RSS_MIB: f64 = 200.0;
const TARGET_REAL_AGENT: Duration = Duration::from_secs(2);

/// Everything the phases share.
struct World {
    client: kube::Client,
    coordinator: CoordinatorProcess,
    grpc: SocketAddr,
    tls: TlsFiles,
    endpoint: Endpoint,
    /// A token of one of the 1,000 nodes, as an attacker who stole one has.
    stolen_token: String,
    /// The node of [`Self::stolen_token`]: (h) mints tokens for its agent's Pod.
    stolen_node: String,
    counts: Arc<AgentCounts>,
    runtime_label: String,
}

/// What one phase measured.
struct Figures {
    phase: &'static str,
    /// What the attacker did, in its own words.
    attack: String,
    window: Duration,
    peak_rss: f64,
    reviews: Outcomes,
    not_reviewed: Outcomes,
    /// The agents' port's refusals, by reason.
    refused: Outcomes,
    real_agent: Result<Duration, String>,
    simulated_agent: Result<Duration, String>,
    fewest_labelled: usize,
    failed_check_ins: u64,
    /// The connected agents' failed check-ins, by cause.
    failure_causes: BTreeMap<String, u64>,
    /// Lines the coordinator logged about refusals, per second of the window.
    refusal_lines_per_second: f64,
}

/// The memory limit of the coordinator's container in deploy/base/coordinator.yaml.
const SHIPPED_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

/// The connection cap the shipped coordinator runs with: sized from its
/// container's memory limit, as inside its cgroup (this machine's process
/// has none, and would take the 12,000 ceiling). `ATTACK_MAX_CONNECTIONS`
/// overrides it.
fn shipped_connection_cap() -> usize {
    std::env::var("ATTACK_MAX_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            kata_coordinator::health::connection::connection_cap(
                Some(SHIPPED_MEMORY_LIMIT),
                kata_coordinator::health::tls::MAX_CONNECTIONS,
            )
        })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    println!(
        "connection cap {} (the shipped 512 Mi memory limit's; ATTACK_MAX_CONNECTIONS overrides)",
        shipped_connection_cap()
    );
    println!(
        "health channel under attack: {AGENTS} simulated agents (a check-in every {} s), \
         each attack for at least {} s",
        HEARTBEAT.as_secs(),
        WINDOW.as_secs()
    );
    let plane = control_plane_with_operator_api().await?;
    let client = plane.client().await?;
    create_agent_identity(&client).await?;
    let setup = Instant::now();
    let tokens = nodes_with_tokens(&client, (0..AGENTS).map(|i| format!("worker-{i:05}"))).await?;
    println!(
        "set-up: {AGENTS} nodes, pods and tokens in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let tls = TlsFiles::generate()?;
    let grpc = free_addr()?;
    let coordinator = CoordinatorProcess::start(
        &plane,
        &[
            // The production default, so refusals are logged as they would be.
            "--log-level=info",
            &format!("--agent-max-connections-per-peer={PER_PEER_CAP}"),
            &format!("--agent-max-connections={}", shipped_connection_cap()),
            &format!("--grpc-listen={grpc}"),
            &format!("--tls-cert-file={}", tls.cert.display()),
            &format!("--tls-key-file={}", tls.key.display()),
            &format!("--heartbeat-seconds={}", HEARTBEAT.as_secs()),
            "--eligibility-join-seconds=0",
            &format!("--agent-namespace={NAMESPACE}"),
        ],
    )?;
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", grpc.port()))?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&tls.ca)?))
                .domain_name(SERVER_NAME),
        )?;
    let world = World {
        client,
        grpc,
        endpoint,
        stolen_token: tokens[0].1.clone(),
        stolen_node: tokens[0].0.clone(),
        counts: Arc::new(AgentCounts::default()),
        runtime_label: format!("{}=true", names::KATA_RUNTIME_LABEL),
        coordinator,
        tls,
    };
    let result = run(&world, tokens).await;
    if result.is_err() {
        eprintln!("--- coordinator log ---\n{}", world.coordinator.log());
    }
    result
}

async fn run(world: &World, tokens: Vec<(String, String)>) -> Result<(), BoxError> {
    settle(world, tokens).await?;
    let (endpoint, grpc) = (world.endpoint.clone(), world.grpc);
    let stolen = bearer(&world.stolen_token)?;
    let table = vec![
        phase(world, 0, ("baseline (no attack)", WINDOW), no_attack).await?,
        phase(world, 1, ("(a) junk bearers", WINDOW), {
            let (endpoint, template) = (endpoint.clone(), world.stolen_token.clone());
            move |stop| junk_bearer_calls(endpoint, template, stop)
        })
        .await?,
        phase(
            world,
            2,
            ("(b) handshakes never finished", WINDOW),
            move |stop| stalled_handshakes(grpc, stop),
        )
        .await?,
        phase(
            world,
            3,
            ("(c) idle sockets renewed", WINDOW),
            move |stop| idle_sockets(grpc, stop),
        )
        .await?,
        phase(world, 4, ("(d) 16 MiB messages", WINDOW), {
            let template = world.stolen_token.clone();
            move |stop| huge_messages(endpoint, stolen, template, stop)
        })
        .await?,
    ];
    let mut table = table;
    table.extend(past_the_handshake(world).await?);
    let table: Vec<Figures> = table.into_iter().flatten().collect();
    print_table(&table);
    Ok(())
}

/// Attacks (e) to (h), each for [`LONG_WINDOW`].
async fn past_the_handshake(world: &World) -> Result<Vec<Option<Figures>>, BoxError> {
    let (grpc, tls) = (world.grpc, after_handshake::connector(&world.tls.ca)?);
    Ok(vec![
        phase(world, 5, ("(e) idle TLS connections", LONG_WINDOW), {
            let tls = tls.clone();
            move |stop| after_handshake::idle_connections(grpc, tls, stop)
        })
        .await?,
        phase(world, 6, ("(f) unfinished junk streams", LONG_WINDOW), {
            let tls = tls.clone();
            move |stop| after_handshake::unfinished_streams(grpc, tls, stop)
        })
        .await?,
        phase(
            world,
            7,
            ("(g) one address floods", LONG_WINDOW),
            move |stop| after_handshake::connection_flood(grpc, tls, stop),
        )
        .await?,
        phase(world, 8, ("(h) one node mints tokens", LONG_WINDOW), {
            let (client, endpoint) = (world.client.clone(), world.endpoint.clone());
            let node = world.stolen_node.clone();
            move |stop| minted_tokens::minted_tokens(client, endpoint, node, stop)
        })
        .await?,
    ])
}

/// The coordinator's log lines about refused peers: the agents' port's
/// summaries, and any other line that says refused.
fn refusal_lines(log: &str) -> usize {
    log.lines().filter(|line| line.contains("refused")).count()
}

/// Creates a worker Node, a Pod of the agents' ServiceAccount on it and a
/// token bound to that Pod for each of `nodes`.
async fn nodes_with_tokens(
    client: &kube::Client,
    nodes: impl Iterator<Item = String>,
) -> Result<Vec<(String, String)>, BoxError> {
    futures::stream::iter(nodes)
        .map(|node| async move {
            create_node(client, &node, &[(names::WORKER_ROLE_LABEL, "")]).await?;
            let pod = format!("agent-{node}");
            let token = pod_bound_token(client, NAMESPACE, AGENT_ACCOUNT, &pod, &node, AUDIENCE);
            Ok::<_, BoxError>((node.clone(), token.await?))
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
}

/// Starts the 1,000 agents, waits until all are checked in, creates the
/// KataConfig and waits until every node carries the runtime label.
async fn settle(world: &World, tokens: Vec<(String, String)>) -> Result<(), BoxError> {
    let metrics = world.coordinator.metrics;
    let patience = Duration::from_secs(600);
    eventually("the coordinator's /metrics", patience, || async {
        scrape_metric(metrics, CONNECTED).await.map(|_| true)
    })
    .await?;
    let started = Instant::now();
    for (node, token) in tokens {
        let agent = SimulatedAgent::new(world.endpoint.clone(), &token, node)?;
        tokio::spawn(agent.run(HEARTBEAT, Arc::clone(&world.counts)));
    }
    eventually("every agent checked in", patience, || async {
        Ok(scrape_metric(metrics, CONNECTED).await? as usize == AGENTS)
    })
    .await?;
    println!(
        "all {AGENTS} agents checked in in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let kataconfig: KataConfig = serde_json::from_value(json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": {"name": "bench"}, "spec": {"checkNodeEligibility": true}
    }))?;
    Api::<KataConfig>::all(world.client.clone())
        .create(&PostParams::default(), &kataconfig)
        .await?;
    let created = Instant::now();
    eventually("every node labelled runtime-ready", patience, || async {
        Ok(labelled_agents(world).await.map_err(|e| e.to_string())? == AGENTS)
    })
    .await?;
    println!(
        "KataConfig created → all {AGENTS} nodes labelled {}: {:.1} s",
        world.runtime_label,
        created.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How many of the 1,000 agents' nodes carry the runtime label (the fresh
/// agents' nodes are not counted).
async fn labelled_agents(world: &World) -> Result<usize, kube::Error> {
    let labelled = Api::<Node>::all(world.client.clone())
        .list_metadata(&ListParams::default().labels(&world.runtime_label))
        .await?;
    Ok(labelled
        .items
        .iter()
        .filter(|node| {
            node.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("worker-"))
        })
        .count())
}

/// Runs `attack` for the window (longer if it says so, or while the fresh
/// agents wait) and measures the coordinator meanwhile.
async fn phase<F, Fut>(
    world: &World,
    index: usize,
    (name, window): (&'static str, Duration),
    attack: F,
) -> Result<Option<Figures>, BoxError>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: Future<Output = String>,
{
    if !selected(name) {
        return Ok(None);
    }
    let fresh = nodes_with_tokens(
        &world.client,
        ["agent", "sim"]
            .map(|kind| format!("fresh-{index}-{kind}"))
            .into_iter(),
    )
    .await?;
    let metrics = world.coordinator.metrics;
    let pid = world.coordinator.pid();
    reset_peak(pid)?;
    let (reviews, not_reviewed) = (
        Outcomes::scrape(metrics, REVIEWS, &REVIEW_OUTCOMES).await?,
        Outcomes::scrape(metrics, NOT_REVIEWED, &NOT_REVIEWED_OUTCOMES).await?,
    );
    let refused = Outcomes::scrape_by(metrics, REFUSED, "reason", &REFUSAL_REASONS).await?;
    let (failed, causes) = (world.counts.failed(), world.counts.causes());
    let lines_before = refusal_lines(&world.coordinator.log());
    let started = Instant::now();
    let attacker = Attacker::launch(attack);
    let measured = async {
        tokio::time::sleep(RAMP).await;
        let agents = tokio::join!(
            fresh_real_agent(world, &fresh[0]),
            fresh_simulated_agent(world, &fresh[1])
        );
        tokio::time::sleep_until((started + window).into()).await;
        (agents, attacker.finish().await)
    };
    let (fewest_labelled, ((real_agent, simulated_agent), attack)) =
        fewest_labelled_while(world, measured).await;
    let figures = Figures {
        phase: name,
        attack,
        window: started.elapsed(),
        peak_rss: memory(pid)?.peak,
        reviews: Outcomes::scrape(metrics, REVIEWS, &REVIEW_OUTCOMES)
            .await?
            .since(&reviews),
        not_reviewed: Outcomes::scrape(metrics, NOT_REVIEWED, &NOT_REVIEWED_OUTCOMES)
            .await?
            .since(&not_reviewed),
        refused: Outcomes::scrape_by(metrics, REFUSED, "reason", &REFUSAL_REASONS)
            .await?
            .since(&refused),
        real_agent,
        simulated_agent,
        fewest_labelled,
        failed_check_ins: world.counts.failed() - failed,
        failure_causes: causes_since(world.counts.causes(), &causes),
        refusal_lines_per_second: (refusal_lines(&world.coordinator.log()) - lines_before) as f64
            / started.elapsed().as_secs_f64(),
    };
    print_figures(&figures);
    Ok(Some(figures))
}

/// Whether the phase named `name` runs: all do, unless `ATTACK_PHASES`
/// lists some (`baseline`, `a` to `h`, comma-separated): a phase is listed
/// by the letter its name starts with in brackets.
fn selected(name: &str) -> bool {
    let Ok(list) = std::env::var("ATTACK_PHASES") else {
        return true;
    };
    let letter = name
        .strip_prefix('(')
        .and_then(|rest| rest.split(')').next())
        .unwrap_or("baseline");
    list.split(',').any(|listed| listed.trim() == letter)
}

/// The failures in `now` that were not yet in `before`, by cause.
fn causes_since(
    now: BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.into_iter()
        .map(|(cause, n)| {
            let n = n - before.get(&cause).copied().unwrap_or(0);
            (cause, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Polls the labelled count every second while `work` runs: the fewest
/// seen, and what `work` returned.
async fn fewest_labelled_while<T>(world: &World, work: impl Future<Output = T>) -> (usize, T) {
    let mut work = std::pin::pin!(work);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    let mut fewest = AGENTS;
    loop {
        tokio::select! {
            out = &mut work => return (fewest, out),
            _ = poll.tick() => {
                // A list refused under load says nothing about the labels.
                if let Ok(labelled) = labelled_agents(world).await {
                    fewest = fewest.min(labelled);
                }
            }
        }
    }
}

/// A real node-agent on a good fake root with a never-used token: the time
/// from its start to its first accepted check-in.
async fn fresh_real_agent(
    world: &World,
    (node, token): &(String, String),
) -> Result<Duration, String> {
    let host = FakeHost::good().write(
        "proc/sys/kernel/random/boot_id",
        // A fresh boot id, shaped as the kernel's (a UUID): the coordinator
        // refuses any other.
        {
            let id = rand::random::<u128>();
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}\n",
                id >> 96,
                (id >> 80) & 0xffff,
                (id >> 64) & 0xffff,
                (id >> 48) & 0xffff,
                id & 0xffff_ffff_ffff
            )
        },
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).map_err(|e| e.to_string())?;
    let mut options = AgentOptions::new(
        format!("https://127.0.0.1:{}", world.grpc.port()),
        &world.tls.ca,
        token_file,
        node.as_str(),
        host.host_root(),
    );
    options.tls_server_name = Some(SERVER_NAME.into());
    options.runner = FakeHost::runner_options();
    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let agent = tokio::spawn(run_agent_with_status(options, status_tx, async {
        let _ = stopped.await;
    }));
    let first = tokio::time::timeout(FRESH_PATIENCE, status.wait_for(|s| s.reports_sent >= 1))
        .await
        .map(|_| started.elapsed())
        .map_err(|_| {
            let last = status.borrow().last_error.clone().unwrap_or_default();
            format!("none in {} s ({last})", FRESH_PATIENCE.as_secs())
        });
    let _ = stop.send(());
    let _ = agent.await;
    first
}

/// A simulated agent with a never-used token: the time from its start to
/// its first accepted check-in (with the real agent's backoff between
/// attempts).
async fn fresh_simulated_agent(
    world: &World,
    (node, token): &(String, String),
) -> Result<Duration, String> {
    let agent = SimulatedAgent::new(world.endpoint.clone(), token, node.clone())
        .map_err(|e| e.to_string())?;
    let counts = Arc::new(AgentCounts::default());
    let started = Instant::now();
    let task = tokio::spawn(agent.run(HEARTBEAT, Arc::clone(&counts)));
    let accepted = async {
        while counts.accepted() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    };
    let first = tokio::time::timeout(FRESH_PATIENCE, accepted)
        .await
        .map_err(|_| {
            format!(
                "none in {} s ({} failed)",
                FRESH_PATIENCE.as_secs(),
                counts.failed()
            )
        });
    task.abort();
    first
}

/// The attack, on a thread and runtime of its own; told to stop through a
/// watch, and answering with what it did.
struct Attacker {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<String>,
}

impl Attacker {
    fn launch<F, Fut>(attack: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = String>,
    {
        let (stop, stopping) = watch::channel(false);
        let thread = std::thread::spawn(move || {
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(attack(stopping)),
                Err(error) => format!("no runtime for the attacker: {error}"),
            }
        });
        Self { stop, thread }
    }

    async fn finish(self) -> String {
        self.stop.send_replace(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| "the attacker panicked".into())
    }
}

/// Resolves once the phase tells the attack to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn no_attack(mut stop: watch::Receiver<bool>) -> String {
    stopped(&mut stop).await;
    "nothing".into()
}

/// (a) CheckIn calls and Report streams (alternately) with junk bearers,
/// over a few connections, as fast as they are answered, until at least
/// [`JUNK_CALLS`] are made and the window is over.
async fn junk_bearer_calls(
    endpoint: Endpoint,
    template: String,
    stop: watch::Receiver<bool>,
) -> String {
    let mut channels = Vec::new();
    for _ in 0..JUNK_CONNECTIONS {
        match endpoint.connect().await {
            Ok(channel) => channels.push(channel),
            Err(error) => return format!("cannot connect: {error}"),
        }
    }
    let bearers = match junk_bearers(&template) {
        Ok(bearers) => bearers,
        Err(error) => return format!("no junk bearers: {error}"),
    };
    let started = Instant::now();
    let tally: Tally = futures::stream::iter(0u64..)
        .take_while(|i| std::future::ready(*i < JUNK_CALLS || !*stop.borrow()))
        .map(|i| {
            let index = usize::try_from(i).unwrap_or_default();
            let client = NodeHealthClient::new(channels[index % channels.len()].clone());
            let bearer = bearers[index % bearers.len()].clone();
            junk_call(client, bearer, i % 2 == 0)
        })
        .buffer_unordered(JUNK_IN_FLIGHT)
        .collect()
        .await;
    format!(
        "{} calls in {:.1} s ({:.0}/s) over {JUNK_CONNECTIONS} connections, {JUNK_IN_FLIGHT} in flight; answers: {tally}",
        tally.total(),
        started.elapsed().as_secs_f64(),
        tally.total() as f64 / started.elapsed().as_secs_f64()
    )
}

/// One junk call: a CheckIn, or a Report stream that says Hello.
async fn junk_call(
    mut client: NodeHealthClient<tonic::transport::Channel>,
    bearer: MetadataValue<Ascii>,
    check_in: bool,
) -> Result<(), tonic::Status> {
    let hello = Hello {
        node_name: "worker-00000".into(),
        agent_version: "attacker".into(),
        boot_id: "attacker".into(),
    };
    if check_in {
        let mut request = tonic::Request::new(CheckInRequest {
            hello: Some(hello),
            report: Some(report(healthy_outcomes())),
        });
        request.metadata_mut().insert("authorization", bearer);
        client.check_in(request).await.map(|_| ())
    } else {
        let hello = AgentMessage {
            message: Some(agent_message::Message::Hello(hello)),
        };
        let mut request = tonic::Request::new(futures::stream::iter([hello]));
        request.metadata_mut().insert("authorization", bearer);
        client.report(request).await.map(|_| ())
    }
}

/// Bearers that are no live agent token: not JWTs; JWTs for another
/// audience; JWTs for ours that expired an hour ago; and forgeries, the
/// header and claims of a live agent token (`template`) under the
/// attacker's own signature. Each unique.
fn junk_bearers(template: &str) -> Result<Vec<MetadataValue<Ascii>>, BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let jwt = |claims: serde_json::Value| {
        let segment = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!(
            "{}.{}.{}",
            segment(json!({"alg": "RS256", "kid": "attacker"})),
            segment(claims),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        )
    };
    (0..300u64)
        .map(|i| {
            let subject = format!("system:serviceaccount:{NAMESPACE}:{AGENT_ACCOUNT}");
            let token = match i % 4 {
                0 => format!("junk-{i}-{}", "x".repeat(900)),
                1 => jwt(json!({"aud": ["https://kubernetes.default.svc"], "exp": now + 3600, "sub": subject, "jti": i})),
                2 => jwt(json!({"aud": [AUDIENCE], "exp": now - 3600, "sub": subject, "jti": i})),
                _ => forge(template)?,
            };
            bearer(&token)
        })
        .collect()
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, BoxError> {
    Ok(format!("Bearer {token}").parse()?)
}

fn report(outcomes: Vec<ProbeOutcome>) -> HealthReport {
    HealthReport {
        sequence: 1,
        outcomes,
        verdicts: None,
        probed_at_unix_ms: 0,
    }
}

/// (b) [`STALLED_HANDSHAKES`] TCP connections that never finish the TLS
/// handshake: half send nothing, half the first half of a real
/// ClientHello; each reopened as soon as the coordinator closes it.
async fn stalled_handshakes(grpc: SocketAddr, stop: watch::Receiver<bool>) -> String {
    let half_hello = match half_client_hello() {
        Ok(hello) => Arc::new(hello),
        Err(error) => return format!("no ClientHello: {error}"),
    };
    let opened = Arc::new(AtomicU64::new(0));
    let holders: Vec<_> = (0..STALLED_HANDSHAKES)
        .map(|i| {
            let hello = (i % 2 == 1).then(|| Arc::clone(&half_hello));
            tokio::spawn(stall(grpc, hello, stop.clone(), Arc::clone(&opened)))
        })
        .collect();
    let started = Instant::now();
    futures::future::join_all(holders).await;
    let opened = opened.load(Ordering::Relaxed);
    format!(
        "{STALLED_HANDSHAKES} held at once ({} of them half a ClientHello of {} bytes); {opened} opened in {:.0} s: each held {:.1} s on average before the coordinator closed it",
        STALLED_HANDSHAKES / 2,
        half_hello.len(),
        started.elapsed().as_secs_f64(),
        (STALLED_HANDSHAKES as f64 * started.elapsed().as_secs_f64()) / opened.max(1) as f64
    )
}

/// One stalled connection, reopened whenever the coordinator closes it.
async fn stall(
    grpc: SocketAddr,
    hello: Option<Arc<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
    opened: Arc<AtomicU64>,
) {
    while !*stop.borrow() {
        let Ok(mut tcp) = TcpStream::connect(grpc).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        if let Some(hello) = &hello {
            let _ = tcp.write_all(hello).await;
        }
        let mut buffer = [0u8; 256];
        tokio::select! {
            () = stopped(&mut stop) => return,
            // Closed by the coordinator (or an alert): open the next one.
            _ = tcp.read(&mut buffer) => {}
        }
    }
}

/// The first half of the ClientHello rustls sends for `localhost`.
fn half_client_hello() -> Result<Vec<u8>, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut hello = Vec::new();
    connection.write_tls(&mut hello)?;
    hello.truncate(hello.len() / 2);
    Ok(hello)
}

/// (c) [`IDLE_SOCKETS`] TCP sockets that send nothing, all closed and
/// replaced by new ones every second.
async fn idle_sockets(grpc: SocketAddr, mut stop: watch::Receiver<bool>) -> String {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    let mut held = Vec::with_capacity(IDLE_SOCKETS);
    let (mut opened, mut refused) = (0u64, 0u64);
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            _ = every_second.tick() => {}
        }
        held.clear();
        for _ in 0..IDLE_SOCKETS {
            match TcpStream::connect(grpc).await {
                Ok(socket) => {
                    held.push(socket);
                    opened += 1;
                }
                Err(_) => refused += 1,
            }
        }
    }
    format!("{IDLE_SOCKETS} held at once, {opened} opened ({refused} connects failed)")
}

/// (d) CheckIns whose report carries one probe message of [`HUGE_MESSAGE`]
/// bytes, [`HUGE_SENDERS`] at a time with a junk bearer and as many with a
/// valid token of one of the 1,000 nodes, each on its own connection, over
/// and over.
async fn huge_messages(
    endpoint: Endpoint,
    stolen: MetadataValue<Ascii>,
    template: String,
    stop: watch::Receiver<bool>,
) -> String {
    let junk = match junk_bearers(&template) {
        Ok(bearers) => bearers[0].clone(),
        Err(error) => return format!("no junk bearer: {error}"),
    };
    let huge = Arc::new(CheckInRequest {
        hello: Some(Hello {
            node_name: "worker-00000".into(),
            agent_version: "attacker".into(),
            boot_id: "attacker".into(),
        }),
        report: Some(report(vec![ProbeOutcome {
            name: "kvm".into(),
            status: ProbeStatus::Ok.into(),
            reason: "KvmUsable".into(),
            message: "k".repeat(HUGE_MESSAGE),
        }])),
    });
    let sender = |bearer: MetadataValue<Ascii>| {
        let (endpoint, huge, stop) = (endpoint.clone(), Arc::clone(&huge), stop.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(channel) = endpoint.connect().await else {
                return tally;
            };
            let mut client = NodeHealthClient::new(channel);
            while !*stop.borrow() {
                let mut request = tonic::Request::new(CheckInRequest::clone(&huge));
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                tally.note(&client.check_in(request).await.map(|_| ()));
            }
            tally
        })
    };
    let (junk_senders, stolen_senders): (Vec<_>, Vec<_>) = (0..HUGE_SENDERS)
        .map(|_| (sender(junk.clone()), sender(stolen.clone())))
        .unzip();
    let sum = |tallies: Vec<Result<Tally, tokio::task::JoinError>>| {
        tallies
            .into_iter()
            .flatten()
            .fold(Tally::default(), Tally::merge)
    };
    let junk = sum(futures::future::join_all(junk_senders).await);
    let stolen = sum(futures::future::join_all(stolen_senders).await);
    format!(
        "{} MiB messages, {HUGE_SENDERS} senders per bearer; junk bearer: {} sent, answers: {junk}; valid token: {} sent, answers: {stolen}",
        HUGE_MESSAGE >> 20,
        junk.total(),
        stolen.total()
    )
}

/// Calls by how they ended.
#[derive(Default)]
struct Tally(BTreeMap<String, u64>);

impl Tally {
    fn note(&mut self, result: &Result<(), tonic::Status>) {
        let code = match result {
            Ok(()) => "Ok".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        };
        *self.0.entry(code).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// One more answer described as `answer`.
    fn count(&mut self, answer: String) {
        *self.0.entry(answer).or_default() += 1;
    }

    fn merge(mut self, other: Tally) -> Tally {
        for (code, n) in other.0 {
            *self.0.entry(code).or_default() += n;
        }
        self
    }
}

impl Extend<Result<(), tonic::Status>> for Tally {
    fn extend<I: IntoIterator<Item = Result<(), tonic::Status>>>(&mut self, results: I) {
        for result in results {
            self.note(&result);
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

const REVIEW_OUTCOMES: [&str; 3] = [REVIEW_AUTHENTICATED, REVIEW_REJECTED, REVIEW_ERROR];
const NOT_REVIEWED_OUTCOMES: [&str; 4] = [
    TOKEN_REFUSED_UNREVIEWED,
    TOKEN_CACHED,
    TOKEN_QUEUE_FULL,
    TOKEN_LIMITED,
];

/// A counter family's series by outcome.
struct Outcomes(Vec<(&'static str, f64)>);

impl Outcomes {
    async fn scrape(
        metrics: SocketAddr,
        family: &str,
        outcomes: &[&'static str],
    ) -> Result<Self, BoxError> {
        Self::scrape_by(metrics, family, "outcome", outcomes).await
    }

    /// The series of `family` for each of `outcomes` of its label `label`.
    async fn scrape_by(
        metrics: SocketAddr,
        family: &str,
        label: &str,
        outcomes: &[&'static str],
    ) -> Result<Self, BoxError> {
        let (_, body) = http_get(metrics, "/metrics").await?;
        Ok(Self(
            outcomes
                .iter()
                .map(|outcome| {
                    let series = format!("{family}{{{label}=\"{outcome}\"}}");
                    (*outcome, metric_value(&body, &series).unwrap_or(0.0))
                })
                .collect(),
        ))
    }

    fn since(self, before: &Outcomes) -> Self {
        Self(
            self.0
                .into_iter()
                .zip(&before.0)
                .map(|((outcome, now), (_, then))| (outcome, now - then))
                .collect(),
        )
    }

    /// The outcomes seen at least once, or "none".
    fn nonzero(&self) -> String {
        let seen: Vec<String> = self
            .0
            .iter()
            .filter(|(_, count)| *count > 0.0)
            .map(|(outcome, count)| format!("{outcome} {count:.0}"))
            .collect();
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    }

    fn get(&self, outcome: &str) -> f64 {
        self.0
            .iter()
            .find(|(o, _)| *o == outcome)
            .map_or(0.0, |(_, n)| *n)
    }
}

impl std::fmt::Display for Outcomes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(o, n)| format!("{o} {n:.0}")).collect();
        f.write_str(&parts.join(", "))
    }
}

fn seconds(latency: &Result<Duration, String>) -> String {
    match latency {
        Ok(latency) => format!("{:.2} s", latency.as_secs_f64()),
        Err(why) => why.clone(),
    }
}

/// A figure and whether it meets its target.
fn verdict(met: bool) -> &'static str {
    if met { "ok" } else { "MISSED" }
}

fn print_figures(figures: &Figures) {
    // The fresh agents' own tokens: one review each, admitted.
    let junk_reviews = figures.reviews.get(REVIEW_REJECTED) + figures.reviews.get(REVIEW_ERROR);
    let real_fast = figures
        .real_agent
        .as_ref()
        .is_ok_and(|t| *t < TARGET_REAL_AGENT);
    println!(
        "\n== {} ({:.1} s)",
        figures.phase,
        figures.window.as_secs_f64()
    );
    println!("  attacker: {}", figures.attack);
    println!(
        "  coordinator peak RSS: {:.1} MiB (target < {TARGET_RSS_MIB:.0}: {})",
        figures.peak_rss,
        verdict(figures.peak_rss < TARGET_RSS_MIB)
    );
    println!(
        "  TokenReviews: {} (the two fresh agents need 2 authenticated; reviews of junk {junk_reviews:.0}, target 0: {})",
        figures.reviews,
        verdict(junk_reviews == 0.0)
    );
    println!(
        "  bearers settled without a review: {}",
        figures.not_reviewed
    );
    println!(
        "  fresh real agent, start → first accepted check-in: {} (target < {} s: {})",
        seconds(&figures.real_agent),
        TARGET_REAL_AGENT.as_secs(),
        verdict(real_fast)
    );
    println!(
        "  fresh simulated agent, first accepted check-in: {}",
        seconds(&figures.simulated_agent)
    );
    println!(
        "  coordinator log lines about refusals: {:.2}/s; refusals by reason: {}",
        figures.refusal_lines_per_second,
        figures.refused.nonzero()
    );
    println!(
        "  fewest of the {AGENTS} nodes labelled runtime-ready: {} (target {AGENTS}: {}); connected agents' failed check-ins: {}",
        figures.fewest_labelled,
        verdict(figures.fewest_labelled == AGENTS),
        figures.failed_check_ins
    );
    for (cause, n) in &figures.failure_causes {
        println!("    {n} failed: {cause}");
    }
}

fn print_table(table: &[Figures]) {
    println!(
        "\n| phase | window | peak RSS (target < 200 MiB) | TokenReviews authenticated / rejected / error (target: 2 / 0 / 0) | not reviewed: refused / cached / queue full / limited | real agent's first check-in (target < 2 s) | simulated agent's first check-in | fewest labelled of {AGENTS} (target {AGENTS}) | agents' failed check-ins | refusal log lines/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in table {
        let outcome = |o: &Outcomes, name| format!("{:.0}", o.get(name));
        println!(
            "| {} | {:.0} s | {:.1} MiB | {} / {} / {} | {} / {} / {} / {} | {} | {} | {} | {} | {:.2} |",
            f.phase,
            f.window.as_secs_f64(),
            f.peak_rss,
            outcome(&f.reviews, REVIEW_AUTHENTICATED),
            outcome(&f.reviews, REVIEW_REJECTED),
            outcome(&f.reviews, REVIEW_ERROR),
            outcome(&f.not_reviewed, TOKEN_REFUSED_UNREVIEWED),
            outcome(&f.not_reviewed, TOKEN_CACHED),
            outcome(&f.not_reviewed, TOKEN_QUEUE_FULL),
            outcome(&f.not_reviewed, TOKEN_LIMITED),
            seconds(&f.real_agent),
            seconds(&f.simulated_agent),
            f.fewest_labelled,
            f.failed_check_ins,
            f.refusal_lines_per_second
        );
    }
}
