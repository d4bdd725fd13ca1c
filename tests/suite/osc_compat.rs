//! OSC's clients read our KataConfig: its status decodes into the types of
//! the OpenShift sandboxed containers operator (OSC), and a status that OSC
//! wrote is accepted by our CRD and read by the coordinator.
//!
//! `OscStatus` below follows OSC's `api/v1/kataconfig_types.go`
//! (`KataConfigStatus`, `KataNodesStatus`, `KataConfigCondition`) field for
//! field, decoded the way Go's `encoding/json` decodes: strict about each
//! known field's type, silent about fields it does not know (our additions)
//! and about missing ones (zero values).
#![allow(clippy::unwrap_used)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kata_coordinator::api::KataConfig;
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::mco_simulator::NodeFault;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

/// OSC's `KataConfigStatus`.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct OscStatus {
    #[serde(default)]
    runtime_classes: Vec<String>,
    #[serde(default)]
    kata_nodes: OscKataNodes,
    #[serde(default)]
    conditions: Vec<OscCondition>,
    #[serde(default)]
    #[allow(dead_code)]
    waiting_for_mco_to_start: bool,
}

/// OSC's `KataNodesStatus`: counts, and node names by phase.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct OscKataNodes {
    #[serde(default)]
    node_count: i64,
    #[serde(default)]
    ready_node_count: i64,
    #[serde(default)]
    installed: Vec<String>,
    #[serde(default)]
    installing: Vec<String>,
    #[serde(default)]
    waiting_to_install: Vec<String>,
    #[serde(default)]
    failed_to_install: Vec<String>,
    #[serde(default)]
    uninstalling: Vec<String>,
    #[serde(default)]
    waiting_to_uninstall: Vec<String>,
    #[serde(default)]
    failed_to_uninstall: Vec<String>,
}

/// OSC's `KataConfigCondition` (its `lastTransitionTime` is a `metav1.Time`).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct OscCondition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
    #[allow(dead_code)]
    last_transition_time: Time,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    #[allow(dead_code)]
    message: String,
}

async fn raw_status(client: &kube::Client, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::erase::<KataConfig>(&()),
    );
    api.get(name).await.unwrap().data["status"].clone()
}

#[kata_test]
async fn our_status_decodes_into_osc_types_with_a_failed_node() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    cluster.simulator.set_fault(
        "w1",
        NodeFault::Degraded {
            reason: "failed to drain node: pod blocked by PDB".into(),
        },
    );
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Default::default());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Degraded", "True", "NodeDegraded")
        .await;
    eventually("w1 listed as failed to install", CONVERGE, || async {
        let status = raw_status(&cluster.client, "kc").await;
        Ok(status["kataNodes"]["failedToInstall"] == json!(["w1"]))
    })
    .await
    .unwrap();

    let status = raw_status(&cluster.client, "kc").await;
    let osc: OscStatus = serde_json::from_value(status.clone())
        .unwrap_or_else(|e| panic!("OSC's types cannot decode our status ({e}):\n{status:#}"));
    assert_eq!(osc.kata_nodes.node_count, 2, "{osc:?}");
    assert_eq!(osc.kata_nodes.failed_to_install, ["w1"], "{osc:?}");
    let listed: Vec<&String> = [
        &osc.kata_nodes.installed,
        &osc.kata_nodes.installing,
        &osc.kata_nodes.waiting_to_install,
        &osc.kata_nodes.uninstalling,
        &osc.kata_nodes.waiting_to_uninstall,
        &osc.kata_nodes.failed_to_uninstall,
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        listed.iter().all(|name| *name != "w1"),
        "w1 is only failed: {osc:?}"
    );
    assert!(osc.kata_nodes.ready_node_count <= 1, "{osc:?}");
    assert!(
        osc.conditions
            .iter()
            .any(|c| c.type_ == "InProgress" && !c.status.is_empty() && !c.reason.is_empty()),
        "OSC's clients find InProgress: {osc:?}"
    );
    assert!(osc.runtime_classes.len() <= 1, "{osc:?}");

    // The reason stays readable, in the field OSC does not know.
    let reasons = &status["kataNodes"]["failureReasons"];
    assert_eq!(reasons[0]["name"], "w1", "{status:#}");
    assert!(
        reasons[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("pod blocked by PDB")),
        "{status:#}"
    );
}

/// A KataConfig that OSC left with a failed node (its lists hold names) is
/// accepted by our CRD's schema and read by the coordinator's types: the
/// status of a cluster being taken over from OSC is not refused.
#[kata_test]
async fn a_status_written_by_osc_is_accepted_and_read() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    cluster.create_kataconfig("kc", json!({})).await;
    let osc_status = json!({
        "runtimeClasses": ["kata"],
        "kataNodes": {
            "nodeCount": 2, "readyNodeCount": 1,
            "installed": ["w0"], "failedToInstall": ["w9"],
        },
        "conditions": [{
            "type": "InProgress", "status": "False", "reason": "Failed",
            "message": "Node w9 Degraded: failed to drain node",
            "lastTransitionTime": "2026-01-02T03:04:05Z",
        }],
        "waitingForMcoToStart": false,
    });
    cluster
        .configs()
        .patch_status(
            "kc",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": osc_status })),
        )
        .await
        .unwrap_or_else(|e| panic!("our CRD refused OSC's status: {e}"));
    let read = cluster.configs().get("kc").await.unwrap();
    let nodes = read.status.unwrap().kata_nodes;
    assert_eq!(nodes.failed_to_install, ["w9"]);
    assert_eq!(nodes.installed, ["w0"]);
}
