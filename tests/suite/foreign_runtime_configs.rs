//! Other admins' ContainerRuntimeConfigs beside ours, against a real API
//! server, the coordinator in-process and the MCO simulator following the
//! real container-runtime-config and render controllers: our generated
//! MachineConfig is followed under the name the MCO gives it (`-1` beside an
//! admin's), a failing foreign one that freezes our pool is reported with
//! the MCO's words, and a refused selection on a compact cluster says so.
//! Each node goes through one rendered config per install and uninstall.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;

use k8s_openapi::api::core::v1::Node;
use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::mco_simulator::model;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");
const ADMINS: &str = "admin-crio-tuning";

/// An admin's ContainerRuntimeConfig for the `kata-oc` pool.
async fn create_admins_runtime_config(cluster: &Cluster, settings: Value) {
    let object = json!({
        "apiVersion": model::API_VERSION, "kind": "ContainerRuntimeConfig",
        "metadata": { "name": ADMINS },
        "spec": {
            "machineConfigPoolSelector": { "matchLabels": { mco::POOL_SELECTOR_LABEL: "" } },
            "containerRuntimeConfig": settings,
        }
    });
    runtime_configs(cluster)
        .create(
            &PostParams::default(),
            &serde_json::from_value(object).unwrap(),
        )
        .await
        .unwrap();
    wait_verdict(cluster, ADMINS).await;
}

/// The last condition of ContainerRuntimeConfig `name` once the MCO has
/// given its verdict on its current generation.
async fn verdict(cluster: &Cluster, name: &str) -> Option<Value> {
    let crc = runtime_configs(cluster).get_opt(name).await.ok()??;
    let observed = crc.data["status"]["observedGeneration"].as_i64();
    let last = crc.data["status"]["conditions"].as_array()?.last()?.clone();
    (observed == crc.metadata.generation).then_some(last)
}

async fn wait_verdict(cluster: &Cluster, name: &str) {
    eventually(&format!("a verdict on {name}"), CONVERGE, || async {
        Ok(verdict(cluster, name).await.is_some())
    })
    .await
    .unwrap();
}

fn runtime_configs(cluster: &Cluster) -> Api<DynamicObject> {
    Api::all_with(cluster.client.clone(), &model::runtime_config_resource())
}

/// Starts the coordinator, creates KataConfig `kc` with `spec` and waits
/// until it is installed.
async fn install(cluster: &Cluster, spec: Value) -> RunningCoordinator {
    let coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    cluster.create_kataconfig("kc", spec).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    coordinator
}

/// The file CRI-O reads a ContainerRuntimeConfig's setting from, on `node`.
fn drop_in(cluster: &Cluster, node: &str, setting: &str) -> Option<String> {
    std::fs::read_to_string(
        cluster
            .root(node)
            .join(format!("etc/crio/crio.conf.d/01-ctrcfg-{setting}")),
    )
    .ok()
}

#[kata_test]
async fn beside_an_admins_runtime_config_ours_is_followed_under_its_suffixed_name() {
    let cluster = Cluster::start(&[("m0", &[MASTER]), ("w0", &[WORKER])]).await;
    create_admins_runtime_config(&cluster, json!({ "pidsLimit": 2048 })).await;
    let _coordinator = install(&cluster, json!({ "logLevel": "debug" })).await;

    let ours = runtime_configs(&cluster)
        .get(mco::CONTAINER_RUNTIME_CONFIG_NAME)
        .await
        .unwrap();
    assert_eq!(
        ours.annotations()
            .get(mco::MC_NAME_SUFFIX)
            .map(String::as_str),
        Some("1"),
        "the MCO named ours after the admin's"
    );
    let generated = cluster
        .get_dynamic(
            &mco::MACHINE_CONFIG.api_resource(),
            "99-kata-oc-generated-containerruntime-1",
        )
        .await
        .unwrap();
    assert_eq!(
        generated.owner_references()[0].name,
        mco::CONTAINER_RUNTIME_CONFIG_NAME
    );
    assert!(
        drop_in(&cluster, "w0", "logLevel").is_some_and(|t| t.contains("\"debug\"")),
        "our log level reached the node"
    );
    assert!(
        drop_in(&cluster, "w0", "pidsLimit").is_some_and(|t| t.contains("2048")),
        "so did the admin's setting"
    );
    assert_eq!(cluster.rollouts(&["m0", "w0"]), [0, 1]);
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    assert_eq!(cluster.rollouts(&["m0", "w0"]), [0, 2]);
    assert!(
        runtime_configs(&cluster)
            .get_opt(ADMINS)
            .await
            .unwrap()
            .is_some(),
        "the admin's is not ours to remove"
    );
}

