//! The `kata` RuntimeClass cannot be deleted from under the pods that use
//! it (by hand, or by a GitOps prune): its finalizer holds the deletion, a
//! Degraded condition names the pods, and once they are gone it goes and is
//! created again; the uninstall still completes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::names;
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, create_kata_pod};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;

#[kata_test]
async fn a_runtime_class_in_use_is_held_until_its_pods_are_gone() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Default::default());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let classes: Api<RuntimeClass> = Api::all(cluster.client.clone());
    let first = classes.get(names::RUNTIME_CLASS_NAME).await.unwrap();
    assert_eq!(first.finalizers(), [names::RUNTIME_CLASS_FINALIZER]);

    create_kata_pod(&cluster.client, "apps", "sandboxed").await;
    classes
        .delete(names::RUNTIME_CLASS_NAME, &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "True", "RuntimeClassDeletionHeld")
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    assert!(message.contains("apps/sandboxed"), "{message}");
    // Held: still there (terminating) well after the coordinator saw it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = classes.get(names::RUNTIME_CLASS_NAME).await.unwrap();
    assert_eq!(held.uid(), first.uid(), "the same RuntimeClass, held");
    assert!(held.metadata.deletion_timestamp.is_some());

    Api::<Pod>::namespaced(cluster.client.clone(), "apps")
        .delete("sandboxed", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(
        "the held RuntimeClass to go and come back",
        CONVERGE,
        || async {
            let now = classes
                .get_opt(names::RUNTIME_CLASS_NAME)
                .await
                .map_err(|e| e.to_string())?;
            Ok(now.is_some_and(|rc| {
                rc.uid() != first.uid() && rc.metadata.deletion_timestamp.is_none()
            }))
        },
    )
    .await
    .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "False", "AsExpected")
        .await;

    // The uninstall takes its own guard off.
    cluster.uninstall("kc").await;
    assert!(
        classes
            .get_opt(names::RUNTIME_CLASS_NAME)
            .await
            .unwrap()
            .is_none()
    );
}

/// A KataConfig whose finalizer another field manager wrote (an OSC install
/// taken over: OSC's `manager`) is still released when it is deleted: the
/// finalizer is removed whoever wrote it, not by an apply that only
/// releases our own fields.
#[kata_test]
async fn a_finalizer_another_manager_wrote_is_released_on_delete() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let configs = cluster.configs();
    configs
        .patch(
            "kc",
            &kube::api::PatchParams::apply("manager"),
            &kube::api::Patch::Apply(json!({
                "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
                "metadata": { "name": "kc", "finalizers": [names::FINALIZER] },
                "spec": {},
            })),
        )
        .await
        .unwrap();
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Default::default());
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    cluster.uninstall("kc").await;
    assert!(cluster.operator_leftovers().await.is_empty());
}
