//! The MCO simulator against a real API server and the real OpenShift CRDs:
//! rendering, node rollout through the MCO annotations, the host root it
//! leaves behind, faults, maxUnavailable and the pool status.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kata_node_agent::probe::rpm_ostree::evaluate_status;
use kata_tests::ControlPlane;
use kata_tests::host_root::{
    EXTENSION_PACKAGE, KATA_CONFIG, KATA_DROP_IN, KATA_DROP_IN_TEXT, KATA_SHIM, QEMU,
};
use kata_tests::mco_simulator::host::{
    OSTREE_BOOTED, SIMULATED_STATUS_FILE, in_root, listed_deployments,
};
use kata_tests::mco_simulator::model::{self, CURRENT_CONFIG, DESIRED_CONFIG, REASON, STATE};
use kata_tests::mco_simulator::{McoSimulator, NodeFault, SimulatorOptions};
use kube::Client;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const WORKER_LABEL: &str = "node-role.kubernetes.io/worker";
const KATA_LABEL: &str = "node-role.kubernetes.io/kata-oc";
const PATIENCE: Duration = Duration::from_secs(30);

struct Cluster {
    // Declared first so it stops before the control plane goes away.
    simulator: McoSimulator,
    client: Client,
    _plane: ControlPlane,
}

async fn cluster(options: SimulatorOptions) -> Cluster {
    let plane = ControlPlane::start().await.unwrap();
    plane.install_openshift_crds().await.unwrap();
    let client = plane.client().await.unwrap();
    let simulator = McoSimulator::start(client.clone(), options).await.unwrap();
    Cluster {
        simulator,
        client,
        _plane: plane,
    }
}

fn pools(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &model::pool_resource())
}

fn machine_configs(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &model::machine_config_resource())
}

