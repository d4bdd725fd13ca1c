//! The operator on a real node (kubelet, CRI-O, kube-scheduler and
//! kube-controller-manager, see `kata_tests::real_node`), the whole chain
//! with nothing set by the test: the coordinator (in this process, its TLS
//! health channel on the host's address on the node's bridge) creates the
//! node-agent DaemonSet from its own builder; the DaemonSet controller
//! makes the agent's pod, admitted by the operator's pod policy; the kubelet
//! runs it with its pod-bound token; the agent probes the real host and
//! checks in; the coordinator admits it (TokenReview, issuer keys, the
//! pod's existence, all against the real API server) and writes its
//! verdict onto the real Node. Kata cannot be installed here (see
//! `docs/testing.md`), so the verdict is negative, the node is not
//! labelled runtime-ready and a `kata` pod stays Pending. Over a window of
//! the kubelet's status writes, the coordinator writes nothing to the Node
//! and its condition survives them. Then the node is disrupted as nodes
//! are (the agent's pod deleted, the kubelet restarted, see
//! [`disruptions`]): the condition and labels survive both, with no Node
//! write and no rollout.
//!
//! One test function, so one node per run: the node is machine-global.
#![allow(clippy::unwrap_used)]

mod delivery;
mod disruptions;
mod operator;
mod window;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kata_coordinator::api::KataConfig;
use kata_coordinator::operands::node_agent::{self, AgentSettings};
use kata_coordinator::{names, objects};
use kata_test_harness::{kata_test, requirement};
use kata_tests::demo_world::node_states;
use kata_tests::http::{http_get, metric_value};
use kata_tests::pki::TestCa;
use kata_tests::real_node::{
    HOST_ON_BRIDGE, NODE_NAME, RealNode, STATUS_REPORT_FREQUENCY, kata_pod, left_behind,
    unavailable,
};
use kata_tests::{Error, eventually};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use operator::{AGENT_IMAGE, InProcessCoordinator, NAMESPACE};

const KATA_NAMESPACE: &str = "kata-pods";
const POD: &str = "sandboxed";
/// The scheduler and the kubelet act within seconds; a loaded CI machine
/// gets more.
const SETTLE: Duration = Duration::from_secs(90);
/// The coordinator's writes to Nodes.
const NODE_WRITES: &str = "kata_operator_api_writes_total{kind=\"Node\"}";
/// Where the agent serves its metrics in its pod (the manifest's port).
const AGENT_METRICS_PORT: u16 = 8090;
/// Labels the real node, as an admin would.
async fn label_node(client: &kube::Client, key: &str, value: &str) {
    let label = serde_json::json!({ "metadata": { "labels": { key: value } } });
    Api::<Node>::all(client.clone())
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
}

/// A wait's failure with the kubelet's and CRI-O's last words.
fn with_node_logs(node: &RealNode, failure: &Error) -> String {
    format!(
        "{failure}\n--- kubelet log (tail) ---\n{}\n--- crio log (tail) ---\n{}",
        node.log_tail("kubelet", 40),
        node.log_tail("crio", 20)
    )
}

/// The pod's PodScheduled condition, as (status, reason, message).
fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let condition = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    Some((
        condition.status.clone(),
        condition.reason.clone().unwrap_or_default(),
        condition.message.clone().unwrap_or_default(),
    ))
}

