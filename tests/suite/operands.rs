//! The operands OLM cannot carry, created by the coordinator on a real API
//! server and on its own ServiceAccount's RBAC: the node-agent DaemonSet
//! from the settings of the coordinator's Deployment (its image from
//! `RELATED_IMAGE_NODE_AGENT`), owned by that Deployment, and the admission
//! policies. A hand edit of what the agent is gets set back once, one of
//! where it runs is left alone, a deleted policy comes back, an edited one
//! is reported and kept, and a missing image is said, naming the
//! Deployment.
//!
//! A bare API server runs no controllers: the Deployment is an object
//! only, and no DaemonSet pod runs (the real roll is the real node's).
#![allow(clippy::unwrap_used)]

mod monitoring;
mod support;

use kata_coordinator::operands::{node_agent, policies};
use kata_test_harness::kata_test;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;

use support::{IMAGE, Installed, NEW_IMAGE};

#[kata_test]
async fn the_coordinator_creates_its_operands_and_sets_back_what_the_agent_is() {
    let installed = Installed::start(Some(IMAGE)).await;
    let ds = installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
        .await;
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"].to_string();
    assert!(
        args.contains(&format!("--coordinator={}", support::COORDINATOR_URL)),
        "{args}"
    );
    let owner = &ds["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(
        owner["uid"].as_str(),
        Some(installed.deployment_uid.as_str())
    );
    for name in policies::NAMES {
        for kind in [policies::POLICY, policies::BINDING] {
            installed.wait_cluster_object(kind, name).await;
        }
    }
    let created = installed.writes("DaemonSet").await;
    assert_eq!(created, 1.0, "one write creates the DaemonSet");

    // An edit of the image and of where the agents run, by another manager.
    installed
        .edit_daemon_set(json!({"spec": {"template": {"spec": {
            "nodeSelector": {"kata": "true"},
            "containers": [{"name": "node-agent", "image": "evil.example/agent:1"}],
        }}}}))
        .await;
    let ds = installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
        .await;
    assert_eq!(
        ds["spec"]["template"]["spec"]["nodeSelector"]["kata"], "true",
        "the admin's nodeSelector stays: {ds}"
    );
    installed.wait_event("NodeAgentReasserted", "image").await;
    // No fight: settled after one write, through several resyncs.
    tokio::time::sleep(support::RESYNC * 4).await;
    assert_eq!(installed.writes("DaemonSet").await, created + 1.0);

    // A deleted policy comes back; an edited one is kept and reported.
    let name = policies::NAMES[0];
    installed
        .cluster_api(policies::POLICY)
        .delete(name, &Default::default())
        .await
        .unwrap();
    installed.wait_cluster_object(policies::POLICY, name).await;
    let writes = installed.writes("ValidatingAdmissionPolicy").await;
    let edit = json!({"spec": {"failurePolicy": "Ignore"}});
    installed
        .cluster_api(policies::POLICY)
        .patch(name, &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    installed
        .wait_event("OperandDiffers", "failurePolicy")
        .await;
    tokio::time::sleep(support::RESYNC * 3).await;
    assert_eq!(installed.writes("ValidatingAdmissionPolicy").await, writes);
    let live = installed
        .cluster_api(policies::POLICY)
        .get(name)
        .await
        .unwrap();
    assert_eq!(
        live.data["spec"]["failurePolicy"], "Ignore",
        "kept as found"
    );
    installed.stop().await;
}

#[kata_test]
async fn a_new_version_rolls_the_agents_to_its_image() {
    let installed = Installed::start(Some(IMAGE)).await;
    installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
        .await;
    // What the previous version left: its own version on the DaemonSet.
    let older = json!({"metadata": {"annotations": {node_agent::VERSION_ANNOTATION: "0.0.1"}}});
    installed.edit_daemon_set(older).await;
    let installed = installed.restart(Some(NEW_IMAGE)).await;
    let ds = installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == NEW_IMAGE)
        .await;
    assert_eq!(
        ds["metadata"]["annotations"][node_agent::VERSION_ANNOTATION],
        node_agent::VERSION
    );
    installed.wait_event("NodeAgentUpdated", NEW_IMAGE).await;
    installed.stop().await;
}

