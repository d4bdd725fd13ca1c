//! The node disrupted as a cluster disrupts its nodes: the agent's pod
//! deleted (its DaemonSet replaces it), and the kubelet stopped and started
//! again as a reboot restarts it (CRI-O and the pods keep running here). A
//! watch of the Node sees every version the API server stored meanwhile,
//! so the coordinator's condition is checked in each one, the restarted
//! kubelet's first status update included. Neither step may cost a Node
//! write the rules do not call for (the gap stays inside the grace and the
//! agent reports what it reported before, so they call for none) nor a
//! rollout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kata_coordinator::api::{KataConfig, OPERATOR_NODE_LABELS};
use kata_coordinator::kind::Kind;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_tests::eventually;
use kata_tests::http::metric_value;
use kata_tests::real_node::{NODE_NAME, RealNode};
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;

use super::operator::{InProcessCoordinator, NAMESPACE};
use super::{NODE_WRITES, SETTLE};

/// An agent's first report after it connects counts here whatever it
/// says; its heartbeats count under `kind="heartbeat"`.
const FIRST_REPORTS: &str = "kata_operator_reports_received_total{kind=\"report\"}";
/// Every report and heartbeat the coordinator took.
const ALL_REPORTS: &str = "kata_operator_reports_received_total";

/// One version of the Node, as far as the steps care.
#[derive(Clone, Debug)]
struct NodeVersion {
    resource_version: String,
    /// The kubelet's Ready condition: its status and heartbeat.
    ready: Option<(String, Option<Time>)>,
    kata: Option<NodeCondition>,
    /// The operator's labels, the worker role and the MCO's annotations
    /// (a rollout would set those), with their values.
    marks: BTreeMap<String, String>,
}

impl NodeVersion {
    fn of(node: &Node) -> Self {
        let find = |type_: &str| super::window::condition(node, type_);
        let labels = OPERATOR_NODE_LABELS
            .iter()
            .chain([&names::WORKER_ROLE_LABEL])
            .filter_map(|key| Some((*key, node.labels().get(*key)?)));
        let annotations = mco::NODE_ANNOTATIONS
            .iter()
            .filter_map(|key| Some((*key, node.annotations().get(*key)?)));
        NodeVersion {
            resource_version: node.resource_version().unwrap_or_default(),
            ready: find("Ready").map(|c| (c.status, c.last_heartbeat_time)),
            kata: find(names::NODE_CONDITION),
            marks: labels
                .chain(annotations)
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect(),
        }
    }

    /// Whether the kubelet wrote this version after it wrote `heartbeat`.
    fn heartbeat_after(&self, heartbeat: Option<&Time>) -> bool {
        let written = self.ready.as_ref().and_then(|(_, h)| h.as_ref());
        written.is_some_and(|h| heartbeat.is_none_or(|before| h > before))
    }

    fn ready(&self) -> bool {
        self.ready
            .as_ref()
            .is_some_and(|(status, _)| status == "True")
    }
}

/// Every version of the Node a watch delivers, in order.
struct NodeHistory {
    versions: Arc<Mutex<Vec<NodeVersion>>>,
    task: JoinHandle<()>,
}

impl NodeHistory {
    /// Starts watching and waits for the version current now.
    async fn start(client: &Client) -> Self {
        let nodes: Api<Node> = Api::all(client.clone());
        let config = watcher::Config::default().fields(&format!("metadata.name={NODE_NAME}"));
        let versions = Arc::new(Mutex::new(Vec::<NodeVersion>::new()));
        let into = versions.clone();
        let task = tokio::spawn(async move {
            // With a backoff the watch resumes after an error: a version
            // stored while it was down is missed, the next one is not.
            let events = watcher(nodes, config).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event
                else {
                    continue;
                };
                let version = NodeVersion::of(&node);
                let mut all = into.lock().unwrap_or_else(PoisonError::into_inner);
                if all.last().map(|v| &v.resource_version) != Some(&version.resource_version) {
                    all.push(version);
                }
            }
        });
        let history = NodeHistory { versions, task };
        history
            .wait_for("the Node's current version", |_| true)
            .await;
        history
    }

    fn versions(&self) -> Vec<NodeVersion> {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for a version that satisfies `check` and returns the first.
    async fn wait_for(&self, what: &str, check: impl Fn(&NodeVersion) -> bool) -> NodeVersion {
        let found = || self.versions().into_iter().find(|v| check(v));
        let seen = eventually(what, SETTLE, || async { Ok(found().is_some()) }).await;
        if let Err(e) = seen {
            panic!("{e}\nversions seen: {:#?}", self.versions());
        }
        found().unwrap_or_else(|| unreachable!("seen just now"))
    }
}