/// Waits until the shipped pod policy refuses what it must: a privileged
/// pod of the agent's ServiceAccount made by hand rather than by the
/// DaemonSet controller (a dry run: nothing is created). Admission
/// policies take effect a moment after they are created.
async fn pod_policy_in_force(client: &kube::Client) {
    let settings = AgentSettings {
        namespace: NAMESPACE.into(),
        image: AGENT_IMAGE.into(),
        coordinator_url: format!("https://{HOST_ON_BRIDGE}:8443"),
        host_root: "/".into(),
    };
    let template = &node_agent::daemon_set(&settings, None, None)["spec"]["template"];
    let by_hand = operator::hand_made_agent_pod(template);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the pod policy to refuse a hand-made agent pod", SETTLE, || {
        let (pods, by_hand, dry_run) = (pods.clone(), by_hand.clone(), dry_run.clone());
        async move {
            match pods.create(&dry_run, &by_hand).await {
                Ok(_) => Err("admitted".into()),
                Err(kube::Error::Api(e)) => Ok(e.message.contains(
                    "pods running as the kata-node-agent ServiceAccount are created only by the DaemonSet controller",
                )),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap();
}

/// Waits for the agent's pod, made by the DaemonSet controller from the
/// DaemonSet the coordinator wrote, to be Running and Ready on the node;
/// with `replacing`, a pod other than the one of that uid (which may still
/// be terminating).
async fn running_agent_pod(node: &RealNode, client: &kube::Client, replacing: Option<&str>) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = ListParams::default().labels("app.kubernetes.io/component=node-agent");
    let ready = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let candidates = || {
        let (pods, list) = (pods.clone(), list.clone());
        async move {
            let items = pods.list(&list).await.map_err(|e| e.to_string())?.items;
            let other =
                |pod: &Pod| replacing.is_none_or(|old| pod.metadata.uid.as_deref() != Some(old));
            Ok::<_, String>(items.into_iter().filter(other).collect::<Vec<_>>())
        }
    };
    let found = eventually("the node-agent's pod to be Ready", SETTLE, || async {
        let items = candidates().await?;
        Ok(items.len() == 1 && items.iter().all(ready))
    })
    .await;
    if let Err(e) = found {
        panic!("{}", with_node_logs(node, &e));
    }
    let pod = candidates().await.unwrap().remove(0);
    let owner = pod
        .metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
        .cloned()
        .unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DaemonSet", node_agent::NAME)
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    assert_eq!(spec.containers[0].image.as_deref(), Some(AGENT_IMAGE));
    pod
}

/// The last lines the agent's container logged, for failure messages.
async fn agent_log(client: &kube::Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let list = ListParams::default().labels("app.kubernetes.io/component=node-agent");
    let Ok(found) = pods.list(&list).await else {
        return "(no pods listed)".into();
    };
    let mut out = String::new();
    for pod in found.items {
        let name = pod.metadata.name.unwrap_or_default();
        let params = LogParams {
            tail_lines: Some(30),
            ..Default::default()
        };
        let log = pods.logs(&name, &params).await;
        out.push_str(&format!(
            "{name}:\n{}\n",
            log.unwrap_or_else(|e| e.to_string())
        ));
    }
    out
}

/// The agent's own metrics page, read over the node's bridge.
async fn agent_metrics(pod: &Pod) -> String {
    let ip: std::net::IpAddr = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .unwrap()
        .parse()
        .unwrap();
    let (status, body) = http_get(SocketAddr::new(ip, AGENT_METRICS_PORT), "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// The agent's metrics page once it has checked in (its first probe cycle
/// done and reported).
async fn agent_metrics_once_reported(pod: &Pod) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = agent_metrics(pod).await;
        if metric_value(&page, "kata_node_agent_reports_sent_total").unwrap_or(0.0) >= 1.0 {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never reported:\n{page}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the coordinator has written the agent's verdict onto the
/// Node: the `KataRuntimeReady` condition, and the capable label exactly
/// when the agent found the node KVM-capable (after the label's dwell).
/// Returns the condition.
async fn verdict_on_node(
    node: &RealNode,
    client: &kube::Client,
    coordinator: &InProcessCoordinator,
    kvm_capable: bool,
) -> (String, String, String) {
    let marked = eventually("the coordinator's marks on the node", SETTLE, || async {
        let states = node_states(client).await.map_err(|e| e.to_string())?;
        let state = states.into_iter().find(|s| s.name == NODE_NAME);
        let state = state.ok_or("no node")?;
        Ok(state.ready.is_some() && state.capable() == kvm_capable)
    })
    .await;
    if let Err(e) = marked {
        panic!(
            "{}\n--- node-agent log (tail) ---\n{}\n--- coordinator metrics ---\n{}",
            with_node_logs(node, &e),
            agent_log(client).await,
            coordinator.health_metrics().await
        );
    }
    let states = node_states(client).await.unwrap();
    let state = states.into_iter().find(|s| s.name == NODE_NAME).unwrap();
    assert!(!state.runtime_ready(), "{state:?}");
    state.ready.unwrap()
}

/// A `kata` pod, its overhead set by admission, held Pending by the
/// RuntimeClass's node selector: the node lacks the runtime label.
async fn kata_pod_pending(client: &kube::Client) -> Api<Pod> {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": KATA_NAMESPACE }
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    // The RuntimeClass exactly as the coordinator applies it. It creates
    // one itself only once every node is installed, which no node here
    // ever is; one that exists it keeps.
    Api::<RuntimeClass>::all(client.clone())
        .create(&PostParams::default(), &objects::runtime_class())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), KATA_NAMESPACE);
    let created = eventually("the namespace's default ServiceAccount", SETTLE, || {
        let pods = pods.clone();
        async move {
            match pods.create(&PostParams::default(), &kata_pod(POD)).await {
                Ok(_) => Ok(true),
                Err(e) => Err(e.to_string()),
            }
        }
    });
    created.await.unwrap();
    let pod = pods.get(POD).await.unwrap();
    let overhead = pod.spec.as_ref().unwrap().overhead.clone().unwrap();
    assert_eq!(
        overhead,
        BTreeMap::from([
            ("cpu".to_owned(), Quantity("250m".into())),
            ("memory".to_owned(), Quantity("350Mi".into())),
        ])
    );
    eventually(
        "the scheduler to find the kata pod unschedulable",
        SETTLE,
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(POD).await.map_err(|e| e.to_string())?;
                Ok(
                    scheduled_condition(&pod).is_some_and(|(status, reason, _)| {
                        status == "False" && reason == "Unschedulable"
                    }),
                )
            }
        },
    )
    .await
    .unwrap();
    pods
}

