//! The reconcile decision: from an observed snapshot of the cluster to the
//! steps that move it toward the KataConfig, and the status that describes
//! it. Pure: no client, no clock.
//!
//! Every step is derived from what is observed, never from remembered
//! progress, so a coordinator that stops after any write and starts again
//! picks up where the cluster is.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::api::{FailedNode, KataConfigSpec, KataNodesStatus, SelectorOperator};
use crate::names::{self, mco};
use crate::objects;
use crate::selector;

/// A node as the planner needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Whether the node carries our `KataRuntimeReady` condition.
    pub has_ready_condition: bool,
    /// `reason: message` of that condition when it is False.
    pub not_ready_reason: Option<String>,
}

impl ObservedNode {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    fn has_label(&self, key: &str) -> bool {
        self.labels.contains_key(key)
    }

    /// Whether the node runs (or last ran) a configuration rendered for our
    /// pool: it still has, or may still have, the extension.
    fn runs_kata_pool_config(&self) -> bool {
        self.annotation(mco::CURRENT_CONFIG)
            .is_some_and(|c| c.starts_with(&format!("rendered-{}-", names::POOL_NAME)))
    }
}

/// What the MCO says about the `kata-oc` pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedPool {
    /// `spec.configuration.name`: the rendered config nodes should reach.
    pub rendered_config: Option<String>,
    /// `spec.configuration.source[].name`: the MachineConfigs rendered into it.
    pub sources: Vec<String>,
    pub machine_count: i64,
}

impl ObservedPool {
    /// The rendered config that includes our MachineConfig, once the MCO has
    /// rendered it.
    fn config_with_extension(&self) -> Option<&str> {
        self.rendered_config
            .as_deref()
            .filter(|_| self.sources.iter().any(|s| s == names::MACHINE_CONFIG_NAME))
    }
}

/// Everything the planner looks at, gathered by the reconciler.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub spec: KataConfigSpec,
    pub deleting: bool,
    pub has_finalizer: bool,
    pub nodes: Vec<ObservedNode>,
    /// The objects we own, as the API server returns them (None: absent).
    pub pool_object: Option<Value>,
    pub pool: Option<ObservedPool>,
    pub machine_config: Option<Value>,
    pub runtime_class: Option<Value>,
    pub container_runtime_config: Option<Value>,
    /// `namespace/name` of pods using a RuntimeClass we own (only gathered
    /// while deleting).
    pub pods_using_kata: Vec<String>,
}

/// A write the reconciler performs, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    AddFinalizer,
    ApplyPool(Value),
    ApplyMachineConfig(Value),
    ApplyContainerRuntimeConfig(Value),
    DeleteContainerRuntimeConfig,
    /// Add (`true`) or remove the `kata-oc` role label.
    SetPoolRole {
        node: String,
        targeted: bool,
    },
    ApplyRuntimeClass(Value),
    DeleteRuntimeClass,
    DeleteMachineConfig,
    DeletePool,
    /// Remove every label and condition the operator put on the node.
    ClearNode {
        node: String,
    },
    RemoveFinalizer,
}

/// A condition before timestamps: type, status, reason, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionState {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub nodes: KataNodesStatus,
    pub runtime_classes: Vec<String>,
    pub conditions: Vec<ConditionState>,
    /// When to look again even without an event (a pool rolling, pods blocking).
    pub requeue_after: Option<Duration>,
}