impl Drop for NodeHistory {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a rollout would move: the coordinator's writes to the MCO
/// backend's objects, and those objects' versions (`None`: absent).
#[derive(Debug, PartialEq)]
struct RolloutObjects {
    machine_config_writes: f64,
    pool_writes: f64,
    machine_config: Option<String>,
    pool: Option<String>,
}

impl RolloutObjects {
    async fn read(client: &Client, coordinator: &InProcessCoordinator) -> Self {
        let writes = |kind: Kind| async move {
            let series = format!("kata_operator_api_writes_total{{kind=\"{}\"}}", kind.kind);
            coordinator.metric(&series).await.unwrap()
        };
        RolloutObjects {
            machine_config_writes: writes(mco::MACHINE_CONFIG).await,
            pool_writes: writes(mco::POOL).await,
            machine_config: version_of(client, mco::MACHINE_CONFIG, mco::MACHINE_CONFIG_NAME).await,
            pool: version_of(client, mco::POOL, mco::POOL_NAME).await,
        }
    }
}

async fn version_of(client: &Client, kind: Kind, name: &str) -> Option<String> {
    let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
    api.get_opt(name)
        .await
        .unwrap()
        .and_then(|o| o.metadata.resource_version)
}

/// Asserts what neither step may change: the condition and the marks in
/// every version of the Node seen, and the rollout's objects.
fn assert_kept(step: &str, versions: &[NodeVersion], rollout: (&RolloutObjects, &RolloutObjects)) {
    let first = &versions[0];
    assert!(
        first.kata.is_some(),
        "{step}: no condition to keep: {first:?}"
    );
    for version in versions {
        assert_eq!(
            version.kata, first.kata,
            "{step}: the condition changed in version {}",
            version.resource_version
        );
        assert_eq!(
            version.marks, first.marks,
            "{step}: the labels or MCO annotations changed in version {}",
            version.resource_version
        );
    }
    assert_eq!(rollout.1, rollout.0, "{step}: a rollout's objects moved");
}

/// The KataConfig's conditions, `type=status/reason` each: what the
/// coordinator made of the install, for the step's output.
async fn kataconfig_conditions(client: &Client) -> String {
    let configs = Api::<KataConfig>::all(client.clone());
    let config = configs.get_opt("cluster-kataconfig").await.ok().flatten();
    let status = config.and_then(|c| c.status);
    let conditions = status.map(|s| s.conditions).unwrap_or_default();
    let shown: Vec<String> = conditions
        .iter()
        .map(|c| format!("{}={}/{}", c.type_, c.status, c.reason))
        .collect();
    shown.join(" ")
}

fn container_id(pod: &Pod) -> String {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_deref());
    let first = statuses.unwrap_or_default().first();
    first
        .and_then(|s| s.container_id.clone())
        .unwrap_or_default()
}

/// Deletes the agent's pod: the DaemonSet controller makes another, the
/// kubelet runs it, its agent checks in (its first report counted at the
/// coordinator). The node's condition and labels stay as they were in
/// every version of the Node meanwhile, the coordinator writes no Node and
/// nothing of a rollout. Returns the new pod.
pub(super) async fn agent_pod_killed(
    node: &RealNode,
    client: &Client,
    coordinator: &InProcessCoordinator,
    agent: &Pod,
    grace: Duration,
) -> Pod {
    let writes_before = coordinator.metric(NODE_WRITES).await.unwrap();
    let reports_before = coordinator.metric(FIRST_REPORTS).await.unwrap();
    let rollout_before = RolloutObjects::read(client, coordinator).await;
    let history = NodeHistory::start(client).await;
    let started = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let old_uid = agent.metadata.uid.clone().unwrap();
    pods.delete(&agent.name_any(), &DeleteParams::default())
        .await
        .unwrap();
    let replacement = super::running_agent_pod(node, client, Some(&old_uid)).await;
    let replaced = started.elapsed();
    let checked_in = eventually(
        "the new agent's first report at the coordinator",
        SETTLE,
        || async { Ok(coordinator.metric(FIRST_REPORTS).await? > reports_before) },
    )
    .await;
    if let Err(e) = checked_in {
        panic!(
            "{e}\n--- node-agent log (tail) ---\n{}\n--- coordinator metrics ---\n{}",
            super::agent_log(client).await,
            coordinator.health_metrics().await
        );
    }
    let checked_in = started.elapsed();
    // The report came from the new pod's agent.
    let page = super::agent_metrics_once_reported(&replacement).await;
    let sent = metric_value(&page, "kata_node_agent_reports_sent_total").unwrap();
    // Time for a write the check-in would cause to happen.
    let writes_after = super::writes_settled(coordinator).await;
    let rollout_after = RolloutObjects::read(client, coordinator).await;
    let versions = history.versions();
    let reports_after = coordinator.metric(FIRST_REPORTS).await.unwrap();
    println!(
        "agent pod killed: replaced and Ready after {replaced:?}, checked in after {checked_in:?} \
         (grace {grace:?}); first reports at the coordinator {reports_before} -> {reports_after}, \
         the new agent sent {sent}; Node versions seen {}; coordinator Node writes \
         {writes_before} -> {writes_after}; step {:?}",
        versions.len(),
        started.elapsed()
    );
    println!(
        "  kept: labels and MCO annotations {:?}; {rollout_after:?}; KataConfig conditions: {}",
        versions[0].marks,
        kataconfig_conditions(client).await
    );
    assert_ne!(replacement.metadata.uid, agent.metadata.uid);
    assert_kept(
        &format!("agent replaced, checked in after {checked_in:?} (grace {grace:?})"),
        &versions,
        (&rollout_before, &rollout_after),
    );
    assert_eq!(writes_after, writes_before, "agent replaced: Node writes");
    replacement
}