/// Asserts the kata pod is still Pending, unbound, for the node selector.
async fn still_pending(pods: &Api<Pod>) {
    let pod = pods.get(POD).await.unwrap();
    let (status, _, message) = scheduled_condition(&pod).unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("node affinity/selector"), "{message}");
    assert_eq!(pod.spec.as_ref().unwrap().node_name, None);
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
}

/// Waits until the coordinator's Node writes have stood still for a few
/// reads, so the window starts after its first marks, not during them.
async fn writes_settled(coordinator: &InProcessCoordinator) -> f64 {
    let mut last = coordinator.metric(NODE_WRITES).await.unwrap();
    let mut unchanged = 0;
    let deadline = Instant::now() + SETTLE;
    while unchanged < 5 {
        assert!(
            Instant::now() < deadline,
            "the coordinator kept writing Nodes: {last}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = coordinator.metric(NODE_WRITES).await.unwrap();
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    last
}

fn print_probes(title: &str, probes: &[(String, String, Option<String>)]) {
    println!("{title}");
    for (probe, status, reason) in probes {
        println!(
            "  {probe:16} {status:5} {}",
            reason.as_deref().unwrap_or("")
        );
    }
}

/// A probe's status and, for a FAIL, the reason it counted.
fn probe<'a>(
    probes: &'a [(String, String, Option<String>)],
    name: &str,
) -> (&'a str, Option<&'a str>) {
    probes
        .iter()
        .find(|(p, _, _)| p == name)
        .map_or(("", None), |(_, status, reason)| {
            (status.as_str(), reason.as_deref())
        })
}

/// The KataConfig, naming the RHCOS extension: the node's OS is Debian,
/// which the coordinator maps to no extension (it refuses the pool until
/// one is named, as it would on any OS it does not know).
async fn create_kataconfig(client: &kube::Client) {
    let config: KataConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": { "name": "cluster-kataconfig" },
        "spec": { "extension": "sandboxed-containers" },
    }))
    .unwrap();
    Api::<KataConfig>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

