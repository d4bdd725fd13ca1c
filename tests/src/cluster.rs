//! A test cluster for the coordinator: a real control plane with the
//! operator's API, the MCO simulator, and nodes with fake host roots, with the
//! helpers the lifecycle tests read it through.
// A set-up step that fails should stop the test right there, with its error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::api::KataConfig;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::ControlPlane;
use crate::api_objects::create_node;
use crate::demo_world::wait_until_adopted;
use crate::eventually;
use crate::manifests::control_plane_with_operator_api;
use crate::mco_simulator::{McoSimulator, SimulatorOptions};

pub const CONVERGE: Duration = Duration::from_secs(60);
pub const WORKER: (&str, &str) = ("node-role.kubernetes.io/worker", "");

/// A control plane with the operator's API, the MCO simulator and nodes with
/// fake host roots: what a coordinator needs to install and uninstall.
pub struct Cluster {
    pub plane: ControlPlane,
    /// An admin client.
    pub client: Client,
    pub simulator: McoSimulator,
    pub roots: tempfile::TempDir,
}

impl Cluster {
    /// A control plane with the operator's API, the MCO simulator, and the
    /// given nodes, each worker with a fake host root.
    pub async fn start(nodes: &[(&str, &[(&str, &str)])]) -> Cluster {
        let plane = control_plane_with_operator_api().await.unwrap();
        let client = plane.client().await.unwrap();
        let options = SimulatorOptions {
            update_delay: Duration::from_millis(50),
            resync_interval: Duration::from_millis(50),
        };
        let simulator = McoSimulator::start(client.clone(), options).await.unwrap();
        let roots = tempfile::tempdir().unwrap();
        for (name, labels) in nodes {
            create_node(&client, name, labels).await.unwrap();
            let root = roots.path().join(name);
            std::fs::create_dir_all(&root).unwrap();
            simulator.register_host_root(name, root);
        }
        // Nodes join the cluster already on their pool's configuration, as
        // installed machines do; wait for that before any test acts, or a node
        // labelled early would be adopted straight into the kata pool.
        wait_until_adopted(&client, CONVERGE).await.unwrap();
        Cluster {
            plane,
            client,
            simulator,
            roots,
        }
    }

    /// The rendered configs each of `nodes` was sent to, so far: its
    /// drains and reboots.
    pub fn rollouts(&self, nodes: &[&str]) -> Vec<usize> {
        nodes.iter().map(|n| self.simulator.rollouts(n)).collect()
    }

    pub fn root(&self, node: &str) -> std::path::PathBuf {
        self.roots.path().join(node)
    }

    pub fn configs(&self) -> Api<KataConfig> {
        Api::all(self.client.clone())
    }

    pub async fn create_kataconfig(&self, name: &str, spec: Value) {
        let object: KataConfig = serde_json::from_value(json!({
            "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
            "metadata": { "name": name }, "spec": spec,
        }))
        .unwrap();
        self.configs()
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
    }