/// Stops the kubelet and starts it again with CRI-O and the pods left
/// running, as a node's restarted kubelet finds them. The Node goes back
/// Ready, the agent's pod runs and its agent keeps reporting; the
/// coordinator's condition is in the restarted kubelet's first status
/// update and every version after, the labels stay, and nothing is
/// written to the Node or towards a rollout. Returns the agent's pod.
pub(super) async fn kubelet_restarted(
    node: &mut RealNode,
    client: &Client,
    coordinator: &InProcessCoordinator,
    agent: &Pod,
) -> Pod {
    let writes_before = coordinator.metric(NODE_WRITES).await.unwrap();
    let rollout_before = RolloutObjects::read(client, coordinator).await;
    let history = NodeHistory::start(client).await;
    let started = Instant::now();
    node.stop_kubelet();
    let stopped = started.elapsed();
    // The stopped kubelet's last heartbeat: a later one is the new kubelet's.
    let nodes: Api<Node> = Api::all(client.clone());
    let last = NodeVersion::of(&nodes.get(NODE_NAME).await.unwrap());
    let last_heartbeat = last.ready.as_ref().and_then(|(_, h)| h.clone());
    let reports_before = coordinator.metric(ALL_REPORTS).await.unwrap();
    node.start_kubelet().unwrap();
    let first_update = history
        .wait_for("the restarted kubelet's first status update", |v| {
            v.heartbeat_after(last_heartbeat.as_ref())
        })
        .await;
    let first_update_after = started.elapsed();
    history
        .wait_for("the Node Ready after the kubelet's restart", |v| {
            v.heartbeat_after(last_heartbeat.as_ref()) && v.ready()
        })
        .await;
    let ready_after = started.elapsed();
    let pod = super::running_agent_pod(node, client, None).await;
    // The agent still reaches the coordinator (a heartbeat each 30 s).
    let reporting = eventually("the agent's reports after the restart", SETTLE, || async {
        Ok(coordinator.metric(ALL_REPORTS).await? > reports_before)
    });
    reporting.await.unwrap();
    let reporting_after = started.elapsed();
    let writes_after = super::writes_settled(coordinator).await;
    let rollout_after = RolloutObjects::read(client, coordinator).await;
    let versions = history.versions();
    let ready_seen: Vec<&str> = versions
        .iter()
        .filter_map(|v| v.ready.as_ref().map(|(status, _)| status.as_str()))
        .collect();
    let restarts = |pod: &Pod| {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref());
        statuses
            .unwrap_or_default()
            .first()
            .map_or(0, |s| s.restart_count)
    };
    let same_container = container_id(&pod) == container_id(agent);
    println!(
        "kubelet restarted: stopped in {stopped:?}; its first status update after {first_update_after:?}, \
         Node Ready after {ready_after:?} (Ready in the versions seen: {}); agent pod {} \
         ({} container, restarts {} -> {}), reporting after {reporting_after:?}; \
         coordinator Node writes {writes_before} -> {writes_after}; step {:?}",
        ready_seen.join(" "),
        pod.name_any(),
        if same_container { "same" } else { "new" },
        restarts(agent),
        restarts(&pod),
        started.elapsed()
    );
    assert_eq!(
        pod.metadata.uid, agent.metadata.uid,
        "the pod outlived its kubelet"
    );
    assert_eq!(
        first_update.kata, versions[0].kata,
        "the condition in the restarted kubelet's first status update"
    );
    assert_kept(
        "kubelet restarted",
        &versions,
        (&rollout_before, &rollout_after),
    );
    assert_eq!(
        writes_after, writes_before,
        "kubelet restarted: Node writes"
    );
    pod
}
