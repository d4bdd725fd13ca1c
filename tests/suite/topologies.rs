//! The KataConfig on every OpenShift topology, against a real API server,
//! the real OpenShift CRDs, the coordinator in-process and the MCO simulator
//! following the real MCO's rules: where each node is installed, what the
//! admin sees, and how many rendered configs (drains and reboots) each node
//! goes through — one per install, one per uninstall, none for a node left
//! alone.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::api::KataNodesStatus;
use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_coordinator::plan::nodes::failure_reason;
use kata_tests::api_objects::create_node;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::demo_world::wait_until_adopted;
use kata_tests::eventually;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::mco_simulator::{ClusterOs, McoSimulator, NodeFault, SimulatorOptions, model};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");
const INFRA: (&str, &str) = ("node-role.kubernetes.io/infra", "");
/// The label the admin's infra pool selects its nodes by: not a role, so
/// the coordinator's node cache keeps it only because that pool names it.
const INFRA_POOL: (&str, &str) = ("example.com/machine-pool", "infra");
const OUR_MACHINE_CONFIGS: [&str; 2] = [mco::MACHINE_CONFIG_NAME, mco::MASTER_MACHINE_CONFIG_NAME];

type NodeSpec<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// A cluster of `nodes` running `os`, with the MCO simulator and a running
/// coordinator; `infra_pool` adds an admin's custom pool for the nodes
/// labelled [`INFRA_POOL`].
async fn world(
    nodes: &[NodeSpec<'_>],
    os: ClusterOs,
    infra_pool: bool,
) -> (Cluster, RunningCoordinator) {
    let plane = control_plane_with_operator_api().await.unwrap();
    let client = plane.client().await.unwrap();
    let options = SimulatorOptions {
        update_delay: Duration::from_millis(50),
        resync_interval: Duration::from_millis(50),
    };
    let simulator = McoSimulator::start_on(client.clone(), options, os)
        .await
        .unwrap();
    if infra_pool {
        let pool = json!({
            "apiVersion": model::API_VERSION, "kind": "MachineConfigPool",
            "metadata": { "name": "infra" },
            "spec": {
                "machineConfigSelector": { "matchExpressions": [{ "key": model::ROLE_LABEL, "operator": "In", "values": ["worker", "infra"] }] },
                "nodeSelector": { "matchLabels": { INFRA_POOL.0: INFRA_POOL.1 } },
            }
        });
        Api::<DynamicObject>::all_with(client.clone(), &model::pool_resource())
            .create(
                &PostParams::default(),
                &serde_json::from_value(pool).unwrap(),
            )
            .await
            .unwrap();
    }
    let roots = tempfile::tempdir().unwrap();
    for (name, labels) in nodes {
        create_node(&client, name, labels).await.unwrap();
        // What the kubelet reports about the node's OS.
        let info = json!({ "status": { "nodeInfo": {
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "cri-o://1.33.0",
            "kernelVersion": "5.14.0", "kubeProxyVersion": "", "kubeletVersion": "v1.34.4",
            "machineID": "", "operatingSystem": "linux", "osImage": os.os_image(), "systemUUID": "",
        } } });
        Api::<Node>::all(client.clone())
            .patch_status(name, &PatchParams::default(), &Patch::Merge(info))
            .await
            .unwrap();
        let root = roots.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        simulator.register_host_root(name, root);
    }
    wait_until_adopted(&client, CONVERGE).await.unwrap();
    let coordinator = RunningCoordinator::start(client.clone(), Options::default());
    let cluster = Cluster {
        plane,
        client,
        simulator,
        roots,
    };
    (cluster, coordinator)
}

async fn kata_nodes(cluster: &Cluster) -> KataNodesStatus {
    cluster
        .configs()
        .get("kc")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .kata_nodes
}

/// Our MachineConfigs, each with its role and extensions.
async fn our_machine_configs(cluster: &Cluster) -> BTreeMap<String, (String, Value)> {
    let mut found = BTreeMap::new();
    for name in OUR_MACHINE_CONFIGS {
        if let Some(mc) = cluster
            .get_dynamic(&mco::MACHINE_CONFIG.api_resource(), name)
            .await
        {
            let role = mc.labels()[mco::ROLE_LABEL].clone();
            found.insert(
                name.to_owned(),
                (role, mc.data["spec"]["extensions"].clone()),
            );
        }
    }
    found
}

/// What [`our_machine_configs`] should find: (name, role, extension).
fn expected(configs: &[(&str, &str, &str)]) -> BTreeMap<String, (String, Value)> {
    configs
        .iter()
        .map(|(name, role, extension)| {
            ((*name).to_owned(), ((*role).to_owned(), json!([extension])))
        })
        .collect()
}

async fn pool_names(cluster: &Cluster) -> Vec<String> {
    Api::<DynamicObject>::all_with(cluster.client.clone(), &mco::POOL.api_resource())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect()
}

async fn pool_machine_count(cluster: &Cluster, pool: &str) -> i64 {
    let pool = cluster
        .get_dynamic(&mco::POOL.api_resource(), pool)
        .await
        .unwrap();
    pool.data["status"]["machineCount"].as_i64().unwrap_or(0)
}

async fn has_runtime_class(cluster: &Cluster) -> bool {
    Api::<RuntimeClass>::all(cluster.client.clone())
        .get_opt("kata")
        .await
        .unwrap()
        .is_some()
}

/// Rendered configs each node was sent to, by node.
fn rollouts(cluster: &Cluster, nodes: &[&str]) -> Vec<(String, usize)> {
    nodes
        .iter()
        .map(|n| ((*n).to_owned(), cluster.simulator.rollouts(n)))
        .collect()
}

fn each(nodes: &[&str], count: usize) -> Vec<(String, usize)> {
    nodes.iter().map(|n| ((*n).to_owned(), count)).collect()
}

/// Deletes the KataConfig, waits until it is gone and checks nothing of
/// ours is left; on the master pool too.
async fn uninstall(cluster: &Cluster) {
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    assert!(our_machine_configs(cluster).await.is_empty());
    assert!(
        !pool_names(cluster)
            .await
            .contains(&mco::POOL_NAME.to_owned())
    );
}

fn failed_names(nodes: &KataNodesStatus) -> Vec<&str> {
    nodes.failed_to_install.iter().map(String::as_str).collect()
}

#[kata_test]
async fn standard_cluster_installs_the_selected_workers_through_kata_oc() {
    let zone_a: &[(&str, &str)] = &[WORKER, ("zone", "a")];
    let (cluster, _coordinator) = world(
        &[
            ("m0", &[MASTER]),
            ("w0", zone_a),
            ("w1", zone_a),
            ("w2", &[WORKER, ("zone", "b")]),
        ],
        ClusterOs::Rhcos,
        false,
    )
    .await;
    cluster
        .create_kataconfig(
            "kc",
            json!({"kataConfigPoolSelector": {"matchLabels": {"zone": "a"}}}),
        )
        .await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(kata_nodes(&cluster).await.installed, ["w0", "w1"]);
    assert_eq!(
        our_machine_configs(&cluster).await,
        expected(&[(mco::MACHINE_CONFIG_NAME, "kata-oc", "sandboxed-containers")])
    );
    assert_eq!(pool_names(&cluster).await, ["kata-oc", "master", "worker"]);
    assert_eq!(pool_machine_count(&cluster, "kata-oc").await, 2);
    assert_eq!(
        cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
        ["w0", "w1"]
    );
    assert!(has_runtime_class(&cluster).await);
    let all = ["m0", "w0", "w1", "w2"];
    assert_eq!(
        rollouts(&cluster, &all),
        [each(&["m0"], 0), each(&["w0", "w1"], 1), each(&["w2"], 0)].concat()
    );
    uninstall(&cluster).await;
    assert_eq!(
        rollouts(&cluster, &all),
        [each(&["m0"], 0), each(&["w0", "w1"], 2), each(&["w2"], 0)].concat()
    );
}

async fn compact_installs_through_the_master_pool(masters: &[&str]) {
    let nodes: Vec<NodeSpec> = masters
        .iter()
        .map(|n| (*n, &[MASTER, WORKER][..]))
        .collect();
    let (cluster, _coordinator) = world(&nodes, ClusterOs::Rhcos, false).await;
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(kata_nodes(&cluster).await.installed, masters);
    assert_eq!(
        our_machine_configs(&cluster).await,
        expected(&[(
            mco::MASTER_MACHINE_CONFIG_NAME,
            "master",
            "sandboxed-containers"
        )])
    );
    assert_eq!(
        pool_names(&cluster).await,
        ["master", "worker"],
        "no kata-oc pool"
    );
    assert_eq!(pool_machine_count(&cluster, "worker").await, 0);
    assert!(
        cluster
            .nodes_with(mco::KATA_POOL_ROLE_LABEL)
            .await
            .is_empty()
    );
    assert!(has_runtime_class(&cluster).await);
    assert!(
        cluster
            .root(masters[0])
            .join("etc/crio/crio.conf.d/50-kata")
            .exists()
    );
    assert_eq!(rollouts(&cluster, masters), each(masters, 1));
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, masters), each(masters, 2));
    assert!(
        !cluster
            .root(masters[0])
            .join("etc/crio/crio.conf.d/50-kata")
            .exists()
    );
}

