//! OLM's install and upgrade of the operator, played from the bundle's
//! files on a real API server with the MCO simulator: the CSV, its
//! ServiceAccounts and generated RBAC, the Deployment of its install
//! strategy and the bundle's other manifests, written as OLM writes them;
//! the coordinator run as that Deployment's pod would run it (the real
//! binary, its ServiceAccount's token, the container's env and args). It
//! then creates its operands with nothing applied by hand; a KataConfig is
//! installed; the next version's CSV replaces the first (the Deployment
//! updated in place, the old CSV Replacing, Deleting, deleted) and the
//! agents' DaemonSet rolls to the new image with no node rolled again.
//! With no DaemonSet controller or kubelet here, the test runs the agents
//! from the DaemonSet's pod template itself (`agents`): a KataConfig that
//! checks node eligibility installs on their reports, and they roll, pod
//! by pod, when the template changes, no node losing its runtime label.
//! What is played and what is not: docs/testing.md, "OLM".
#![allow(clippy::unwrap_used)]

mod agents;
pub(crate) mod csv;
mod install;
mod pod;

use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_coordinator::operands::{self, NODE_AGENT_IMAGE_ENV, node_agent, policies};
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::uninstalled_host;
use kata_tests::eventually;
use kata_tests::host_root::FakeHost;
use kata_tests::http::scrape_metric;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use agents::{AgentPods, LabelWatch, REVISION_LABEL};
use csv::{FIRST, NEXT, NEXT_NODE_AGENT, bundle_csv, next_version, related_image};
use install::{NAMESPACE, csvs, delete_csv, set_phase};
use pod::{CoordinatorPod, CoordinatorService, live_deployment};

const NODES: [&str; 2] = ["w0", "w1"];
/// What the uninstall-order policy says when it refuses.
const DELETE_FIRST: &str = "delete the KataConfig first and wait for it to be gone";

fn daemon_sets(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(
        cluster.client.clone(),
        NAMESPACE,
        &operands::DAEMON_SET.api_resource(),
    )
}

/// The node-agent DaemonSet once its template runs `image`.
async fn wait_daemon_set(cluster: &Cluster, image: &str) -> Value {
    let api = daemon_sets(cluster);
    let seen = std::sync::Mutex::new(Value::Null);
    let waited = eventually(&format!("the DaemonSet on {image}"), CONVERGE, || async {
        let ds = api
            .get_opt(node_agent::NAME)
            .await
            .map_err(|e| e.to_string())?;
        let ds = serde_json::to_value(ds).map_err(|e| e.to_string())?;
        let holds = ds["spec"]["template"]["spec"]["containers"][0]["image"] == image;
        *seen.lock().unwrap() = ds;
        Ok(holds)
    })
    .await;
    let seen = seen.into_inner().unwrap();
    waited.unwrap_or_else(|e| panic!("{e}; last seen: {seen}"));
    seen
}

/// Every admission policy and its binding, none applied by the test.
async fn wait_policies(cluster: &Cluster) {
    for kind in [policies::POLICY, policies::BINDING] {
        let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &kind.api_resource());
        eventually(&format!("every {}", kind.kind), CONVERGE, || async {
            let listed = api
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = listed
                .items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect();
            Ok(policies::NAMES
                .iter()
                .all(|name| names.iter().any(|n| n == name)))
        })
        .await
        .unwrap();
    }
}

/// The test cluster comes with the one-KataConfig policy applied, which a
/// cluster OLM installs into does not have: removed, so that every policy
/// found later is the coordinator's.
async fn remove_policies(cluster: &Cluster) {
    for kind in [policies::BINDING, policies::POLICY] {
        let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &kind.api_resource());
        for name in policies::NAMES {
            if api.get_opt(name).await.unwrap().is_some() {
                api.delete(name, &DeleteParams::default()).await.unwrap();
            }
        }
    }
}

/// Waits until deleting the CSV `name` is refused (a dry run, which the
/// policy judges and which deletes nothing): the policy the coordinator
/// created is in force, its params (the KataConfigs) read.
async fn wait_refused(cluster: &Cluster, name: &str) {
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    eventually("the uninstall-order policy in force", CONVERGE, || async {
        Ok(csvs(cluster).delete(name, &dry_run).await.is_err())
    })
    .await
    .unwrap();
}

