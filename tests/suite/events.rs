//! The Events an admin reads (`kubectl get events`, `kubectl describe node`),
//! on a real API server with the MCO simulator: one per transition, and none
//! from a steady cluster however often it is reconciled.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kata_coordinator::health::marks::{MarkPolicy, RUNTIME_LABEL_REMOVED};
use kata_coordinator::names;
use kata_coordinator::plan::events::reason::{NODE_FAILED_TO_INSTALL, NODE_INSTALLED};
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, create_kata_pod, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::demo_world::{
    Agent, Coordinator, create_agent_identity, free_addr, nodes_labelled, uninstalled_host,
};
use kata_tests::eventually;
use kata_tests::http::http_get;
use kata_tests::mco_simulator::NodeFault;
use kata_tests::pki::TlsFiles;
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::json;

/// One Event of ours, as an admin reads it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    reason: String,
    type_: String,
    /// The object it is about: `Kind/name`.
    regarding: String,
    note: String,
    /// How many times it was published (kube aggregates repeats into a series).
    count: i32,
}

/// Every Event the coordinator published. Events of cluster-scoped objects
/// (Nodes, the KataConfig) land in `default`.
async fn our_events(client: &Client) -> Vec<Seen> {
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    let mut seen: Vec<Seen> = events
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(names::EVENT_REPORTER))
        .map(|e| {
            let regarding = e.regarding.unwrap_or_default();
            Seen {
                reason: e.reason.unwrap_or_default(),
                type_: e.type_.unwrap_or_default(),
                regarding: format!(
                    "{}/{}",
                    regarding.kind.unwrap_or_default(),
                    regarding.name.unwrap_or_default()
                ),
                note: e.note.unwrap_or_default(),
                count: e.series.map_or(1, |s| s.count),
            }
        })
        .collect();
    seen.sort_by(|a, b| (&a.reason, &a.regarding).cmp(&(&b.reason, &b.regarding)));
    seen
}

/// Every Event of ours about a Node carries the Node's uid:
/// `kubectl describe node` finds a node's Events by it.
async fn node_events_name_the_nodes_uid(client: &Client) {
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client.clone());
    let mut checked = 0;
    for regarding in events
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some(names::EVENT_REPORTER))
        .filter_map(|e| e.regarding)
        .filter(|r| r.kind.as_deref() == Some("Node"))
    {
        let name = regarding.name.clone().unwrap_or_default();
        let node = nodes.get(&name).await.unwrap();
        assert_eq!(regarding.uid, node.metadata.uid, "the Event about {name}");
        checked += 1;
    }
    assert!(checked > 0, "no Event about a Node");
}

fn with_reason<'a>(events: &'a [Seen], reason: &str) -> Vec<&'a Seen> {
    events.iter().filter(|e| e.reason == reason).collect()
}

#[kata_test]
async fn install_failure_and_blocked_uninstall_each_announce_once_and_steady_state_never() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER]), ("w2", &[WORKER])]).await;
    let client = cluster.client.clone();
    cluster.simulator.set_fault(
        "w2",
        NodeFault::Degraded {
            reason: "failed to drain node: pod blocked by PDB".into(),
        },
    );
    let (_coordinator, metrics) = RunningCoordinator::with_metrics(client.clone());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Degraded", "True", "NodeDegraded")
        .await;
    eventually("w2's failure announced", CONVERGE, || async {
        Ok(!with_reason(&our_events(&client).await, NODE_FAILED_TO_INSTALL).is_empty())
    })
    .await
    .unwrap();

    cluster.simulator.clear_fault("w2");
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    eventually("w2's install announced", CONVERGE, || async {
        let events = our_events(&client).await;
        Ok(with_reason(&events, NODE_INSTALLED)
            .iter()
            .any(|e| e.regarding == "Node/w2"))
    })
    .await
    .unwrap();

    let converged = our_events(&client).await;
    let installed = with_reason(&converged, NODE_INSTALLED);
    assert_eq!(
        installed
            .iter()
            .map(|e| (e.regarding.as_str(), e.type_.as_str(), e.count))
            .collect::<Vec<_>>(),
        [
            ("Node/w0", "Normal", 1),
            ("Node/w1", "Normal", 1),
            ("Node/w2", "Normal", 1)
        ],
        "one install Event per node: {converged:#?}"
    );
    node_events_name_the_nodes_uid(&client).await;
    let failed = with_reason(&converged, NODE_FAILED_TO_INSTALL);
    assert_eq!(failed.len(), 1, "{converged:#?}");
    assert_eq!(
        (
            failed[0].regarding.as_str(),
            failed[0].type_.as_str(),
            failed[0].count
        ),
        ("Node/w2", "Warning", 1)
    );
    assert!(
        failed[0].note.contains("pod blocked by PDB"),
        "the MCO's reason is in the Event: {}",
        failed[0].note
    );

    // A steady cluster: reconciled again and again, it announces nothing
    // and writes nothing.
    let writes = metrics.api_writes.get();
    let event_writes = metrics.api_writes.get_kind("Event");
    assert_eq!(
        event_writes,
        converged.iter().map(|e| e.count as u64).sum::<u64>(),
        "every Event write is an Event the API server holds"
    );
    reconcile_rounds(&client, &metrics, 3).await;
    assert_eq!(our_events(&client).await, converged, "no new Event");
    assert_eq!(metrics.api_writes.get(), writes, "no write at all");

    // The uninstall waits for the Kata pod, and says so once, as a warning
    // naming it.
    create_kata_pod(&client, "apps", "sandboxed").await;
    cluster
        .configs()
        .delete("kc", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "InProgress", "True", "BlockedByExistingKataPods")
        .await;
    eventually("the blocked uninstall announced", CONVERGE, || async {
        Ok(!with_reason(&our_events(&client).await, "BlockedByExistingKataPods").is_empty())
    })
    .await
    .unwrap();
    let blocked_events = our_events(&client).await;
    reconcile_rounds(&client, &metrics, 3).await;
    assert_eq!(
        our_events(&client).await,
        blocked_events,
        "a blocked uninstall, reconciled again, announces nothing new"
    );
    let blocked = with_reason(&blocked_events, "BlockedByExistingKataPods");
    assert_eq!(blocked.len(), 1, "{blocked_events:#?}");
    assert_eq!(
        (
            blocked[0].regarding.as_str(),
            blocked[0].type_.as_str(),
            blocked[0].count
        ),
        ("KataConfig/kc", "Warning", 1)
    );
    assert!(
        blocked[0].note.contains("apps/sandboxed"),
        "{}",
        blocked[0].note
    );

    Api::<Pod>::namespaced(client.clone(), "apps")
        .delete("sandboxed", &DeleteParams::default())
        .await
        .unwrap();
    cluster.wait_gone("kc").await;
}

