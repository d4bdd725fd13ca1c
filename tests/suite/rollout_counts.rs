//! Exactly one rollout per node per change. On OpenShift every rendered
//! config a node is sent to is a drain and a reboot; the MCO simulator counts
//! them per node ([`McoSimulator::rollouts`]). Against the real control
//! plane, the simulator and the coordinator, each change is checked to walk
//! every node it concerns through one rendered config and every other node
//! through none: install (with and without a log level), a day-2 selector
//! change, a log level change, no-op edits, the uninstall, and the master
//! pool of a compact cluster.
//!
//! The simulator's container-runtime-config controller is made slow where a
//! log level is involved: the render waits for it (as the real MCO's does),
//! so a coordinator that moved nodes before the generated config is rendered
//! would send them through two rendered configs, which a fast controller
//! could hide.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::time::Duration;

use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");
/// Longer than the coordinator's reconcile after a change and the
/// simulator's rollout of one node, so that the test does not miss a rollout that
/// the change would still cause.
const SLOW_RUNTIME_CONFIG_CONTROLLER: Duration = Duration::from_secs(3);
/// How long a no-op edit is given to (wrongly) cause a rollout.
const SETTLE: Duration = Duration::from_secs(4);
const LOG_LEVEL_DROP_IN: &str = "etc/crio/crio.conf.d/01-ctrcfg-logLevel";

pub(crate) type Counts = BTreeMap<String, usize>;

pub(crate) fn counts(cluster: &Cluster, nodes: &[&str]) -> Counts {
    nodes
        .iter()
        .map(|n| ((*n).to_owned(), cluster.simulator.rollouts(n)))
        .collect()
}

/// The rollouts each node went through since `before`.
pub(crate) fn since(cluster: &Cluster, before: &Counts) -> Counts {
    before
        .iter()
        .map(|(node, count)| (node.clone(), cluster.simulator.rollouts(node) - count))
        .collect()
}

/// `count` for each of `nodes`, 0 for the other nodes of `all`.
pub(crate) fn expect(all: &[&str], nodes: &[&str], count: usize) -> Counts {
    all.iter()
        .map(|n| ((*n).to_owned(), if nodes.contains(n) { count } else { 0 }))
        .collect()
}

/// Every node at rest: at its desired config, its daemon `Done`.
pub(crate) async fn nodes_at_rest(cluster: &Cluster) -> Result<bool, String> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client.clone())
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    for node in &nodes.items {
        let annotations = node.annotations();
        let current = annotations.get(mco::CURRENT_CONFIG);
        if current.is_none()
            || current != annotations.get(mco::DESIRED_CONFIG)
            || annotations.get(mco::STATE).map(String::as_str) != Some(mco::STATE_DONE)
        {
            return Err(format!("{} not at rest: {annotations:?}", node.name_any()));
        }
    }
    Ok(true)
}

/// The KataConfig says exactly `installed` are installed, Ready, and no
/// node is moving.
pub(crate) async fn wait_installed_on(cluster: &Cluster, installed: &[&str]) {
    eventually(&format!("installed on {installed:?}"), CONVERGE, || async {
        let config = cluster
            .configs()
            .get("kc")
            .await
            .map_err(|e| e.to_string())?;
        let status = config.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "Installed");
        if !ready || status.kata_nodes.installed != installed {
            return Err(format!(
                "ready {ready}, installed {:?}",
                status.kata_nodes.installed
            ));
        }
        nodes_at_rest(cluster).await
    })
    .await
    .unwrap();
}

/// The log level CRI-O gets on `node` through the ContainerRuntimeConfig
/// (None: no drop-in, CRI-O's default).
fn log_level_on(cluster: &Cluster, node: &str) -> Option<String> {
    let text = std::fs::read_to_string(cluster.root(node).join(LOG_LEVEL_DROP_IN)).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("log_level = "))
        .map(|l| l.trim_matches('"').to_owned())
}

