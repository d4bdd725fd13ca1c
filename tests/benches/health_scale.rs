//! N simulated node-agents checking in with one coordinator process against
//! the real control plane. Prints figures; asserts nothing.
//!
//! `make bench-health` (AGENTS=1000 by default; `make bench-health AGENTS=5000`;
//! NODE_SHAPE=bare for the Nodes of earlier figures instead of OpenShift
//! workers': [`kata_tests::bench_support::NodeShape`]).
//! The coordinator runs as its own release process
//! ([`kata_tests::coordinator::CoordinatorProcess`]), so its RSS and CPU are its
//! own. The agents are
//! simulated ([`kata_tests::bench_support::SimulatedAgent`]): each checks in
//! over real TLS with a real pod-bound token, a connection per check-in, at
//! once and then every heartbeat (`HEARTBEAT_SECONDS`, the coordinator's
//! default of 30 unless set). After the steady window the coordinator is
//! killed and started again: the failover's check-in storm.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kata_coordinator::names;
use kata_tests::api_objects::pod_bound_token;
use kata_tests::bench_support::{
    AgentCounts, BoxError, NodeShape, SimulatedAgent, cpu_seconds, memory, stored_size,
};
use kata_tests::control_plane::ControlPlane;
use kata_tests::coordinator::CoordinatorProcess;
use kata_tests::eventually;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::pki::TlsFiles;
use kube::api::{Api, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const NAMESPACE: &str = "kata-operator";
const AGENT_ACCOUNT: &str = "kata-node-agent";
const AUDIENCE: &str = "kata-operator.openshift.io/node-agent";
const CONCURRENCY: usize = 32;
const STEADY_WINDOW: Duration = Duration::from_secs(60);
const REVIEWS: &str = "kata_operator_token_reviews_total";
const CONNECTED: &str = "kata_operator_connected_agents";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How the coordinator is started, on a fixed gRPC address so a restarted
/// one is found where the agents look.
struct Coordinator<'a> {
    plane: &'a ControlPlane,
    grpc: SocketAddr,
    tls: TlsFiles,
    heartbeat: u64,
}

impl Coordinator<'_> {
    fn start(&self) -> Result<CoordinatorProcess, BoxError> {
        Ok(CoordinatorProcess::start(
            self.plane,
            &[
                "--log-level=warn",
                &format!("--grpc-listen={}", self.grpc),
                &format!("--tls-cert-file={}", self.tls.cert.display()),
                &format!("--tls-key-file={}", self.tls.key.display()),
                &format!("--heartbeat-seconds={}", self.heartbeat),
                // The bench times labelling, not the eligibility dwell.
                "--eligibility-join-seconds=0",
                &format!("--agent-namespace={NAMESPACE}"),
            ],
        )?)
    }
}

/// Nodes carrying `label`, listed by their metadata alone.
async fn count_labelled(nodes: &Api<Node>, label: &str) -> Result<usize, BoxError> {
    Ok(nodes
        .list_metadata(&ListParams::default().labels(label))
        .await?
        .items
        .len())
}

/// The nodes carrying `label`, as a reflector of their metadata holds them.
struct LabelledNodes {
    events: futures::stream::BoxStream<
        'static,
        Result<watcher::Event<PartialObjectMeta<Node>>, watcher::Error>,
    >,
    store: Store<PartialObjectMeta<Node>>,
}

/// Starts watching the nodes that carry `label`; returns once the watch
/// has listed them.
async fn labelled_nodes(nodes: &Api<Node>, label: &str) -> Result<LabelledNodes, BoxError> {
    let (store, writer) = reflector::store();
    let mut watch = LabelledNodes {
        events: watcher(
            Api::<PartialObjectMeta<Node>>::all(nodes.clone().into_client()),
            watcher::Config::default().labels(label),
        )
        .default_backoff()
        .reflect(writer)
        .boxed(),
        store,
    };
    while !watch.next().await? {}
    Ok(watch)
}

impl LabelledNodes {
    /// Follows one event: whether it ended a (re)list.
    async fn next(&mut self) -> Result<bool, BoxError> {
        match self.events.next().await {
            Some(Ok(event)) => Ok(matches!(event, watcher::Event::InitDone)),
            // The watch backs off and starts again (listing anew).
            Some(Err(e)) => {
                eprintln!("the labelled nodes' watch: {e}; retrying");
                Ok(false)
            }
            None => Err("the node watch ended".into()),
        }
    }