#[kata_test]
async fn compact_cluster_with_an_empty_selector_installs_through_the_master_pool() {
    compact_installs_through_the_master_pool(&["m0", "m1", "m2"]).await;
}

#[kata_test]
async fn single_node_cluster_installs_through_the_master_pool() {
    compact_installs_through_the_master_pool(&["sno"]).await;
}

#[kata_test]
async fn compact_cluster_with_two_of_three_selected_is_refused_and_untouched() {
    let selected: &[(&str, &str)] = &[MASTER, WORKER, ("kata", "true")];
    let (cluster, _coordinator) = world(
        &[
            ("m0", selected),
            ("m1", selected),
            ("m2", &[MASTER, WORKER]),
        ],
        ClusterOs::Rhcos,
        false,
    )
    .await;
    cluster
        .create_kataconfig(
            "kc",
            json!({"kataConfigPoolSelector": {"matchLabels": {"kata": "true"}}}),
        )
        .await;
    cluster
        .wait_condition("kc", "Ready", "False", "SelectionRefused")
        .await;
    let (_, _, message) = cluster.condition("kc", "Ready").await.unwrap();
    assert!(
        message.contains("MachineConfigPool master also holds m2, which would be rebooted"),
        "{message}"
    );
    assert_eq!(failed_names(&kata_nodes(&cluster).await), ["m0", "m1"]);
    assert!(our_machine_configs(&cluster).await.is_empty());
    assert_eq!(pool_names(&cluster).await, ["master", "worker"]);
    assert!(
        cluster
            .nodes_with(mco::KATA_POOL_ROLE_LABEL)
            .await
            .is_empty()
    );
    assert!(!has_runtime_class(&cluster).await);
    let all = ["m0", "m1", "m2"];
    assert_eq!(rollouts(&cluster, &all), each(&all, 0));
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, &all), each(&all, 0));
}

