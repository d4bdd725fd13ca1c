//! Writes what the agents report onto the nodes: the capability and
//! runtime-ready labels and the `KataRuntimeReady` condition. Only the
//! coordinator writes them, only on change, and only while a KataConfig is
//! in force (during an uninstall the planner takes them away).
//!
//! The capable label changes only once the agent's verdict has held for a
//! dwell time ([`super::marks::eligibility`]); the dwells are timed here, in
//! memory, from the reports each scan sees. A restarted coordinator starts
//! them again, which can only delay a change, never make one.
//!
//! Before any capable label comes off, the fleet-wide brake
//! ([`super::marks::brake`]) looks at every leave due at the scan together,
//! and holds them all when too many nodes would leave at once.
//!
//! A label that must come off but another field manager also owns is
//! removed by JSON patch, and left (and reported) when that manager keeps
//! putting it back ([`super::marks::contest`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::node::CachedNode;
use futures::StreamExt;
use k8s_openapi::api::core::v1::NodeCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::marks;
use super::marks::brake::RecentRemovals;
use super::marks::contest::ContestPolicy;
use super::marks::eligibility::Dwell;
use super::marks::{
    CurrentMarks, MarkPolicy, NodeMarks, RUNTIME_LABEL_REMOVED, ReadyCondition, damped,
    runtime_label_removed_note, settled,
};
use super::registry::HealthRegistry;
use crate::api::KataConfig;
use crate::applier::{Applier, WriteError};
use crate::backend::CurrentHostConfig;
use crate::metrics::{Metrics, StateLabel};
use crate::node::kata_ready_condition;
use crate::status::ConditionStatus;
use crate::{names, status};

mod contest;
mod fleet;

pub use contest::{LABEL_CO_OWNED, LABEL_HELD};

/// How often marks are re-evaluated without a report (silence is noticed by
/// the clock, not by an event).
const TICK: Duration = Duration::from_secs(1);

fn current_condition(node: &CachedNode) -> Option<ReadyCondition> {
    let condition = kata_ready_condition(node)?;
    Some(ReadyCondition {
        ready: ConditionStatus::parse(&condition.status) == ConditionStatus::True,
        reason: condition.reason.clone().unwrap_or_default(),
        message: condition.message.clone().unwrap_or_default(),
    })
}

/// The writes one node needs.
struct NodeWrite {
    node: Arc<CachedNode>,
    /// The write takes the runtime-ready label away.
    removes_runtime_label: bool,
    /// The write takes the capable label away: the node leaves the pool.
    removes_capable_label: bool,
    labels: bool,
    condition: bool,
    marks: NodeMarks,
    /// Labels another field manager also owns, taken off by JSON patch
    /// ([`contest`]).
    patched: Vec<&'static str>,
    notices: Vec<contest::LabelNotice>,
}

/// Nodes written at once: a large cluster converges in a fraction of the
/// time one-by-one writes take, without flooding the API server.
const WRITE_CONCURRENCY: usize = 32;
/// Reports arrive all the time at scale; looking at every node on each one
/// would burn CPU for nothing, so scans are at least this far apart.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(200);

struct Labeller {
    registry: HealthRegistry,
    policy: MarkPolicy,
    started: Instant,
    metrics: Metrics,
    /// The host configuration each node ran at the last scan.
    configs_seen: HashMap<String, String>,
    /// Reads that configuration from a node's annotations.
    current_config: CurrentHostConfig,
    /// When each node last lost the runtime label, for the hold-down.
    removals: HashMap<String, Instant>,
    /// The nodes whose agent's verdict differs from their capable label,
    /// and since when.
    dwells: HashMap<String, Dwell>,
    /// Every node in the cache at the last scan: one gone since was deleted.
    nodes_seen: HashSet<String>,
    /// When capable labels came off, for the brake's window.
    capable_removals: RecentRemovals,
    /// The brake's decision at the last scan, to log when it changes.
    brake_engaged: bool,
    /// Writes the node marks and publishes the Events of label changes.
    applier: Applier,
    /// Labels another field manager also owns.
    contests: contest::Contests,
}