/// Polls `probe` until it answers; a timeout fails the test, naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(answer) = probe().await {
            return answer;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_worker(client: &Client, name: &str) {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(WORKER_LABEL.to_owned(), String::new())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

/// A worker whose config the simulator applies to a fresh host root.
async fn worker_with_host_root(cluster: &Cluster, name: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    cluster.simulator.register_host_root(name, root.path());
    create_worker(&cluster.client, name).await;
    root
}

async fn set_kata_label(client: &Client, node: &str, on: bool) {
    let value = if on { json!("") } else { Value::Null };
    let patch = json!({ "metadata": { "labels": { KATA_LABEL: value } } });
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn annotations(client: &Client, node: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .get(node)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

async fn get_pool(client: &Client, name: &str) -> Option<Value> {
    let pool = pools(client).get_opt(name).await.unwrap()?;
    Some(serde_json::to_value(pool).unwrap())
}

/// The pool's rendered config, once it has one.
async fn target_of(client: &Client, name: &str) -> String {
    eventually(&format!("pool {name} to be rendered"), || async {
        get_pool(client, name).await?["spec"]["configuration"]["name"]
            .as_str()
            .map(str::to_owned)
    })
    .await
}

/// The `kata-oc` pool's rendered config once it includes our MachineConfig:
/// the pool is created before the MachineConfig, so the simulator may render
/// it once without ours first.
async fn kata_target(client: &Client) -> String {
    eventually(
        "pool kata-oc to be rendered with our MachineConfig",
        || async {
            let pool = get_pool(client, "kata-oc").await?;
            let configuration = &pool["spec"]["configuration"];
            configuration["source"]
                .as_array()?
                .iter()
                .any(|s| s["name"] == "50-enable-sandboxed-containers-extension")
                .then(|| configuration["name"].as_str().map(str::to_owned))?
        },
    )
    .await
}

fn condition<'a>(pool: &'a Value, type_: &str) -> &'a Value {
    pool["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

/// Creates what the coordinator creates: the `kata-oc` pool and the
/// MachineConfig enabling the extension with the CRI-O drop-in.
async fn create_kata_pool(client: &Client, max_unavailable: Option<i32>) {
    let mut pool = json!({
        "apiVersion": model::API_VERSION, "kind": "MachineConfigPool",
        "metadata": { "name": "kata-oc", "labels": { "pools.operator.machineconfiguration.openshift.io/kata-oc": "" } },
        "spec": {
            "machineConfigSelector": { "matchExpressions": [{ "key": model::ROLE_LABEL, "operator": "In", "values": ["kata-oc", "worker"] }] },
            "nodeSelector": { "matchLabels": { KATA_LABEL: "" } },
        }
    });
    if let Some(max) = max_unavailable {
        pool["spec"]["maxUnavailable"] = json!(max);
    }
    let source = format!(
        "data:text/plain;charset=utf-8;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(KATA_DROP_IN_TEXT)
    );
    let config = json!({
        "apiVersion": model::API_VERSION, "kind": "MachineConfig",
        "metadata": { "name": "50-enable-sandboxed-containers-extension", "labels": { model::ROLE_LABEL: "kata-oc" } },
        "spec": {
            "extensions": ["sandboxed-containers"],
            "config": { "ignition": { "version": "3.2.0" }, "storage": { "files": [
                { "path": format!("/{KATA_DROP_IN}"), "mode": 420, "overwrite": true, "contents": { "source": source } }
            ] } }
        }
    });
    for (api, object) in [(pools(client), pool), (machine_configs(client), config)] {
        let object = serde_json::from_value(object).unwrap();
        api.create(&PostParams::default(), &object).await.unwrap();
    }
}

/// Waits until the node's daemon is `Done` at `config`.
async fn wait_done_at(client: &Client, node: &str, config: &str) {
    eventually(&format!("{node} to be Done at {config}"), || async {
        let a = annotations(client, node).await;
        (a.get(STATE).map(String::as_str) == Some("Done")
            && a.get(CURRENT_CONFIG).map(String::as_str) == Some(config)
            && a.get(DESIRED_CONFIG).map(String::as_str) == Some(config))
        .then_some(())
    })
    .await;
}

/// What the node-agent's rpm-ostree probe makes of the root.
fn agent_verdict(root: &Path) -> &'static str {
    let status = std::fs::read(in_root(root, SIMULATED_STATUS_FILE)).unwrap();
    evaluate_status(&status, &[EXTENSION_PACKAGE.to_owned()]).reason
}

/// `(staged, booted, packages)` of each deployment, in listed order.
fn deployments(root: &Path) -> Vec<(bool, bool, Vec<String>)> {
    listed_deployments(root).unwrap()
}

fn kata() -> Vec<String> {
    vec![EXTENSION_PACKAGE.to_owned()]
}

#[kata_test]
async fn stock_pools_are_rendered_from_the_base_configs() {
    let cluster = cluster(SimulatorOptions::default()).await;
    for name in ["master", "worker"] {
        let target = target_of(&cluster.client, name).await;
        assert!(target.starts_with(&format!("rendered-{name}-")), "{target}");
        let rendered = machine_configs(&cluster.client).get(&target).await.unwrap();
        let owner = &rendered.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("MachineConfigPool", name)
        );

        let pool = eventually("an Updated status", || async {
            let pool = get_pool(&cluster.client, name).await?;
            (pool["status"]["configuration"]["name"] == target.as_str()).then_some(pool)
        })
        .await;
        assert_eq!(
            pool["spec"]["configuration"]["source"][0]["name"],
            format!("00-{name}")
        );
        assert_eq!(pool["status"]["machineCount"], 0);
        assert_eq!(condition(&pool, "Updated")["status"], "True");
        assert_eq!(condition(&pool, "Degraded")["status"], "False");
    }

    // A steady cluster causes no writes: resync after resync finds nothing to do.
    create_worker(&cluster.client, "worker-0").await;
    let worker_config = target_of(&cluster.client, "worker").await;
    wait_done_at(&cluster.client, "worker-0", &worker_config).await;
    eventually("the worker pool to count the node", || async {
        (get_pool(&cluster.client, "worker").await?["status"]["updatedMachineCount"] == 1)
            .then_some(())
    })
    .await;
    let versions = || async {
        let nodes = Api::<Node>::all(cluster.client.clone());
        let node = nodes
            .get("worker-0")
            .await
            .unwrap()
            .metadata
            .resource_version;
        let pools = pools(&cluster.client)
            .list(&Default::default())
            .await
            .unwrap();
        let configs = machine_configs(&cluster.client)
            .list(&Default::default())
            .await
            .unwrap();
        (
            node,
            pools
                .items
                .into_iter()
                .chain(configs.items)
                .map(|o| o.metadata.resource_version)
                .collect::<Vec<_>>(),
        )
    };
    let before = versions().await;
    tokio::time::sleep(SimulatorOptions::default().resync_interval * 10).await;
    assert_eq!(versions().await, before);
}

#[kata_test]
async fn a_node_moves_into_the_kata_pool_and_back_out() {
    // A reboot long enough to be seen while it is pending, even when the
    // machine is busy with other test binaries.
    let options = SimulatorOptions {
        update_delay: Duration::from_secs(4),
        ..Default::default()
    };
    let cluster = cluster(options).await;
    let client = &cluster.client;
    let root = worker_with_host_root(&cluster, "worker-0").await;
    let worker_config = target_of(client, "worker").await;
    wait_done_at(client, "worker-0", &worker_config).await;
    assert!(in_root(root.path(), OSTREE_BOOTED).exists());
    assert_eq!(
        deployments(root.path()),
        [(false, true, vec![])],
        "installed at the worker config"
    );
    assert_eq!(agent_verdict(root.path()), "ExtensionNotInstalled");

    create_kata_pool(client, None).await;
    let kata_config = kata_target(client).await;
    set_kata_label(client, "worker-0", true).await;

    eventually("worker-0 to be Working towards the kata config", || async {
        let a = annotations(client, "worker-0").await;
        (a.get(STATE).map(String::as_str) == Some("Working")
            && a.get(DESIRED_CONFIG) == Some(&kata_config))
        .then_some(())
    })
    .await;
    eventually("a staged deployment with the extension", || async {
        (deployments(root.path()) == [(true, false, kata()), (false, true, vec![])]).then_some(())
    })
    .await;
    assert_eq!(agent_verdict(root.path()), "RebootPending");
    assert!(
        !root.path().join(KATA_SHIM).exists(),
        "the package is not booted yet"
    );

    wait_done_at(client, "worker-0", &kata_config).await;
    assert_eq!(
        annotations(client, "worker-0")
            .await
            .get(REASON)
            .map(String::as_str),
        Some("")
    );
    let booted = deployments(root.path());
    assert_eq!(
        booted[0],
        (false, true, kata()),
        "the extension is booted: {booted:?}"
    );
    assert!(booted.iter().all(|(staged, _, _)| !staged));
    assert_eq!(agent_verdict(root.path()), "ExtensionBooted");
    let drop_in = root.path().join(KATA_DROP_IN);
    assert_eq!(
        std::fs::read_to_string(&drop_in).unwrap(),
        KATA_DROP_IN_TEXT
    );
    let qemu = std::process::Command::new(root.path().join(QEMU))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&qemu.stdout).starts_with("QEMU emulator version 8.2.0"));
    assert!(root.path().join(KATA_CONFIG).exists());

    let kata_pool = eventually("the kata pool to report the node updated", || async {
        let pool = get_pool(client, "kata-oc").await?;
        (pool["status"]["updatedMachineCount"] == 1).then_some(pool)
    })
    .await;
    let status = &kata_pool["status"];
    assert_eq!(
        (&status["machineCount"], &status["readyMachineCount"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(
        (
            &status["unavailableMachineCount"],
            &status["degradedMachineCount"]
        ),
        (&json!(0), &json!(0))
    );
    assert_eq!(status["configuration"]["name"], kata_config.as_str());
    assert_eq!(condition(&kata_pool, "Updated")["status"], "True");
    assert_eq!(condition(&kata_pool, "Updating")["status"], "False");
    let sources: Vec<&str> = kata_pool["spec"]["configuration"]["source"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["00-worker", "50-enable-sandboxed-containers-extension"]
    );
    let worker_pool = get_pool(client, "worker").await.unwrap();
    assert_eq!(
        worker_pool["status"]["machineCount"], 0,
        "the node left the worker pool"
    );

    set_kata_label(client, "worker-0", false).await;
    wait_done_at(client, "worker-0", &worker_config).await;
    assert!(!drop_in.exists());
    assert!(!root.path().join(KATA_SHIM).exists());
    assert!(!root.path().join(QEMU).exists());
    assert_eq!(deployments(root.path())[0], (false, true, vec![]));
    assert_eq!(agent_verdict(root.path()), "ExtensionNotInstalled");
}

#[kata_test]
async fn a_degraded_node_shows_in_its_annotations_and_the_pool_until_cleared() {
    let cluster = cluster(SimulatorOptions::default()).await;
    let client = &cluster.client;
    create_worker(client, "worker-0").await;
    let worker_config = target_of(client, "worker").await;
    wait_done_at(client, "worker-0", &worker_config).await;
    create_kata_pool(client, None).await;
    let kata_config = kata_target(client).await;

    cluster.simulator.set_fault(
        "worker-0",
        NodeFault::Degraded {
            reason: "failed to drain node: pdb".into(),
        },
    );
    set_kata_label(client, "worker-0", true).await;
    let pool = eventually("the pool to report the degraded node", || async {
        let pool = get_pool(client, "kata-oc").await?;
        (pool["status"]["degradedMachineCount"] == 1).then_some(pool)
    })
    .await;
    let a = annotations(client, "worker-0").await;
    assert_eq!(a.get(STATE).map(String::as_str), Some("Degraded"));
    assert_eq!(
        a.get(REASON).map(String::as_str),
        Some("failed to drain node: pdb")
    );
    assert_eq!(a.get(CURRENT_CONFIG), Some(&worker_config));
    assert_eq!(a.get(DESIRED_CONFIG), Some(&kata_config));
    assert_eq!(condition(&pool, "NodeDegraded")["status"], "True");
    assert_eq!(condition(&pool, "Degraded")["status"], "True");
    // As the real MCO in its default feature set: the reason is only in the
    // node's annotation, the pool's messages are empty.
    assert_eq!(
        condition(&pool, "NodeDegraded")["reason"],
        "1 nodes are reporting degraded status on sync"
    );
    assert_eq!(condition(&pool, "NodeDegraded")["message"], "");
    assert_eq!(condition(&pool, "Degraded")["message"], "");
    assert_eq!(condition(&pool, "Updated")["status"], "False");

    cluster.simulator.clear_fault("worker-0");
    wait_done_at(client, "worker-0", &kata_config).await;
    let pool = eventually("the pool to recover", || async {
        let pool = get_pool(client, "kata-oc").await?;
        (condition(&pool, "Updated")["status"] == "True").then_some(pool)
    })
    .await;
    assert_eq!(condition(&pool, "Degraded")["status"], "False");
    assert_eq!(condition(&pool, "NodeDegraded")["status"], "False");
    assert_eq!(pool["status"]["degradedMachineCount"], 0);
}

#[kata_test]
async fn max_unavailable_one_never_updates_two_nodes_at_once() {
    let cluster = cluster(SimulatorOptions {
        update_delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let client = &cluster.client;
    let names = ["worker-0", "worker-1", "worker-2"];
    for name in names {
        create_worker(client, name).await;
    }
    let worker_config = target_of(client, "worker").await;
    for name in names {
        wait_done_at(client, name, &worker_config).await;
    }
    create_kata_pool(client, Some(1)).await;
    let kata_config = kata_target(client).await;

    // A watch sees every state each node passes through, in order.
    let nodes: Api<Node> = Api::all(client.clone());
    let mut events = watcher(nodes, watcher::Config::default()).boxed();
    for name in names {
        set_kata_label(client, name, true).await;
    }
    let mut states: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut ever_working = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.try_next())
            .await
            .expect("all nodes updated in time")
            .unwrap()
            .unwrap();
        let (watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event else {
            continue;
        };
        let a = node.metadata.annotations.unwrap_or_default();
        let name = node.metadata.name.unwrap();
        let state = a.get(STATE).cloned().unwrap_or_default();
        if state == "Working" {
            ever_working.insert(name.clone());
        }
        states.insert(
            name,
            (state, a.get(CURRENT_CONFIG).cloned().unwrap_or_default()),
        );
        let working: Vec<&String> = states
            .iter()
            .filter(|(_, (state, _))| state == "Working")
            .map(|(n, _)| n)
            .collect();
        assert!(
            working.len() <= 1,
            "more than one node updating at once: {working:?}"
        );
        if states.len() == names.len()
            && states
                .values()
                .all(|(state, current)| state == "Done" && *current == kata_config)
        {
            break;
        }
    }
    assert_eq!(
        ever_working.len(),
        names.len(),
        "every node went through an update"
    );
}

#[kata_test]
async fn a_container_runtime_config_reaches_the_nodes_as_a_drop_in() {
    let cluster = cluster(SimulatorOptions::default()).await;
    let client = &cluster.client;
    let root = worker_with_host_root(&cluster, "worker-0").await;
    create_kata_pool(client, None).await;
    set_kata_label(client, "worker-0", true).await;
    let first = kata_target(client).await;
    wait_done_at(client, "worker-0", &first).await;

    let runtime_configs: Api<DynamicObject> =
        Api::all_with(client.clone(), &model::runtime_config_resource());
    let crc = json!({
        "apiVersion": model::API_VERSION, "kind": "ContainerRuntimeConfig",
        "metadata": { "name": "kata-crio-config" },
        "spec": {
            "machineConfigPoolSelector": { "matchLabels": { "pools.operator.machineconfiguration.openshift.io/kata-oc": "" } },
            "containerRuntimeConfig": { "logLevel": "debug" }
        }
    });
    runtime_configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(crc).unwrap(),
        )
        .await
        .unwrap();

    let with_crio = eventually("a new rendered config", || async {
        let target = get_pool(client, "kata-oc").await?["spec"]["configuration"]["name"]
            .as_str()?
            .to_owned();
        (target != first).then_some(target)
    })
    .await;
    wait_done_at(client, "worker-0", &with_crio).await;
    let drop_in =
        std::fs::read_to_string(root.path().join("etc/crio/crio.conf.d/01-ctrcfg-logLevel"))
            .unwrap();
    assert!(drop_in.contains("log_level = \"debug\""), "{drop_in}");
    assert!(
        root.path().join(KATA_DROP_IN).exists(),
        "the kata drop-in stays"
    );
    let crc = serde_json::to_value(runtime_configs.get("kata-crio-config").await.unwrap()).unwrap();
    assert_eq!(condition(&crc, "Success")["status"], "True");
    let generated = machine_configs(client)
        .get("99-kata-oc-generated-containerruntime")
        .await
        .unwrap();
    assert_eq!(
        generated.metadata.labels.unwrap()[model::ROLE_LABEL],
        "kata-oc"
    );
}
