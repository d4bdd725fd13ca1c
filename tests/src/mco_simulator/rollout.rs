//! Pool membership, the next step of each node's update, and pool status, as
//! the MCO's node controller and daemon decide them. Pure.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    Condition, MASTER_POOL, NodeView, Pool, PoolConfiguration, PoolStatus, STATE_DEGRADED,
    STATE_DONE, STATE_WORKING, WORKER_POOL, stamp_transitions,
};
use super::render::selects;

/// Which pool each node belongs to.
#[derive(Debug, Default, PartialEq)]
pub struct Membership {
    /// Node name → its pool.
    pub pool_of: BTreeMap<String, String>,
    /// Nodes the MCO refuses to manage because they match several custom
    /// pools: node name → those pools.
    pub conflicts: BTreeMap<String, Vec<String>>,
}

impl Membership {
    pub fn nodes_of<'a>(&self, pool: &str, nodes: &'a [NodeView]) -> Vec<&'a NodeView> {
        nodes
            .iter()
            .filter(|node| self.pool_of.get(&node.name).is_some_and(|p| p == pool))
            .collect()
    }

    pub fn conflicts_of(&self, pool: &str) -> Vec<(&str, usize)> {
        self.conflicts
            .iter()
            .filter(|(_, pools)| pools.iter().any(|p| p == pool))
            .map(|(node, pools)| (node.as_str(), pools.len()))
            .collect()
    }
}

/// The MCO's `getPoolsForNode`: one custom pool wins over `worker`; `master`
/// wins over a custom pool; two custom pools leave the node unmanaged.
pub fn membership(pools: &[Pool], nodes: &[NodeView]) -> Membership {
    let mut membership = Membership::default();
    for node in nodes {
        let matching: Vec<&str> = pools
            .iter()
            .filter(|pool| selects(pool.spec.node_selector.as_ref(), &node.labels))
            .map(Pool::name)
            .collect();
        let custom: Vec<&str> = matching
            .iter()
            .copied()
            .filter(|p| *p != MASTER_POOL && *p != WORKER_POOL)
            .collect();
        let pool = if custom.len() > 1 {
            membership.conflicts.insert(
                node.name.clone(),
                custom.iter().map(|p| (*p).to_owned()).collect(),
            );
            None
        } else if matching.contains(&MASTER_POOL) {
            Some(MASTER_POOL)
        } else {
            custom
                .first()
                .copied()
                .or_else(|| matching.contains(&WORKER_POOL).then_some(WORKER_POOL))
        };
        if let Some(pool) = pool {
            membership
                .pool_of
                .insert(node.name.clone(), pool.to_owned());
        }
    }
    membership
}

/// What happens to a node next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStep {
    /// A node that never had a config is installed at the pool's.
    Adopt { config: String },
    /// The controller targets the node and its daemon starts: `desiredConfig`
    /// set, state `Working` (the daemon stages the OS update, then drains).
    Start { config: String },
    /// A daemon that failed earlier tries again: state back to `Working`.
    Retry { config: String },
    /// Drain and reboot are over: the node runs `config`, state `Done`.
    Finish { config: String },
    /// The update failed: state `Degraded` with `reason`.
    Degrade { reason: String },
}

/// What [`plan_nodes`] needs besides the nodes.
pub struct RolloutInput<'a> {
    /// The pool's rendered config.
    pub target: &'a str,
    pub max_unavailable: usize,
    pub paused: bool,
    /// Working nodes whose drain and reboot have taken long enough.
    pub reboot_over: &'a BTreeSet<String>,
    /// Node → the reason its update fails with.
    pub faults: &'a BTreeMap<String, String>,
}

