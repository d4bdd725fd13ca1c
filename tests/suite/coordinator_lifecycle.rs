//! The KataConfig lifecycle on a real API server with the real OpenShift
//! MachineConfig CRDs, the coordinator running in-process and the MCO
//! simulator rolling the pools and writing each node's fake host root.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::api::KataConfig;
use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_tests::ControlPlane;
use kata_tests::api_objects::create_node;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, create_kata_pod};
use kata_tests::coordinator::CoordinatorProcess;
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::manifests::install_operator_api;
use kata_tests::mco_simulator::NodeFault;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

fn drop_in(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("etc/crio/crio.conf.d/50-kata")).ok()
}

#[kata_test]
async fn install_day_two_and_uninstall() {
    let zone_a: &[(&str, &str)] = &[WORKER, ("zone", "a")];
    let zone_b: &[(&str, &str)] = &[WORKER, ("zone", "b")];
    let cluster = Cluster::start(&[
        ("w0", zone_a),
        ("w1", zone_a),
        ("w2", zone_b),
        ("m0", &[("node-role.kubernetes.io/master", "")]),
    ])
    .await;
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());

    cluster
        .create_kataconfig(
            "cluster-kataconfig",
            json!({"kataConfigPoolSelector": {"matchLabels": {"zone": "a"}}}),
        )
        .await;
    cluster
        .wait_condition("cluster-kataconfig", "Ready", "True", "Installed")
        .await;

    assert_eq!(
        cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
        ["w0", "w1"]
    );
    let status = cluster
        .configs()
        .get("cluster-kataconfig")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.kata_nodes.installed, ["w0", "w1"]);
    assert_eq!(
        (
            status.kata_nodes.node_count,
            status.kata_nodes.ready_node_count
        ),
        (2, 2)
    );
    assert_eq!(status.runtime_classes, ["kata"]);
    assert_eq!(
        cluster
            .condition("cluster-kataconfig", "InProgress")
            .await
            .unwrap()
            .0,
        "False"
    );
    assert_eq!(
        cluster
            .condition("cluster-kataconfig", "Degraded")
            .await
            .unwrap()
            .0,
        "False"
    );

    let rc = Api::<RuntimeClass>::all(cluster.client.clone())
        .get("kata")
        .await
        .unwrap();
    assert_eq!(rc.handler, "kata");
    let overhead = rc.overhead.unwrap().pod_fixed.unwrap();
    assert_eq!(
        (overhead["cpu"].0.as_str(), overhead["memory"].0.as_str()),
        ("250m", "350Mi")
    );
    assert_eq!(
        rc.scheduling.unwrap().node_selector.unwrap(),
        BTreeMap::from([(
            "katacontainers.io/kata-runtime".to_string(),
            "true".to_string()
        )])
    );

    let mc = cluster
        .get_dynamic(
            &mco::MACHINE_CONFIG.api_resource(),
            mco::MACHINE_CONFIG_NAME,
        )
        .await
        .unwrap();
    assert_eq!(
        mc.data["spec"]["extensions"],
        json!(["sandboxed-containers"])
    );
    let pool = cluster
        .get_dynamic(&mco::POOL.api_resource(), mco::POOL_NAME)
        .await
        .unwrap();
    assert_eq!(pool.data["status"]["machineCount"], json!(2));
    let installed_drop_in =
        drop_in(&cluster.root("w0")).expect("the MCO simulator wrote the drop-in on w0");
    assert!(installed_drop_in.contains("[crio.runtime.runtimes.kata]"));
    assert!(drop_in(&cluster.root("w2")).is_none(), "w2 is not selected");

    // Day 2: the selector moves to zone b.
    let patch = json!({"spec": {"kataConfigPoolSelector": {"matchLabels": {"zone": "b"}}}});
    cluster
        .configs()
        .patch(
            "cluster-kataconfig",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually("w2 installed and w0, w1 rolled back", CONVERGE, || async {
        let status = cluster
            .configs()
            .get("cluster-kataconfig")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let ready = cluster
            .condition("cluster-kataconfig", "Ready")
            .await
            .map(|c| c.0);
        Ok(status.kata_nodes.installed == ["w2"]
            && status.kata_nodes.uninstalling.is_empty()
            && status.kata_nodes.waiting_to_uninstall.is_empty()
            && ready.as_deref() == Some("True"))
    })
    .await
    .unwrap();
    assert_eq!(cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await, ["w2"]);
    assert!(
        drop_in(&cluster.root("w0")).is_none(),
        "w0 rolled back to the worker config"
    );
    assert!(drop_in(&cluster.root("w2")).is_some());

    // Uninstall waits for the Kata pod, without evicting it.
    create_kata_pod(&cluster.client, "apps", "sandboxed").await;
    cluster
        .configs()
        .delete("cluster-kataconfig", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition(
            "cluster-kataconfig",
            "InProgress",
            "True",
            "BlockedByExistingKataPods",
        )
        .await;
    let (_, _, message) = cluster
        .condition("cluster-kataconfig", "InProgress")
        .await
        .unwrap();
    assert!(message.contains("apps/sandboxed"), "{message}");
    assert!(
        cluster
            .get_dynamic(
                &mco::MACHINE_CONFIG.api_resource(),
                mco::MACHINE_CONFIG_NAME
            )
            .await
            .is_some(),
        "nothing removed while blocked"
    );
    assert!(
        Api::<Pod>::namespaced(cluster.client.clone(), "apps")
            .get_opt("sandboxed")
            .await
            .unwrap()
            .is_some(),
        "the pod was not evicted"
    );

    Api::<Pod>::namespaced(cluster.client.clone(), "apps")
        .delete("sandboxed", &DeleteParams::default())
        .await
        .unwrap();
    cluster.wait_gone("cluster-kataconfig").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    for node in ["w0", "w1", "w2"] {
        assert!(
            drop_in(&cluster.root(node)).is_none(),
            "{node} still has the drop-in"
        );
    }
    drop(cluster.plane);
}

#[kata_test]
async fn degraded_node_and_log_level() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    cluster.simulator.set_fault(
        "w1",
        NodeFault::Degraded {
            reason: "failed to drain node: pod blocked by PDB".into(),
        },
    );
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    // An empty selector with matchExpressions still yields the runtime-ready nodeSelector.
    cluster.create_kataconfig("kc", json!({"logLevel": "debug", "kataConfigPoolSelector": {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}})).await;

    cluster
        .wait_condition("kc", "Degraded", "True", "NodeDegraded")
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    assert!(
        message.contains("w1") && message.contains("pod blocked by PDB"),
        "{message}"
    );
    let status = cluster.configs().get("kc").await.unwrap().status.unwrap();
    assert_eq!(status.kata_nodes.failed_to_install, ["w1"]);
    assert_eq!(
        cluster.condition("kc", "InProgress").await.unwrap().1,
        "Failed"
    );
    let crc = cluster
        .get_dynamic(
            &mco::CONTAINER_RUNTIME_CONFIG.api_resource(),
            mco::CONTAINER_RUNTIME_CONFIG_NAME,
        )
        .await
        .unwrap();
    assert_eq!(
        crc.data["spec"]["containerRuntimeConfig"]["logLevel"],
        "debug"
    );

    cluster.simulator.clear_fault("w1");
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        cluster.condition("kc", "Degraded").await.unwrap().0,
        "False"
    );

    let patch = json!({"spec": {"logLevel": "info"}});
    cluster
        .configs()
        .patch("kc", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("kata-crio-config deleted", CONVERGE, || async {
        Ok(cluster
            .get_dynamic(
                &mco::CONTAINER_RUNTIME_CONFIG.api_resource(),
                mco::CONTAINER_RUNTIME_CONFIG_NAME,
            )
            .await
            .is_none())
    })
    .await
    .unwrap();
}

