//! The coordinator's API requests are bounded by what changes, not by the
//! cluster's size, counted by the API server itself
//! (`apiserver_request_total{verb,resource,subresource}` on its /metrics):
//! a converged cluster whose nodes keep sending status heartbeats costs no
//! request but watches, and an uninstall with many unrelated pods lists
//! them once to open the gate, not on every reconcile.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kata_coordinator::metrics::Metrics;
use kata_coordinator::reconciler::Options;
use kata_tests::cluster::{Cluster, WORKER};
use kata_tests::mco_simulator::{McoSimulator, SimulatorOptions};
use kata_tests::operator::RunningCoordinator;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// (verb, resource, subresource) → requests so far.
type Requests = BTreeMap<(String, String, String), f64>;

/// The value of `label` in a sample's `{...}` label set.
fn label<'a>(labels: &'a str, label: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(label)?.strip_prefix("=\""))
        .and_then(|value| value.strip_suffix('"'))
        .unwrap_or("")
}

/// The API server's request counters, summed over response codes.
async fn api_server_requests(client: &kube::Client) -> Requests {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let body = client.request_text(request).await.unwrap();
    let mut requests = Requests::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let key = (
            label(labels, "verb").to_string(),
            label(labels, "resource").to_string(),
            label(labels, "subresource").to_string(),
        );
        *requests.entry(key).or_default() += value.trim().parse::<f64>().unwrap();
    }
    requests
}

/// What changed between two readings, leaving out watches (their number
/// does not grow with changes) and what `also_excluded` names.
fn made_between(
    before: &Requests,
    after: &Requests,
    also_excluded: &[(&str, &str, &str)],
) -> Requests {
    after
        .iter()
        .filter(|((verb, resource, subresource), _)| {
            !verb.starts_with("WATCH")
                && !resource.is_empty()
                && !also_excluded
                    .iter()
                    .any(|(v, r, s)| v == verb && r == resource && s == subresource)
        })
        .map(|(key, count)| (key.clone(), count - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, made)| *made > 0.0)
        .collect()
}

fn table(requests: &Requests) -> String {
    if requests.is_empty() {
        return "  (none)".into();
    }
    requests
        .iter()
        .map(|((verb, resource, subresource), n)| {
            let subresource = if subresource.is_empty() {
                String::new()
            } else {
                format!("/{subresource}")
            };
            format!("  {verb:<6} {resource}{subresource}: {n}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

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
const STEADY: Duration = Duration::from_secs(30);
const UNRELATED_PODS: usize = 1200;
/// The coordinator's page size for pods.
const PAGE: usize = 500;

#[tokio::test]
async fn requests_follow_changes_not_heartbeats_or_unrelated_pods() {
    let cluster = Cluster::start(&NODES.map(|n| (n, &[WORKER][..]))).await;
    let client = cluster.client.clone();
    let metrics = Metrics::default();
    let coordinator = RunningCoordinator::start(
        client.clone(),
        Options {
            metrics: metrics.clone(),
            ..Options::default()
        },
    );
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
    let before = api_server_requests(&client).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < STEADY {
        for node in NODES {
            heartbeat(&client, node).await;
            heartbeats += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after = api_server_requests(&client).await;
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
    assert_eq!(steady, Requests::new(), "no request but watches");

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
    let before = api_server_requests(&client).await;
    cluster
        .configs()
        .delete("kc", &DeleteParams::default())
        .await
        .unwrap();
    cluster.wait_gone("kc").await;
    let after = api_server_requests(&client).await;
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