    /// Until `count` nodes carry the label.
    async fn until(&mut self, count: usize) -> Result<(), BoxError> {
        while self.store.len() < count {
            self.next().await?;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let agents = usize::try_from(env_number("AGENTS", 1000))?;
    let heartbeat = env_number("HEARTBEAT_SECONDS", 30);
    let shape = NodeShape::from_env()?;
    println!(
        "health-channel scale benchmark: {agents} simulated agents, a check-in every {heartbeat} s, {} Nodes",
        shape.name()
    );
    let plane = control_plane_with_operator_api().await?;
    let client = plane.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());

    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &PatchParams::apply("bench"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            ),
        )
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .patch(AGENT_ACCOUNT, &PatchParams::apply("bench"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_ACCOUNT}})))
        .await?;
    let names: Vec<String> = (0..agents).map(|i| format!("worker-{i:05}")).collect();
    let setup = Instant::now();
    let tokens: Vec<(String, String)> = futures::stream::iter(names.into_iter().enumerate())
        .map(|(index, node)| {
            let client = client.clone();
            async move {
                let object = shape.node(index, &node)?;
                Api::<Node>::all(client.clone())
                    .create(&PostParams::default(), &object)
                    .await?;
                let token = pod_bound_token(
                    &client,
                    NAMESPACE,
                    AGENT_ACCOUNT,
                    &format!("agent-{node}"),
                    &node,
                    AUDIENCE,
                )
                .await?;
                Ok::<_, BoxError>((node, token))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    println!(
        "set-up: {agents} nodes, pods and tokens in {:.1} s; a Node as the API server returns it: {:.1} KiB",
        setup.elapsed().as_secs_f64(),
        stored_size(&nodes, &tokens[0].0).await?
    );

    let how = Coordinator {
        plane: &plane,
        grpc: kata_tests::demo_world::free_addr()?,
        tls: TlsFiles::generate()?,
        heartbeat,
    };
    let mut coordinator = how.start()?;
    run_measurements(&client, &nodes, tokens, &how, &mut coordinator).await
}

async fn run_measurements(
    client: &kube::Client,
    nodes: &Api<Node>,
    tokens: Vec<(String, String)>,
    process: &Coordinator<'_>,
    coordinator: &mut CoordinatorProcess,
) -> Result<(), BoxError> {
    let agents = tokens.len();
    let metrics = coordinator.metrics;
    let patience = Duration::from_secs(600);
    eventually("the coordinator's /metrics", patience, || async {
        scrape_metric(metrics, CONNECTED).await.map(|_| true)
    })
    .await?;
    let pid = coordinator.pid();
    let idle = memory(pid)?;

    let ca = Certificate::from_pem(std::fs::read(&process.tls.ca)?);
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", process.grpc.port()))?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )?;
    let counts = Arc::new(AgentCounts::default());
    for (node, token) in tokens {
        let agent = SimulatedAgent::new(endpoint.clone(), &token, node)?;
        tokio::spawn(agent.run(Duration::from_secs(process.heartbeat), Arc::clone(&counts)));
    }
    let connecting = Instant::now();
    eventually("every agent checked in", patience, || async {
        Ok(scrape_metric(metrics, CONNECTED).await? as usize == agents)
    })
    .await?;
    println!(
        "all {agents} agents checked in over TLS in {:.1} s ({} check-ins refused or failed on the way, retried)",
        connecting.elapsed().as_secs_f64(),
        counts.failed()
    );
    let checked_in = memory(pid)?;
    let heap_checked_in = heap(metrics).await;
    let writes_before = scrape_metric(metrics, "kata_operator_api_writes_total").await?;

    // The measured part: from the KataConfig to every node labelled capable,
    // seen through a watch of the nodes' metadata started beforehand. (A
    // poll listing the labelled Nodes would load the API server the
    // labeller writes to with up to 5,000 whole Nodes a poll.)
    let capable_label = format!("{}=true", names::KATA_CAPABLE_LABEL);
    let mut labelled = labelled_nodes(nodes, &capable_label).await?;
    let reconciles_before = scrape_metric(metrics, "kata_operator_reconciles_total").await?;
    let created = Instant::now();
    let kataconfig: kata_coordinator::api::KataConfig = serde_json::from_value(
        json!({"apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig", "metadata": {"name": "bench"}, "spec": {"checkNodeEligibility": true}}),
    )?;
    Api::<kata_coordinator::api::KataConfig>::all(client.clone())
        .create(&PostParams::default(), &kataconfig)
        .await?;
    tokio::time::timeout(patience, labelled.until(agents))
        .await
        .map_err(|_| format!("not every node labelled capable within {patience:?}"))??;
    let converged = created.elapsed();
    let reconciles =
        scrape_metric(metrics, "kata_operator_reconciles_total").await? - reconciles_before;

    // Every node's condition written too: until no write for 5 s. (No MCO
    // runs here: the install waits for a rendered pool, so no node is moved
    // into it.)
    eventually("the coordinator quiet", patience, || async {
        let before = scrape_metric(metrics, "kata_operator_api_writes_total").await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(scrape_metric(metrics, "kata_operator_api_writes_total").await? == before)
    })
    .await?;
    let writes_install =
        scrape_metric(metrics, "kata_operator_api_writes_total").await? - writes_before;
    // Per node: one label write (both labels), one condition; plus the
    // finalizer, pool, MachineConfig and status.
    let minimum = 2 * agents + 4;

    // Steady state: heartbeats keep arriving, nothing changes.
    let cpu_start = cpu_seconds(pid)?;
    let writes_start = scrape_metric(metrics, "kata_operator_api_writes_total").await?;
    let reviews_start = scrape_metric(metrics, REVIEWS).await?;
    let accepted_start = counts.accepted();
    tokio::time::sleep(STEADY_WINDOW).await;
    let cpu_end = cpu_seconds(pid)?;
    let steady = memory(pid)?;
    let heap_steady = heap(metrics).await;
    let writes_end = scrape_metric(metrics, "kata_operator_api_writes_total").await?;
    let reviews_steady = scrape_metric(metrics, REVIEWS).await? - reviews_start;
    let check_ins = counts.accepted() - accepted_start;
    let window = STEADY_WINDOW.as_secs_f64();

    // The reference: the same server-side-apply label patches, in a bare loop
    // with the same concurrency as the labeller, against the same API server.
    let bare = Instant::now();
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    futures::stream::iter(names)
        .map(|node| async move {
            let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"bench.kata-operator/reference": "true"}}});
            nodes.patch(&node, &PatchParams::apply("bench-reference").force(), &Patch::Apply(&body)).await.map(|_| ())
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let reference = bare.elapsed();

    println!(
        "KataConfig created → all {agents} nodes labelled capable: {:.2} s ({reconciles} reconciles meanwhile)",
        converged.as_secs_f64()
    );
    println!(
        "bare loop of {agents} SSA label patches (32 at once):       {:.2} s  (ratio {:.2}, target ≤ 1.2)",
        reference.as_secs_f64(),
        converged.as_secs_f64() / reference.as_secs_f64()
    );
    println!("API writes for the install: {writes_install} (minimum {minimum})");
    println!(
        "steady state over {window:.0} s: {check_ins} check-ins ({:.0}/s), {reviews_steady} TokenReviews, {:.1} API writes/min (target 0), coordinator CPU {:.1} % of one core",
        check_ins as f64 / window,
        (writes_end - writes_start) * 60.0 / window,
        (cpu_end - cpu_start) * 100.0 / window
    );
    println!(
        "coordinator RSS: {:.1} MiB before any agent, {:.1} MiB with {agents} checked in (before the KataConfig), {:.1} MiB at steady state (target < 64 at 5,000); peak (VmHWM) {:.1} MiB (target < 128)",
        idle.now, checked_in.now, steady.now, steady.peak
    );
    println!(
        "coordinator heap (jemalloc: live objects / the pages they sit in / resident / its metadata): {heap_checked_in} with {agents} checked in; {heap_steady} at steady state"
    );

    failover(nodes, process, coordinator, agents).await
}