/// The next step of each of a pool's nodes. New targets are chosen in name
/// order and limited as the MCO limits them: `maxUnavailable` minus the
/// unavailable nodes minus the nodes failing to reach the target.
pub fn plan_nodes(nodes: &[&NodeView], input: &RolloutInput) -> Vec<(String, NodeStep)> {
    let target = input.target;
    let failing = nodes
        .iter()
        .filter(|node| {
            node.in_state(STATE_DEGRADED) && node.desired_config.as_deref() == Some(target)
        })
        .count();
    let mut capacity = input
        .max_unavailable
        .saturating_sub(nodes.iter().filter(|node| is_unavailable(node)).count())
        .saturating_sub(failing);
    let mut sorted = nodes.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    let mut steps = Vec::new();
    for node in sorted {
        let fault = input.faults.get(&node.name);
        // A Degraded daemon retries once its fault is gone, not before.
        let failing_still = node.in_state(STATE_DEGRADED) && fault.is_some();
        let step = if node.current_config.is_none() && node.desired_config.is_none() {
            Some(NodeStep::Adopt {
                config: target.to_owned(),
            })
        } else if node.in_state(STATE_WORKING) {
            let desired = node
                .desired_config
                .clone()
                .unwrap_or_else(|| target.to_owned());
            input.reboot_over.contains(&node.name).then(|| match fault {
                Some(reason) => NodeStep::Degrade {
                    reason: reason.clone(),
                },
                None => NodeStep::Finish { config: desired },
            })
        } else if node.desired_config.as_deref() != Some(target) {
            (!input.paused && capacity > 0).then(|| {
                capacity -= 1;
                NodeStep::Start {
                    config: target.to_owned(),
                }
            })
        } else if !is_done(node) && !failing_still {
            Some(NodeStep::Retry {
                config: target.to_owned(),
            })
        } else {
            None
        };
        steps.extend(step.map(|step| (node.name.clone(), step)));
    }
    steps
}

/// `maxUnavailable` as a node count: an integer or a percentage of the pool
/// rounded down; never less than one (the MCO's reading: 0 means 1).
pub fn max_unavailable(value: Option<&IntOrString>, machine_count: usize) -> usize {
    let count = match value {
        None => 1,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => match s.strip_suffix('%') {
            Some(percent) => percent
                .trim()
                .parse::<usize>()
                .map_or(1, |p| p * machine_count / 100),
            None => s.trim().parse().unwrap_or(1),
        },
    };
    count.max(1)
}

/// The MCO's `isNodeDone`: at its desired config and its daemon idle.
fn is_done(node: &NodeView) -> bool {
    node.current_config.is_some()
        && node.current_config == node.desired_config
        && node.in_state(STATE_DONE)
}

/// The MCO's `isNodeUnavailable`: not ready, or updating. A Degraded node is
/// not unavailable (its daemon is not working), but see `failing` above.
fn is_unavailable(node: &NodeView) -> bool {
    !node.ready || (!is_done(node) && node.in_state(STATE_WORKING))
}

fn is_updated(node: &NodeView, target: Option<&str>) -> bool {
    target.is_some() && node.current_config.as_deref() == target && is_done(node)
}

/// What the pool's status must say.
pub struct StatusInput<'a> {
    pub pool: &'a Pool,
    /// The pool's `spec.configuration`, once a render succeeded.
    pub target: Option<&'a PoolConfiguration>,
    pub nodes: &'a [&'a NodeView],
    /// Nodes left out because they match several custom pools, with how many.
    pub conflicts: &'a [(&'a str, usize)],
    pub render_error: Option<&'a str>,
    pub now: &'a Time,
}