/// How long the cluster is given to (wrongly) start a rollout.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

#[kata_test]
async fn a_failing_foreign_runtime_config_on_our_pool_degrades_naming_it_until_fixed() {
    let cluster = Cluster::start(&[("m0", &[MASTER]), ("w0", &[WORKER])]).await;
    // The CRD accepts `warning`; the MCO's controller refuses it.
    create_admins_runtime_config(&cluster, json!({ "logLevel": "warning" })).await;
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    cluster.create_kataconfig("kc", json!({})).await;
    let failed = "ContainerRuntimeConfig admin-crio-tuning (not the operator's) failed, which keeps pool kata-oc from rendering: Error: invalid LogLevel";
    eventually("Degraded names the admin's config", CONVERGE, || async {
        match cluster.condition("kc", "Degraded").await {
            Some((status, reason, message))
                if status == "True"
                    && reason == "ContainerRuntimeConfigFailed"
                    && message.contains(failed) =>
            {
                Ok(true)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let (status, _, message) = cluster.condition("kc", "InProgress").await.unwrap();
    assert!(status == "True" && message.contains(failed), "{message}");
    let (ready, _, _) = cluster.condition("kc", "Ready").await.unwrap();
    assert_eq!(ready, "False");
    tokio::time::sleep(SETTLE).await;
    assert!(
        cluster
            .nodes_with(mco::KATA_POOL_ROLE_LABEL)
            .await
            .is_empty(),
        "no node joins a pool the MCO will not render"
    );
    assert_eq!(cluster.rollouts(&["m0", "w0"]), [0, 0]);

    // The admin fixes it: the pool renders their setting and ours at once.
    runtime_configs(&cluster)
        .patch(
            ADMINS,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "containerRuntimeConfig": { "logLevel": "warn" } } })),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        cluster.condition("kc", "Degraded").await.unwrap().0,
        "False"
    );
    assert!(drop_in(&cluster, "w0", "logLevel").is_some_and(|t| t.contains("\"warn\"")));
    assert_eq!(cluster.rollouts(&["m0", "w0"]), [0, 1]);
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    assert_eq!(cluster.rollouts(&["m0", "w0"]), [0, 2]);
}

#[kata_test]
async fn narrowing_the_selection_to_part_of_the_masters_is_refused_and_removes_nothing() {
    const SELECTED: (&str, &str) = ("kata", "true");
    let masters = ["m0", "m1", "m2"];
    let cluster = Cluster::start(&[
        ("m0", &[MASTER, WORKER, SELECTED]),
        ("m1", &[MASTER, WORKER, SELECTED]),
        ("m2", &[MASTER, WORKER, SELECTED]),
    ])
    .await;
    let selector = json!({ "kataConfigPoolSelector": { "matchLabels": { "kata": "true" } } });
    let _coordinator = install(&cluster, selector).await;
    assert_eq!(cluster.rollouts(&masters), [1, 1, 1]);

    Api::<Node>::all(cluster.client.clone())
        .patch(
            "m2",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "kata": null } } })),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Ready", "False", "SelectionRefused")
        .await;
    tokio::time::sleep(SETTLE).await;
    let (status, reason, message) = cluster.condition("kc", "InProgress").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SelectionRefused"),
        "{message}"
    );
    assert!(
        message.contains("MachineConfigPool master also holds m2, which would be rebooted"),
        "{message}"
    );
    let nodes = cluster
        .configs()
        .get("kc")
        .await
        .unwrap()
        .status
        .unwrap()
        .kata_nodes;
    assert!(
        nodes.waiting_to_uninstall.is_empty() && nodes.uninstalling.is_empty(),
        "{nodes:?}"
    );
    assert!(
        cluster
            .get_dynamic(
                &mco::MACHINE_CONFIG.api_resource(),
                mco::MASTER_MACHINE_CONFIG_NAME
            )
            .await
            .is_some(),
        "nothing applied to the master pool, nothing taken from it"
    );
    assert_eq!(cluster.rollouts(&masters), [1, 1, 1]);

    cluster.uninstall("kc").await;
    assert_eq!(cluster.rollouts(&masters), [2, 2, 2]);
}
