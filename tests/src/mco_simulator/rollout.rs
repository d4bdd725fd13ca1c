//! Pool membership, the next step of each node's update, and pool status, as
//! the MCO's node controller and daemon decide them. Pure, but for the
//! drain ([`hold_undrained`]), whose verdict is the API server's.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    Condition, MASTER_POOL, NodeView, Pool, PoolConfiguration, PoolStatus, STATE_DEGRADED,
    STATE_DONE, STATE_UNRECONCILABLE, STATE_WORKING, WORKER_POOL, stamp_transitions,
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
    /// The node controller targets the node: it writes only `desiredConfig`
    /// (`pkg/controller/node/node_controller.go`); `state` stays `Done`.
    Target { config: String },
    /// The daemon sees a new `desiredConfig` and starts: state `Working`
    /// (it stages the OS update, then drains and reboots).
    Start { config: String },
    /// A daemon that failed earlier tries again: state back to `Working`.
    Retry { config: String },
    /// Drain and reboot are over: the node runs `config`, state `Done`.
    Finish { config: String },
    /// The update failed: state `Degraded` (or `Unreconcilable`) with `reason`.
    Fail { state: &'static str, reason: String },
}

/// A failure injected into a node's update: the daemon's state and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub state: &'static str,
    pub reason: String,
}

/// What [`plan_nodes`] needs besides the nodes.
pub struct RolloutInput<'a> {
    /// The pool's rendered config.
    pub target: &'a str,
    /// `maxUnavailable` as a count, or why the pool cannot update at all.
    pub max_unavailable: Result<usize, String>,
    pub paused: bool,
    /// Working nodes whose drain and reboot have taken long enough.
    pub reboot_over: &'a BTreeSet<String>,
    /// Node → how its update fails.
    pub faults: &'a BTreeMap<String, Fault>,
}