#[kata_test(
    requires(unavailable, operator::image_unavailable, requirement::kvm),
    exclusive(crio_socket),
    flavor = "multi_thread",
    worker_threads = 2
)]
async fn the_agent_pod_checks_in_the_node_gets_its_verdict_and_a_kata_pod_waits() {
    let started = Instant::now();
    let mut node = RealNode::start().await.unwrap();
    operator::build_agent_image(&node).unwrap();
    let client = node.client().await.unwrap();
    // Workers carry this role on a real cluster; the DaemonSet and the
    // coordinator's labeller select them.
    label_node(&client, names::WORKER_ROLE_LABEL, "").await;
    let ca = TestCa::new("kata-coordinator-ca").unwrap();
    operator::install(&node, &ca).await.unwrap();
    pod_policy_in_force(&client).await;

    let coordinator = InProcessCoordinator::start(client.clone(), &ca).unwrap();
    let agent = running_agent_pod(&node, &client, None).await;
    create_kataconfig(&client).await;
    let page = agent_metrics_once_reported(&agent).await;
    let probes = operator::probe_results(&page, None);
    print_probes(
        &format!(
            "the agent's probes in its pod (daemon mode, {}), CRI-O without the kata drop-in:",
            coordinator.url
        ),
        &probes,
    );
    // CRI-O started without the handler: the agent finds no drop-in and no
    // handler served, each for its own reason.
    assert_eq!(
        probe(&probes, "crio-drop-in"),
        ("fail", Some("HandlerNotConfigured")),
        "{page}"
    );
    assert_eq!(
        probe(&probes, "cri-handler"),
        ("fail", Some("HandlerNotServed")),
        "{page}"
    );
    let served = node.served_runtime_handlers().unwrap();
    assert!(
        !served.iter().any(|h| h == names::RUNTIME_HANDLER),
        "{served:?}"
    );

    // Read just before the delivery: the agent reports a changed probe in
    // the same turn as the cycle that saw it, so a report after this one
    // that comes with the probes OK is theirs.
    let reports_before_delivery = metric_value(
        &agent_metrics(&agent).await,
        "kata_node_agent_reports_sent_total",
    )
    .unwrap();
    delivery::kata_drop_in_delivered(&mut node, &client).await;
    let before_delivery = page;
    let page = delivery::agent_sees_the_handler(&node, &agent, reports_before_delivery).await;
    let probes = operator::probe_results(&page, Some(&before_delivery));
    print_probes(
        "the agent's probes once the MCO's daemon delivered the drop-in and CRI-O reloaded:",
        &probes,
    );
    let served = node.served_runtime_handlers().unwrap();
    println!(
        "runtime handlers the real CRI-O serves: {}",
        served.join(", ")
    );
    assert!(
        served.iter().any(|h| h == names::RUNTIME_HANDLER),
        "{served:?}"
    );
    println!(
        "checks on stand-ins: crio-drop-in and cri-handler (the coordinator's drop-in, served \
         by the real CRI-O, names the stand-in shim), kata-shim (the stand-in shim and a \
         configuration naming no hypervisor: it fails); every other probe ran on this machine \
         as it is"
    );

    let kvm_capable = metric_value(&page, "kata_node_agent_kvm_capable").unwrap() == 1.0;
    let (status, reason, message) =
        verdict_on_node(&node, &client, &coordinator, kvm_capable).await;
    println!(
        "KataRuntimeReady on {NODE_NAME}: {status} {reason}: {message}; capable {kvm_capable}"
    );
    let status_of = |name: &str| probe(&probes, name).0;
    // Real: /dev/kvm opened through the read-only host root. On the
    // stand-in shim: CRI-O's `kata` drop-in and the handler CRI-O serves.
    // Never Kata: the stand-in's shim configuration names no hypervisor.
    assert_eq!(status_of("kvm"), "ok", "{page}");
    assert_eq!(status_of("crio-drop-in"), "ok", "{page}");
    assert_eq!(status_of("cri-handler"), "ok", "{page}");
    assert_eq!(status_of("kata-shim"), "fail", "{page}");
    // The condition is the agent's first FAIL, in its probe order, with
    // the reason it counted.
    let (probe, _, first_reason) = probes.iter().find(|(_, s, _)| s == "fail").unwrap();
    assert_eq!(status, "False");
    assert_eq!(Some(&reason), first_reason.as_ref(), "{message}");
    assert!(message.starts_with(&format!("{probe}: ")), "{message}");

    let kata_pods = kata_pod_pending(&client).await;
    let setup = started.elapsed();
    let writes_before = writes_settled(&coordinator).await;
    // The counter counts: the condition (and the label, if any) was written.
    assert!(writes_before >= 1.0, "{writes_before}");
    let reports_before = metric_value(
        &agent_metrics(&agent).await,
        "kata_node_agent_reports_sent_total",
    )
    .unwrap();
    let seen = window::watch_node(&client).await.unwrap();
    let writes_after = coordinator.metric(NODE_WRITES).await.unwrap();
    let reports_after = metric_value(
        &agent_metrics(&agent).await,
        "kata_node_agent_reports_sent_total",
    )
    .unwrap();
    println!(
        "window {:?}: kubelet Ready heartbeats {}, Lease renewals {}, Node resourceVersions {}; \
         coordinator Node writes {writes_before} -> {writes_after}; agent reports {reports_before} -> {reports_after}",
        window::WINDOW,
        seen.ready_heartbeats.len(),
        seen.lease_renewals.len(),
        seen.resource_versions.len(),
    );
    // The kubelet wrote all along: about one status a report period.
    let expected = (window::WINDOW.as_secs() / STATUS_REPORT_FREQUENCY.as_secs()) as usize;
    assert!(seen.ready_heartbeats.len() >= expected / 2, "{seen:?}");
    assert!(seen.lease_renewals.len() >= expected / 2, "{seen:?}");
    assert!(seen.resource_versions.len() >= expected / 2, "{seen:?}");
    // The agent kept reporting (a heartbeat each 30 s), the coordinator
    // wrote nothing, and its condition was never lost or changed.
    assert!(
        reports_after >= reports_before + 2.0,
        "{reports_before} -> {reports_after}"
    );
    assert_eq!(writes_after, writes_before);
    assert_eq!(seen.kata_conditions.len(), 1, "{:?}", seen.kata_conditions);
    let kept = seen.kata_conditions[0].clone().unwrap();
    assert_eq!(kept.reason.as_deref(), Some(reason.as_str()));
    still_pending(&kata_pods).await;
    // The shipped pod shape held on a real kubelet all along: its liveness
    // probe passed and its memory limit was enough (no restart).
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let agent = pods
        .get(agent.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    let statuses = agent
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref());
    let restarts = statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0);

    // Disrupted as nodes are: the pod replaced, the kubelet restarted.
    let agent =
        disruptions::agent_pod_killed(&node, &client, &coordinator, &agent, operator::GRACE).await;
    disruptions::kubelet_restarted(&mut node, &client, &coordinator, &agent).await;
    still_pending(&kata_pods).await;
    coordinator.stop().await;
    println!(
        "set-up to the window: {setup:?}; whole test: {:?}",
        started.elapsed()
    );
    // The teardown (also run on a panic, unasserted then) leaves nothing:
    // no process, cgroup, bridge, mount or stand-in.
    drop(node);
    assert_eq!(left_behind(), Vec::<String>::new());
}
