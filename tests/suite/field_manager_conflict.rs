//! Detect, don't fight: when another field manager (a GitOps tool, an
//! operator left installed) applies its own spec to our MachineConfig, the
//! coordinator does not take it back (each take-back would roll the pool),
//! says who holds what in Degraded and an Event, and writes again once the
//! other manager lets go. On a real API server with the MCO simulator.
#![allow(clippy::unwrap_used)]

use kata_coordinator::mco::names as mco;
use kata_coordinator::mco::objects::data_url;
use kata_coordinator::plan::conditions::own_reason::CONFLICTING_MANAGER;
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, our_warnings, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

const OTHER_MANAGER: &str = "gitops-tool";

/// Another tool's idea of the MachineConfig of our name: no extension, a
/// drop-in of its own.
fn their_machine_config() -> Value {
    json!({
        "apiVersion": mco::MACHINE_CONFIG.api_version(), "kind": mco::MACHINE_CONFIG.kind,
        "metadata": { "name": mco::MACHINE_CONFIG_NAME },
        "spec": {
            "extensions": [],
            "config": {
                "ignition": { "version": "3.2.0" },
                "storage": { "files": [{
                    "path": kata_proto::contract::DROP_IN_PATH, "mode": 420, "overwrite": true,
                    "contents": { "source": data_url("# managed by another tool\n") },
                }] }
            }
        }
    })
}

#[kata_test]
async fn another_manager_on_our_machine_config_is_named_not_fought_and_then_resumed() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    let (_coordinator, metrics) = RunningCoordinator::with_metrics(client.clone());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let machine_configs =
        Api::<DynamicObject>::all_with(client.clone(), &mco::MACHINE_CONFIG.api_resource());
    let ours = machine_configs
        .get(mco::MACHINE_CONFIG_NAME)
        .await
        .unwrap()
        .data["spec"]
        .clone();

    // The other manager takes the fields over, as a forced apply does.
    machine_configs
        .patch(
            mco::MACHINE_CONFIG_NAME,
            &PatchParams::apply(OTHER_MANAGER).force(),
            &Patch::Apply(their_machine_config()),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "True", CONFLICTING_MANAGER)
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    let object = format!("MachineConfig/{}", mco::MACHINE_CONFIG_NAME);
    assert!(
        message.contains(OTHER_MANAGER) && message.contains(&object),
        "names the manager and the object: {message}"
    );
    eventually("a Warning Event naming the manager", CONVERGE, || async {
        let events = our_warnings(&client, CONFLICTING_MANAGER).await;
        Ok(events
            .iter()
            .any(|(note, _)| note.contains(OTHER_MANAGER) && note.contains(&object)))
    })
    .await
    .unwrap();

    // However often it reconciles now, it leaves their object alone.
    let held = machine_configs.get(mco::MACHINE_CONFIG_NAME).await.unwrap();
    let writes = metrics.api_writes.get_kind(mco::MACHINE_CONFIG.kind);
    reconcile_rounds(&client, &metrics, 3).await;
    let after = machine_configs.get(mco::MACHINE_CONFIG_NAME).await.unwrap();
    assert_eq!(
        after.resource_version(),
        held.resource_version(),
        "not overwritten"
    );
    assert_eq!(after.data["spec"]["extensions"], json!([]));
    assert_eq!(
        metrics.api_writes.get_kind(mco::MACHINE_CONFIG.kind),
        writes,
        "no write to the MachineConfig was even tried"
    );
    assert!(
        cluster.simulator.rollouts("w0") <= 2,
        "the install, then their change, and no more: {:?}",
        cluster.simulator.rendered_configs_sent("w0")
    );
    assert_eq!(
        our_warnings(&client, CONFLICTING_MANAGER).await,
        [(message, 1)],
        "one Event, published once, not one per reconcile"
    );

    // The other manager lets go: applying nothing as that manager removes
    // every field only it held.
    machine_configs
        .patch(
            mco::MACHINE_CONFIG_NAME,
            &PatchParams::apply(OTHER_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": mco::MACHINE_CONFIG.api_version(), "kind": mco::MACHINE_CONFIG.kind,
                "metadata": { "name": mco::MACHINE_CONFIG_NAME },
            })),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "False", "AsExpected")
        .await;
    eventually("our MachineConfig spec back", CONVERGE, || async {
        let spec = machine_configs
            .get(mco::MACHINE_CONFIG_NAME)
            .await
            .map_err(|e| e.to_string())?
            .data["spec"]
            .clone();
        Ok(spec == ours)
    })
    .await
    .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
}