async fn wait_log_level(cluster: &Cluster, nodes: &[&str], level: Option<&str>) {
    eventually(
        &format!("log level {level:?} on {nodes:?}"),
        CONVERGE,
        || async {
            for node in nodes {
                let found = log_level_on(cluster, node);
                if found.as_deref() != level {
                    return Err(format!("{node}: {found:?}"));
                }
            }
            nodes_at_rest(cluster).await
        },
    )
    .await
    .unwrap();
}

async fn patch_spec(cluster: &Cluster, spec: serde_json::Value) {
    cluster
        .configs()
        .patch(
            "kc",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

/// Creates the KataConfig with `spec` and waits until exactly `installed`
/// are installed (with the spec's log level, if any); returns the rollouts
/// each node of `all` went through meanwhile.
async fn install(
    cluster: &Cluster,
    all: &[&str],
    installed: &[&str],
    spec: serde_json::Value,
) -> Counts {
    let before = counts(cluster, all);
    let level = spec["logLevel"].as_str().map(str::to_owned);
    cluster.create_kataconfig("kc", spec).await;
    wait_installed_on(cluster, installed).await;
    wait_log_level(cluster, installed, level.as_deref()).await;
    since(cluster, &before)
}

/// Sets the KataConfig's log level and waits until `installed` run it
/// (`info`, CRI-O's default, is no drop-in at all); returns the rollouts
/// each node of `all` went through meanwhile.
async fn change_log_level(
    cluster: &Cluster,
    all: &[&str],
    installed: &[&str],
    level: &str,
) -> Counts {
    let before = counts(cluster, all);
    patch_spec(cluster, json!({ "logLevel": level })).await;
    let on_nodes = (level != "info").then_some(level);
    wait_log_level(cluster, installed, on_nodes).await;
    wait_installed_on(cluster, installed).await;
    since(cluster, &before)
}

/// Deletes the KataConfig and waits until it is gone, nothing of ours is
/// left and no node moves; returns the rollouts each node of `all` went
/// through meanwhile.
async fn uninstall(cluster: &Cluster, all: &[&str]) -> Counts {
    let before = counts(cluster, all);
    cluster.uninstall("kc").await;
    eventually("every node at rest", CONVERGE, || nodes_at_rest(cluster))
        .await
        .unwrap();
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    since(cluster, &before)
}

#[kata_test]
async fn install_day_two_changes_no_ops_and_uninstall_roll_each_node_once() {
    let all = ["m0", "w0", "w1", "w2", "w3"];
    let cluster = Cluster::start(&[
        ("m0", &[MASTER]),
        ("w0", &[WORKER, ("zone", "a"), ("tier", "x")]),
        ("w1", &[WORKER, ("zone", "a")]),
        ("w2", &[WORKER, ("zone", "b"), ("tier", "x")]),
        ("w3", &[WORKER, ("zone", "c")]),
    ])
    .await;
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());

    // Install without a log level: our MachineConfig alone.
    let spec = json!({"kataConfigPoolSelector": {"matchLabels": {"zone": "a"}}});
    assert_eq!(
        install(&cluster, &all, &["w0", "w1"], spec).await,
        expect(&all, &["w0", "w1"], 1),
        "install"
    );

    // No-op edits: an annotation on the KataConfig, a node label no
    // selector names, the same spec again.
    let before = counts(&cluster, &all);
    cluster
        .configs()
        .patch(
            "kc",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "hello"}}})),
        )
        .await
        .unwrap();
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client.clone());
    for node in ["w0", "w2"] {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"example.com/rack": "r1"}}})),
            )
            .await
            .unwrap();
    }
    patch_spec(
        &cluster,
        json!({"kataConfigPoolSelector": {"matchLabels": {"zone": "a"}}}),
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    wait_installed_on(&cluster, &["w0", "w1"]).await;
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &[], 0),
        "no-op edits"
    );

    // Day 2: the selector moves w1 out and w2 in; w0 stays. (A merge
    // patch merges matchLabels: `zone` goes explicitly.)
    let before = counts(&cluster, &all);
    patch_spec(
        &cluster,
        json!({"kataConfigPoolSelector": {"matchLabels": {"zone": null, "tier": "x"}}}),
    )
    .await;
    wait_installed_on(&cluster, &["w0", "w2"]).await;
    eventually("w1 back on the worker pool", CONVERGE, || async {
        Ok(cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await == ["w0", "w2"])
    })
    .await
    .unwrap();
    eventually("every node at rest", CONVERGE, || nodes_at_rest(&cluster))
        .await
        .unwrap();
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &["w1", "w2"], 1),
        "selector change"
    );

    // A log level on the installed cluster, with a slow
    // container-runtime-config controller.
    cluster
        .simulator
        .slow_runtime_config_controller(SLOW_RUNTIME_CONFIG_CONTROLLER);
    assert_eq!(
        change_log_level(&cluster, &all, &["w0", "w2"], "debug").await,
        expect(&all, &["w0", "w2"], 1),
        "log level set"
    );

    assert_eq!(
        uninstall(&cluster, &all).await,
        expect(&all, &["w0", "w2"], 1),
        "uninstall"
    );
    assert_eq!(log_level_on(&cluster, "w0"), None);
}

