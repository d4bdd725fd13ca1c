//! Taking over a cluster that the OpenShift sandboxed containers operator
//! (OSC) installed, its operator removed and its objects left as
//! `oc delete csv` leaves them: on a standard and a compact cluster, against
//! a real API server and the MCO simulator, counting the rendered configs
//! each node is sent to.
//!
//! The objects are OSC's as its sources write them
//! (openshift/sandboxed-containers-operator, `controllers/openshift_controller.go`:
//! `newMCPforCR`, `newMCForCR`, `createRuntimeClass`, `getNodeSelectorAsMap`;
//! the finalizers of `controllers/common.go` and
//! `controllers/runtimeclass_controller.go`), written with `Update`s under
//! OSC's field manager, as its controller-runtime client does. Not covered:
//! OSC's other operands (its monitor DaemonSet, SCC, dashboard), which this
//! operator does not own and leaves alone, and an OSC still running beside
//! this operator, which the migration guide rules out.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::api::KataConfig;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_coordinator::plan::conditions::{ADOPTED_CONFIGURATION, own_reason};
use kata_coordinator::profiles::KataRuntimeProfile;
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");
/// What OSC's field manager is called (its binary's name).
const OSC: &str = names::PREDECESSOR_MANAGER;

fn as_osc_post() -> PostParams {
    PostParams {
        field_manager: Some(OSC.into()),
        ..Default::default()
    }
}

fn as_osc_patch() -> PatchParams {
    PatchParams {
        field_manager: Some(OSC.into()),
        ..Default::default()
    }
}

fn machine_configs(cluster: &Cluster) -> Api<DynamicObject> {
    Api::all_with(cluster.client.clone(), &mco::MACHINE_CONFIG.api_resource())
}

async fn create_as_osc(cluster: &Cluster, kind: &kata_coordinator::kind::Kind, object: Value) {
    Api::<DynamicObject>::all_with(cluster.client.clone(), &kind.api_resource())
        .create(&as_osc_post(), &serde_json::from_value(object).unwrap())
        .await
        .unwrap();
}