impl Labeller {
    /// What must be written to bring `node` to the marks its reports call
    /// for; `None` when it already carries them. Advances the node's dwell
    /// (every scan must, or a contrary report could go unseen); writes
    /// nothing: [`Self::note_removal`] records what the write will do.
    /// `explain`: a KataConfig in force checks node eligibility, so the
    /// capable label decides pool membership. `held`: nodes whose leave the
    /// brake holds; they keep the label, and their dwell.
    fn plan_node(
        &mut self,
        node: &Arc<CachedNode>,
        now: Instant,
        wall: SystemTime,
        explain: bool,
        held: &[String],
    ) -> Option<NodeWrite> {
        let name = node.name_any();
        let current = CurrentMarks::from_labels(node.labels(), current_condition(node));
        let (desired, mut capability, told) = self.capability(&name, &current, now, wall)?;
        let previous = self.dwells.get(&name).copied();
        self.track_dwell(&name, previous, capability.dwell);
        let braked = held.binary_search(&name).is_ok();
        if braked {
            capability.capable = true;
        }
        let mut desired = settled(desired, &current, capability, self.policy, explain);
        if braked && explain && !desired.condition.ready {
            desired.condition.message.push_str(
                "; held by the fleet-wide brake: too many nodes would leave at once (see the KataConfig's Degraded condition)",
            );
        }
        let desired = damped(
            desired,
            &current,
            self.removals.get(&name).copied(),
            now,
            self.policy,
        );
        let in_force = self.registry.profiles().get();
        let desired =
            marks::profiles_in_force(desired, &current, in_force.as_deref(), told.as_deref());
        let labels_change = desired.capable != current.capable
            || desired.runtime_ready != current.runtime_ready
            || desired.profiles != marks::current_profiles(&current, in_force.as_deref());
        let condition_change = current.condition.as_ref() != Some(&desired.condition);
        (labels_change || condition_change).then(|| NodeWrite {
            node: node.clone(),
            removes_runtime_label: current.runtime_ready && !desired.runtime_ready,
            removes_capable_label: current.capable && !desired.capable,
            labels: labels_change,
            condition: condition_change,
            marks: desired,
            patched: Vec::new(),
            notices: Vec::new(),
        })
    }

    fn track_dwell(&mut self, node: &str, previous: Option<Dwell>, dwell: Option<Dwell>) {
        match dwell {
            Some(running) => {
                if previous != Some(running) {
                    let wait = if running.toward {
                        self.policy.join_dwell
                    } else {
                        self.policy.leave_dwell
                    };
                    info!(
                        node,
                        capable = running.toward,
                        wait_seconds = wait.as_secs(),
                        "the node-agent's verdict differs from the capable label; the label follows if the verdict holds"
                    );
                }
                self.dwells.insert(node.to_owned(), running);
            }
            None => {
                if self.dwells.remove(node).is_some() {
                    tracing::debug!(node, "capability dwell ended");
                }
            }
        }
    }

    /// Drops the dwells of nodes that are gone (or no longer workers).
    fn forget_departed(&mut self, workers: &HashSet<String>) {
        self.dwells.retain(|node, _| workers.contains(node));
    }

    /// Forgets what is held of nodes deleted since the last scan, here and
    /// in the registry, so neither grows with every node the cluster ever
    /// had. Only a node once seen in the cache counts as deleted: before
    /// the cache's first list it is empty, and agents checking in then are
    /// kept.
    fn forget_deleted(&mut self, present: HashSet<String>) {
        let deleted = deleted_since(&self.nodes_seen, &present);
        if !deleted.is_empty() {
            tracing::debug!(nodes = ?deleted, "forgetting deleted nodes");
            self.registry.forget(deleted.iter().map(String::as_str));
        }
        self.removals.retain(|node, _| present.contains(node));
        self.configs_seen.retain(|node, _| present.contains(node));
        self.nodes_seen = present;
    }

    /// Starts the hold-down of a node about to lose the runtime label, and
    /// counts a capable label coming off for the brake.
    fn note_removal(&mut self, write: &NodeWrite, now: Instant) {
        if write.removes_runtime_label {
            self.removals.insert(write.node.name_any(), now);
        }
        if write.removes_capable_label {
            self.capable_removals.record(now);
        }
    }

    async fn apply_labels(&self, write: &NodeWrite) {
        let name = write.node.name_any();
        let marks = &write.marks;
        let mut written = self.remove_co_owned(write).await;
        if write.labels {
            match self.write_labels(&name, marks).await {
                Ok(()) => {
                    info!(node = %name, capable = marks.capable, runtime_ready = marks.runtime_ready, reason = ?marks.condition.reason, "node labels changed");
                }
                Err(error) => {
                    written = false;
                    warn!(node = %name, %error, "could not write the node's Kata labels");
                }
            }
        }
        if written && write.removes_runtime_label {
            self.announce_removal(write).await;
        }
    }