#[kata_test]
async fn compact_plus_workers_uses_both_pools_and_the_runtime_class_follows_both() {
    let masters = ["m0", "m1", "m2"];
    let mut nodes: Vec<NodeSpec> = masters
        .iter()
        .map(|n| (*n, &[MASTER, WORKER][..]))
        .collect();
    nodes.push(("w0", &[WORKER]));
    nodes.push(("w1", &[WORKER]));
    let (cluster, _coordinator) = world(&nodes, ClusterOs::Rhcos, false).await;
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        kata_nodes(&cluster).await.installed,
        ["m0", "m1", "m2", "w0", "w1"]
    );
    assert_eq!(
        our_machine_configs(&cluster).await,
        expected(&[
            (mco::MACHINE_CONFIG_NAME, "kata-oc", "sandboxed-containers"),
            (
                mco::MASTER_MACHINE_CONFIG_NAME,
                "master",
                "sandboxed-containers"
            ),
        ])
    );
    assert_eq!(pool_machine_count(&cluster, "kata-oc").await, 2);
    assert_eq!(pool_machine_count(&cluster, "master").await, 3);
    assert_eq!(
        cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
        ["w0", "w1"]
    );
    assert!(has_runtime_class(&cluster).await);
    let all = ["m0", "m1", "m2", "w0", "w1"];
    assert_eq!(rollouts(&cluster, &all), each(&all, 1));
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, &all), each(&all, 2));
}