/// The coordinator pod's writes to objects of `kind`, since it started.
async fn writes(coordinator: &CoordinatorPod, kind: &str) -> f64 {
    let series = format!("kata_operator_api_writes_total{{kind=\"{kind}\"}}");
    scrape_metric(coordinator.process.metrics, &series)
        .await
        .unwrap_or(0.0)
}

/// `rounds` more reconciles of the coordinator pod finished, each woken by
/// [`kata_tests::cluster::TOUCH_LABEL`] on a node, which decides nothing.
async fn reconcile_rounds(cluster: &Cluster, coordinator: &CoordinatorPod, rounds: usize) {
    let series = "kata_operator_reconcile_duration_seconds_count";
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(cluster.client.clone());
    for round in 0..rounds {
        let finished = scrape_metric(coordinator.process.metrics, series)
            .await
            .unwrap_or(0.0);
        let patch =
            json!({"metadata": {"labels": {kata_tests::cluster::TOUCH_LABEL: round.to_string()}}});
        nodes
            .patch(
                NODES[0],
                &Default::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
        let waited = eventually("another reconcile to finish", CONVERGE, || async {
            Ok(scrape_metric(coordinator.process.metrics, series).await? > finished)
        })
        .await;
        if let Err(e) = waited {
            panic!("{e}; the coordinator's log:\n{}", coordinator.process.log());
        }
    }
}

/// The bundle installed as OLM installs it, the coordinator running from
/// its Deployment, the operands it made checked, a KataConfig installed;
/// with `agents`, the DaemonSet's agents running on KVM-capable fake hosts
/// and the KataConfig checking node eligibility.
struct Installed {
    cluster: Cluster,
    service: CoordinatorService,
    coordinator: CoordinatorPod,
    first: Value,
    agents: Option<(AgentPods, Vec<FakeHost>)>,
}

async fn installed(agents: bool) -> Installed {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    cluster.plane.install_crds(&[csv::csv_crd()]).await.unwrap();
    remove_policies(&cluster).await;
    let first = bundle_csv();
    install::install(&cluster, &first).await;
    let service = CoordinatorService::start(&cluster).await;
    let coordinator = CoordinatorPod::start(&cluster, &service, "kata-coordinator-1-a").await;

    // The reference flows CSV → the Deployment's env → the DaemonSet.
    let image = related_image(&first, "node-agent");
    let deployment = live_deployment(&cluster, operands::OWNER_DEPLOYMENT).await;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(csv::env_value(container, NODE_AGENT_IMAGE_ENV), Some(image));
    let ds = wait_daemon_set(&cluster, image).await;
    let owner = &ds["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(
        owner["uid"], deployment["metadata"]["uid"],
        "owned by the Deployment"
    );
    wait_policies(&cluster).await;
    // The coordinator runs on the CSV's generated RBAC alone: deploy/base's
    // fixed names are nowhere.
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(cluster.client.clone());
    assert!(
        roles
            .get_opt("kata-operator-coordinator")
            .await
            .unwrap()
            .is_none()
    );

    let agents = if agents {
        // The KataConfig first: the nodes join as their agents report them
        // capable, each once its report has held for the dwell.
        cluster
            .create_kataconfig(
                "kc",
                json!({
                    "checkNodeEligibility": true,
                    "kataConfigPoolSelector": {"matchLabels": {WORKER.0: WORKER.1}},
                }),
            )
            .await;
        let agents = start_agents(&cluster, &service, image).await;
        wait_installed_on(&cluster, &NODES).await;
        Some(agents)
    } else {
        cluster.create_kataconfig("kc", json!({})).await;
        None
    };
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        cluster.rollouts(&NODES),
        vec![1, 1],
        "each node installed once"
    );
    Installed {
        cluster,
        service,
        coordinator,
        first,
        agents,
    }
}

/// Waits until the KataConfig's status lists exactly `nodes` installed.
async fn wait_installed_on(cluster: &Cluster, nodes: &[&str]) {
    eventually(
        "the KataConfig installed on every worker",
        CONVERGE,
        || async {
            let config = cluster
                .configs()
                .get("kc")
                .await
                .map_err(|e| e.to_string())?;
            let installed = config.status.map(|s| s.kata_nodes.installed);
            match installed {
                Some(installed) if installed == nodes => Ok(true),
                other => Err(format!("installed: {other:?}")),
            }
        },
    )
    .await
    .unwrap();
}

