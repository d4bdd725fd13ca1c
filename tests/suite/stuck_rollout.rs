//! A stuck rollout explains itself: a PodDisruptionBudget that allows no
//! disruption keeps the MCO's drain of a node from finishing, the node
//! stays `Working`, and past the threshold the KataConfig and one Warning
//! Event name the node, how long, and the pod and budget that hold it. Once
//! the budget goes the rollout finishes and the message clears. On a real
//! API server with the MCO simulator, whose drain evicts through the
//! Eviction API.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kata_coordinator::controller::Options;
use kata_coordinator::metrics::Metrics;
use kata_coordinator::plan::stuck::REASON_NODE_ROLLOUT_STUCK;
use kata_tests::cluster::{
    CONVERGE, Cluster, WORKER, namespace_for_pods, our_warnings, reconcile_rounds,
};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NAMESPACE: &str = "app";
const POD: &str = "db-0";
const BUDGET: &str = "db";

/// A running, ready pod on `node` and a budget of `minAvailable: 1` over
/// it, whose status (no controller manager runs here to write it) allows
/// no disruption.
async fn guarded_pod(client: &Client, node: &str) {
    namespace_for_pods(client, NAMESPACE).await;
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": POD, "labels": { "app": "db" } },
        "spec": { "nodeName": node, "containers": [{ "name": "db", "image": "busybox" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // No kubelet either: the pod is reported running and ready by hand, or
    // the Eviction API would let a pending pod go whatever the budget says.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    pods.patch_status(
        POD,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ]}})),
    )
    .await
    .unwrap();
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), NAMESPACE);
    let budget: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": BUDGET },
        "spec": { "minAvailable": 1, "selector": { "matchLabels": { "app": "db" } } }
    }))
    .unwrap();
    let created = budgets
        .create(&PostParams::default(), &budget)
        .await
        .unwrap();
    budgets
        .patch_status(
            BUDGET,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "observedGeneration": created.metadata.generation,
                "disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1,
            }})),
        )
        .await
        .unwrap();
}

#[kata_test]
async fn a_drain_held_by_a_budget_is_named_once_and_clears_when_the_budget_goes() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    guarded_pod(&client, "w0").await;
    let metrics = Metrics::default();
    let _coordinator = RunningCoordinator::start(
        client.clone(),
        Options {
            metrics: metrics.clone(),
            stuck_after: Duration::from_secs(3),
            ..Options::default()
        },
    );
    cluster.create_kataconfig("kc", json!({})).await;

    let named = |message: &str| {
        message.contains("node w0 has been updating")
            && message.contains("longer than 3s")
            && message.contains(&format!("pod {NAMESPACE}/{POD}"))
            && message.contains(&format!("PodDisruptionBudget {NAMESPACE}/{BUDGET}"))
    };
    eventually("the KataConfig to name the held node", CONVERGE, || async {
        let (_, _, message) = cluster
            .condition("kc", "InProgress")
            .await
            .unwrap_or_default();
        if named(&message) {
            Ok(true)
        } else {
            Err(message)
        }
    })
    .await
    .unwrap();
    let (status, _, ready) = cluster.condition("kc", "Ready").await.unwrap();
    assert!(
        status == "False" && named(&ready),
        "Ready says it too: {ready}"
    );
    eventually("a Warning Event naming the node", CONVERGE, || async {
        Ok(our_warnings(&client, REASON_NODE_ROLLOUT_STUCK)
            .await
            .iter()
            .any(|(note, _)| named(note)))
    })
    .await
    .unwrap();

    // Still held, reconciled again and again: still one Event, published once.
    reconcile_rounds(&client, &metrics, 3).await;
    let events = our_warnings(&client, REASON_NODE_ROLLOUT_STUCK).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, 1, "published once: {events:?}");
    assert_eq!(cluster.simulator.rollouts("w0"), 1);

    Api::<PodDisruptionBudget>::namespaced(client.clone(), NAMESPACE)
        .delete(BUDGET, &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let (_, _, message) = cluster.condition("kc", "InProgress").await.unwrap();
    assert!(!message.contains("has been updating"), "cleared: {message}");
    assert_eq!(cluster.simulator.rollouts("w0"), 1, "one reboot, late");
}
