//! The planner with the Machine Config Operator backend, end to end: from an
//! observed snapshot to steps, node lists and conditions. Here: install,
//! drift, other managers, stuck nodes and the log level; the node phases and
//! the uninstall in [`phases`], the cluster topologies in [`topologies`],
//! ContainerRuntimeConfigs, ours and others', in [`runtime_configs`].

use super::names::{self as mco, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL};
use super::{MachineConfigRollout, ObservedPool};
use crate::api::{FailedNode, KataConfigSpec, PoolSelector, SelectorOperator};
use crate::kind::Kind;
use crate::plan::events::NodeTransition;
use crate::plan::fixtures::{expression_selector, node, worker};
use crate::plan::*;
use crate::{names, objects};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

mod phases;
mod runtime_configs;
mod topologies;

const POOL_CONFIG: &str = "rendered-kata-oc-abc";

fn on_config(mut n: ObservedNode, current: &str, desired: &str, state: &str) -> ObservedNode {
    n.annotations
        .insert(mco::CURRENT_CONFIG.into(), current.into());
    n.annotations
        .insert(mco::DESIRED_CONFIG.into(), desired.into());
    n.annotations.insert(mco::STATE.into(), state.into());
    n
}

/// A targeted worker done on the pool's configuration.
fn installed_worker(name: &str) -> ObservedNode {
    on_config(
        worker(name, &[(mco::KATA_POOL_ROLE_LABEL, "")]),
        POOL_CONFIG,
        POOL_CONFIG,
        mco::STATE_DONE,
    )
}

fn rendered_pool(machines: i64) -> ObservedPool {
    ObservedPool {
        name: mco::POOL_NAME.into(),
        node_selector: None,
        labels: [(mco::POOL_SELECTOR_LABEL.to_owned(), String::new())].into(),
        rendered_config: Some(POOL_CONFIG.into()),
        sources: vec!["00-worker".into(), mco::MACHINE_CONFIG_NAME.into()],
        machine_count: machines,
    }
}

/// A cluster where our objects already exist as desired.
fn converged(nodes: Vec<ObservedNode>) -> (Observed, MachineConfigRollout) {
    let rollout = MachineConfigRollout {
        pool_object: Some(super::objects::machine_config_pool()),
        pools: vec![rendered_pool(nodes.len() as i64)],
        machine_config: Some(super::objects::machine_config(
            &objects::CrioRuntimeHandler::default(),
        )),
        ..Default::default()
    };
    let observed = Observed {
        has_finalizer: true,
        runtime_class: Some(serde_json::to_value(objects::runtime_class()).unwrap_or_default()),
        nodes,
        ..Default::default()
    };
    (observed, rollout)
}

fn condition_of<'a>(plan: &'a Plan, type_: &str) -> &'a ConditionState {
    plan.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

fn applies(plan: &Plan, kind: Kind) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(s, Step::Apply(d) if d.kind() == kind))
}

fn set_pool_role(node: &str, targeted: bool) -> Step {
    Step::SetNodeLabel {
        node: node.into(),
        label: mco::KATA_POOL_ROLE_LABEL,
        present: targeted,
    }
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
    let plan = plan(&observed, &MachineConfigRollout::default());
    assert!(matches!(plan.steps[0], Step::AddFinalizer));
    assert!(applies(&plan, POOL));
    assert!(applies(&plan, MACHINE_CONFIG));
    assert!(
        !plan.steps.contains(&set_pool_role("w0", true)),
        "a node joins the pool only once it is rendered with our config"
    );
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetNodeLabel { node, .. } if node == "m0")),
        "masters are never targets"
    );
    assert!(
        !applies(&plan, crate::kind::RUNTIME_CLASS),
        "no RuntimeClass before the rollout"
    );
    assert_eq!(plan.nodes.waiting_to_install, ["w0"]);
    assert_eq!(condition_of(&plan, "InProgress").reason, "Installing");
    assert!(matches!(plan.requeue, Requeue::After(_)));
}

#[test]
fn converged_cluster_plans_no_step() {
    let w0 = installed_worker("w0");
    let (observed, rollout) = converged(vec![w0]);
    let plan = plan(&observed, &rollout);
    assert_eq!(plan.steps, Vec::<Step>::new());
    assert_eq!(plan.nodes.installed, ["w0"]);
    assert!(condition_of(&plan, "Ready").status);
    assert!(!condition_of(&plan, "InProgress").status);
    assert_eq!(plan.requeue, Requeue::Resync);
}

#[test]
fn drifted_machine_config_is_applied_again() {
    let w0 = installed_worker("w0");
    let (observed, mut rollout) = converged(vec![w0]);
    if let Some(mc) = rollout.machine_config.as_mut() {
        mc["spec"]["extensions"] = serde_json::json!([]);
    }
    assert!(applies(&plan(&observed, &rollout), MACHINE_CONFIG));
}