#[kata_test]
async fn a_selected_worker_in_an_infra_pool_is_reported_and_left_alone() {
    let (cluster, _coordinator) = world(
        &[("w0", &[WORKER]), ("i0", &[WORKER, INFRA, INFRA_POOL])],
        ClusterOs::Rhcos,
        true,
    )
    .await;
    cluster.create_kataconfig("kc", json!({})).await;
    eventually("w0 installed and i0 reported", CONVERGE, || async {
        let nodes = kata_nodes(&cluster).await;
        Ok(nodes.installed == ["w0"] && failed_names(&nodes) == ["i0"])
    })
    .await
    .unwrap();
    let nodes = kata_nodes(&cluster).await;
    assert!(
        failure_reason(&nodes, "i0").contains("node i0 is in MachineConfigPool infra"),
        "{:?}",
        nodes.failed_to_install
    );
    cluster
        .wait_condition("kc", "Ready", "False", "SelectionRefused")
        .await;
    assert_eq!(cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await, ["w0"]);
    assert_eq!(
        pool_machine_count(&cluster, "infra").await,
        1,
        "i0 stays in its pool"
    );
    eventually(
        "the RuntimeClass for the installed node",
        CONVERGE,
        || async { Ok(has_runtime_class(&cluster).await) },
    )
    .await
    .unwrap();
    assert_eq!(
        rollouts(&cluster, &["w0", "i0"]),
        [each(&["w0"], 1), each(&["i0"], 0)].concat()
    );
    uninstall(&cluster).await;
    assert_eq!(
        rollouts(&cluster, &["w0", "i0"]),
        [each(&["w0"], 2), each(&["i0"], 0)].concat()
    );
}

#[kata_test]
async fn okd_nodes_get_the_kata_containers_extension() {
    let (cluster, _coordinator) = world(
        &[("w0", &[WORKER]), ("w1", &[WORKER])],
        ClusterOs::Fcos,
        false,
    )
    .await;
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        our_machine_configs(&cluster).await,
        expected(&[(mco::MACHINE_CONFIG_NAME, "kata-oc", "kata-containers")])
    );
    assert_eq!(rollouts(&cluster, &["w0", "w1"]), each(&["w0", "w1"], 1));
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, &["w0", "w1"]), each(&["w0", "w1"], 2));
}

#[kata_test]
async fn a_failing_container_runtime_config_degrades_with_its_message_and_recovers() {
    let (cluster, _coordinator) = world(&[("w0", &[WORKER])], ClusterOs::Rhcos, false).await;
    cluster.simulator.fail_runtime_config(
        mco::CONTAINER_RUNTIME_CONFIG_NAME,
        "conflicting CRI-O settings",
    );
    cluster
        .create_kataconfig("kc", json!({"logLevel": "debug"}))
        .await;
    cluster
        .wait_condition("kc", "Degraded", "True", "ContainerRuntimeConfigFailed")
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    assert!(
        message.contains("Error: conflicting CRI-O settings"),
        "{message}"
    );
    assert!(
        cluster
            .nodes_with(mco::KATA_POOL_ROLE_LABEL)
            .await
            .is_empty(),
        "no node joins a pool the MCO will not render"
    );
    assert_eq!(rollouts(&cluster, &["w0"]), each(&["w0"], 0));

    cluster
        .simulator
        .clear_runtime_config_fault(mco::CONTAINER_RUNTIME_CONFIG_NAME);
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        cluster.condition("kc", "Degraded").await.unwrap().0,
        "False"
    );
    assert!(
        cluster
            .root("w0")
            .join("etc/crio/crio.conf.d/01-ctrcfg-logLevel")
            .exists()
    );
    assert_eq!(
        rollouts(&cluster, &["w0"]),
        each(&["w0"], 1),
        "the log level and Kata arrive in one rendered config"
    );
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, &["w0"]), each(&["w0"], 2));
}

#[kata_test]
async fn an_unreconcilable_node_fails_with_its_reason_until_fixed() {
    let (cluster, _coordinator) = world(
        &[("w0", &[WORKER]), ("w1", &[WORKER])],
        ClusterOs::Rhcos,
        false,
    )
    .await;
    let reason = "can't reconcile config rendered-worker-1 with rendered-kata-oc-2: ignition";
    cluster.simulator.set_fault(
        "w1",
        NodeFault::Unreconcilable {
            reason: reason.into(),
        },
    );
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Degraded", "True", "NodeDegraded")
        .await;
    let nodes = kata_nodes(&cluster).await;
    assert_eq!(failed_names(&nodes), ["w1"]);
    assert_eq!(failure_reason(&nodes, "w1"), reason);
    assert_eq!(cluster.condition("kc", "Ready").await.unwrap().1, "Failed");
    assert!(!has_runtime_class(&cluster).await);

    cluster.simulator.clear_fault("w1");
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(rollouts(&cluster, &["w0", "w1"]), each(&["w0", "w1"], 1));
    uninstall(&cluster).await;
    assert_eq!(rollouts(&cluster, &["w0", "w1"]), each(&["w0", "w1"], 2));
}
