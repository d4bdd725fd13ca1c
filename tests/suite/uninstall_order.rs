//! Uninstalling in any order (deploy/base/uninstall-order.yaml): whatever
//! is deleted first, the cluster ends with everything of ours removed and
//! the nodes back on the worker config, or the deletion is refused with a
//! message that says what to delete first. On a real API server with
//! deploy/base applied by kubectl, the coordinator running in this process
//! and the MCO simulator rolling the nodes.
#![allow(clippy::unwrap_used)]

mod olm;

use kata_test_harness::kata_test;
use std::process::{Command, Stdio};

use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::control_plane::binary_dir;
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::manifests::deploy_dir;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use serde_json::json;

/// What the refusal says, whatever was refused.
const DELETE_FIRST: &str = "delete the KataConfig first and wait for it to be gone";
const NAMESPACE: &str = "kata-operator";
const NODES: [&str; 2] = ["w0", "w1"];

/// An object of deploy/base that the uninstall needs.
struct Needed {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    name: &'static str,
}

const fn needed(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    name: &'static str,
) -> Needed {
    Needed {
        group,
        version,
        kind,
        plural,
        namespaced,
        name,
    }
}

const RBAC: &str = "rbac.authorization.k8s.io";
/// Everything whose loss would strand the KataConfig's finalizer.
const NEEDED: [Needed; 8] = [
    needed(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        "kataconfigs.kataconfiguration.openshift.io",
    ),
    needed("", "v1", "Namespace", "namespaces", false, NAMESPACE),
    needed(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        "kata-coordinator",
    ),
    needed(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        "kata-coordinator",
    ),
    needed(
        RBAC,
        "v1",
        "ClusterRole",
        "clusterroles",
        false,
        "kata-operator-coordinator",
    ),
    needed(
        RBAC,
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
        "kata-operator-coordinator",
    ),
    needed(
        RBAC,
        "v1",
        "Role",
        "roles",
        true,
        "kata-operator-coordinator",
    ),
    needed(
        RBAC,
        "v1",
        "RoleBinding",
        "rolebindings",
        true,
        "kata-operator-coordinator",
    ),
];