/// The coordinator's heap as jemalloc counts it
/// (`kata_operator_coordinator_heap_bytes`), in MiB, or why not.
async fn heap(metrics: SocketAddr) -> String {
    let mut figures = Vec::new();
    for state in ["allocated", "active", "resident", "metadata"] {
        let series = format!("kata_operator_coordinator_heap_bytes{{state=\"{state}\"}}");
        match scrape_metric(metrics, &series).await {
            Ok(bytes) => figures.push(format!("{:.1}", bytes / (1024.0 * 1024.0))),
            Err(e) => return format!("not read ({e})"),
        }
    }
    format!("{} MiB", figures.join(" / "))
}

/// The leader dies (SIGKILL: no lease released, nothing flushed) and a new
/// one starts on the same addresses. Measures how long until every agent
/// has checked in with the new process (each costing it a TokenReview: its
/// cache is empty) and whether any node lost its runtime label meanwhile.
async fn failover(
    nodes: &Api<Node>,
    process: &Coordinator<'_>,
    coordinator: &mut CoordinatorProcess,
    agents: usize,
) -> Result<(), BoxError> {
    let runtime_label = format!("{}=true", names::KATA_RUNTIME_LABEL);
    let labelled_before = count_labelled(nodes, &runtime_label).await?;
    coordinator.kill();
    let killed = Instant::now();
    *coordinator = process.start()?;
    let pid = coordinator.pid();
    let metrics = coordinator.metrics;
    let mut fewest_labelled = labelled_before;
    let mut ready_after = None;
    let all_back = loop {
        fewest_labelled = fewest_labelled.min(count_labelled(nodes, &runtime_label).await?);
        if let Ok(connected) = scrape_metric(metrics, CONNECTED).await {
            ready_after.get_or_insert_with(|| killed.elapsed());
            if connected as usize == agents {
                break killed.elapsed();
            }
        }
        if killed.elapsed() > Duration::from_secs(600) {
            return Err("the agents did not all come back within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let reviews = scrape_metric(metrics, REVIEWS).await?;
    let memory = memory(pid)?;
    // A label would be lost only after the grace: watch it a while longer.
    let watch_until = Instant::now() + Duration::from_secs(process.heartbeat * 3);
    while Instant::now() < watch_until {
        fewest_labelled = fewest_labelled.min(count_labelled(nodes, &runtime_label).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "failover (kill -9, new process): serving after {:.1} s; all {agents} agents checked in again {:.1} s after the kill, with {reviews} TokenReviews; runtime-labelled nodes {labelled_before} before, fewest {fewest_labelled} during and for {} s after; new process RSS {:.1} MiB, peak {:.1} MiB",
        ready_after.unwrap_or_default().as_secs_f64(),
        all_back.as_secs_f64(),
        process.heartbeat * 3,
        memory.now,
        memory.peak
    );
    Ok(())
}
