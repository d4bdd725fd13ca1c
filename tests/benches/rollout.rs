//! Install and uninstall at scale: NODES workers rolled through the MCO
//! simulator (fast reboots, every node at once) by the coordinator running
//! as its own process. Prints figures; asserts nothing.
//!
//! `make bench-rollout` (NODES=1000 by default; `make bench-rollout NODES=5000`;
//! NODE_SHAPE=bare for the Nodes of earlier figures instead of OpenShift
//! workers': [`kata_tests::bench_support::NodeShape`]).
//! Also read from the environment: STEADY_SECONDS (60), CHURN_SECONDS (60),
//! UNRELATED_PODS (10000).
//!
//! API requests are the API server's own counters
//! (`apiserver_request_total`), less the requests the simulator and this
//! bench made themselves: what is left is the coordinator's. Watches are
//! left out (their number does not grow with changes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kata_coordinator::api::KataConfig;
use kata_coordinator::mco::names as mco;
use kata_tests::api_requests::{Requests, api_server_requests, by_verb, entries, made_between};
use kata_tests::bench_support::{Memory, NodeShape, memory, stored_size, unadopted};
use kata_tests::coordinator::CoordinatorProcess;
use kata_tests::demo_world::wait_until_adopted;
use kata_tests::eventually;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::mco_simulator::{McoSimulator, SimulatorOptions, model};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONCURRENCY: usize = 32;
const PATIENCE: Duration = Duration::from_secs(1800);
const RECONCILES: &str = "kata_operator_reconciles_total";
/// The API server renews its own identity Lease; no Lease is the
/// coordinator's (it runs without leader election here).
const NOT_OURS: [(&str, &str, &str); 1] = [("PUT", "leases", "")];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn simulator_options() -> SimulatorOptions {
    SimulatorOptions {
        // Fast reboots; a resync slow enough that listing every node on each
        // one leaves the API server time for the coordinator.
        update_delay: Duration::from_millis(10),
        resync_interval: Duration::from_millis(250),
    }
}