#[kata_test]
async fn a_log_level_arrives_with_kata_in_one_rollout_under_a_slow_runtime_config_controller() {
    let all = ["m0", "w0", "w1", "w2"];
    let cluster = Cluster::start(&[
        ("m0", &[MASTER]),
        ("w0", &[WORKER, ("kata", "yes")]),
        ("w1", &[WORKER, ("kata", "yes")]),
        ("w2", &[WORKER]),
    ])
    .await;
    cluster
        .simulator
        .slow_runtime_config_controller(SLOW_RUNTIME_CONFIG_CONTROLLER);
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    let targets = ["w0", "w1"];

    let spec =
        json!({"logLevel": "debug", "kataConfigPoolSelector": {"matchLabels": {"kata": "yes"}}});
    assert_eq!(
        install(&cluster, &all, &targets, spec).await,
        expect(&all, &targets, 1),
        "install with a log level: Kata and the log level in one rendered config"
    );

    // Re-applying the same spec changes nothing.
    let before = counts(&cluster, &all);
    patch_spec(
        &cluster,
        json!({"logLevel": "debug", "kataConfigPoolSelector": {"matchLabels": {"kata": "yes"}}}),
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(since(&cluster, &before), expect(&all, &[], 0), "same spec");

    // Changed; back to the default (the ContainerRuntimeConfig goes); set
    // again (a new one).
    for level in ["trace", "info", "warn"] {
        assert_eq!(
            change_log_level(&cluster, &all, &targets, level).await,
            expect(&all, &targets, 1),
            "log level {level}"
        );
    }

    assert_eq!(
        uninstall(&cluster, &all).await,
        expect(&all, &targets, 1),
        "uninstall with a log level"
    );
    assert_eq!(log_level_on(&cluster, "w0"), None);
}

#[kata_test]
async fn the_master_pool_of_a_compact_cluster_rolls_once_per_change_with_a_log_level() {
    let masters = ["m0", "m1", "m2"];
    let cluster = Cluster::start(&masters.map(|n| (n, &[MASTER, WORKER][..]))).await;
    cluster
        .simulator
        .slow_runtime_config_controller(SLOW_RUNTIME_CONFIG_CONTROLLER);
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());

    assert_eq!(
        install(&cluster, &masters, &masters, json!({"logLevel": "debug"})).await,
        expect(&masters, &masters, 1),
        "install through the master pool"
    );
    assert!(
        cluster
            .root("m0")
            .join("etc/crio/crio.conf.d/50-kata")
            .exists()
    );

    assert_eq!(
        change_log_level(&cluster, &masters, &masters, "trace").await,
        expect(&masters, &masters, 1),
        "log level changed on the master pool"
    );

    assert_eq!(
        uninstall(&cluster, &masters).await,
        expect(&masters, &masters, 1),
        "uninstall from the master pool"
    );
    assert!(
        !cluster
            .root("m0")
            .join("etc/crio/crio.conf.d/50-kata")
            .exists()
    );
    assert_eq!(log_level_on(&cluster, "m0"), None);
}
