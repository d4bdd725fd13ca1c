//! Who may create pods as the operator's ServiceAccounts: the DaemonSet
//! controller for DaemonSet kata-node-agent, the ReplicaSet controller for
//! the coordinator Deployment's ReplicaSets, each as its own ServiceAccount
//! or as the controller manager. The admin impersonates each requester.
//! Pinned on creation only: updates of a running pod (labels, orphaning,
//! ephemeral containers) by anyone else are admitted when the pod keeps its
//! shape.

use super::*;
use kube::api::{Patch, PatchParams};

const AGENT_PINNED: &str = "pods running as the kata-node-agent ServiceAccount are created only by the DaemonSet controller, for DaemonSet kata-node-agent";
const COORDINATOR_PINNED: &str = "pods running as the kata-coordinator ServiceAccount are created only by the ReplicaSet controller, for a ReplicaSet of Deployment kata-coordinator";

/// `pod` with its ownerReferences replaced by `owners`.
fn owned(mut pod: Value, owners: Value) -> Value {
    pod["metadata"]["ownerReferences"] = owners;
    pod
}

#[kata_test]
async fn only_the_workload_controllers_create_pods_as_the_operators_accounts() {
    let plane = policy_in_force().await;
    let daemon_set_controller = pods_as(&plane, DAEMON_SET_CONTROLLER).await;
    let replica_set_controller = pods_as(&plane, REPLICA_SET_CONTROLLER).await;
    let controller_manager = pods_as(&plane, CONTROLLER_MANAGER).await;
    let admin = pods_as_admin(&plane).await;

    for (who, pods) in [
        ("the DaemonSet controller", &daemon_set_controller),
        ("the controller manager", &controller_manager),
    ] {
        let refused = refusal(pods, &agent_pod()).await;
        assert_eq!(refused, None, "the agent's pod created by {who}");
    }
    for (who, pods) in [
        ("the ReplicaSet controller", &replica_set_controller),
        ("the controller manager", &controller_manager),
    ] {
        let refused = refusal(pods, &coordinator_pod()).await;
        assert_eq!(refused, None, "the coordinator's pod created by {who}");
    }

    let mut not_the_controller = controlled_by("DaemonSet", "kata-node-agent");
    not_the_controller["controller"] = json!(false);
    for (what, pods, pod) in [
        ("the agent's pod created by the admin", &admin, agent_pod()),
        (
            "the agent's pod created by the ReplicaSet controller, for a ReplicaSet",
            &replica_set_controller,
            owned(
                agent_pod(),
                json!([controlled_by("ReplicaSet", "kata-node-agent-5d8f7c9b4")]),
            ),
        ),
        (
            "the agent's pod with no owner",
            &daemon_set_controller,
            owned(agent_pod(), json!([])),
        ),
        (
            "the agent's pod for another DaemonSet",
            &daemon_set_controller,
            owned(
                agent_pod(),
                json!([controlled_by("DaemonSet", "kata-node-agent-copy")]),
            ),
        ),
        (
            "the agent's pod owned by its DaemonSet, not as controller",
            &daemon_set_controller,
            owned(agent_pod(), json!([not_the_controller])),
        ),
    ] {
        assert_refused(what, refusal(pods, &pod).await, AGENT_PINNED);
    }
    for (what, pods, pod) in [
        (
            "the coordinator's pod created by the admin",
            &admin,
            coordinator_pod(),
        ),
        (
            "the coordinator's pod created by the DaemonSet controller",
            &daemon_set_controller,
            coordinator_pod(),
        ),
        (
            "the coordinator's pod with no owner",
            &replica_set_controller,
            owned(coordinator_pod(), json!([])),
        ),
        (
            "the coordinator's pod for another ReplicaSet",
            &replica_set_controller,
            owned(
                coordinator_pod(),
                json!([controlled_by("ReplicaSet", "other-5d8f7c9b4")]),
            ),
        ),
        (
            "the coordinator's pod for a DaemonSet",
            &daemon_set_controller,
            owned(
                coordinator_pod(),
                json!([controlled_by("DaemonSet", "kata-coordinator-x")]),
            ),
        ),
    ] {
        assert_refused(what, refusal(pods, &pod).await, COORDINATOR_PINNED);
    }
}

/// Creates `pod` (really, not a dry run) as `user`; returns its name.
async fn create_as(plane: &ControlPlane, user: &str, pod: Value) -> String {
    let pod: Pod = serde_json::from_value(pod).unwrap();
    pods_as(plane, user)
        .await
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap()
}

#[kata_test]
async fn a_running_pod_can_still_be_updated_within_its_shape() {
    let plane = policy_in_force().await;
    let admin = pods_as_admin(&plane).await;
    let coordinator = create_as(&plane, REPLICA_SET_CONTROLLER, coordinator_pod()).await;
    let agent = create_as(&plane, DAEMON_SET_CONTROLLER, agent_pod()).await;

    // As the kubelet, a controller or an admin changes a pod it did not
    // create: a label, and the ownerReferences the garbage collector drops
    // when it orphans the pod.
    for change in [
        json!({"metadata": {"labels": {"debug": "true"}}}),
        json!({"metadata": {"ownerReferences": null}}),
    ] {
        let patched = admin
            .patch(
                &coordinator,
                &PatchParams::default(),
                &Patch::Merge(&change),
            )
            .await;
        assert!(patched.is_ok(), "{change}: {patched:?}");
    }

    for (what, pod, security_context, message) in [
        (
            "an ephemeral container adding SYS_ADMIN",
            &coordinator,
            json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            NO_CAPABILITIES,
        ),
        (
            "an ephemeral container with seccomp Unconfined",
            &coordinator,
            json!({"seccompProfile": {"type": "Unconfined"}}),
            NO_UNCONFINED_SECCOMP,
        ),
        (
            "a privileged ephemeral container in the agent's pod",
            &agent,
            json!({"privileged": true}),
            "ephemeral containers in the operator's namespace may not be privileged",
        ),
    ] {
        let refused = debug_container_refusal(&admin, pod, security_context).await;
        assert_refused(what, refused, message);
    }
    for pod in [&coordinator, &agent] {
        let within_the_rules = json!({"capabilities": {"drop": ["ALL"]}});
        let refused = debug_container_refusal(&admin, pod, within_the_rules).await;
        assert_eq!(
            refused, None,
            "an ephemeral container within the rules in {pod}"
        );
    }
}

/// Why the API server refused adding an ephemeral container with
/// `security_context` to pod `name` (a dry run), or `None` if it admitted it.
async fn debug_container_refusal(
    pods: &Api<Pod>,
    name: &str,
    security_context: Value,
) -> Option<String> {
    let patch = json!({"spec": {"ephemeralContainers": [{
        "name": "debug",
        "image": "registry.example/debug",
        "securityContext": security_context,
    }]}});
    let dry_run = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    refusal_of(
        pods.patch_ephemeral_containers(name, &dry_run, &Patch::Strategic(patch))
            .await,
    )
}
