//! deploy/base/node-agent-pod-policy.yaml on a real API server: the
//! node-agent's own pod (the DaemonSet's template, as written, created as
//! the DaemonSet controller creates it) is admitted, and each way of
//! widening what a pod in kata-operator gets from the host is refused with
//! the policy's message. Pods are created with dry-run, which runs admission
//! in full and stores nothing. Who may create the operator's pods is in
//! `identity`.
#![allow(clippy::unwrap_used)]

mod identity;

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kata_tests::control_plane::ControlPlane;
use kata_tests::eventually;
use kata_tests::manifests::apply_objects;
use kata_tests::manifests::deploy_dir;
use kata_tests::manifests::read_manifests;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "kata-operator";
/// Who creates the workload controllers' pods when the controller manager
/// runs with --use-service-account-credentials, and who without it.
const DAEMON_SET_CONTROLLER: &str = "system:serviceaccount:kube-system:daemon-set-controller";
const REPLICA_SET_CONTROLLER: &str = "system:serviceaccount:kube-system:replicaset-controller";
const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";

const ONLY_THE_AGENT: &str = "only the kata-node-agent ServiceAccount may run privileged";
const READ_ONLY: &str =
    "every mount of a hostPath volume in the operator's namespace must be readOnly: true";
const HOST_ROOT_ONLY: &str =
    "the only hostPath volume allowed in the operator's namespace is the host root";
const HOST_NAMESPACES: &str = "may not use the host's network, PID or IPC namespace";
const NO_CAPABILITIES: &str = "containers in the operator's namespace may not add capabilities";
const NO_UNCONFINED_SECCOMP: &str = "may not run with seccomp Unconfined";
const NO_UNCONFINED_APPARMOR: &str = "may not run with AppArmor Unconfined";

/// The pod template of the workload of `kind` in deploy/base/`file`, as a Pod
/// named `name` that `owner` controls.
fn pod_of(file: &str, kind: &str, name: &str, owner: Value) -> Value {
    let manifests = read_manifests(&deploy_dir().join("base").join(file)).unwrap();
    let workload = manifests
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
        .unwrap();
    let template = &workload.data["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": template["metadata"]["labels"],
            "ownerReferences": [owner],
        },
        "spec": template["spec"],
    })
}

/// A controller ownerReference. blockOwnerDeletion is false so that creating
/// the pod needs no rights on the owner (the API server checks those when
/// it is true); the owner itself need not exist, as no garbage collector
/// runs here.
fn controlled_by(kind: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": "0b5c3d62-3f0e-4d7a-9a57-6f1f0c2b7e10",
        "controller": true,
        "blockOwnerDeletion": false,
    })
}

/// The DaemonSet's pod, as the DaemonSet controller creates it.
fn agent_pod() -> Value {
    pod_of(
        "node-agent.yaml",
        "DaemonSet",
        "kata-node-agent-x",
        controlled_by("DaemonSet", "kata-node-agent"),
    )
}

/// A pod of the coordinator Deployment's ReplicaSet, as the ReplicaSet
/// controller creates it.
fn coordinator_pod() -> Value {
    pod_of(
        "coordinator.yaml",
        "Deployment",
        "kata-coordinator-5d8f7c9b4-x",
        controlled_by("ReplicaSet", "kata-coordinator-5d8f7c9b4"),
    )
}

/// An ordinary pod with one container, under the namespace's default account.
fn plain_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "registry.example/c"}]},
    })
}

fn objects(values: Vec<Value>) -> Vec<DynamicObject> {
    values
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// A control plane with the namespace, its accounts and the policy applied,
/// the `default` account the controller manager would create, and the
/// workload controllers' users allowed to create and change pods there (as
/// their cluster roles allow them on a cluster). Returns once the policy
/// refuses what it should.
async fn policy_in_force() -> ControlPlane {
    let plane = ControlPlane::start().await.unwrap();
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "node-agent-pod-policy.yaml",
    ] {
        apply_objects(
            &plane,
            &read_manifests(&deploy_dir().join("base").join(file)).unwrap(),
        )
        .await
        .unwrap();
    }
    let meta = |name: &str| json!({"name": name, "namespace": NAMESPACE});
    let account =
        |name: &str| json!({"kind": "ServiceAccount", "name": name, "namespace": "kube-system"});
    apply_objects(&plane, &objects(vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("default")}),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta("pod-creators"),
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "patch"]}],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": meta("pod-creators"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-creators"},
            "subjects": [
                account("daemon-set-controller"),
                account("replicaset-controller"),
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_MANAGER},
            ],
        }),
    ]))
    .await
    .unwrap();

    let pods = pods_as(&plane, DAEMON_SET_CONTROLLER).await;
    let mut writable = agent_pod();
    writable["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = json!(false);
    // The policy takes effect once the API server has loaded it, and the
    // Role once the authorizer has seen it.
    eventually(
        "the policy to take effect",
        Duration::from_secs(30),
        || async {
            let refused = refusal(&pods, &writable).await;
            Ok(refused.is_some_and(|m| m.contains(READ_ONLY)))
        },
    )
    .await
    .unwrap();
    plane
}