/// A converged cluster costs no API writes: neither a fresh coordinator's
/// full resync nor an unrelated node change writes anything.
#[kata_test]
async fn converged_cluster_resync_makes_no_writes() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER]), ("w2", &[WORKER])]).await;
    let first = RunningCoordinator::start(cluster.client.clone(), Options::default());
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let install_writes = first.writes.get();
    first.stop().await;

    let second = RunningCoordinator::start(cluster.client.clone(), Options::default());
    // Give it time to list, reconcile and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patch = json!({"metadata": {"labels": {kata_tests::cluster::TOUCH_LABEL: "yes"}}});
    Api::<Node>::all(cluster.client.clone())
        .patch("w1", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "install took {install_writes} API writes; resync of the converged cluster took {}",
        second.writes.get()
    );
    assert_eq!(
        second.writes.get(),
        0,
        "a converged cluster needs no writes"
    );
}

/// Stops the coordinator after every single write of an install and of an
/// uninstall; a fresh coordinator must converge to the same end state.
#[kata_test]
async fn restarts_at_every_step_converge() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;

    // One uninterrupted round tells how many writes each phase takes.
    let reference = RunningCoordinator::start(cluster.client.clone(), Options::default());
    cluster
        .create_kataconfig("kc", json!({"logLevel": "debug"}))
        .await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let install_writes = reference.writes.get();
    let expected_labels = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
    cluster.uninstall("kc").await;
    let uninstall_writes = reference.writes.get() - install_writes;
    reference.stop().await;
    assert!(
        install_writes > 3 && uninstall_writes > 3,
        "install {install_writes}, uninstall {uninstall_writes}"
    );

    for stop_after in 1..install_writes.max(uninstall_writes) {
        let crashing = RunningCoordinator::start(
            cluster.client.clone(),
            Options {
                stop_after_writes: Some(stop_after),
                ..Options::default()
            },
        );
        cluster
            .create_kataconfig("kc", json!({"logLevel": "debug"}))
            .await;
        eventually("the coordinator to stop or converge", CONVERGE, || async {
            Ok(crashing.has_stopped()
                || cluster
                    .condition("kc", "Ready")
                    .await
                    .is_some_and(|c| c.0 == "True"))
        })
        .await
        .unwrap();
        crashing.stop().await;
        let fresh = RunningCoordinator::start(cluster.client.clone(), Options::default());
        cluster
            .wait_condition("kc", "Ready", "True", "Installed")
            .await;
        fresh.stop().await;
        assert_eq!(
            cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
            expected_labels,
            "after a stop at write {stop_after}"
        );
        let pools =
            Api::<DynamicObject>::all_with(cluster.client.clone(), &mco::POOL.api_resource())
                .list(&Default::default())
                .await
                .unwrap();
        assert_eq!(
            pools
                .items
                .iter()
                .filter(|p| p.name_any() == mco::POOL_NAME)
                .count(),
            1
        );

        let crashing = RunningCoordinator::start(
            cluster.client.clone(),
            Options {
                stop_after_writes: Some(stop_after),
                ..Options::default()
            },
        );
        cluster
            .configs()
            .delete("kc", &DeleteParams::default())
            .await
            .unwrap();
        eventually(
            "the coordinator to stop or finish uninstalling",
            CONVERGE,
            || async {
                Ok(crashing.has_stopped()
                    || cluster
                        .configs()
                        .get_opt("kc")
                        .await
                        .map_err(|e| e.to_string())?
                        .is_none())
            },
        )
        .await
        .unwrap();
        crashing.stop().await;
        let fresh = RunningCoordinator::start(cluster.client.clone(), Options::default());
        cluster.wait_gone("kc").await;
        fresh.stop().await;
        assert_eq!(
            cluster.operator_leftovers().await,
            Vec::<String>::new(),
            "after a stop at write {stop_after} of the uninstall"
        );
    }
    println!(
        "restart-safe at each of {install_writes} install and {uninstall_writes} uninstall writes"
    );
}