/// The pool status the MCO would write (`calculateStatus`), with transition
/// times kept from the current status where a condition did not change.
pub fn pool_status(input: &StatusInput) -> PoolStatus {
    let target = input.target.map(|c| c.name.as_str());
    let nodes = input.nodes;
    let count = |f: &dyn Fn(&NodeView) -> bool| {
        i32::try_from(nodes.iter().filter(|n| f(n)).count()).unwrap_or(i32::MAX)
    };
    let machine_count = count(&|_| true);
    let updated = count(&|n| is_updated(n, target));
    let degraded: Vec<&&NodeView> = nodes
        .iter()
        .filter(|n| n.in_state(STATE_DEGRADED))
        .collect();
    let all_updated = target.is_some() && updated == machine_count;
    let target_name = target.unwrap_or_default();

    let node_degraded_message = degraded
        .iter()
        .map(|n| {
            format!(
                "Node {} is reporting: {:?}",
                n.name,
                n.reason.as_deref().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let render_message = input
        .render_error
        .map(|e| {
            format!(
                "Failed to render configuration for pool {}: {e}",
                input.pool.name()
            )
        })
        .unwrap_or_default();
    let conflict_message = input
        .conflicts
        .iter()
        .map(|(node, pools)| {
            format!("Node {node} belongs to {pools} custom roles, cannot proceed with this Node")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let degraded_message = [&node_degraded_message, &render_message, &conflict_message]
        .into_iter()
        .filter(|m| !m.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");

    let mut conditions = vec![
        Condition::new(
            "Updated",
            all_updated,
            "",
            if all_updated {
                format!("All nodes are updated with MachineConfig {target_name}")
            } else {
                String::new()
            },
        ),
        Condition::new(
            "Updating",
            !all_updated && target.is_some(),
            "",
            if all_updated {
                String::new()
            } else {
                format!("All nodes are updating to MachineConfig {target_name}")
            },
        ),
        Condition::new(
            "RenderDegraded",
            input.render_error.is_some(),
            "",
            render_message,
        ),
        Condition::new(
            "NodeDegraded",
            !degraded.is_empty(),
            if degraded.is_empty() {
                String::new()
            } else {
                format!(
                    "{} nodes are reporting degraded status on sync",
                    degraded.len()
                )
            },
            node_degraded_message,
        ),
        Condition::new(
            "Degraded",
            !degraded_message.is_empty(),
            "",
            degraded_message,
        ),
    ];
    let previous = &input.pool.status;
    stamp_transitions(&mut conditions, &previous.conditions, input.now);
    PoolStatus {
        machine_count,
        updated_machine_count: updated,
        ready_machine_count: count(&|n| is_updated(n, target) && n.ready),
        unavailable_machine_count: count(&|n| is_unavailable(n)),
        degraded_machine_count: i32::try_from(degraded.len()).unwrap_or(i32::MAX),
        observed_generation: input.pool.metadata.generation.unwrap_or_default(),
        configuration: if all_updated {
            input.target.cloned()
        } else {
            previous.configuration.clone()
        },
        conditions,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::mco_simulator::fixtures::{node, pool};

    const KATA_NODES: &str = "node-role.kubernetes.io/kata-oc";
    const WORKERS: &str = "node-role.kubernetes.io/worker";

    fn pools() -> Vec<Pool> {
        let by_label = |label: &str| json!({ "matchLabels": { label: "" } });
        vec![
            pool(
                "master",
                json!({}),
                by_label("node-role.kubernetes.io/master"),
            ),
            pool("worker", json!({}), by_label(WORKERS)),
            pool("kata-oc", json!({}), by_label(KATA_NODES)),
            pool("other", json!({}), by_label("example.com/other")),
        ]
    }

    fn input<'a>(
        reboot_over: &'a BTreeSet<String>,
        faults: &'a BTreeMap<String, String>,
    ) -> RolloutInput<'a> {
        RolloutInput {
            target: "r2",
            max_unavailable: 1,
            paused: false,
            reboot_over,
            faults,
        }
    }

    #[test]
    fn a_custom_pool_wins_over_worker_and_two_custom_pools_conflict() {
        let nodes = vec![
            node("w", &[WORKERS], None, None, None),
            node("k", &[WORKERS, KATA_NODES], None, None, None),
            node(
                "both",
                &[WORKERS, KATA_NODES, "example.com/other"],
                None,
                None,
                None,
            ),
            node(
                "m",
                &["node-role.kubernetes.io/master", KATA_NODES],
                None,
                None,
                None,
            ),
            node("none", &[], None, None, None),
        ];
        let membership = membership(&pools(), &nodes);
        let pool_of: Vec<(&str, &str)> = membership
            .pool_of
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_str()))
            .collect();
        assert_eq!(
            pool_of,
            [("k", "kata-oc"), ("m", "master"), ("w", "worker")]
        );
        assert_eq!(membership.conflicts_of("kata-oc"), [("both", 2)]);
        assert!(membership.conflicts_of("worker").is_empty());
    }

    #[test]
    fn new_nodes_are_adopted_and_stale_ones_started_one_at_a_time() {
        let nodes = [
            node("a", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
            node("new", &[], None, None, None),
        ];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        let steps = plan_nodes(&refs, &input(&over, &faults));
        assert_eq!(
            steps,
            [
                (
                    "a".to_owned(),
                    NodeStep::Start {
                        config: "r2".into()
                    }
                ),
                (
                    "new".to_owned(),
                    NodeStep::Adopt {
                        config: "r2".into()
                    }
                )
            ]
        );
    }

    #[test]
    fn a_working_node_blocks_others_until_its_reboot_is_over() {
        let nodes = [
            node("a", &[], Some("r1"), Some("r2"), Some(STATE_WORKING)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
        ];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let faults = BTreeMap::new();
        assert!(plan_nodes(&refs, &input(&BTreeSet::new(), &faults)).is_empty());
        let over = BTreeSet::from(["a".to_owned()]);
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "a".to_owned(),
                NodeStep::Finish {
                    config: "r2".into()
                }
            )]
        );
        let not_over = BTreeSet::new();
        let two = RolloutInput {
            max_unavailable: 2,
            ..input(&not_over, &faults)
        };
        assert_eq!(
            plan_nodes(&refs, &two),
            [(
                "b".to_owned(),
                NodeStep::Start {
                    config: "r2".into()
                }
            )]
        );
    }

    #[test]
    fn a_fault_degrades_the_node_which_blocks_the_pool_until_cleared() {
        let working = [
            node("a", &[], Some("r1"), Some("r2"), Some(STATE_WORKING)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
        ];
        let refs: Vec<&NodeView> = working.iter().collect();
        let over = BTreeSet::from(["a".to_owned()]);
        let faults = BTreeMap::from([("a".to_owned(), "disk on fire".to_owned())]);
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "a".to_owned(),
                NodeStep::Degrade {
                    reason: "disk on fire".into()
                }
            )]
        );

        let degraded = [
            node("a", &[], Some("r1"), Some("r2"), Some(STATE_DEGRADED)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
        ];
        let refs: Vec<&NodeView> = degraded.iter().collect();
        assert!(
            plan_nodes(&refs, &input(&over, &faults)).is_empty(),
            "a node failing this target uses up maxUnavailable"
        );
        let cleared = BTreeMap::new();
        assert_eq!(
            plan_nodes(&refs, &input(&over, &cleared)),
            [(
                "a".to_owned(),
                NodeStep::Retry {
                    config: "r2".into()
                }
            )]
        );
    }

    #[test]
    fn a_paused_pool_starts_nobody() {
        let nodes = [node("a", &[], Some("r1"), Some("r1"), Some(STATE_DONE))];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        assert!(
            plan_nodes(
                &refs,
                &RolloutInput {
                    paused: true,
                    ..input(&over, &faults)
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn max_unavailable_reads_integers_and_percentages() {
        assert_eq!(max_unavailable(None, 10), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 10), 1);
        assert_eq!(max_unavailable(Some(&IntOrString::Int(3)), 10), 3);
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("25%".into())), 10),
            2
        );
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("10%".into())), 5),
            1
        );
    }

    fn status_of(pool: &Pool, nodes: &[NodeView], render_error: Option<&str>) -> PoolStatus {
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let target = PoolConfiguration {
            name: "r2".into(),
            source: vec![],
        };
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        pool_status(&StatusInput {
            pool,
            target: Some(&target),
            nodes: &refs,
            conflicts: &[],
            render_error,
            now: &now,
        })
    }

    fn condition<'a>(status: &'a PoolStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn status_counts_nodes_and_names_the_degraded_one() {
        let mut pool = pool("kata-oc", json!({}), json!({}));
        pool.metadata.generation = Some(4);
        let mut unready = node("c", &[], Some("r2"), Some("r2"), Some(STATE_DONE));
        unready.ready = false;
        let nodes = [
            node("a", &[], Some("r2"), Some("r2"), Some(STATE_DONE)),
            NodeView {
                reason: Some("boom".into()),
                ..node("b", &[], Some("r1"), Some("r2"), Some(STATE_DEGRADED))
            },
            unready,
        ];
        let status = status_of(&pool, &nodes, None);
        let counts = (
            status.machine_count,
            status.updated_machine_count,
            status.ready_machine_count,
            status.unavailable_machine_count,
            status.degraded_machine_count,
        );
        assert_eq!(counts, (3, 2, 1, 1, 1));
        assert_eq!(status.observed_generation, 4);
        assert_eq!(status.configuration, None, "not every node is updated yet");
        assert_eq!(condition(&status, "Updated").status, "False");
        assert_eq!(
            condition(&status, "NodeDegraded").message,
            r#"Node b is reporting: "boom""#
        );
        assert_eq!(condition(&status, "Degraded").status, "True");
        assert_eq!(condition(&status, "RenderDegraded").status, "False");
    }

    #[test]
    fn an_updated_pool_reports_its_configuration_and_keeps_transition_times() {
        let mut pool = pool("kata-oc", json!({}), json!({}));
        let nodes = [node("a", &[], Some("r2"), Some("r2"), Some(STATE_DONE))];
        let first = status_of(&pool, &nodes, None);
        assert_eq!(condition(&first, "Updated").status, "True");
        assert_eq!(
            first.configuration.as_ref().map(|c| c.name.as_str()),
            Some("r2")
        );

        let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap());
        pool.status = first.clone();
        pool.status
            .conditions
            .iter_mut()
            .for_each(|c| c.last_transition_time = Some(earlier.clone()));
        let again = status_of(&pool, &nodes, Some("bad extension"));
        assert_eq!(
            condition(&again, "Updated").last_transition_time,
            Some(earlier.clone()),
            "unchanged status keeps its time"
        );
        assert_ne!(
            condition(&again, "RenderDegraded").last_transition_time,
            Some(earlier)
        );
        assert!(
            condition(&again, "Degraded")
                .message
                .contains("bad extension")
        );
    }
}
