//! The coordinator's API requests are bounded by what changes, not by the
//! cluster's size, counted by the API server itself
//! (`apiserver_request_total{verb,resource,subresource}` on its /metrics):
//! a converged cluster whose nodes keep sending status heartbeats costs no
//! request but watches, and an uninstall with many unrelated pods lists
//! them once to open the gate, not on every reconcile.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kata_tests::api_requests::{Requests, api_server_requests, made_between, table};
use kata_tests::cluster::{Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::mco_simulator::{McoSimulator, SimulatorOptions};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A heartbeat as the kubelet sends it: the Ready condition's
/// `lastHeartbeatTime` moves, nothing else.
async fn heartbeat(client: &kube::Client, node: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": "2025-01-01T00:00:00Z",
    }]}});
    Api::<Node>::all(client.clone())
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
}

const NODES: [&str; 3] = ["w0", "w1", "w2"];
/// What the coordinator watches besides the Nodes the heartbeats change.
const WATCHED_QUIET_KINDS: [&str; 5] = [
    "kataconfigs",
    "machineconfigs",
    "machineconfigpools",
    "containerruntimeconfigs",
    "runtimeclasses",
];
const STEADY: Duration = Duration::from_secs(30);
const UNRELATED_PODS: usize = 1200;
/// The coordinator's page size for pods.
const PAGE: usize = 500;

#[kata_test]
async fn requests_follow_changes_not_heartbeats_or_unrelated_pods() {
    let cluster = Cluster::start(&NODES.map(|n| (n, &[WORKER][..]))).await;
    let client = cluster.client.clone();
    let (coordinator, metrics) = RunningCoordinator::with_metrics(client.clone());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    // Settle: the status write of the install wakes one more reconcile.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The simulator lists the cluster every few milliseconds; nothing rolls
    // now, so it stops while the coordinator's requests are counted.
    let Cluster {
        plane,
        client,
        simulator,
        roots,
    } = cluster;
    simulator.stop().await;

    // Steady state: every node heartbeats every second.
    let reconciles_before = metrics.reconciles.get();
    let before = api_server_requests(&client).await.unwrap();
    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < STEADY {
        for node in NODES {
            heartbeat(&client, node).await;
            heartbeats += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = api_server_requests(&client).await.unwrap();
    // The heartbeats are the test's own; the API server renews its own
    // identity Lease every 10 s (this coordinator runs without leader
    // election, so no Lease write is its).
    let steady = made_between(
        &before,
        &after,
        &[("PATCH", "nodes", "status"), ("PUT", "leases", "")],
    );
    let steady_reconciles = metrics.reconciles.get() - reconciles_before;
    println!(
        "steady state, {STEADY:?} with {heartbeats} node heartbeats: {steady_reconciles} \
         reconciles, non-watch requests:\n{}",
        table(&steady)
    );
    assert_eq!(steady_reconciles, 0, "heartbeats wake no reconcile");
    // A watch the API server ends (kube's watcher asks for 290 s) resumes
    // from its last resourceVersion, and lists again when that version was
    // compacted away: part of watching, at most once a window for a kind
    // the heartbeats do not touch. Nodes, which they do touch, get none.
    let (relists, other): (Requests, Requests) =
        steady
            .into_iter()
            .partition(|((verb, resource, _), count)| {
                verb == "LIST" && WATCHED_QUIET_KINDS.contains(&resource.as_str()) && *count <= 1.0
            });
    if !relists.is_empty() {
        println!("watches resumed by a list:\n{}", table(&relists));
    }
    assert_eq!(other, Requests::new(), "no request but watches");

    let simulator = McoSimulator::start(
        client.clone(),
        SimulatorOptions {
            update_delay: Duration::from_millis(50),
            resync_interval: Duration::from_millis(50),
        },
    )
    .await
    .unwrap();
    for node in NODES {
        simulator.register_host_root(node, roots.path().join(node));
    }
    let cluster = Cluster {
        plane,
        client: client.clone(),
        simulator,
        roots,
    };

    // Many pods that have nothing to do with Kata.
    create_unrelated_pods(&client, UNRELATED_PODS).await;
    let page = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().limit(PAGE as u32))
        .await
        .unwrap();
    let all = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    println!(
        "memory: one page of {PAGE} pods is {} KiB of JSON, all {} pods {} KiB (what a pod \
         watch would keep, before slimming)",
        serde_json::to_vec(&page).unwrap().len() / 1024,
        all.items.len(),
        serde_json::to_vec(&all).unwrap().len() / 1024,
    );

    let reconciles_before = metrics.reconciles.get();
    let before = api_server_requests(&client).await.unwrap();
    cluster.uninstall("kc").await;
    let after = api_server_requests(&client).await.unwrap();
    let uninstall = made_between(
        &before,
        &after,
        &[("DELETE", "kataconfigs", ""), ("PUT", "leases", "")],
    );
    let reconciles = metrics.reconciles.get() - reconciles_before;
    let pod_pages = uninstall
        .get(&("LIST".into(), "pods".into(), String::new()))
        .copied()
        .unwrap_or(0.0);
    let pages_per_list = UNRELATED_PODS.div_ceil(PAGE) as f64;
    println!(
        "uninstall with {UNRELATED_PODS} unrelated pods: {reconciles} reconciles, {pod_pages} \
         pod pages ({} lists of {pages_per_list} pages); non-watch requests:\n{}",
        pod_pages / pages_per_list,
        table(&uninstall)
    );
    assert!(pod_pages >= pages_per_list, "the gate opens on a full list");
    assert!(
        pod_pages <= 3.0 * pages_per_list && (reconciles as f64) * pages_per_list > pod_pages,
        "pods are listed to open the gate, not on every reconcile: {pod_pages} pages in \
         {reconciles} reconciles"
    );
    coordinator.stop().await;
}

/// `count` pods without a RuntimeClass in a namespace of their own.
async fn create_unrelated_pods(client: &kube::Client, count: usize) {
    let namespace = "unrelated";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
        )
        .await
        .unwrap();
    // No controller manager runs here to create the default ServiceAccount.
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let created = Instant::now();
    let names: Vec<String> = (0..count).map(|i| format!("app-{i}")).collect();
    for chunk in names.chunks(50) {
        let creates = chunk.iter().map(|name| {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": { "containers": [{ "name": "c", "image": "busybox" }] }
            }))
            .unwrap();
            let pods = pods.clone();
            async move { pods.create(&PostParams::default(), &pod).await.map(|_| ()) }
        });
        for result in futures::future::join_all(creates).await {
            result.unwrap();
        }
    }
    println!("created {count} unrelated pods in {:?}", created.elapsed());
}