/// What OSC leaves on a cluster where Kata runs on `nodes`, through the
/// `kata-oc` pool (standard) or the master pool (`converged`: compact and
/// single-node clusters, where OSC labels no node and creates no pool).
async fn osc_install(cluster: &Cluster, nodes: &[&str], converged: bool) {
    let pool = if converged { "master" } else { mco::POOL_NAME };
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .configs()
        .patch(
            "kc",
            &as_osc_patch(),
            &Patch::Merge(json!({"metadata": {"finalizers": [names::FINALIZER]}})),
        )
        .await
        .unwrap();
    // In OSC's order: the MachineConfig, then the pool, then the labels
    // that move nodes into it (one rendered config each).
    create_as_osc(cluster, &mco::MACHINE_CONFIG, json!({
        "apiVersion": mco::MACHINE_CONFIG.api_version(), "kind": mco::MACHINE_CONFIG.kind,
        "metadata": { "name": mco::MACHINE_CONFIG_NAME,
                      "labels": { mco::ROLE_LABEL: pool, "app": "kc" } },
        "spec": { "extensions": [mco::EXTENSION], "config": { "ignition": { "version": "3.2.0" } } },
    }))
    .await;
    if !converged {
        create_as_osc(cluster, &mco::POOL, json!({
            "apiVersion": mco::POOL.api_version(), "kind": mco::POOL.kind,
            "metadata": { "name": mco::POOL_NAME, "labels": { mco::POOL_SELECTOR_LABEL: "" } },
            "spec": {
                "machineConfigSelector": { "matchExpressions": [{
                    "key": mco::ROLE_LABEL, "operator": "In", "values": ["kata-oc", "worker"] }] },
                "nodeSelector": { "matchLabels": { mco::KATA_POOL_ROLE_LABEL: "" } },
            }
        }))
        .await;
        for node in nodes {
            Api::<Node>::all(cluster.client.clone())
                .patch(
                    node,
                    &as_osc_patch(),
                    &Patch::Merge(json!({"metadata": {"labels": {mco::KATA_POOL_ROLE_LABEL: ""}}})),
                )
                .await
                .unwrap();
        }
    }
    wait_rolled_out(cluster, pool, nodes).await;
    let uid = cluster.configs().get("kc").await.unwrap().uid().unwrap();
    let role_label = if converged {
        MASTER.0
    } else {
        mco::KATA_POOL_ROLE_LABEL
    };
    let runtime_class = json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {
            "name": "kata",
            "finalizers": [names::RUNTIME_CLASS_FINALIZER],
            "ownerReferences": [{
                "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
                "name": "kc", "uid": uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "handler": "kata",
        "overhead": { "podFixed": { "cpu": "250m", "memory": "350Mi" } },
        "scheduling": { "nodeSelector": { role_label: "" } },
    });
    Api::<RuntimeClass>::all(cluster.client.clone())
        .create(
            &as_osc_post(),
            &serde_json::from_value(runtime_class).unwrap(),
        )
        .await
        .unwrap();
    let status = json!({ "status": {
        "runtimeClasses": ["kata"],
        "kataNodes": { "nodeCount": nodes.len(), "readyNodeCount": nodes.len(), "installed": nodes },
        "conditions": [{ "type": "InProgress", "status": "False", "reason": "Completed",
                         "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z" }],
        "waitingForMcoToStart": false,
    }});
    cluster
        .configs()
        .patch_status("kc", &as_osc_patch(), &Patch::Merge(status))
        .await
        .unwrap();
}

/// Waits until `pool` renders OSC's MachineConfig and every one of `nodes`
/// runs that rendered config.
async fn wait_rolled_out(cluster: &Cluster, pool: &str, nodes: &[&str]) {
    eventually(
        &format!("{nodes:?} on {pool}'s config"),
        CONVERGE,
        || async {
            let Some(pool) = cluster.get_dynamic(&mco::POOL.api_resource(), pool).await else {
                return Ok(false);
            };
            let configuration = &pool.data["spec"]["configuration"];
            let renders = configuration["source"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == mco::MACHINE_CONFIG_NAME);
            let rendered = configuration["name"].as_str().unwrap_or_default();
            let api = Api::<Node>::all(cluster.client.clone());
            for node in nodes {
                let node = api.get(node).await.map_err(|e| e.to_string())?;
                let annotations = node.annotations();
                if annotations.get(mco::CURRENT_CONFIG).map(String::as_str) != Some(rendered)
                    || annotations.get(mco::STATE).map(String::as_str) != Some(mco::STATE_DONE)
                {
                    return Ok(false);
                }
            }
            Ok(renders)
        },
    )
    .await
    .unwrap();
}

async fn kata_config(cluster: &Cluster) -> KataConfig {
    cluster.configs().get("kc").await.unwrap()
}

/// Starts the coordinator on OSC's cluster and checks it took everything
/// over with no node sent anywhere: OSC's MachineConfig as it was, the
/// RuntimeClass ours and no longer the KataConfig's dependent, the status
/// ours and saying what the nodes run.
async fn take_over(cluster: &Cluster, nodes: &[&str]) -> RunningCoordinator {
    let before = cluster.rollouts(nodes);
    assert_eq!(before, vec![1; nodes.len()], "OSC's install, one each");
    let osc_config = machine_configs(cluster)
        .get(mco::MACHINE_CONFIG_NAME)
        .await
        .unwrap();
    let (coordinator, metrics) = RunningCoordinator::with_metrics(cluster.client.clone());
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    cluster
        .wait_condition(
            "kc",
            ADOPTED_CONFIGURATION,
            "True",
            own_reason::KEPT_AS_WRITTEN,
        )
        .await;
    eventually("the RuntimeClass ours", CONVERGE, || async {
        let rc = Api::<RuntimeClass>::all(cluster.client.clone())
            .get("kata")
            .await
            .map_err(|e| e.to_string())?;
        let selector = rc.scheduling.and_then(|s| s.node_selector);
        let owners = rc.metadata.owner_references.unwrap_or_default();
        Ok(owners.is_empty()
            && selector
                == Some(
                    [(names::KATA_RUNTIME_LABEL.to_owned(), "true".to_owned())]
                        .into_iter()
                        .collect(),
                ))
    })
    .await
    .unwrap();
    reconcile_rounds(&cluster.client, &metrics, 3).await;

    let status = kata_config(cluster).await.status.unwrap();
    let mut installed = status.kata_nodes.installed.clone();
    installed.sort();
    assert_eq!(installed, nodes, "{status:?}");
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    assert_eq!(
        degraded.map(|c| c.status.as_str()),
        Some("False"),
        "OSC's fields are no conflict: {degraded:?}"
    );
    let kept = machine_configs(cluster)
        .get(mco::MACHINE_CONFIG_NAME)
        .await
        .unwrap();
    assert_eq!(kept.resource_version(), osc_config.resource_version());
    assert_eq!(metrics.api_writes.get_kind(mco::MACHINE_CONFIG.kind), 0);
    assert_eq!(cluster.rollouts(nodes), before, "no node sent anywhere");
    coordinator
}

/// Deletes the KataConfig: it goes (OSC's finalizer with it) and every
/// node leaves Kata with one more rendered config, to `rollouts` in all,
/// nothing left behind.
async fn uninstall_after_takeover(cluster: &Cluster, nodes: &[&str], rollouts_then: usize) {
    cluster.uninstall("kc").await;
    assert_eq!(cluster.rollouts(nodes), vec![rollouts_then; nodes.len()]);
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
}

#[kata_test]
async fn a_standard_cluster_osc_installed_is_taken_over_with_no_reboot_and_uninstalls() {
    let workers = ["w0", "w1"];
    let cluster = Cluster::start(&[("m0", &[MASTER]), ("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    osc_install(&cluster, &workers, false).await;
    let _coordinator = take_over(&cluster, &workers).await;
    assert_eq!(cluster.simulator.rollouts("m0"), 0);
    uninstall_after_takeover(&cluster, &workers, 2).await;
    assert_eq!(cluster.simulator.rollouts("m0"), 0);
}

#[kata_test]
async fn a_compact_cluster_osc_installed_is_taken_over_with_no_reboot_and_uninstalls() {
    let masters = ["m0", "m1", "m2"];
    let both: &[(&str, &str)] = &[MASTER, WORKER];
    let cluster = Cluster::start(&[("m0", both), ("m1", both), ("m2", both)]).await;
    osc_install(&cluster, &masters, true).await;
    let _coordinator = take_over(&cluster, &masters).await;
    let (_, _, message) = cluster
        .condition("kc", ADOPTED_CONFIGURATION)
        .await
        .unwrap();
    assert!(
        message.contains(mco::MACHINE_CONFIG_NAME) && message.contains("pool master"),
        "{message}"
    );
    assert!(
        cluster
            .get_dynamic(&mco::POOL.api_resource(), mco::POOL_NAME)
            .await
            .is_none(),
        "no kata-oc pool on a compact cluster"
    );
    uninstall_after_takeover(&cluster, &masters, 2).await;
}

/// Waits until the status no longer says the configuration is OSC's, Kata
/// is ready, and every one of `nodes` has `file` (one only ours writes).
async fn wait_on_our_configuration(cluster: &Cluster, nodes: &[&str], file: &str) {
    eventually(
        "the nodes on the operator's configuration",
        CONVERGE,
        || async {
            let status = kata_config(cluster).await.status.unwrap_or_default();
            let adopted = status
                .conditions
                .iter()
                .any(|c| c.type_ == ADOPTED_CONFIGURATION);
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let written = nodes
                .iter()
                .all(|n| cluster.root(n).join(file.trim_start_matches('/')).exists());
            Ok(!adopted && ready && written)
        },
    )
    .await
    .unwrap();
}

/// The first runtime profile is the change that replaces OSC's
/// MachineConfig with the operator's: profiles are in the operator's
/// alone, and the one rendered config the profile costs carries both.
#[kata_test]
async fn the_first_runtime_profile_replaces_an_adopted_machine_config_in_its_one_rollout() {
    let workers = ["w0", "w1"];
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    osc_install(&cluster, &workers, false).await;
    let _coordinator = take_over(&cluster, &workers).await;
    Api::<KataRuntimeProfile>::all(cluster.client.clone())
        .create(
            &PostParams::default(),
            &KataRuntimeProfile::of_size("kata-large", 4, 8192),
        )
        .await
        .unwrap();
    let profile_file = kata_coordinator::profiles::render::config_path("kata-large");
    wait_on_our_configuration(&cluster, &workers, &profile_file).await;
    wait_on_our_configuration(&cluster, &workers, kata_proto::contract::DROP_IN_PATH).await;
    assert_eq!(
        cluster.rollouts(&workers),
        [2, 2],
        "OSC's install, then one"
    );
    uninstall_after_takeover(&cluster, &workers, 3).await;
}

/// Asked to, the operator replaces OSC's MachineConfig with its own: one
/// rendered config more per node, the drop-in on the nodes, and the status
/// no longer says the configuration is OSC's.
#[kata_test]
async fn an_adopted_machine_config_is_replaced_on_request_with_one_reboot_per_node() {
    let workers = ["w0", "w1"];
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    osc_install(&cluster, &workers, false).await;
    let _coordinator = take_over(&cluster, &workers).await;
    cluster
        .configs()
        .patch(
            "kc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"adoptedMachineConfig": "replace"}})),
        )
        .await
        .unwrap();
    wait_on_our_configuration(&cluster, &workers, kata_proto::contract::DROP_IN_PATH).await;
    assert_eq!(cluster.rollouts(&workers), [2, 2]);
    let ours = machine_configs(&cluster)
        .get(mco::MACHINE_CONFIG_NAME)
        .await
        .unwrap();
    assert_eq!(
        ours.data["spec"]["config"]["storage"]["files"][0]["path"],
        kata_proto::contract::DROP_IN_PATH
    );
    uninstall_after_takeover(&cluster, &workers, 3).await;
}