    pub async fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        let config = self.configs().get_opt(name).await.ok()??;
        let c = config
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)?;
        Some((c.status, c.reason, c.message))
    }

    pub async fn wait_condition(&self, name: &str, type_: &str, status: &str, reason: &str) {
        let what = format!("{name} {type_}={status} ({reason})");
        eventually(&what, CONVERGE, || async {
            let c = self.condition(name, type_).await;
            match &c {
                Some((s, r, _)) if s == status && r == reason => Ok(true),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap();
    }

    /// Deletes the KataConfig `name` and waits until it is gone: the
    /// uninstall finished and its finalizer removed.
    pub async fn uninstall(&self, name: &str) {
        self.configs()
            .delete(name, &kube::api::DeleteParams::default())
            .await
            .unwrap();
        self.wait_gone(name).await;
    }

    pub async fn wait_gone(&self, name: &str) {
        eventually(&format!("KataConfig {name} deleted"), CONVERGE, || async {
            Ok(self
                .configs()
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .is_none())
        })
        .await
        .unwrap();
    }

    pub async fn node_labels(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&Default::default())
            .await
            .unwrap();
        nodes
            .items
            .into_iter()
            .map(|n| (n.name_any(), n.labels().clone()))
            .collect()
    }

    pub async fn nodes_with(&self, label: &str) -> Vec<String> {
        self.node_labels()
            .await
            .into_iter()
            .filter(|(_, l)| l.contains_key(label))
            .map(|(n, _)| n)
            .collect()
    }

    pub async fn get_dynamic(
        &self,
        resource: &kube::api::ApiResource,
        name: &str,
    ) -> Option<DynamicObject> {
        Api::<DynamicObject>::all_with(self.client.clone(), resource)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Every trace the operator could leave: its objects, labels and
    /// annotations-driven configs. Empty after a complete uninstall.
    pub async fn operator_leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let ours = std::iter::once((mco::POOL, mco::POOL_NAME))
            .chain(mco::OUR_MACHINE_CONFIG_NAMES.map(|name| (mco::MACHINE_CONFIG, name)))
            .chain(
                mco::OUR_CONTAINER_RUNTIME_CONFIG_NAMES
                    .map(|name| (mco::CONTAINER_RUNTIME_CONFIG, name)),
            );
        for (kind, name) in ours {
            let resource = kind.api_resource();
            if self.get_dynamic(&resource, name).await.is_some() {
                left.push(format!("{} {name}", resource.kind));
            }
        }
        if Api::<RuntimeClass>::all(self.client.clone())
            .get_opt(names::RUNTIME_CLASS_NAME)
            .await
            .unwrap()
            .is_some()
        {
            left.push("RuntimeClass kata".into());
        }
        for (node, labels) in self.node_labels().await {
            for label in [
                mco::KATA_POOL_ROLE_LABEL,
                names::KATA_RUNTIME_LABEL,
                names::KATA_CAPABLE_LABEL,
            ] {
                if labels.contains_key(label) {
                    left.push(format!("label {label} on {node}"));
                }
            }
        }
        let nodes = Api::<Node>::all(self.client.clone())
            .list(&Default::default())
            .await
            .unwrap();
        for node in nodes.items {
            let current = node
                .annotations()
                .get(mco::CURRENT_CONFIG)
                .cloned()
                .unwrap_or_default();
            if current.starts_with("rendered-kata-oc-") {
                left.push(format!("node {} still on {current}", node.name_any()));
            }
        }
        left
    }
}

/// A node label that wakes a reconcile and decides nothing: the node cache
/// keeps it (of the labels it keeps only roles, ours and those selectors
/// name; this one is under our prefix), and nothing reads it.
pub const TOUCH_LABEL: &str = "katacontainers.io/test-touched";

/// Runs `rounds` more complete reconciles of the coordinator whose metrics
/// are `metrics`, each started by [`TOUCH_LABEL`] on the first node. The
/// reconcile-duration histogram counts finished reconciles.
pub async fn reconcile_rounds(
    client: &Client,
    metrics: &kata_coordinator::metrics::Metrics,
    rounds: usize,
) {
    let nodes = Api::<Node>::all(client.clone());
    let first = nodes.list(&Default::default()).await.unwrap().items[0].name_any();
    for round in 0..rounds {
        let finished = metrics.reconcile_duration.0.count();
        let patch = json!({"metadata": {"labels": {TOUCH_LABEL: round.to_string()}}});
        nodes
            .patch(&first, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        eventually("another reconcile to finish", CONVERGE, || async {
            Ok(metrics.reconcile_duration.0.count() > finished)
        })
        .await
        .unwrap();
    }
}

/// The namespace, with the default ServiceAccount that no controller
/// manager creates here, so pods can be created in it.
pub async fn namespace_for_pods(client: &Client, namespace: &str) {
    let apply = PatchParams::apply("test");
    Api::<Namespace>::all(client.clone())
        .patch(
            namespace,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            ),
        )
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .patch(
            "default",
            &apply,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})),
        )
        .await
        .unwrap();
}

/// Creates a Pod `name` that asks for the `kata` RuntimeClass in
/// `namespace` (made ready for pods first). No kubelet runs it: the
/// coordinator's uninstall gate only has to see it.
pub async fn create_kata_pod(client: &Client, namespace: &str, name: &str) {
    namespace_for_pods(client, namespace).await;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name },
        "spec": { "runtimeClassName": "kata", "containers": [{ "name": "c", "image": "busybox" }] }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

/// The coordinator's Warning Events with `reason` (those of cluster-scoped
/// objects land in `default`): each one's note, and how many times it was
/// published (kube aggregates repeats into a series).
pub async fn our_warnings(client: &Client, reason: &str) -> Vec<(String, i32)> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reporting_controller.as_deref() == Some(names::EVENT_REPORTER)
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
        })
        .map(|e| (e.note.unwrap_or_default(), e.series.map_or(1, |s| s.count)))
        .collect()
}