/// The next step of each of a pool's nodes. New targets are chosen in name
/// order and limited as the MCO limits them
/// (`getAllCandidateMachines`): `maxUnavailable` minus the unavailable nodes
/// minus the nodes failing to reach the target, and never a node that is not
/// Ready. The daemon's part (Working, Done, failures) goes on regardless.
pub fn plan_nodes(nodes: &[&NodeView], input: &RolloutInput) -> Vec<(String, NodeStep)> {
    let target = input.target;
    let failing = nodes
        .iter()
        .filter(|node| is_failing(node) && node.desired_config.as_deref() == Some(target))
        .count();
    // An unreadable maxUnavailable is an error in the node controller's
    // sync: no node is targeted, ever (`maxUnavailable` in node_controller.go).
    let mut capacity = input
        .max_unavailable
        .as_ref()
        .map_or(0, |max| *max)
        .saturating_sub(nodes.iter().filter(|node| is_unavailable(node)).count())
        .saturating_sub(failing);
    let mut sorted = nodes.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));

    let mut steps = Vec::new();
    for node in sorted {
        let fault = input.faults.get(&node.name);
        let desired = node.desired_config.clone();
        let step = if node.current_config.is_none() && desired.is_none() {
            Some(NodeStep::Adopt {
                config: target.to_owned(),
            })
        } else if node.in_state(STATE_WORKING) {
            let desired = desired.unwrap_or_else(|| target.to_owned());
            input.reboot_over.contains(&node.name).then(|| match fault {
                Some(fault) => NodeStep::Fail {
                    state: fault.state,
                    reason: fault.reason.clone(),
                },
                None => NodeStep::Finish { config: desired },
            })
        } else if node.in_state(STATE_DONE) && desired.is_some() && desired != node.current_config {
            // The daemon's turn: it picks up what the controller wrote.
            desired.map(|config| NodeStep::Start { config })
        } else if desired.as_deref() != Some(target) {
            (!input.paused && capacity > 0 && node.ready && !is_failing(node)).then(|| {
                capacity -= 1;
                NodeStep::Target {
                    config: target.to_owned(),
                }
            })
        } else if is_failing(node) && fault.is_none() {
            // A failed daemon retries once its fault is gone, not before.
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

/// The drain before each reboot, as the MCO's drain controller runs it:
/// the node's pods are evicted through the Eviction API, and a node whose
/// pods cannot all be evicted stays `Working` (the drain retries) until they
/// can. Returns the nodes of `reboot_over` whose drain is done.
///
/// The API server decides: it refuses (429) an eviction that a
/// PodDisruptionBudget selecting the pod does not allow, from the budget's
/// `status.disruptionsAllowed` (no controller manager runs in the tests, so
/// a test writes that status itself). Asking it, rather than matching
/// budgets to pods here, follows the real rule rather than a copy of it.
/// Without any budget in the cluster no eviction is refused, and the pods
/// are left alone: no other test relies on a drain removing pods, and none
/// pays a request for it.
/// Each request is told to `count` (verb, resource, subresource), so the
/// simulator's own requests can be told from the coordinator's.
pub async fn hold_undrained(
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    reboot_over: BTreeSet<String>,
    count: &impl Fn(&str, &str, &str),
) -> Result<BTreeSet<String>, kube::Error> {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    if reboot_over.is_empty() {
        return Ok(reboot_over);
    }
    let client = nodes.clone().into_client();
    count("LIST", "poddisruptionbudgets", "");
    let budgets = kube::Api::<PodDisruptionBudget>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await?;
    if budgets.items.is_empty() {
        return Ok(reboot_over);
    }
    let mut drained = BTreeSet::new();
    for node in reboot_over {
        if evict_all(&client, &node, count).await? {
            drained.insert(node);
        }
    }
    Ok(drained)
}

/// Evicts every pod the drain evicts from `node`; whether all are gone.
async fn evict_all(
    client: &kube::Client,
    node: &str,
    count: &impl Fn(&str, &str, &str),
) -> Result<bool, kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    use kube::api::{DeleteParams, EvictParams, ListParams};
    count("LIST", "pods", "");
    let pods = kube::Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut all_evicted = true;
    for pod in &pods.items {
        let daemon_set = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
        let mirror = pod
            .annotations()
            .contains_key("kubernetes.io/config.mirror");
        if daemon_set || mirror || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let api =
            kube::Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        // No kubelet runs to finish a graceful deletion: the pod goes at once.
        let params = EvictParams {
            delete_options: Some(DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            }),
            ..EvictParams::default()
        };
        count("POST", "pods", "eviction");
        match api.evict(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 429 => all_evicted = false,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(all_evicted)
}

/// `maxUnavailable` as a node count (`maxUnavailable` in
/// node_controller.go, intstr's GetScaledValueFromIntOrPercent): an integer,
/// or a percentage of the pool rounded down; 0 means 1. A string without `%`
/// (`"2"`) is an error: the pool never updates.
pub fn max_unavailable(value: Option<&IntOrString>, machine_count: usize) -> Result<usize, String> {
    let count = match value {
        None => 1,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => {
            let percent = s
                .strip_suffix('%')
                .and_then(|p| p.parse::<usize>().ok())
                .ok_or_else(|| format!("maxUnavailable: invalid value for IntOrString: invalid type: string is not a percentage: {s:?}"))?;
            percent * machine_count / 100
        }
    };
    Ok(count.max(1))
}

/// The MCO's `isNodeDone`: at its desired config and its daemon idle.
fn is_done(node: &NodeView) -> bool {
    node.current_config.is_some()
        && node.current_config == node.desired_config
        && node.in_state(STATE_DONE)
}

/// The daemon gave up on its desired config: `Degraded` or `Unreconcilable`.
fn is_failing(node: &NodeView) -> bool {
    node.in_state(STATE_DEGRADED) || node.in_state(STATE_UNRECONCILABLE)
}

/// The MCO's unavailable node (`layered_node_state.go`): not Ready, or not
/// done and not failing — a node just given a new desiredConfig counts, so
/// does one with no annotations at all.
fn is_unavailable(node: &NodeView) -> bool {
    !node.ready || (!is_done(node) && !is_failing(node))
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
    let degraded: Vec<&&NodeView> = nodes.iter().filter(|n| is_failing(n)).collect();
    let all_updated = target.is_some() && updated == machine_count;
    let target_name = target.unwrap_or_default();
    let render_message = input
        .render_error
        .map(|e| {
            format!(
                "Failed to render configuration for pool {}: {e}",
                input.pool.name()
            )
        })
        .unwrap_or_default();

    // In the default feature set the reasons come from MachineConfigNodes,
    // which are off: NodeDegraded and Degraded carry an empty message, and
    // the nodes' reason annotations are the only place a reason is written
    // (`pkg/controller/node/status.go`). A node in two custom pools is only
    // logged, never reported.
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
            "",
        ),
        Condition::new(
            "Degraded",
            !degraded.is_empty() || input.render_error.is_some(),
            "",
            "",
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
            // `{}` selects no node (`pkg/helpers/helpers.go`).
            pool("everything", json!({}), json!({})),
        ]
    }

    fn input<'a>(
        reboot_over: &'a BTreeSet<String>,
        faults: &'a BTreeMap<String, Fault>,
    ) -> RolloutInput<'a> {
        RolloutInput {
            target: "r2",
            max_unavailable: Ok(1),
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
    fn new_nodes_are_adopted_and_stale_ones_targeted_one_at_a_time() {
        let nodes = [
            node("a", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
            node("new", &[], None, None, None),
        ];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        // The unannotated node counts as unavailable (`layered_node_state.go`)
        // while it is adopted: nobody else is targeted in the same pass.
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "new".to_owned(),
                NodeStep::Adopt {
                    config: "r2".into()
                }
            )]
        );
        let adopted = node("new", &[], Some("r2"), Some("r2"), Some(STATE_DONE));
        let refs = [&nodes[0], &nodes[1], &adopted];
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "a".to_owned(),
                NodeStep::Target {
                    config: "r2".into()
                }
            )]
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
            max_unavailable: Ok(2),
            ..input(&not_over, &faults)
        };
        assert_eq!(
            plan_nodes(&refs, &two),
            [(
                "b".to_owned(),
                NodeStep::Target {
                    config: "r2".into()
                }
            )]
        );
    }

    #[test]
    fn the_controller_only_targets_and_the_daemon_then_starts() {
        let targeted = [
            node("a", &[], Some("r1"), Some("r2"), Some(STATE_DONE)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
        ];
        let refs: Vec<&NodeView> = targeted.iter().collect();
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "a".to_owned(),
                NodeStep::Start {
                    config: "r2".into()
                }
            )],
            "a just-targeted node is unavailable: b waits"
        );
    }

    #[test]
    fn unready_and_unannotated_nodes_count_as_unavailable_and_unready_ones_are_never_targeted() {
        let mut unready = node("a", &[], Some("r1"), Some("r1"), Some(STATE_DONE));
        unready.ready = false;
        let idle = node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE));
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        let refs = [&unready, &idle];
        assert!(
            plan_nodes(&refs, &input(&over, &faults)).is_empty(),
            "the unready node uses up maxUnavailable 1"
        );
        let two = RolloutInput {
            max_unavailable: Ok(2),
            ..input(&over, &faults)
        };
        assert_eq!(
            plan_nodes(&refs, &two),
            [(
                "b".to_owned(),
                NodeStep::Target {
                    config: "r2".into()
                }
            )],
            "never the unready one"
        );
        let blank = NodeView {
            current_config: Some("r1".into()),
            ..node("c", &[], None, None, None)
        };
        assert!(is_unavailable(&blank));
    }

    #[test]
    fn a_fault_degrades_the_node_which_blocks_the_pool_until_cleared() {
        let working = [
            node("a", &[], Some("r1"), Some("r2"), Some(STATE_WORKING)),
            node("b", &[], Some("r1"), Some("r1"), Some(STATE_DONE)),
        ];
        let refs: Vec<&NodeView> = working.iter().collect();
        let over = BTreeSet::from(["a".to_owned()]);
        let faults = BTreeMap::from([(
            "a".to_owned(),
            Fault {
                state: STATE_DEGRADED,
                reason: "disk on fire".into(),
            },
        )]);
        assert_eq!(
            plan_nodes(&refs, &input(&over, &faults)),
            [(
                "a".to_owned(),
                NodeStep::Fail {
                    state: STATE_DEGRADED,
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
    fn max_unavailable_reads_integers_and_percentages_and_refuses_bare_strings() {
        assert_eq!(max_unavailable(None, 10), Ok(1));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(0)), 10), Ok(1));
        assert_eq!(max_unavailable(Some(&IntOrString::Int(3)), 10), Ok(3));
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("25%".into())), 10),
            Ok(2)
        );
        assert_eq!(
            max_unavailable(Some(&IntOrString::String("10%".into())), 5),
            Ok(1)
        );
        assert!(max_unavailable(Some(&IntOrString::String("2".into())), 5).is_err());
        let nodes = [node("a", &[], Some("r1"), Some("r1"), Some(STATE_DONE))];
        let refs: Vec<&NodeView> = nodes.iter().collect();
        let (over, faults) = (BTreeSet::new(), BTreeMap::new());
        let refused = RolloutInput {
            max_unavailable: max_unavailable(Some(&IntOrString::String("2".into())), 1),
            ..input(&over, &faults)
        };
        assert!(
            plan_nodes(&refs, &refused).is_empty(),
            "the pool never updates"
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
            "",
            "the default feature set writes no reason into the pool"
        );
        assert_eq!(
            condition(&status, "NodeDegraded").reason,
            "1 nodes are reporting degraded status on sync"
        );
        assert_eq!(condition(&status, "Degraded").message, "");
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
            condition(&again, "RenderDegraded")
                .message
                .contains("bad extension")
        );
        assert_eq!(condition(&again, "Degraded").status, "True");
    }
}