/// Every worker a KVM-capable host before the extension, its agent run
/// from the DaemonSet's template on `image`.
async fn start_agents(
    cluster: &Cluster,
    service: &CoordinatorService,
    image: &str,
) -> (AgentPods, Vec<FakeHost>) {
    let hosts: Vec<FakeHost> = NODES
        .iter()
        .map(|_| uninstalled_host(true).unwrap())
        .collect();
    for (node, host) in NODES.iter().zip(&hosts) {
        cluster.simulator.register_host_root(node, host.path());
    }
    let roots: Vec<(&str, &std::path::Path)> = NODES
        .iter()
        .copied()
        .zip(hosts.iter().map(FakeHost::path))
        .collect();
    let agents = AgentPods::start(cluster, service, &roots).await;
    let nodes: Vec<&String> = agents.running.keys().collect();
    assert_eq!(nodes, NODES, "one agent pod per worker");
    assert!(agents.running.values().all(|pod| pod.image == image));
    (agents, hosts)
}

/// OLM replaces the CSV with a KataConfig installed on the agents' reports:
/// the old CSV's deletion is allowed by the policy the coordinator
/// created, the agents roll to the next version's image, pod by pod, and
/// no node rolls or loses its runtime label.
// Without /dev/kvm no simulated node is KVM-capable, and eligibility
// checking installs on none.
#[kata_test(requires(kata_test_harness::requirement::kvm))]
async fn olm_replaces_the_csv_the_agents_roll_and_no_node_does() {
    let started = std::time::Instant::now();
    let Installed {
        cluster,
        service,
        coordinator: mut old,
        first,
        agents,
    } = installed(true).await;
    let (mut agents, _hosts) = agents.unwrap();
    println!("{:?}: installed", started.elapsed());
    // Installed once each node is in the pool; the runtime label follows
    // the agent's next probe of the installed host.
    for label in [names::KATA_CAPABLE_LABEL, names::KATA_RUNTIME_LABEL] {
        eventually(&format!("every worker {label}"), CONVERGE, || async {
            Ok(cluster.nodes_with(label).await == NODES)
        })
        .await
        .unwrap();
    }
    println!(
        "{:?}: the agents' labels on every worker",
        started.elapsed()
    );
    let labels_kept = LabelWatch::start(&cluster.client, &NODES, names::KATA_RUNTIME_LABEL);
    let uid =
        live_deployment(&cluster, operands::OWNER_DEPLOYMENT).await["metadata"]["uid"].clone();
    wait_refused(&cluster, FIRST).await;

    // The upgrade: the next CSV runs, its Deployment updated in place, and
    // its pod replaces the old one (the old releases its lease on SIGTERM).
    let next = next_version(&first);
    install::run_csv(&cluster, &next).await;
    old.process
        .terminate(std::time::Duration::from_secs(20))
        .await
        .unwrap();
    let coordinator = CoordinatorPod::start(&cluster, &service, "kata-coordinator-2-a").await;
    let deployment = live_deployment(&cluster, operands::OWNER_DEPLOYMENT).await;
    assert_eq!(
        deployment["metadata"]["uid"], uid,
        "the same Deployment, updated"
    );
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["name"], NEXT);

    let ds = wait_daemon_set(&cluster, NEXT_NODE_AGENT).await;
    // It leads under the pod name the downward API gave it, on the Lease
    // the Deployment's `--leader-elect` asks for.
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        cluster.client.clone(),
        NAMESPACE,
    );
    let lease = leases.get("kata-operator-coordinator").await.unwrap();
    let holder = lease.spec.and_then(|spec| spec.holder_identity);
    assert_eq!(holder.as_deref(), Some("kata-coordinator-2-a"));
    assert_eq!(ds["metadata"]["ownerReferences"][0]["uid"], uid);
    assert_eq!(related_image(&next, "node-agent"), NEXT_NODE_AGENT);

    // The agents roll: the template changed, each pod is replaced by one
    // on the new image, and the new agents are the ones connected.
    println!("{:?}: the DaemonSet rolled", started.elapsed());
    let old_pods: Vec<String> = agents.running.values().map(|p| p.name.clone()).collect();
    assert_eq!(agents.roll(&cluster, &service).await, NODES.len());
    assert_eq!(agents.roll(&cluster, &service).await, 0, "rolled once");
    for pod in agents.running.values() {
        assert_eq!(pod.image, NEXT_NODE_AGENT);
        assert!(!old_pods.contains(&pod.name), "{} replaced", pod.name);
    }
    assert_agent_pods(&cluster, &agents).await;
    let connected = "kata_operator_connected_agents";
    eventually("the new agents connected", CONVERGE, || async {
        Ok(scrape_metric(coordinator.process.metrics, connected).await? == NODES.len() as f64)
    })
    .await
    .unwrap();
    println!("{:?}: the agents rolled", started.elapsed());

    // OLM's end of the upgrade: Replacing, then Deleting, then deleted.
    set_phase(&cluster, FIRST, "Deleting", "Replaced").await;
    delete_csv(&cluster, FIRST)
        .await
        .unwrap_or_else(|e| panic!("Deleting: {e}"));
    assert!(
        csvs(&cluster).get_opt(FIRST).await.unwrap().is_none(),
        "the replaced CSV gone"
    );

    reconcile_rounds(&cluster, &coordinator, 3).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    for kind in [
        mco::MACHINE_CONFIG.kind,
        mco::POOL.kind,
        mco::CONTAINER_RUNTIME_CONFIG.kind,
    ] {
        assert_eq!(
            writes(&coordinator, kind).await,
            0.0,
            "{kind} writes after the replace"
        );
    }
    assert!(
        writes(&coordinator, "DaemonSet").await >= 1.0,
        "the writes metric is read: the DaemonSet's roll counted"
    );
    assert_eq!(
        cluster.rollouts(&NODES),
        vec![1, 1],
        "no node rolled by the replace"
    );
    let missing = labels_kept.finish().await;
    assert!(missing.is_empty(), "runtime labels lost: {missing:?}");
}

