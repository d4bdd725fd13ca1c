//! The KataConfig's status stays small at any cluster size: on a real API
//! server with the MCO simulator and more workers than a status list holds,
//! every node list is capped (the first nodes by name, the rest counted in
//! `kataNodes.omitted`), the condition messages name a few nodes and count
//! the rest, the counts stay exact, and still every node gets its Events,
//! once, past the cap too.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;

use k8s_openapi::api::events::v1::Event;
use kata_coordinator::api::{KataConfigStatus, MAX_LISTED_NODES, OmittedNodes};
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_coordinator::plan::conditions::NAMED_IN_MESSAGE;
use kata_coordinator::plan::events::reason::{NODE_FAILED_TO_INSTALL, NODE_INSTALLED};
use kata_coordinator::plan::nodes::failure_reason;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::mco_simulator::{NodeFault, model};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;

/// Past the cap by enough that a list, a message or an Event that ignored
/// it would show.
const NODES: usize = MAX_LISTED_NODES + 20;

async fn status(cluster: &Cluster) -> Result<KataConfigStatus, String> {
    let config = cluster
        .configs()
        .get("kc")
        .await
        .map_err(|e| e.to_string())?;
    Ok(config.status.unwrap_or_default())
}

/// Per node, how many times the coordinator announced `reason` for it
/// (kube aggregates repeats into one Event's series).
async fn announced(client: &Client, reason: &str) -> BTreeMap<String, i32> {
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    let mut per_node = BTreeMap::new();
    for event in events.items {
        if event.reporting_controller.as_deref() != Some(names::EVENT_REPORTER)
            || event.reason.as_deref() != Some(reason)
        {
            continue;
        }
        let node = event.regarding.and_then(|r| r.name).unwrap_or_default();
        *per_node.entry(node).or_default() += event.series.map_or(1, |s| s.count);
    }
    per_node
}

async fn wait_announced_for_every_node(client: &Client, reason: &str) {
    eventually(&format!("{reason} for every node"), CONVERGE, || async {
        let announced = announced(client, reason).await;
        if announced.len() == NODES {
            Ok(true)
        } else {
            Err(format!("{} of {NODES} announced", announced.len()))
        }
    })
    .await
    .unwrap();
}

fn once_each(nodes: &[String]) -> BTreeMap<String, i32> {
    nodes.iter().map(|n| (n.clone(), 1)).collect()
}

#[kata_test]
async fn a_cluster_past_the_cap_gets_capped_lists_exact_counts_and_every_event() {
    // Unpadded, so the API's order (by name) is not the numeric one.
    let nodes: Vec<String> = (0..NODES).map(|i| format!("w{i}")).collect();
    let mut sorted = nodes.clone();
    sorted.sort();
    let first = &sorted[..MAX_LISTED_NODES];
    let specs: Vec<(&str, &[(&str, &str)])> =
        nodes.iter().map(|n| (n.as_str(), &[WORKER][..])).collect();
    let cluster = Cluster::start(&specs).await;
    let client = cluster.client.clone();
    // As long as the MCO's reasons get: the status keeps a 1,100-byte error.
    let reason = format!("failed to drain node: {}", "x".repeat(1_000));
    for node in &nodes {
        cluster.simulator.set_fault(
            node,
            NodeFault::Degraded {
                reason: reason.clone(),
            },
        );
    }
    let (_coordinator, metrics) = RunningCoordinator::with_metrics(client.clone());
    cluster.create_kataconfig("kc", json!({})).await;
    // Every node updates at once (an admin's setting), or the first failed
    // node would hold the others back.
    let pools = Api::<DynamicObject>::all_with(client.clone(), &model::pool_resource());
    eventually("the kata-oc pool", CONVERGE, || async {
        Ok(pools
            .get_opt(mco::POOL_NAME)
            .await
            .map_err(|e| e.to_string())?
            .is_some())
    })
    .await
    .unwrap();
    pools
        .patch(
            mco::POOL_NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": "100%"}})),
        )
        .await
        .unwrap();

    // Every node failed: the first by name listed with their reason, the
    // rest counted.
    let omitted_past_cap = i32::try_from(NODES - MAX_LISTED_NODES).unwrap();
    eventually("every node failed", CONVERGE, || async {
        let nodes = status(&cluster).await?.kata_nodes;
        let failed = nodes.omitted.as_ref().and_then(|o| o.failed_to_install);
        if failed == Some(omitted_past_cap) {
            Ok(true)
        } else {
            Err(format!(
                "{} listed, {failed:?} omitted",
                nodes.failed_to_install.len()
            ))
        }
    })
    .await
    .unwrap();
    let failing = status(&cluster).await.unwrap();
    assert_eq!(failing.kata_nodes.failed_to_install, first);
    assert!(
        failing
            .kata_nodes
            .failed_to_install
            .iter()
            .all(|name| failure_reason(&failing.kata_nodes, name) == reason)
    );
    assert_eq!(failing.kata_nodes.node_count, i32::try_from(NODES).unwrap());
    let degraded = failing
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.reason, "NodeDegraded");
    assert_eq!(degraded.message.matches(&reason).count(), NAMED_IN_MESSAGE);
    assert!(
        degraded
            .message
            .ends_with(&format!("; … and {} more", NODES - NAMED_IN_MESSAGE)),
        "{}",
        degraded.message
    );
    // The status costs what the capped lists and three capped messages
    // cost, whatever the node count: one entry per listed node or named
    // failure, and some slack for everything else. Uncapped, these 120
    // nodes would cost more than three times as much.
    let entry = reason.len() + 64;
    let bound = (MAX_LISTED_NODES + 3 * NAMED_IN_MESSAGE + 10) * entry + 8 * 1024;
    let size = serde_json::to_vec(&failing).unwrap().len();
    assert!(size <= bound, "the status is {size} bytes, over {bound}");

    wait_announced_for_every_node(&client, NODE_FAILED_TO_INSTALL).await;

    // The faults cleared, every node installs.
    for node in &nodes {
        cluster.simulator.clear_fault(node);
    }
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let installed = status(&cluster).await.unwrap().kata_nodes;
    assert_eq!(installed.installed, first);
    assert_eq!(
        installed.omitted,
        Some(OmittedNodes {
            installed: Some(omitted_past_cap),
            ..Default::default()
        }),
        "only the installed list leaves nodes out"
    );
    assert!(installed.failed_to_install.is_empty());
    assert_eq!(
        (installed.node_count, installed.ready_node_count),
        (i32::try_from(NODES).unwrap(), i32::try_from(NODES).unwrap()),
        "the counts are exact"
    );

    wait_announced_for_every_node(&client, NODE_INSTALLED).await;
    // Reconciled again, the converged cluster announces nothing more, and
    // no node (past the cap or not) was announced twice.
    reconcile_rounds(&client, &metrics, 3).await;
    assert_eq!(announced(&client, NODE_INSTALLED).await, once_each(&nodes));
    assert_eq!(
        announced(&client, NODE_FAILED_TO_INSTALL).await,
        once_each(&nodes)
    );
}