    /// Once per removal: the label is only written when it changes, and
    /// a restarted coordinator finds it already gone.
    async fn announce_removal(&self, write: &NodeWrite) {
        let event = Event {
            type_: EventType::Warning,
            reason: RUNTIME_LABEL_REMOVED.into(),
            note: Some(runtime_label_removed_note(&write.marks)),
            action: "Label".into(),
            secondary: None,
        };
        self.applier
            .publish(event, &write.node.object_ref(&()))
            .await;
    }

    async fn apply_condition(&self, write: &NodeWrite) {
        if let Err(error) = self
            .write_condition(&write.node, &write.marks.condition)
            .await
        {
            warn!(node = %write.node.name_any(), %error, "could not write the node's KataRuntimeReady condition");
        }
    }

    /// A node that just finished an update of its host configuration (new
    /// extension, new drop-in)
    /// is probed again at once instead of at the agent's next interval, so
    /// it becomes runtime-ready (or shows why not) without delay.
    fn reprobe_updated_nodes(&mut self, nodes: &Store<CachedNode>) {
        for node in nodes.state() {
            let Some(current) = (self.current_config)(node.annotations()) else {
                continue;
            };
            let name = node.name_any();
            let previous = self.configs_seen.insert(name.clone(), current.to_owned());
            if finished_update(previous.as_deref(), current) {
                let reason = format!("the node now runs {current}");
                let sent = self.registry.request_reprobe(&name, &reason);
                tracing::debug!(node = %name, sent, "asked the agent to probe again");
            }
        }
    }

    /// Connected agents, and worker nodes by the labels they carry.
    fn export_gauges(&self, nodes: &Store<CachedNode>) {
        // Within the grace: the agents whose nodes keep their labels.
        let connected = self
            .registry
            .connected_count(std::time::Instant::now(), self.policy.grace);
        self.metrics
            .connected_agents
            .set(i64::try_from(connected).unwrap_or(i64::MAX));
        let (mut ready, mut capable, mut other) = (0i64, 0i64, 0i64);
        for node in nodes
            .state()
            .iter()
            .filter(|n| n.labels().contains_key(names::WORKER_ROLE_LABEL))
        {
            let marks = CurrentMarks::from_labels(node.labels(), None);
            match (marks.runtime_ready, marks.capable) {
                (true, _) => ready += 1,
                (false, true) => capable += 1,
                (false, false) => other += 1,
            }
        }
        for (state, count) in [
            ("runtime-ready", ready),
            ("capable", capable),
            ("unknown-or-incapable", other),
        ] {
            self.metrics
                .nodes
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(count);
        }
    }

    async fn write_labels(&self, node: &str, marks: &NodeMarks) -> Result<(), WriteError> {
        let mut labels = serde_json::Map::new();
        if marks.capable {
            labels.insert(names::KATA_CAPABLE_LABEL.into(), "true".into());
        }
        if marks.runtime_ready {
            labels.insert(names::KATA_RUNTIME_LABEL.into(), "true".into());
        }
        for profile in &marks.profiles {
            labels.insert(crate::profiles::runtime_label(profile), "true".into());
        }
        // Applying without a label releases it: the health manager owns only
        // these and the profiles' labels, so nothing else on the node is
        // touched.
        self.applier
            .apply_node_labels(node, names::MANAGER_HEALTH, Some(labels))
            .await
    }

    async fn write_condition(
        &self,
        node: &CachedNode,
        condition: &ReadyCondition,
    ) -> Result<(), WriteError> {
        let status = ConditionStatus::from(condition.ready);
        let previous = kata_ready_condition(node).map(|p| {
            (
                ConditionStatus::parse(&p.status),
                p.last_transition_time.as_ref(),
            )
        });
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let last_transition_time = Some(status::transition_time(previous, status, &now));
        let condition = NodeCondition {
            type_: names::NODE_CONDITION.into(),
            status: status.as_str().into(),
            reason: Some(condition.reason.clone()),
            message: Some(condition.message.clone()),
            last_transition_time,
            last_heartbeat_time: None,
        };
        self.applier
            .apply_node_conditions(&node.name_any(), names::MANAGER_HEALTH, &[condition])
            .await
    }
}

/// Whether the node moved to another configuration since the last scan
/// (not merely seen for the first time).
fn finished_update(previous: Option<&str>, current: &str) -> bool {
    previous.is_some_and(|p| p != current)
}

