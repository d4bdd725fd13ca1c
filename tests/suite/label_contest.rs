//! A runtime label another field manager co-owns, on the real API server:
//! an admin's `kubectl label` (an Update) also owns
//! `katacontainers.io/kata-runtime` when the node stops being ready. An
//! apply could not remove it; the coordinator removes it by JSON patch and
//! names the manager in an Event. The admin's tool putting it back is
//! removed again, up to the bound; then the coordinator stops, says so in
//! the node's condition, and writes nothing more however many scans pass.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kata_coordinator::health::labeller::{LABEL_CO_OWNED, LABEL_HELD};
use kata_coordinator::health::marks::contest::ContestPolicy;
use kata_coordinator::health::marks::{MarkPolicy, RUNTIME_LABEL_REMOVED};
use kata_coordinator::names;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, our_warnings};
use kata_tests::demo_world::{Coordinator, create_agent_identity, free_addr, ready_condition};
use kata_tests::eventually;
use kata_tests::pki::TlsFiles;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const NODE: &str = "w1";
/// The admin's tool: `kubectl label` records an Update under its name.
const ADMIN: &str = "admin-kubectl";

async fn runtime_label(client: &Client) -> Option<String> {
    let node = Api::<Node>::all(client.clone()).get(NODE).await.unwrap();
    node.labels().get(names::KATA_RUNTIME_LABEL).cloned()
}

/// What `kubectl label --overwrite` does: a merge patch, an Update.
async fn admin_labels(client: &Client) {
    let patch = json!({ "metadata": { "labels": { names::KATA_RUNTIME_LABEL: "true" } } });
    let params = PatchParams {
        field_manager: Some(ADMIN.into()),
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .patch(NODE, &params, &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn wait_removed(client: &Client, what: &str) {
    eventually(what, CONVERGE, || async {
        Ok(runtime_label(client).await.is_none())
    })
    .await
    .unwrap();
}

async fn metric(coordinator: &Coordinator, name: &str) -> f64 {
    coordinator.metric(name).await.unwrap()
}

/// Every publication of the coordinator's Warning Events with `reason`.
async fn published(client: &Client, reason: &str) -> (i32, Vec<String>) {
    let events = our_warnings(client, reason).await;
    let count = events.iter().map(|(_, count)| count).sum();
    (count, events.into_iter().map(|(note, _)| note).collect())
}

#[kata_test]
async fn a_co_owned_runtime_label_is_removed_by_patch_and_a_flip_flop_stops() {
    let cluster = Cluster::start(&[(NODE, &[WORKER])]).await;
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();
    // The admin labelled the node, and the labeller labelled it ready
    // since: both own the label. (An Update that sets a value already
    // there takes no ownership; an apply of it shares it.)
    admin_labels(&client).await;
    let ours = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": NODE, "labels": { names::KATA_RUNTIME_LABEL: "true" } },
    });
    Api::<Node>::all(client.clone())
        .patch(
            NODE,
            &PatchParams::apply(names::MANAGER_HEALTH),
            &Patch::Apply(&ours),
        )
        .await
        .unwrap();
    let node = Api::<Node>::all(client.clone()).get(NODE).await.unwrap();
    let owners: Vec<_> = node
        .managed_fields()
        .iter()
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains(names::KATA_RUNTIME_LABEL))
        })
        .filter_map(|e| e.manager.clone())
        .collect();
    assert!(
        owners.len() == 2 && owners.iter().any(|o| o == ADMIN),
        "co-owned to begin with: {owners:?}"
    );

    // No agent ever reports: after the grace the node is not ready.
    let policy = MarkPolicy {
        grace: Duration::from_secs(2),
        hold_down: Duration::from_secs(5),
        ..MarkPolicy::default()
    };
    let files = TlsFiles::generate().unwrap();
    let coordinator =
        Coordinator::start(client.clone(), &files, free_addr().unwrap(), policy).unwrap();
    cluster.create_kataconfig("kc", json!({})).await;
    wait_removed(&client, "the co-owned label removed").await;
    // The Events follow the label writes of the same scan.
    eventually("the co-owner announced", CONVERGE, || async {
        Ok(published(&client, LABEL_CO_OWNED).await.0 > 0)
    })
    .await
    .unwrap();
    let (count, notes) = published(&client, LABEL_CO_OWNED).await;
    assert_eq!(count, 1, "one Event for the co-owner: {notes:?}");
    assert!(
        notes[0].contains(ADMIN),
        "the Event names the manager: {notes:?}"
    );

    // The admin's tool puts it back: removed again, up to the bound.
    let bound = ContestPolicy::DEFAULT.removals;
    for round in 1..bound {
        admin_labels(&client).await;
        wait_removed(&client, &format!("removed again ({round})")).await;
    }
    admin_labels(&client).await;
    eventually(
        "the node's condition says the label is held",
        CONVERGE,
        || async {
            let condition = ready_condition(&client, NODE)
                .await
                .map_err(|e| e.to_string())?;
            Ok(condition.is_some_and(|(status, reason, message)| {
                status == "False" && reason == "LabelHeldByOtherManager" && message.contains(ADMIN)
            }))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        runtime_label(&client).await.as_deref(),
        Some("true"),
        "held, not fought"
    );

    // Several scans later (one a second): nothing more written or said.
    let label_writes = "kata_operator_node_label_writes_total";
    let node_writes = "kata_operator_api_writes_total{kind=\"Node\"}";
    let before = metric(&coordinator, label_writes).await;
    let node_before = metric(&coordinator, node_writes).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = metric(&coordinator, label_writes).await;
    let node_after = metric(&coordinator, node_writes).await;
    println!(
        "node-mark writes: {before} when held, {after} six seconds later; \
         Node writes of every part: {node_before}, then {node_after}"
    );
    // The removals, and the condition twice: not ready, then held.
    let expected = f64::from(u32::try_from(bound).unwrap() + 2);
    assert!(
        before <= expected,
        "{before} node-mark writes, {expected} expected at most"
    );
    assert_eq!(
        node_after, node_before,
        "no Node write while the label is held"
    );
    assert_eq!(after, before, "no write while the label is held");
    let removed = metric(
        &coordinator,
        "kata_operator_node_label_contests_total{outcome=\"removed\"}",
    )
    .await;
    let held = metric(
        &coordinator,
        "kata_operator_node_label_contests_total{outcome=\"held\"}",
    )
    .await;
    println!("contests: {removed} removed, {held} held");
    assert_eq!(
        (removed, held),
        (f64::from(u32::try_from(bound).unwrap()), 1.0)
    );
    let (held_events, notes) = published(&client, LABEL_HELD).await;
    assert_eq!(held_events, 1, "{notes:?}");
    assert!(notes[0].contains(ADMIN), "{notes:?}");
    assert_eq!(published(&client, LABEL_CO_OWNED).await.0, 1, "still one");
    let (removals, notes) = published(&client, RUNTIME_LABEL_REMOVED).await;
    assert_eq!(
        usize::try_from(removals).unwrap(),
        bound,
        "one per removal: {notes:?}"
    );
    coordinator.stop().await.unwrap();
}