impl Needed {
    fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        let api_version = if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        let resource = ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version,
            kind: self.kind.into(),
            plural: self.plural.into(),
        };
        if self.namespaced {
            Api::namespaced_with(client.clone(), NAMESPACE, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        }
    }

    /// Deletes it: `Err` with the API server's message when refused.
    async fn delete(&self, client: &kube::Client) -> Result<(), String> {
        self.api(client)
            .delete(self.name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Whether it exists and is not being deleted.
    async fn stands(&self, client: &kube::Client) -> bool {
        self.api(client)
            .get_opt(self.name)
            .await
            .unwrap()
            .is_some_and(|o| o.metadata.deletion_timestamp.is_none())
    }

    /// Gone, or on its way (a bare API server runs no namespace
    /// controller, so a deleted Namespace stays Terminating).
    async fn deleted(&self, client: &kube::Client) -> bool {
        !self.stands(client).await
    }
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let output = Command::new(binary_dir().unwrap().join("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster.plane.kubeconfig())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A cluster with deploy/base applied (as `kubectl apply --server-side -k`),
/// the coordinator running, and a KataConfig installed on two workers.
async fn installed() -> (Cluster, RunningCoordinator) {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    let base = deploy_dir().join("base");
    let (ok, out) = kubectl(
        &cluster,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-k",
            base.to_str().unwrap(),
        ],
    );
    assert!(ok, "kubectl apply -k deploy/base:\n{out}");
    let coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    for node in NODES {
        assert_eq!(cluster.simulator.rollouts(node), 1, "{node} installed once");
    }
    let first = &NEEDED[0];
    wait_in_force(&first.api(&cluster.client), first.name).await;
    (cluster, coordinator)
}

/// Waits until deleting `name`, which the policy refuses, is refused. The
/// API server enforces a new admission policy, with the params it reads
/// (the KataConfigs), a moment after they are written; on a loaded machine
/// the first refusal asserted could come before it. A dry run is judged by
/// the same policy and deletes nothing.
async fn wait_in_force(api: &Api<DynamicObject>, name: &str) {
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    eventually("the uninstall-order policy in force", CONVERGE, || async {
        Ok(api.delete(name, &dry_run).await.is_err())
    })
    .await
    .unwrap();
}

/// Whether the KataConfig is there and no deletion of it has begun.
async fn kataconfig_stands(cluster: &Cluster) -> bool {
    cluster
        .configs()
        .get_opt("kc")
        .await
        .unwrap()
        .is_some_and(|c| c.metadata.deletion_timestamp.is_none())
}

/// Deletes the KataConfig, waits until the uninstall finished, and checks
/// that nothing of ours is left and each node rolled back exactly once.
async fn uninstall(cluster: &Cluster) {
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    for node in NODES {
        println!(
            "{node}: rendered configs sent {:?}",
            cluster.simulator.rendered_configs_sent(node)
        );
        assert_eq!(
            cluster.simulator.rollouts(node),
            2,
            "{node}: one rollout to install, one back to the worker config"
        );
    }
}

/// The CRD, the namespace, the Deployment, the ServiceAccount and the RBAC
/// first (each on its own): refused with the message, nothing changes; the
/// KataConfig first: everything of ours goes, and then the rest may go too.
#[kata_test]
async fn what_the_uninstall_needs_cannot_go_before_the_kataconfig() {
    let (cluster, _coordinator) = installed().await;
    let client = cluster.client.clone();
    for object in &NEEDED {
        let message = object.delete(&client).await.expect_err(object.kind);
        let said = message.split(": Forbidden (").next().unwrap_or_default();
        println!("deleting {} {} first: {said}", object.kind, object.name);
        assert!(
            message.contains(DELETE_FIRST) && message.contains("KataConfig kc"),
            "{}: {message}",
            object.kind
        );
        assert!(object.stands(&client).await, "{} still there", object.kind);
    }
    assert!(
        kataconfig_stands(&cluster).await,
        "the KataConfig untouched"
    );
    assert!(
        cluster
            .get_dynamic(&mco::POOL.api_resource(), mco::POOL_NAME)
            .await
            .is_some(),
        "the install untouched"
    );
    uninstall(&cluster).await;
    // The CRD first now, so the policy's params are gone too when the rest
    // goes: it must not stand in the way then.
    for object in &NEEDED {
        object
            .delete(&client)
            .await
            .unwrap_or_else(|e| panic!("{} {} after the uninstall: {e}", object.kind, object.name));
        assert!(object.deleted(&client).await, "{}", object.kind);
    }
}

/// `kubectl delete -k deploy/base` with a KataConfig installed: the objects
/// the uninstall needs are refused and stay, so the operator keeps running;
/// deleting the KataConfig then uninstalls, and the same command again
/// removes everything.
#[kata_test]
async fn kubectl_delete_k_keeps_what_the_uninstall_needs_until_the_kataconfig_is_gone() {
    let (cluster, _coordinator) = installed().await;
    let client = cluster.client.clone();
    let base = deploy_dir().join("base");
    let base = base.to_str().unwrap();
    // No controller manager runs here: a deleted namespace never finishes,
    // so kubectl must not wait for it.
    let (ok, out) = kubectl(&cluster, &["delete", "--wait=false", "-k", base]);
    println!("kubectl delete -k deploy/base, KataConfig installed:\n{out}");
    assert!(!ok, "refused objects make kubectl fail");
    assert!(out.contains(DELETE_FIRST), "{out}");
    for object in &NEEDED {
        assert!(
            object.stands(&client).await,
            "{} {} was deleted",
            object.kind,
            object.name
        );
    }
    assert!(
        kataconfig_stands(&cluster).await,
        "the KataConfig untouched"
    );

    uninstall(&cluster).await;
    let (ok, out) = kubectl(
        &cluster,
        &["delete", "--wait=false", "--ignore-not-found", "-k", base],
    );
    println!("kubectl delete -k deploy/base again, KataConfig gone:\n{out}");
    assert!(ok, "{out}");
    for object in &NEEDED {
        assert!(
            object.deleted(&client).await,
            "{} {} left",
            object.kind,
            object.name
        );
    }
}