/// Pods of the namespace, created as `user` (the admin impersonating it).
async fn pods_as(plane: &ControlPlane, user: &str) -> Api<Pod> {
    let mut config = plane.config().await.unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    Api::namespaced(kube::Client::try_from(config).unwrap(), NAMESPACE)
}

/// Pods of the namespace, created as the admin (system:masters).
async fn pods_as_admin(plane: &ControlPlane) -> Api<Pod> {
    Api::namespaced(plane.client().await.unwrap(), NAMESPACE)
}

/// Why the API server refused `pod` in the namespace, or `None` if it
/// admitted it.
async fn refusal(pods: &Api<Pod>, pod: &Value) -> Option<String> {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    refusal_of(pods.create(&dry_run, &pod).await)
}

/// The message of the API server's refusal, or `None` for a success.
fn refusal_of<T>(result: kube::Result<T>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(other) => panic!("{other}"),
    }
}

fn assert_refused(what: &str, refused: Option<String>, message: &str) {
    println!("{what}: {refused:?}");
    assert!(
        refused.as_deref().is_some_and(|m| m.contains(message)),
        "{what}: expected a refusal saying {message:?}, got {refused:?}"
    );
}

/// One refusal: what is tried, the field set (a path of keys, array
/// indexes and `-` for a new last item), its value, and what the refusal
/// says. A null value leaves the field out.
type Case = (&'static str, &'static str, Value, &'static str);

/// `pod` with the field at `path` set to `value`.
fn with(mut pod: Value, path: &str, value: Value) -> Value {
    let field = path.split('/').fold(&mut pod, |at, step| {
        if step == "-" {
            let items = at.as_array_mut().unwrap();
            items.push(Value::Null);
            items.last_mut().unwrap()
        } else if let Ok(index) = step.parse::<usize>() {
            &mut at[index]
        } else {
            // Indexing null by a key makes it an object.
            &mut at[step]
        }
    });
    *field = value;
    pod
}

/// An agent-shaped pod widened towards the host. Each is created by the
/// DaemonSet controller, so that the shape alone is at fault.
fn widened_agent_pods() -> Vec<Case> {
    vec![
        (
            "a mount made writable",
            "spec/containers/0/volumeMounts/0/readOnly",
            json!(false),
            READ_ONLY,
        ),
        (
            "readOnly left out",
            "spec/containers/0/volumeMounts/0/readOnly",
            Value::Null,
            READ_ONLY,
        ),
        (
            "Bidirectional propagation",
            "spec/containers/0/volumeMounts/0/mountPropagation",
            json!("Bidirectional"),
            READ_ONLY,
        ),
        (
            "a sidecar mounting the host",
            "spec/containers/-",
            json!({
                "name": "shell",
                "image": "registry.example/shell",
                "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
            }),
            READ_ONLY,
        ),
        (
            "another host path",
            "spec/volumes/0/hostPath/path",
            json!("/etc"),
            HOST_ROOT_ONLY,
        ),
        (
            "a second hostPath volume",
            "spec/volumes/-",
            json!({"name": "var", "hostPath": {"path": "/var"}}),
            HOST_ROOT_ONLY,
        ),
        (
            "the host network",
            "spec/hostNetwork",
            json!(true),
            HOST_NAMESPACES,
        ),
        (
            "the host PID namespace",
            "spec/hostPID",
            json!(true),
            HOST_NAMESPACES,
        ),
        (
            "the agent adding SYS_MODULE",
            "spec/containers/0/securityContext/capabilities/add",
            json!(["SYS_MODULE"]),
            NO_CAPABILITIES,
        ),
        (
            "the agent's pod seccomp Unconfined",
            "spec/securityContext/seccompProfile/type",
            json!("Unconfined"),
            NO_UNCONFINED_SECCOMP,
        ),
    ]
}

/// An ordinary pod (the namespace's default account, no owner) that asks
/// for more than the container runtime's confinement, or for privilege.
fn unconfined_plain_pods() -> Vec<Case> {
    let unconfined = |profile: &str| json!({profile: {"type": "Unconfined"}});
    vec![
        (
            "a container adding SYS_ADMIN",
            "spec/containers/0/securityContext/capabilities/add",
            json!(["SYS_ADMIN"]),
            NO_CAPABILITIES,
        ),
        (
            "an init container adding SYS_MODULE",
            "spec/initContainers",
            json!([{
                "name": "init",
                "image": "registry.example/init",
                "securityContext": {"capabilities": {"add": ["SYS_MODULE"]}},
            }]),
            NO_CAPABILITIES,
        ),
        (
            "pod-level seccomp Unconfined",
            "spec/securityContext",
            unconfined("seccompProfile"),
            NO_UNCONFINED_SECCOMP,
        ),
        (
            "container-level seccomp Unconfined",
            "spec/containers/0/securityContext",
            unconfined("seccompProfile"),
            NO_UNCONFINED_SECCOMP,
        ),
        (
            "the legacy pod seccomp annotation",
            "metadata/annotations",
            json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}),
            NO_UNCONFINED_SECCOMP,
        ),
        (
            "the legacy container seccomp annotation",
            "metadata/annotations",
            json!({"container.seccomp.security.alpha.kubernetes.io/c": "unconfined"}),
            NO_UNCONFINED_SECCOMP,
        ),
        (
            "pod-level AppArmor Unconfined",
            "spec/securityContext",
            unconfined("appArmorProfile"),
            NO_UNCONFINED_APPARMOR,
        ),
        (
            "container-level AppArmor Unconfined",
            "spec/containers/0/securityContext",
            unconfined("appArmorProfile"),
            NO_UNCONFINED_APPARMOR,
        ),
        (
            "the legacy AppArmor annotation",
            "metadata/annotations",
            json!({"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}),
            NO_UNCONFINED_APPARMOR,
        ),
        (
            "privileged",
            "spec/containers/0/securityContext/privileged",
            json!(true),
            ONLY_THE_AGENT,
        ),
    ]
}

#[kata_test]
async fn only_the_agents_own_pod_shape_is_admitted() {
    let plane = policy_in_force().await;
    let daemon_set_controller = pods_as(&plane, DAEMON_SET_CONTROLLER).await;
    assert_eq!(
        refusal(&daemon_set_controller, &agent_pod()).await,
        None,
        "the DaemonSet's own pod is admitted"
    );
    for (what, path, value, message) in widened_agent_pods() {
        let pod = with(agent_pod(), path, value);
        assert_refused(what, refusal(&daemon_set_controller, &pod).await, message);
    }

    let admin = pods_as_admin(&plane).await;
    for (what, path, value, message) in unconfined_plain_pods() {
        let pod = with(plain_pod(), path, value);
        assert_refused(what, refusal(&admin, &pod).await, message);
    }
    // The coordinator's Deployment changed to run privileged, its pod
    // created as the ReplicaSet controller would.
    let privileged_coordinator = with(
        coordinator_pod(),
        "spec/containers/0/securityContext",
        json!({"privileged": true}),
    );
    assert_refused(
        "privileged under the coordinator's account",
        refusal(
            &pods_as(&plane, REPLICA_SET_CONTROLLER).await,
            &privileged_coordinator,
        )
        .await,
        ONLY_THE_AGENT,
    );

    // What the runtime confines by default, or a profile of the node's own,
    // is not this policy's concern.
    let mut confined = plain_pod();
    confined["spec"]["securityContext"] = json!({
        "seccompProfile": {"type": "RuntimeDefault"},
        "appArmorProfile": {"type": "Localhost", "localhostProfile": "k8s-confined"},
    });
    confined["spec"]["containers"][0]["securityContext"] =
        json!({"capabilities": {"add": [], "drop": ["ALL"]}});
    assert_eq!(refusal(&admin, &confined).await, None);
    assert_eq!(refusal(&admin, &plain_pod()).await, None);
}