/// `a` less `b`, key by key, never below 0 (the two are read a moment apart).
fn less(a: &Requests, b: &Requests) -> Requests {
    a.iter()
        .map(|(key, n)| {
            (
                key.clone(),
                (n - b.get(key).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

fn count(requests: &mut Requests, verb: &str, resource: &str, subresource: &str, n: f64) {
    *requests
        .entry((verb.into(), resource.into(), subresource.into()))
        .or_default() += n;
}

/// A phase's requests: what the API server counted, less the simulator's and
/// the bench's own.
struct Window {
    api: Requests,
    simulator: Requests,
}

impl Window {
    async fn open(
        client: &kube::Client,
        simulator: Option<&McoSimulator>,
    ) -> Result<Self, BoxError> {
        Ok(Window {
            api: api_server_requests(client).await?,
            simulator: simulator.map(McoSimulator::requests).unwrap_or_default(),
        })
    }

    async fn close(
        self,
        client: &kube::Client,
        simulator: Option<&McoSimulator>,
        bench: &Requests,
        also_excluded: &[(&str, &str, &str)],
    ) -> Result<Requests, BoxError> {
        let api = api_server_requests(client).await?;
        let simulator = less(
            &simulator.map(McoSimulator::requests).unwrap_or_default(),
            &self.simulator,
        );
        let excluded: Vec<(&str, &str, &str)> =
            NOT_OURS.iter().chain(also_excluded).copied().collect();
        let made = made_between(&self.api, &api, &excluded);
        Ok(less(&less(&made, &simulator), bench))
    }
}

fn verbs(requests: &Requests, per_minute_over: Option<Duration>) -> String {
    let verbs = by_verb(requests);
    if verbs.is_empty() {
        return "none".into();
    }
    let scale = per_minute_over.map_or(1.0, |window| 60.0 / window.as_secs_f64());
    verbs
        .iter()
        .map(|(verb, n)| format!("{verb} {:.0}", n * scale))
        .collect::<Vec<_>>()
        .join(", ")
}

fn resources(requests: &Requests) -> String {
    entries(requests)
        .iter()
        .map(|entry| {
            entry
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(':', "")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fewest and most rollouts any of `nodes` went through.
fn rollouts(simulator: &McoSimulator, nodes: &[String]) -> (usize, usize) {
    let counts = nodes.iter().map(|n| simulator.rollouts(n));
    (counts.clone().min().unwrap_or(0), counts.max().unwrap_or(0))
}

/// Polls the KataConfig every 2 s until `done` says so; counts the GETs in
/// `bench`.
async fn wait_for(
    configs: &Api<KataConfig>,
    bench: &mut Requests,
    what: &str,
    done: impl Fn(Option<&KataConfig>) -> bool,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    loop {
        let config = configs.get_opt("bench").await?;
        count(bench, "GET", "kataconfigs", "", 1.0);
        if done(config.as_ref()) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > PATIENCE {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn installed(config: Option<&KataConfig>) -> bool {
    config.and_then(|c| c.status.as_ref()).is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Installed")
    })
}

/// Every worker pool node is updated at once (an admin's setting), so that
/// the bench measures the coordinator, not `maxUnavailable: 1`.
async fn all_at_once(client: &kube::Client, pool: &str) -> Result<(), BoxError> {
    Api::<DynamicObject>::all_with(client.clone(), &model::pool_resource())
        .patch(
            pool,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": "100%"}})),
        )
        .await?;
    Ok(())
}

/// A heartbeat as the kubelet sends it: the Ready condition's
/// `lastHeartbeatTime` moves, nothing else.
async fn heartbeat(nodes: &Api<Node>, node: &str) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": "2025-01-01T00:00:00Z",
    }]}});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
}

async fn create_unrelated_pods(client: &kube::Client, count: usize) -> Result<(), BoxError> {
    let namespace = "unrelated";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}}))?,
        )
        .await?;
    // No controller manager runs here to create the default ServiceAccount.
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    futures::stream::iter(0..count)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": { "name": format!("app-{i}") },
                    "spec": { "containers": [{ "name": "c", "image": "busybox" }] }
                }))?;
                pods.create(&PostParams::default(), &pod).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let node_count = usize::try_from(env_or("NODES", 1000))?;
    let steady = Duration::from_secs(env_or("STEADY_SECONDS", 60));
    let churn = Duration::from_secs(env_or("CHURN_SECONDS", 60));
    let pod_count = usize::try_from(env_or("UNRELATED_PODS", 10_000))?;
    let shape = NodeShape::from_env()?;
    println!(
        "rollout benchmark: {node_count} workers, {} Nodes",
        shape.name()
    );

    let plane = control_plane_with_operator_api().await?;
    let client = plane.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let configs: Api<KataConfig> = Api::all(client.clone());
    let simulator = McoSimulator::start(client.clone(), simulator_options()).await?;
    all_at_once(&client, mco::WORKER_POOL).await?;

    let names: Vec<String> = (0..node_count).map(|i| format!("worker-{i:05}")).collect();
    let setup = Instant::now();
    futures::stream::iter(names.iter().enumerate())
        .map(|(index, node)| {
            let nodes = nodes.clone();
            async move {
                let object = unadopted(shape.node(index, node)?);
                nodes.create(&PostParams::default(), &object).await?;
                Ok::<_, BoxError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    wait_until_adopted(&client, PATIENCE).await?;
    println!(
        "set-up: {node_count} nodes on the worker config in {:.1} s; a Node as the API server returns it: {:.1} KiB",
        setup.elapsed().as_secs_f64(),
        stored_size(&nodes, &names[0]).await?
    );

    let coordinator = CoordinatorProcess::start(&plane, &["--log-level", "warn"])?;
    let pid = coordinator.pid();
    let metrics = coordinator.metrics;
    eventually("the coordinator's /metrics", PATIENCE, || async {
        scrape_metric(metrics, RECONCILES).await.map(|_| true)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_start = memory(pid)?;

    // Install.
    let mut bench = Requests::new();
    let reconciles_before = scrape_metric(metrics, RECONCILES).await?;
    let window = Window::open(&client, Some(&simulator)).await?;
    let kataconfig: KataConfig = serde_json::from_value(json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": {"name": "bench"}, "spec": {}
    }))?;
    configs.create(&PostParams::default(), &kataconfig).await?;
    count(&mut bench, "POST", "kataconfigs", "", 1.0);
    let pools = Api::<DynamicObject>::all_with(client.clone(), &model::pool_resource());
    let pool_reads = std::sync::atomic::AtomicUsize::new(0);
    eventually("the kata-oc pool", PATIENCE, || async {
        pool_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(pools
            .get_opt(mco::POOL_NAME)
            .await
            .map_err(|e| e.to_string())?
            .is_some())
    })
    .await?;
    count(
        &mut bench,
        "GET",
        "machineconfigpools",
        "",
        pool_reads.into_inner() as f64,
    );
    all_at_once(&client, mco::POOL_NAME).await?;
    count(&mut bench, "PATCH", "machineconfigpools", "", 1.0);
    let install_time = wait_for(&configs, &mut bench, "the install", installed).await?;
    let install = window.close(&client, Some(&simulator), &bench, &[]).await?;
    let install_reconciles = scrape_metric(metrics, RECONCILES).await? - reconciles_before;
    let install_rollouts = rollouts(&simulator, &names);
    // Settle: the status write of the install wakes one more reconcile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hwm_installed = memory(pid)?.peak;

    // Steady state: nothing rolls, so the simulator stops and every request
    // left is the coordinator's.
    simulator.stop().await;
    let reconciles_before = scrape_metric(metrics, RECONCILES).await?;
    let window = Window::open(&client, None).await?;
    tokio::time::sleep(steady).await;
    let steady_requests = window.close(&client, None, &Requests::new(), &[]).await?;
    let steady_reconciles = scrape_metric(metrics, RECONCILES).await? - reconciles_before;
    let rss_steady = memory(pid)?.now;

    // Node-status churn: heartbeats from every node, as fast as the bench
    // can send them.
    let reconciles_before = scrape_metric(metrics, RECONCILES).await?;
    let window = Window::open(&client, None).await?;
    let started = Instant::now();
    let mut heartbeats = 0usize;
    while started.elapsed() < churn {
        let batch: Vec<String> = names.clone();
        let sent: Vec<Result<(), kube::Error>> = futures::stream::iter(batch)
            .map(|node| {
                let nodes = nodes.clone();
                async move { heartbeat(&nodes, &node).await }
            })
            .buffer_unordered(CONCURRENCY)
            .take_while(|_| std::future::ready(started.elapsed() < churn))
            .collect()
            .await;
        heartbeats += sent.iter().filter(|r| r.is_ok()).count();
    }
    let churn_window = started.elapsed();
    let churn_requests = window
        .close(
            &client,
            None,
            &Requests::new(),
            &[("PATCH", "nodes", "status")],
        )
        .await?;
    let churn_reconciles = scrape_metric(metrics, RECONCILES).await? - reconciles_before;

    // Uninstall with unrelated pods present.
    let simulator = McoSimulator::start(client.clone(), simulator_options()).await?;
    let pods_started = Instant::now();
    create_unrelated_pods(&client, pod_count).await?;
    println!(
        "set-up: {pod_count} unrelated pods in {:.1} s",
        pods_started.elapsed().as_secs_f64()
    );
    let mut bench = Requests::new();
    let reconciles_before = scrape_metric(metrics, RECONCILES).await?;
    let window = Window::open(&client, Some(&simulator)).await?;
    configs.delete("bench", &DeleteParams::default()).await?;
    count(&mut bench, "DELETE", "kataconfigs", "", 1.0);
    let uninstall_time = wait_for(&configs, &mut bench, "the uninstall", |c| c.is_none()).await?;
    let uninstall = window.close(&client, Some(&simulator), &bench, &[]).await?;
    let uninstall_reconciles = scrape_metric(metrics, RECONCILES).await? - reconciles_before;
    let uninstall_rollouts = rollouts(&simulator, &names);
    let Memory {
        peak: hwm,
        now: rss,
    } = memory(pid)?;
    simulator.stop().await;
    drop(coordinator);

    let minutes = |d: Duration| d.as_secs_f64() / 60.0;
    let rows: BTreeMap<usize, (String, String)> = [
        ("nodes", format!("{node_count}")),
        (
            "install: time, reconciles",
            format!(
                "{:.1} s, {install_reconciles:.0}",
                install_time.as_secs_f64()
            ),
        ),
        (
            "install: rollouts per node (min/max)",
            format!("{}/{}", install_rollouts.0, install_rollouts.1),
        ),
        ("install: API requests by verb", verbs(&install, None)),
        ("install: API requests", resources(&install)),
        (
            "steady state: window, reconciles/min",
            format!(
                "{:.0} s, {:.1}",
                steady.as_secs_f64(),
                steady_reconciles / minutes(steady)
            ),
        ),
        (
            "steady state: non-watch API requests/min (target 0)",
            verbs(&steady_requests, Some(steady)),
        ),
        (
            "node-status churn: heartbeats/min, reconciles/min",
            format!(
                "{:.0}, {:.1}",
                heartbeats as f64 / minutes(churn_window),
                churn_reconciles / minutes(churn_window)
            ),
        ),
        (
            "node-status churn: coordinator API requests/min",
            verbs(&churn_requests, Some(churn_window)),
        ),
        (
            "uninstall with unrelated pods: pods, time, reconciles",
            format!(
                "{pod_count}, {:.1} s, {uninstall_reconciles:.0}",
                uninstall_time.as_secs_f64()
            ),
        ),
        (
            "uninstall: rollouts per node (min/max)",
            format!("{}/{}", uninstall_rollouts.0, uninstall_rollouts.1),
        ),
        ("uninstall: API requests by verb", verbs(&uninstall, None)),
        ("uninstall: API requests", resources(&uninstall)),
        (
            "coordinator memory: VmRSS (VmHWM) started with nodes cached, VmHWM after install, VmRSS steady, VmHWM at end, VmRSS at end",
            format!(
                "{:.1} ({:.1}) MiB, {hwm_installed:.1} MiB, {rss_steady:.1} MiB, {hwm:.1} MiB, {rss:.1} MiB",
                at_start.now,
                at_start.peak
            ),
        ),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, value))| (i, (name.to_owned(), value)))
    .collect();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    for (name, value) in rows.values() {
        println!("| {name} | {value} |");
    }
    Ok(())
}