/// The nodes in `seen` that are not `present`, in order.
fn deleted_since(seen: &HashSet<String>, present: &HashSet<String>) -> Vec<String> {
    let mut deleted: Vec<String> = seen.difference(present).cloned().collect();
    deleted.sort();
    deleted
}

/// Whether a KataConfig is in force: present and not being deleted.
fn kata_config_in_force(configs: &Store<KataConfig>) -> bool {
    configs
        .state()
        .iter()
        .any(|c| c.metadata.deletion_timestamp.is_none())
}

/// Whether a KataConfig in force installs only on capable nodes: then the
/// capable label decides pool membership.
fn eligibility_checked(configs: &Store<KataConfig>) -> bool {
    configs
        .state()
        .iter()
        .any(|c| c.metadata.deletion_timestamp.is_none() && c.spec.check_node_eligibility)
}

/// Runs until the process ends. `nodes` and `configs` are the KataConfig
/// controller's caches (kept by its watches); the labeller only reads them.
/// `current_config` is the backend's reading of a node's configuration.
pub async fn run(
    client: Client,
    registry: HealthRegistry,
    nodes: Store<CachedNode>,
    configs: Store<KataConfig>,
    policy: MarkPolicy,
    metrics: Metrics,
    current_config: CurrentHostConfig,
) {
    // No waiting on either store: kube's readiness signal wakes a single
    // waiter, and the controller is theirs. Until a first list completes a
    // store is simply empty (kube swaps the listed objects in at once), so
    // with no KataConfig in force the labeller writes nothing rather than
    // acting on part of the cluster.
    let applier = Applier::unbudgeted(client, metrics.api_writes.clone())
        .counting_mark_writes(metrics.label_writes.clone());
    let mut labeller = Labeller {
        registry: registry.clone(),
        policy,
        started: Instant::now(),
        metrics,
        removals: HashMap::new(),
        dwells: HashMap::new(),
        nodes_seen: HashSet::new(),
        capable_removals: RecentRemovals::default(),
        brake_engaged: false,
        configs_seen: HashMap::new(),
        current_config,
        applier,
        contests: contest::Contests::new(ContestPolicy::DEFAULT),
    };
    let mut changes = registry.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        labeller.forget_deleted(nodes.state().iter().map(|n| n.name_any()).collect());
        labeller.export_gauges(&nodes);
        let now = Instant::now();
        let in_force = kata_config_in_force(&configs);
        if in_force {
            labeller.reprobe_updated_nodes(&nodes);
        }
        // Planned with or without a KataConfig: the dwells run all the
        // same, so a node whose agent has long reported it capable is
        // labelled as soon as a KataConfig appears.
        let workers: Vec<Arc<CachedNode>> = nodes
            .state()
            .into_iter()
            .filter(|n| n.labels().contains_key(names::WORKER_ROLE_LABEL))
            .collect();
        let explain = eligibility_checked(&configs);
        let wall = SystemTime::now();
        let held = labeller.brake(&workers, now, wall).held;
        let mut writes: Vec<NodeWrite> = workers
            .iter()
            .filter_map(|n| labeller.plan_node(n, now, wall, explain, &held))
            .collect();
        labeller.forget_departed(&workers.iter().map(|n| n.name_any()).collect());
        labeller.contests.observe(&workers, now);
        if in_force {
            for write in &mut writes {
                labeller.contests.settle(write, now);
                labeller.note_removal(write, now);
            }
            writes.retain(NodeWrite::any);
            // Labels first, for every node: they decide where pods go. The
            // conditions, for people, follow.
            let labeller = &labeller;
            futures::stream::iter(writes.iter().filter(|w| w.labels || !w.patched.is_empty()))
                .for_each_concurrent(WRITE_CONCURRENCY, |write| labeller.apply_labels(write))
                .await;
            futures::stream::iter(writes.iter().filter(|w| !w.notices.is_empty()))
                .for_each_concurrent(WRITE_CONCURRENCY, |write| labeller.announce_contests(write))
                .await;
            futures::stream::iter(writes.iter().filter(|w| w.condition))
                .for_each_concurrent(WRITE_CONCURRENCY, |write| labeller.apply_condition(write))
                .await;
        }
        tokio::time::sleep_until((now + MIN_SCAN_INTERVAL).into()).await;
    }
}

#[cfg(test)]
mod tests;