#[kata_test]
async fn without_the_image_env_nothing_is_half_created_and_the_deployment_is_named() {
    let installed = Installed::start(None).await;
    installed
        .wait_event("NodeAgentImageMissing", "RELATED_IMAGE_NODE_AGENT")
        .await;
    for name in policies::NAMES {
        installed.wait_cluster_object(policies::POLICY, name).await;
    }
    let ds: Api<DynamicObject> = installed.daemon_sets();
    assert!(ds.get_opt(node_agent::NAME).await.unwrap().is_none());
    assert_eq!(installed.writes("DaemonSet").await, 0.0);
    // Said once, not once a resync.
    tokio::time::sleep(support::RESYNC * 4).await;
    assert_eq!(installed.event_count("NodeAgentImageMissing").await, 1);
    installed.stop().await;
}

#[kata_test]
async fn once_the_deployment_is_gone_the_daemon_set_is_not_made_again() {
    let installed = Installed::start(Some(IMAGE)).await;
    installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
        .await;
    // OLM's uninstall: the Deployment goes, and the garbage collector
    // (which a bare API server lacks) takes the DaemonSet it owns.
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        installed.cluster.client.clone(),
        kata_coordinator::rbac::NAMESPACE,
        &kata_coordinator::operands::DEPLOYMENT.api_resource(),
    );
    deployments
        .delete(
            kata_coordinator::operands::OWNER_DEPLOYMENT,
            &Default::default(),
        )
        .await
        .unwrap();
    let writes = installed.writes("DaemonSet").await;
    installed
        .daemon_sets()
        .delete(node_agent::NAME, &Default::default())
        .await
        .unwrap();
    tokio::time::sleep(support::RESYNC * 4).await;
    let left = installed
        .daemon_sets()
        .get_opt(node_agent::NAME)
        .await
        .unwrap();
    assert!(left.is_none(), "an orphan DaemonSet was made: {left:?}");
    assert_eq!(installed.writes("DaemonSet").await, writes);
    installed.stop().await;
}

/// What v0.1.0's install left: the DaemonSet and the pod policy applied by
/// hand from its deploy/base (kept as release fixtures).
fn release_objects(release: &str) -> Vec<DynamicObject> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("fixtures/releases/{release}/deploy"));
    ["node-agent.yaml", "node-agent-pod-policy.yaml"]
        .iter()
        .flat_map(|file| kata_tests::manifests::read_manifests(&dir.join(file)).unwrap())
        .collect()
}

#[kata_test]
async fn the_daemon_set_a_release_applied_by_hand_is_taken_over_and_rolled() {
    for release in crate::upgrade_from_release::RELEASES {
        let earlier = release_objects(release);
        let installed = Installed::start_after(Some(NEW_IMAGE), &earlier).await;
        let ds = installed
            .wait_daemon_set(|ds| {
                ds["spec"]["template"]["spec"]["containers"][0]["image"] == NEW_IMAGE
            })
            .await;
        assert_eq!(
            ds["metadata"]["annotations"][node_agent::VERSION_ANNOTATION],
            node_agent::VERSION
        );
        // One write rolls it; the fields kubectl set where the admin may
        // change them stay as they were.
        tokio::time::sleep(support::RESYNC * 4).await;
        assert_eq!(installed.writes("DaemonSet").await, 1.0, "{release}");
        let shipped = &earlier[0].data["spec"]["template"]["spec"];
        for field in ["nodeSelector", "tolerations", "priorityClassName"] {
            assert_eq!(
                ds["spec"]["template"]["spec"][field], shipped[field],
                "{release}: {field}"
            );
        }
        installed.wait_event("NodeAgentUpdated", NEW_IMAGE).await;
        // The release's weaker pod policy stays; this version's is added.
        for name in [
            "kata-operator-node-agent-pods",
            "kata-operator-node-agent-pods-v2",
        ] {
            installed.wait_cluster_object(policies::POLICY, name).await;
        }
        installed.stop().await;
    }
}