/// The converged cluster with our MachineConfig's extensions changed to
/// `[]` by `manager` (owning them through `operation`).
fn machine_config_taken_by(manager: &str, operation: &str) -> (Observed, MachineConfigRollout) {
    let (mut observed, mut rollout) = converged(vec![installed_worker("w0")]);
    if let Some(mc) = rollout.machine_config.as_mut() {
        mc["spec"]["extensions"] = serde_json::json!([]);
        mc["metadata"]["managedFields"] = serde_json::json!([{
            "manager": manager, "operation": operation, "apiVersion": "machineconfiguration.openshift.io/v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:extensions": {}}},
        }]);
        observed.owned_objects = vec![(MACHINE_CONFIG, mc.clone())];
    }
    (observed, rollout)
}

#[test]
fn a_machine_config_another_manager_holds_is_not_written_and_degrades() {
    let (observed, rollout) = machine_config_taken_by("gitops", "Apply");
    let plan = plan(&observed, &rollout);
    assert!(
        !applies(&plan, MACHINE_CONFIG),
        "no fight: {:?}",
        plan.steps
    );
    let degraded = condition_of(&plan, "Degraded");
    assert!(degraded.status);
    assert_eq!(degraded.reason, conditions::own_reason::CONFLICTING_MANAGER);
    assert!(
        degraded.message.contains("\"gitops\"")
            && degraded
                .message
                .contains(&format!("MachineConfig/{}", mco::MACHINE_CONFIG_NAME))
            && degraded.message.contains("spec.extensions"),
        "{}",
        degraded.message
    );

    // Once it lets go of the field (or it was never another's), ours is
    // written again and nothing is degraded.
    let (mut released, rollout) = machine_config_taken_by("gitops", "Apply");
    released.owned_objects.clear();
    let resumed = crate::plan::plan(&released, &rollout);
    assert!(applies(&resumed, MACHINE_CONFIG));
    assert!(!condition_of(&resumed, "Degraded").status);
}

#[test]
fn no_node_moves_into_the_pool_while_another_manager_holds_our_config() {
    let (mut observed, rollout) = machine_config_taken_by("gitops", "Apply");
    observed.nodes.push(worker("w1", &[]));
    let held = plan(&observed, &rollout);
    assert!(
        !held
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetNodeLabel { .. })),
        "w1 would reboot onto the other manager's config: {:?}",
        held.steps
    );
    observed.owned_objects.clear();
    let resumed = plan(&observed, &rollout);
    assert!(
        resumed.steps.contains(&set_pool_role("w1", true)),
        "{:?}",
        resumed.steps
    );
}

#[test]
fn a_stuck_node_is_named_in_the_progress_conditions() {
    let working = on_config(
        worker("w0", &[(mco::KATA_POOL_ROLE_LABEL, "")]),
        "rendered-worker-1",
        POOL_CONFIG,
        mco::STATE_WORKING,
    );
    let (mut observed, rollout) = converged(vec![working]);
    observed.stuck_nodes = vec![stuck::StuckNode {
        name: "w0".into(),
        working_for: Duration::from_secs(20 * 60),
        threshold: Duration::from_secs(15 * 60),
        blockers: Some(vec![stuck::DrainBlocker {
            pod: "app/db-0".into(),
            budget: "app/db".into(),
        }]),
    }];
    let installing = plan(&observed, &rollout);
    for type_ in ["InProgress", "Ready"] {
        let message = &condition_of(&installing, type_).message;
        assert!(
            message.contains("node w0 has been updating")
                && message.contains("for 20m")
                && message.contains("PodDisruptionBudget app/db"),
            "{type_}: {message}"
        );
    }
    observed.deleting = true;
    let uninstalling = plan_uninstall(&observed, &rollout);
    assert!(
        condition_of(&uninstalling, "InProgress")
            .message
            .contains("node w0 has been updating")
    );
}

#[test]
fn log_level_adds_and_removes_the_container_runtime_config() {
    let (mut observed, mut rollout) = converged(vec![installed_worker("w0")]);
    observed.spec.log_level = crate::api::LogLevel::Debug;
    assert!(applies(
        &plan(&observed, &rollout),
        CONTAINER_RUNTIME_CONFIG
    ));
    observed.spec.log_level = crate::api::LogLevel::Info;
    rollout.container_runtime_config = Some(serde_json::json!({}));
    assert!(plan(&observed, &rollout).steps.contains(&Step::Delete {
        kind: CONTAINER_RUNTIME_CONFIG,
        name: mco::CONTAINER_RUNTIME_CONFIG_NAME.into()
    }));
}

#[test]
fn an_engaged_fleet_brake_makes_the_kataconfig_degraded() {
    let (mut observed, rollout) = converged(vec![installed_worker("w0")]);
    assert!(!condition_of(&plan(&observed, &rollout), "Degraded").status);
    observed.fleet_brake = Some("2 of 2 KVM-capable nodes would leave".into());
    let braked = plan(&observed, &rollout);
    let degraded = condition_of(&braked, "Degraded");
    assert_eq!(
        (degraded.status, degraded.reason.as_str()),
        (true, conditions::own_reason::FLEET_BRAKE_ENGAGED)
    );
    assert_eq!(degraded.message, "2 of 2 KVM-capable nodes would leave");
}