const REQUIRED_CRDS: [&str; 4] = [
    "machineconfigs.machineconfiguration.openshift.io",
    "machineconfigpools.machineconfiguration.openshift.io",
    "containerruntimeconfigs.machineconfiguration.openshift.io",
    "kataconfigs.kataconfiguration.openshift.io",
];
/// What the coordinator logs while CRDs are missing.
const WAITING_LINE: &str = "waiting for the API server to serve";
/// Generous: a stop takes at most the reconcile grace (5 s) and a moment.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until the process's /readyz answers `status` with a body that
/// satisfies `body_ok`; returns the body.
async fn wait_readyz(
    coordinator: &CoordinatorProcess,
    status: u16,
    body_ok: impl Fn(&str) -> bool,
) -> String {
    let body_ok = &body_ok;
    eventually(
        &format!("/readyz answering {status}"),
        CONVERGE,
        || async move {
            let (code, body) = coordinator.readyz().await?;
            if code == status && body_ok(&body) {
                Ok(true)
            } else {
                Err(format!("{code}: {body}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- coordinator log ---\n{}", coordinator.log()));
    coordinator.readyz().await.unwrap().1
}

/// On an API server without the Machine Config Operator's CRDs and ours,
/// the coordinator says which are missing, once in its log and in /readyz,
/// waits without spinning, starts when they are applied and reconciles,
/// and a SIGTERM in the middle of a reconcile stuck on an API server that
/// does not answer still stops it, with status 0.
#[kata_test]
async fn missing_crds_are_named_then_picked_up_and_a_stuck_reconcile_stops_on_sigterm() {
    let plane = ControlPlane::start().await.unwrap();
    // A threshold of a second: see the freeze below.
    let mut coordinator =
        CoordinatorProcess::start(&plane, &["--stuck-rollout-seconds", "1"]).unwrap();
    let body = wait_readyz(&coordinator, 503, |b| b.contains(WAITING_LINE)).await;
    for crd in REQUIRED_CRDS {
        assert!(body.contains(crd), "/readyz names {crd}: {body}");
    }
    // Several discovery rounds (1 s, 2 s, 4 s apart) pass meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = coordinator.log();
    assert_eq!(
        log.matches(WAITING_LINE).count(),
        1,
        "one log line names the missing CRDs:\n{log}"
    );
    assert!(
        !log.contains("failed to perform initial object list"),
        "no watch runs before its API is served:\n{log}"
    );
    assert_eq!(coordinator.readyz().await.unwrap().0, 503);

    install_operator_api(&plane).await.unwrap();
    wait_readyz(&coordinator, 200, |b| b == "ok").await;
    // The binary's allocator serves its figures: live objects sit in
    // active pages, which are resident.
    let heap = |state: &'static str| {
        let metrics = coordinator.metrics;
        async move {
            let series = format!("kata_operator_coordinator_heap_bytes{{state=\"{state}\"}}");
            kata_tests::http::scrape_metric(metrics, &series)
                .await
                .unwrap()
        }
    };
    let (allocated, active, resident) = (
        heap("allocated").await,
        heap("active").await,
        heap("resident").await,
    );
    println!("coordinator heap: {allocated} bytes allocated, {active} active, {resident} resident");
    assert!(
        allocated > 0.0 && allocated <= active && active <= resident,
        "allocated {allocated}, active {active}, resident {resident}"
    );
    let client = plane.client().await.unwrap();
    create_node(&client, "w0", &[WORKER]).await.unwrap();
    // Reconciles read the cluster from the watches' caches and write only
    // what changed, so a poll can hang on the API server only if it has a
    // write to make. A node the MCO would keep updating (set by hand: no
    // MCO runs here) past the threshold gives every poll one: the status
    // says how long the node has been held, which changes each time.
    let working = json!({"metadata": {"annotations": {
        mco::STATE: mco::STATE_WORKING,
        mco::CURRENT_CONFIG: "rendered-worker-1",
        mco::DESIRED_CONFIG: "rendered-worker-2",
    }}});
    Api::<Node>::all(client.clone())
        .patch("w0", &PatchParams::default(), &Patch::Merge(&working))
        .await
        .unwrap();
    let configs = Api::<KataConfig>::all(client.clone());
    let kataconfig: KataConfig = serde_json::from_value(json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": { "name": "kc" }, "spec": {},
    }))
    .unwrap();
    configs
        .create(&PostParams::default(), &kataconfig)
        .await
        .unwrap();
    eventually(
        "the coordinator reconciles the KataConfig",
        CONVERGE,
        || async {
            let config = configs.get("kc").await.map_err(|e| e.to_string())?;
            let installing = config.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "InProgress" && c.status == "True")
            });
            Ok(installing && !config.finalizers().is_empty())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- coordinator log ---\n{}", coordinator.log()));

    // No MCO runs here, so the install keeps polling every 10 s, each poll
    // writing the held node's time. Freeze the API server long enough for
    // the next reconcile to start and hang on that write, then ask the
    // coordinator to stop.
    let api_server = Pid::from_raw(i32::try_from(plane.pids()[1]).unwrap());
    kill(api_server, Signal::SIGSTOP).unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stopped = coordinator.terminate(STOP_TIMEOUT).await;
    kill(api_server, Signal::SIGCONT).unwrap();
    let (status, took) = stopped.unwrap();
    println!(
        "SIGTERM with a reconcile stuck on a frozen API server: exited {status} after {took:?}"
    );
    assert!(status.success(), "{status}\n{}", coordinator.log());
    assert!(
        coordinator.log().contains("did not finish in time"),
        "it was mid-reconcile:\n{}",
        coordinator.log()
    );
}

/// SIGTERM while the coordinator waits for missing CRDs stops it at once,
/// with status 0.
#[kata_test]
async fn sigterm_while_waiting_for_crds_exits_cleanly() {
    let plane = ControlPlane::start().await.unwrap();
    let mut coordinator = CoordinatorProcess::start(&plane, &[]).unwrap();
    wait_readyz(&coordinator, 503, |b| b.contains(WAITING_LINE)).await;
    let (status, took) = coordinator.terminate(STOP_TIMEOUT).await.unwrap();
    println!("SIGTERM while waiting for the CRDs: exited {status} after {took:?}");
    assert!(status.success(), "{status}\n{}", coordinator.log());
}