/// The sum of every sample of `name` in the coordinator's live scrape.
async fn scraped(coordinator: &Coordinator, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(coordinator.metrics, "/metrics").await?;
    Ok(body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum())
}

/// Waits until the agent's heartbeats have gone on for `beats` more
/// reports: the labeller looked at the node each time.
async fn heartbeats(coordinator: &Coordinator, beats: f64) {
    let series = "kata_operator_reports_received_total{kind=\"heartbeat\"}";
    let start = scraped(coordinator, series).await.unwrap();
    eventually("more heartbeats", CONVERGE, || async {
        Ok(scraped(coordinator, series).await? >= start + beats)
    })
    .await
    .unwrap();
}

// Without /dev/kvm no simulated node can be runtime-ready.
#[kata_test(requires(kata_test_harness::requirement::kvm))]
async fn a_node_losing_the_runtime_label_is_announced_once_with_why() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();
    let host = uninstalled_host(true).unwrap();
    cluster.simulator.register_host_root("w0", host.path());
    let files = TlsFiles::generate().unwrap();
    let grpc = free_addr().unwrap();
    let policy = MarkPolicy {
        grace: Duration::from_secs(30),
        hold_down: Duration::from_secs(60),
        // The capable label lands before the steady state this test watches.
        join_dwell: Duration::from_secs(1),
        leave_dwell: Duration::from_secs(1),
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    };
    let coordinator = Coordinator::start(client.clone(), &files, grpc, policy).unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let agent = Agent::start(&client, "w0", host.path(), grpc, &files, tokens.path())
        .await
        .unwrap();
    cluster.create_kataconfig("kc", json!({})).await;
    eventually("w0 runtime-ready", CONVERGE, || async {
        Ok(nodes_labelled(&client, names::KATA_RUNTIME_LABEL)
            .await
            .map_err(|e| e.to_string())?
            == ["w0"])
    })
    .await
    .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    eventually("w0's install announced", CONVERGE, || async {
        Ok(with_reason(&our_events(&client).await, NODE_INSTALLED).len() == 1)
    })
    .await
    .unwrap();

    // Healthy and reporting: heartbeats change nothing, so nothing is said.
    let steady = our_events(&client).await;
    heartbeats(&coordinator, 3.0).await;
    assert_eq!(
        our_events(&client).await,
        steady,
        "heartbeats announce nothing"
    );

    // A broken drop-in takes the runtime label away: one warning, saying why.
    std::fs::write(
        host.path().join("etc/crio/crio.conf.d/50-kata"),
        "[crio.runtime.runtimes.kata\nruntime_path = ",
    )
    .unwrap();
    eventually("the removal announced", CONVERGE, || async {
        Ok(!with_reason(&our_events(&client).await, RUNTIME_LABEL_REMOVED).is_empty())
    })
    .await
    .unwrap();
    assert!(
        nodes_labelled(&client, names::KATA_RUNTIME_LABEL)
            .await
            .unwrap()
            .is_empty()
    );
    // The broken node keeps reporting the same failure: still one Event.
    heartbeats(&coordinator, 3.0).await;
    let events = our_events(&client).await;
    let removed = with_reason(&events, RUNTIME_LABEL_REMOVED);
    assert_eq!(removed.len(), 1, "{events:#?}");
    assert_eq!(
        (
            removed[0].regarding.as_str(),
            removed[0].type_.as_str(),
            removed[0].count
        ),
        ("Node/w0", "Warning", 1)
    );
    assert!(
        removed[0].note.contains(names::KATA_RUNTIME_LABEL)
            && removed[0].note.contains("crio-drop-in:"),
        "the Event says why: {}",
        removed[0].note
    );

    agent.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