/// Why the spec cannot be acted on, for the cases admission cannot refuse
/// (an older CRD, or a KataConfig stored before validation existed).
pub fn validate(spec: &KataConfigSpec) -> Result<(), String> {
    if spec.enable_peer_pods {
        return Err("enablePeerPods is not supported yet by this operator; set it to false".into());
    }
    for req in spec
        .kata_config_pool_selector
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
    {
        let has_values = req.values.as_ref().is_some_and(|v| !v.is_empty());
        match req.operator {
            SelectorOperator::In | SelectorOperator::NotIn if !has_values => {
                return Err(format!(
                    "kataConfigPoolSelector: operator {:?} on key {:?} needs at least one value",
                    req.operator, req.key
                ));
            }
            SelectorOperator::Exists | SelectorOperator::DoesNotExist if has_values => {
                return Err(format!(
                    "kataConfigPoolSelector: operator {:?} on key {:?} takes no values",
                    req.operator, req.key
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a node is a target: a worker matching the pool selector and, when
/// asked, proven capable by its agent.
pub fn is_target(spec: &KataConfigSpec, node: &ObservedNode) -> bool {
    node.has_label(names::WORKER_ROLE_LABEL)
        && selector::matches(spec.kata_config_pool_selector.as_ref(), &node.labels)
        && (!spec.check_node_eligibility
            || node
                .labels
                .get(names::KATA_CAPABLE_LABEL)
                .is_some_and(|v| v == "true"))
}

/// Where one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodePhase {
    Installed,
    Installing,
    WaitingToInstall,
    FailedToInstall(String),
    Uninstalling,
    WaitingToUninstall,
    FailedToUninstall(String),
    /// Not ours and not on our configuration.
    Untouched,
}

fn node_phase(node: &ObservedNode, targeted: bool, pool: Option<&ObservedPool>) -> NodePhase {
    let state = node.annotation(mco::STATE);
    let current = node.annotation(mco::CURRENT_CONFIG);
    let desired = node.annotation(mco::DESIRED_CONFIG);
    let reason = || {
        node.annotation(mco::REASON)
            .unwrap_or("the Machine Config Operator reports the node Degraded")
            .to_string()
    };
    if targeted {
        let Some(target_config) = pool.and_then(ObservedPool::config_with_extension) else {
            return NodePhase::WaitingToInstall;
        };
        if state == Some(mco::STATE_DEGRADED) {
            NodePhase::FailedToInstall(reason())
        } else if current == Some(target_config) && state == Some(mco::STATE_DONE) {
            NodePhase::Installed
        } else if desired == Some(target_config) {
            NodePhase::Installing
        } else {
            NodePhase::WaitingToInstall
        }
    } else if node.runs_kata_pool_config() {
        if state == Some(mco::STATE_DEGRADED) {
            NodePhase::FailedToUninstall(reason())
        } else if desired.is_some() && desired != current {
            NodePhase::Uninstalling
        } else {
            NodePhase::WaitingToUninstall
        }
    } else {
        NodePhase::Untouched
    }
}

fn node_status(phases: &[(String, NodePhase)], targets: usize) -> KataNodesStatus {
    let mut status = KataNodesStatus {
        node_count: i32::try_from(targets).unwrap_or(i32::MAX),
        ..Default::default()
    };
    for (name, phase) in phases {
        let name = name.clone();
        match phase {
            NodePhase::Installed => status.installed.push(name),
            NodePhase::Installing => status.installing.push(name),
            NodePhase::WaitingToInstall => status.waiting_to_install.push(name),
            NodePhase::FailedToInstall(error) => status.failed_to_install.push(FailedNode {
                name,
                error: error.clone(),
            }),
            NodePhase::Uninstalling => status.uninstalling.push(name),
            NodePhase::WaitingToUninstall => status.waiting_to_uninstall.push(name),
            NodePhase::FailedToUninstall(error) => status.failed_to_uninstall.push(FailedNode {
                name,
                error: error.clone(),
            }),
            NodePhase::Untouched => {}
        }
    }
    status.ready_node_count = i32::try_from(status.installed.len()).unwrap_or(i32::MAX);
    status
}

fn condition(
    type_: &'static str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> ConditionState {
    ConditionState {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

fn failed_list(failed: &[FailedNode]) -> String {
    failed
        .iter()
        .map(|f| format!("{}: {}", f.name, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Apply `desired` unless the observed object already has all of it.
fn apply_if_drifted(
    steps: &mut Vec<Step>,
    desired: Value,
    observed: Option<&Value>,
    step: fn(Value) -> Step,
) {
    if !observed.is_some_and(|o| objects::is_subset(&desired, o)) {
        steps.push(step(desired));
    }
}

const POLL_WHILE_ROLLING: Duration = Duration::from_secs(10);
const POLL_WHILE_BLOCKED: Duration = Duration::from_secs(15);

/// The plan for a KataConfig that is not being deleted.
fn plan_install(observed: &Observed) -> Plan {
    let spec = &observed.spec;
    if let Err(message) = validate(spec) {
        return Plan {
            steps: Vec::new(),
            nodes: KataNodesStatus::default(),
            runtime_classes: Vec::new(),
            conditions: vec![
                condition(
                    crate::api::condition::IN_PROGRESS,
                    false,
                    "InvalidSpec",
                    message.clone(),
                ),
                condition(
                    crate::api::condition::READY,
                    false,
                    "InvalidSpec",
                    message.clone(),
                ),
                condition(
                    crate::api::condition::DEGRADED,
                    true,
                    "InvalidSpec",
                    message,
                ),
            ],
            requeue_after: None,
        };
    }

    let mut steps = Vec::new();
    if !observed.has_finalizer {
        steps.push(Step::AddFinalizer);
    }
    apply_if_drifted(
        &mut steps,
        objects::machine_config_pool(),
        observed.pool_object.as_ref(),
        Step::ApplyPool,
    );
    apply_if_drifted(
        &mut steps,
        objects::machine_config(&objects::CrioRuntimeHandler::default()),
        observed.machine_config.as_ref(),
        Step::ApplyMachineConfig,
    );
    match objects::container_runtime_config(spec.log_level) {
        Some(crc) => apply_if_drifted(
            &mut steps,
            crc,
            observed.container_runtime_config.as_ref(),
            Step::ApplyContainerRuntimeConfig,
        ),
        None if observed.container_runtime_config.is_some() => {
            steps.push(Step::DeleteContainerRuntimeConfig)
        }
        None => {}
    }

    let mut phases = Vec::new();
    let mut targets = 0;
    for node in &observed.nodes {
        let targeted = is_target(spec, node);
        targets += usize::from(targeted);
        if targeted != node.has_label(names::KATA_POOL_ROLE_LABEL) {
            steps.push(Step::SetPoolRole {
                node: node.name.clone(),
                targeted,
            });
        }
        phases.push((
            node.name.clone(),
            node_phase(node, targeted, observed.pool.as_ref()),
        ));
    }
    let mut nodes = node_status(&phases, targets);
    nodes.not_runtime_ready = observed
        .nodes
        .iter()
        .filter(|n| is_target(spec, n))
        .filter_map(|n| {
            n.not_ready_reason.as_ref().map(|reason| FailedNode {
                name: n.name.clone(),
                error: reason.clone(),
            })
        })
        .collect();

    let all_installed = targets > 0 && nodes.installed.len() == targets;
    let settled = nodes.uninstalling.is_empty()
        && nodes.waiting_to_uninstall.is_empty()
        && nodes.failed_to_uninstall.is_empty();
    // The RuntimeClass appears once the pool has rolled out, as in OSC, and
    // then stays: nodes joining later do not make it disappear.
    let runtime_class_wanted = all_installed || observed.runtime_class.is_some();
    if runtime_class_wanted {
        let desired = serde_json::to_value(objects::runtime_class()).unwrap_or_default();
        apply_if_drifted(
            &mut steps,
            desired,
            observed.runtime_class.as_ref(),
            Step::ApplyRuntimeClass,
        );
    }

    use crate::api::condition::{DEGRADED, IN_PROGRESS, READY};
    let failed = [
        nodes.failed_to_install.as_slice(),
        nodes.failed_to_uninstall.as_slice(),
    ]
    .concat();
    let degraded = if failed.is_empty() {
        condition(DEGRADED, false, "AsExpected", "no node reports a failure")
    } else {
        condition(DEGRADED, true, "NodeDegraded", failed_list(&failed))
    };
    let (in_progress, ready) = if targets == 0 {
        let message = "no worker node matches kataConfigPoolSelector (and, with checkNodeEligibility, is labelled runtime.kata=true)";
        (
            condition(
                IN_PROGRESS,
                !settled,
                if settled { "NoTargetNodes" } else { "Updating" },
                message,
            ),
            condition(READY, false, "NoTargetNodes", message),
        )
    } else if !failed.is_empty() {
        let message = format!(
            "the Machine Config Operator failed to update: {}",
            failed_list(&failed)
        );
        (
            condition(IN_PROGRESS, true, "Failed", message.clone()),
            condition(READY, false, "Failed", message),
        )
    } else if all_installed && settled {
        let message = format!("Kata is installed on all {targets} selected nodes");
        (
            condition(IN_PROGRESS, false, "Installed", message.clone()),
            condition(READY, true, "Installed", message),
        )
    } else {
        // Before the first complete rollout it is an install; after, an update.
        let reason = if observed.runtime_class.is_some() {
            "Updating"
        } else {
            "Installing"
        };
        let message = format!(
            "{} of {targets} nodes installed; installing: [{}]; waiting: [{}]; uninstalling: [{}]",
            nodes.installed.len(),
            nodes.installing.join(", "),
            nodes.waiting_to_install.join(", "),
            [
                nodes.uninstalling.as_slice(),
                nodes.waiting_to_uninstall.as_slice()
            ]
            .concat()
            .join(", "),
        );
        (
            condition(IN_PROGRESS, true, reason, message.clone()),
            condition(READY, false, reason, message),
        )
    };
    let rolling = in_progress.status;
    Plan {
        steps,
        runtime_classes: if runtime_class_wanted {
            vec![names::RUNTIME_CLASS_NAME.into()]
        } else {
            Vec::new()
        },
        nodes,
        conditions: vec![in_progress, ready, degraded],
        requeue_after: rolling.then_some(POLL_WHILE_ROLLING),
    }
}

/// The plan for a KataConfig being deleted: refuse while Kata pods exist, then
/// take everything back in an order that never leaves a half-state a pod
/// could land on.
fn plan_uninstall(observed: &Observed) -> Plan {
    use crate::api::condition::{DEGRADED, IN_PROGRESS, READY};
    let mut phases = Vec::new();
    for node in &observed.nodes {
        phases.push((
            node.name.clone(),
            node_phase(node, false, observed.pool.as_ref()),
        ));
    }
    let nodes = node_status(&phases, 0);
    let failed = nodes.failed_to_uninstall.clone();
    let degraded = if failed.is_empty() {
        condition(DEGRADED, false, "AsExpected", "no node reports a failure")
    } else {
        condition(DEGRADED, true, "NodeDegraded", failed_list(&failed))
    };

    if !observed.pods_using_kata.is_empty() {
        const SHOWN: usize = 5;
        let shown = observed
            .pods_using_kata
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = observed.pods_using_kata.len().saturating_sub(SHOWN);
        let message = format!(
            "uninstall waits for {} pod(s) using the kata RuntimeClass to be deleted: {shown}{}",
            observed.pods_using_kata.len(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
        );
        return Plan {
            steps: Vec::new(),
            nodes,
            runtime_classes: observed
                .runtime_class
                .is_some()
                .then(|| names::RUNTIME_CLASS_NAME.to_string())
                .into_iter()
                .collect(),
            conditions: vec![
                condition(
                    IN_PROGRESS,
                    true,
                    "BlockedByExistingKataPods",
                    message.clone(),
                ),
                condition(READY, false, "BlockedByExistingKataPods", message),
                degraded,
            ],
            requeue_after: Some(POLL_WHILE_BLOCKED),
        };
    }

    let mut steps = Vec::new();
    // No new Kata pod from here on: without the RuntimeClass the API server
    // refuses pods that name it.
    if observed.runtime_class.is_some() {
        steps.push(Step::DeleteRuntimeClass);
    }
    for node in observed
        .nodes
        .iter()
        .filter(|n| n.has_label(names::KATA_POOL_ROLE_LABEL))
    {
        steps.push(Step::SetPoolRole {
            node: node.name.clone(),
            targeted: false,
        });
    }
    if observed.container_runtime_config.is_some() {
        steps.push(Step::DeleteContainerRuntimeConfig);
    }
    if observed.machine_config.is_some() {
        steps.push(Step::DeleteMachineConfig);
    }
    let rolled_back = observed
        .nodes
        .iter()
        .all(|n| !n.runs_kata_pool_config() && !n.has_label(names::KATA_POOL_ROLE_LABEL))
        && observed.pool.as_ref().is_none_or(|p| p.machine_count == 0);
    let mut requeue_after = Some(POLL_WHILE_ROLLING);
    if rolled_back {
        if observed.pool_object.is_some() {
            steps.push(Step::DeletePool);
        }
        for node in observed.nodes.iter().filter(|n| carries_operator_marks(n)) {
            steps.push(Step::ClearNode {
                node: node.name.clone(),
            });
        }
        if observed.has_finalizer {
            steps.push(Step::RemoveFinalizer);
        }
        requeue_after = None;
    }
    let message = format!(
        "removing Kata: uninstalling [{}]; waiting [{}]",
        nodes.uninstalling.join(", "),
        nodes.waiting_to_uninstall.join(", ")
    );
    Plan {
        steps,
        nodes,
        runtime_classes: Vec::new(),
        conditions: vec![
            condition(IN_PROGRESS, true, "Uninstalling", message.clone()),
            condition(READY, false, "Uninstalling", message),
            degraded,
        ],
        requeue_after,
    }
}

/// Whether the node still carries a health label or condition of ours.
fn carries_operator_marks(node: &ObservedNode) -> bool {
    node.has_label(names::KATA_RUNTIME_LABEL)
        || node.has_label(names::KATA_CAPABLE_LABEL)
        || node.has_ready_condition
}

pub fn plan(observed: &Observed) -> Plan {
    if observed.deleting {
        plan_uninstall(observed)
    } else {
        plan_install(observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PoolSelector, SelectorRequirement};

    const POOL_CONFIG: &str = "rendered-kata-oc-abc";

    fn node(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObservedNode {
        ObservedNode {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            has_ready_condition: false,
            not_ready_reason: None,
        }
    }

    fn worker(name: &str, extra: &[(&str, &str)]) -> ObservedNode {
        let mut labels = vec![(names::WORKER_ROLE_LABEL, "")];
        labels.extend_from_slice(extra);
        node(name, &labels, &[])
    }

    fn on_config(mut n: ObservedNode, current: &str, desired: &str, state: &str) -> ObservedNode {
        n.annotations
            .insert(mco::CURRENT_CONFIG.into(), current.into());
        n.annotations
            .insert(mco::DESIRED_CONFIG.into(), desired.into());
        n.annotations.insert(mco::STATE.into(), state.into());
        n
    }

    fn rendered_pool(machines: i64) -> ObservedPool {
        ObservedPool {
            rendered_config: Some(POOL_CONFIG.into()),
            sources: vec!["00-worker".into(), names::MACHINE_CONFIG_NAME.into()],
            machine_count: machines,
        }
    }

    /// A cluster where our objects already exist as desired.
    fn converged(nodes: Vec<ObservedNode>) -> Observed {
        Observed {
            has_finalizer: true,
            pool_object: Some(objects::machine_config_pool()),
            pool: Some(rendered_pool(nodes.len() as i64)),
            machine_config: Some(objects::machine_config(
                &objects::CrioRuntimeHandler::default(),
            )),
            runtime_class: Some(serde_json::to_value(objects::runtime_class()).unwrap_or_default()),
            nodes,
            ..Default::default()
        }
    }

    fn condition_of<'a>(plan: &'a Plan, type_: &str) -> &'a ConditionState {
        plan.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[test]
    fn first_reconcile_creates_everything_but_the_runtime_class() {
        let observed = Observed {
            nodes: vec![
                worker("w0", &[]),
                node("m0", &[("node-role.kubernetes.io/master", "")], &[]),
            ],
            ..Default::default()
        };
        let plan = plan(&observed);
        assert!(matches!(plan.steps[0], Step::AddFinalizer));
        assert!(plan.steps.iter().any(|s| matches!(s, Step::ApplyPool(_))));
        assert!(
            plan.steps
                .iter()
                .any(|s| matches!(s, Step::ApplyMachineConfig(_)))
        );
        assert!(plan.steps.contains(&Step::SetPoolRole {
            node: "w0".into(),
            targeted: true
        }));
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::SetPoolRole { node, .. } if node == "m0")),
            "masters are never targets"
        );
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::ApplyRuntimeClass(_))),
            "no RuntimeClass before the rollout"
        );
        assert_eq!(plan.nodes.waiting_to_install, ["w0"]);
        assert_eq!(condition_of(&plan, "InProgress").reason, "Installing");
        assert!(plan.requeue_after.is_some());
    }

    #[test]
    fn converged_cluster_plans_no_step() {
        let w0 = on_config(
            worker("w0", &[(names::KATA_POOL_ROLE_LABEL, "")]),
            POOL_CONFIG,
            POOL_CONFIG,
            mco::STATE_DONE,
        );
        let plan = plan(&converged(vec![w0]));
        assert_eq!(plan.steps, Vec::<Step>::new());
        assert_eq!(plan.nodes.installed, ["w0"]);
        assert!(condition_of(&plan, "Ready").status);
        assert!(!condition_of(&plan, "InProgress").status);
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn drifted_machine_config_is_applied_again() {
        let w0 = on_config(
            worker("w0", &[(names::KATA_POOL_ROLE_LABEL, "")]),
            POOL_CONFIG,
            POOL_CONFIG,
            mco::STATE_DONE,
        );
        let mut observed = converged(vec![w0]);
        if let Some(mc) = observed.machine_config.as_mut() {
            mc["spec"]["extensions"] = serde_json::json!([]);
        }
        assert!(
            plan(&observed)
                .steps
                .iter()
                .any(|s| matches!(s, Step::ApplyMachineConfig(_)))
        );
    }

    #[test]
    fn eligibility_and_selector_decide_targets() {
        let mut spec = KataConfigSpec {
            check_node_eligibility: true,
            kata_config_pool_selector: Some(PoolSelector {
                match_expressions: Some(vec![SelectorRequirement {
                    key: "zone".into(),
                    operator: SelectorOperator::In,
                    values: Some(vec!["a".into()]),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let capable = worker("w0", &[("zone", "a"), (names::KATA_CAPABLE_LABEL, "true")]);
        let incapable = worker("w1", &[("zone", "a")]);
        let elsewhere = worker("w2", &[("zone", "b"), (names::KATA_CAPABLE_LABEL, "true")]);
        assert!(is_target(&spec, &capable));
        assert!(!is_target(&spec, &incapable));
        assert!(!is_target(&spec, &elsewhere));
        spec.check_node_eligibility = false;
        assert!(is_target(&spec, &incapable));
    }

    #[test]
    fn node_phases_follow_the_mco_annotations() {
        let role = [(names::KATA_POOL_ROLE_LABEL, "")];
        let nodes = vec![
            on_config(
                worker("done", &role),
                POOL_CONFIG,
                POOL_CONFIG,
                mco::STATE_DONE,
            ),
            on_config(
                worker("working", &role),
                "rendered-worker-1",
                POOL_CONFIG,
                mco::STATE_WORKING,
            ),
            on_config(
                worker("waiting", &role),
                "rendered-worker-1",
                "rendered-worker-1",
                mco::STATE_DONE,
            ),
            {
                let mut n = on_config(
                    worker("broken", &role),
                    "rendered-worker-1",
                    POOL_CONFIG,
                    mco::STATE_DEGRADED,
                );
                n.annotations.insert(mco::REASON.into(), "disk full".into());
                n
            },
            on_config(
                worker("leaving", &[]),
                POOL_CONFIG,
                "rendered-worker-1",
                mco::STATE_WORKING,
            ),
            on_config(
                worker("left", &[]),
                "rendered-worker-1",
                "rendered-worker-1",
                mco::STATE_DONE,
            ),
        ];
        let mut observed = converged(nodes);
        observed.spec.kata_config_pool_selector = Some(PoolSelector {
            match_expressions: Some(vec![SelectorRequirement {
                key: names::KATA_POOL_ROLE_LABEL.into(),
                operator: SelectorOperator::Exists,
                values: None,
            }]),
            ..Default::default()
        });
        let plan = plan(&observed);
        assert_eq!(plan.nodes.installed, ["done"]);
        assert_eq!(plan.nodes.installing, ["working"]);
        assert_eq!(plan.nodes.waiting_to_install, ["waiting"]);
        assert_eq!(
            plan.nodes.failed_to_install,
            [FailedNode {
                name: "broken".into(),
                error: "disk full".into()
            }]
        );
        assert_eq!(plan.nodes.uninstalling, ["leaving"]);
        assert_eq!((plan.nodes.node_count, plan.nodes.ready_node_count), (4, 1));
        let degraded = condition_of(&plan, "Degraded");
        assert!(
            degraded.status && degraded.message.contains("broken: disk full"),
            "{degraded:?}"
        );
        assert_eq!(condition_of(&plan, "InProgress").reason, "Failed");
    }

    #[test]
    fn targeted_nodes_the_agents_call_unready_are_named() {
        let role = [(names::KATA_POOL_ROLE_LABEL, "")];
        let mut sick = on_config(
            worker("sick", &role),
            POOL_CONFIG,
            POOL_CONFIG,
            mco::STATE_DONE,
        );
        sick.not_ready_reason = Some("DropInSyntaxError: crio-drop-in: bad".into());
        let mut elsewhere = worker("elsewhere", &[("zone", "b")]);
        elsewhere.not_ready_reason = Some("KvmDeviceMissing: kvm: none".into());
        let mut observed = converged(vec![sick, elsewhere]);
        observed.spec.kata_config_pool_selector = Some(PoolSelector {
            match_labels: Some([("zone".to_string(), "a".to_string())].into()),
            ..Default::default()
        });
        observed.nodes[0].labels.insert("zone".into(), "a".into());
        let plan = plan(&observed);
        assert_eq!(
            plan.nodes.not_runtime_ready,
            [FailedNode {
                name: "sick".into(),
                error: "DropInSyntaxError: crio-drop-in: bad".into()
            }],
            "only targeted nodes are listed"
        );
    }

    #[test]
    fn pool_not_yet_rendered_with_our_config_means_waiting() {
        let mut observed = converged(vec![on_config(
            worker("w0", &[(names::KATA_POOL_ROLE_LABEL, "")]),
            "rendered-kata-oc-old",
            "rendered-kata-oc-old",
            mco::STATE_DONE,
        )]);
        observed.pool = Some(ObservedPool {
            rendered_config: Some("rendered-kata-oc-old".into()),
            sources: vec!["00-worker".into()],
            machine_count: 1,
        });
        assert_eq!(plan(&observed).nodes.waiting_to_install, ["w0"]);
    }

    #[test]
    fn invalid_spec_applies_nothing_and_says_why() {
        let observed = Observed {
            spec: KataConfigSpec {
                kata_config_pool_selector: Some(PoolSelector {
                    match_expressions: Some(vec![SelectorRequirement {
                        key: "k".into(),
                        operator: SelectorOperator::Exists,
                        values: Some(vec!["v".into()]),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            nodes: vec![worker("w0", &[])],
            ..Default::default()
        };
        let plan = plan(&observed);
        assert!(plan.steps.is_empty());
        let degraded = condition_of(&plan, "Degraded");
        assert_eq!(degraded.reason, "InvalidSpec");
        assert!(degraded.message.contains("takes no values"));
        assert!(
            validate(&KataConfigSpec {
                enable_peer_pods: true,
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn uninstall_is_blocked_by_kata_pods_and_touches_nothing() {
        let mut observed = converged(vec![worker("w0", &[(names::KATA_POOL_ROLE_LABEL, "")])]);
        observed.deleting = true;
        observed.pods_using_kata = (0..7).map(|i| format!("ns/pod-{i}")).collect();
        let plan = plan(&observed);
        assert!(plan.steps.is_empty());
        let in_progress = condition_of(&plan, "InProgress");
        assert_eq!(in_progress.reason, "BlockedByExistingKataPods");
        assert!(
            in_progress.message.contains("7 pod(s)")
                && in_progress.message.contains("ns/pod-0")
                && in_progress.message.contains("and 2 more")
        );
    }

    #[test]
    fn uninstall_removes_the_runtime_class_first_and_the_pool_last() {
        let w0 = on_config(
            worker(
                "w0",
                &[
                    (names::KATA_POOL_ROLE_LABEL, ""),
                    (names::KATA_RUNTIME_LABEL, "true"),
                ],
            ),
            POOL_CONFIG,
            POOL_CONFIG,
            mco::STATE_DONE,
        );
        let mut observed = converged(vec![w0]);
        observed.deleting = true;
        let first = plan(&observed);
        assert_eq!(first.steps[0], Step::DeleteRuntimeClass);
        assert!(first.steps.contains(&Step::SetPoolRole {
            node: "w0".into(),
            targeted: false
        }));
        assert!(first.steps.contains(&Step::DeleteMachineConfig));
        assert!(
            !first.steps.contains(&Step::DeletePool),
            "the pool stays until nodes rolled back"
        );
        assert!(!first.steps.contains(&Step::RemoveFinalizer));

        // Nodes back on the worker config, pool empty: finish.
        let back = on_config(
            worker("w0", &[(names::KATA_RUNTIME_LABEL, "true")]),
            "rendered-worker-1",
            "rendered-worker-1",
            mco::STATE_DONE,
        );
        let finished = Observed {
            deleting: true,
            has_finalizer: true,
            nodes: vec![back],
            pool_object: Some(objects::machine_config_pool()),
            pool: Some(ObservedPool {
                machine_count: 0,
                ..rendered_pool(0)
            }),
            ..Default::default()
        };
        assert_eq!(
            plan(&finished).steps,
            [
                Step::DeletePool,
                Step::ClearNode { node: "w0".into() },
                Step::RemoveFinalizer
            ]
        );
    }
}