/// The agents' Pods in the namespace are exactly the running ones, each
/// labelled with the template revision it was made from.
async fn assert_agent_pods(cluster: &Cluster, agents: &AgentPods) {
    let pods =
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(cluster.client.clone(), NAMESPACE);
    let listed = pods.list(&Default::default()).await.unwrap();
    let mut names: Vec<String> = listed
        .items
        .iter()
        .filter(|pod| pod.labels().contains_key(REVISION_LABEL))
        .map(|pod| pod.name_any())
        .collect();
    names.sort();
    let mut running: Vec<String> = agents.running.values().map(|p| p.name.clone()).collect();
    running.sort();
    assert_eq!(names, running);
}

/// The CSV running the operator cannot be deleted while the KataConfig
/// exists (an uninstall): refused with the policy's message, before and
/// after an upgrade, while the one it replaced goes in phase Replacing.
#[kata_test]
async fn an_uninstall_of_the_running_csv_is_refused_while_a_kataconfig_exists() {
    let Installed {
        cluster,
        first,
        coordinator: _coordinator,
        service: _service,
        ..
    } = installed(false).await;
    wait_refused(&cluster, FIRST).await;
    let message = delete_csv(&cluster, FIRST).await.expect_err("refused");
    println!("deleting the running CSV: {message}");
    assert!(
        message.contains(DELETE_FIRST) && message.contains("KataConfig kc"),
        "{message}"
    );
    assert!(
        csvs(&cluster).get_opt(FIRST).await.unwrap().is_some(),
        "it stays"
    );

    install::run_csv(&cluster, &next_version(&first)).await;
    let phase = &csvs(&cluster).get(FIRST).await.unwrap().data["status"]["phase"];
    assert_eq!(phase, "Replacing");
    delete_csv(&cluster, FIRST)
        .await
        .unwrap_or_else(|e| panic!("Replacing: {e}"));
    let message = delete_csv(&cluster, NEXT)
        .await
        .expect_err("the new CSV refused");
    assert!(message.contains(DELETE_FIRST), "{message}");
    assert!(
        csvs(&cluster).get_opt(NEXT).await.unwrap().is_some(),
        "the new CSV stays"
    );
}
