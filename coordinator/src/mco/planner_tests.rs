//! The planner with the Machine Config Operator backend, end to end: from an
//! observed snapshot to steps, node lists and conditions.

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
        name: mco::CONTAINER_RUNTIME_CONFIG_NAME
    }));
}

/// A node in each install phase (done, working, waiting, broken) and two
/// leaving the pool (leaving, left).
fn nodes_in_every_phase() -> Vec<ObservedNode> {
    let role = [(mco::KATA_POOL_ROLE_LABEL, "")];
    vec![
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
    ]
}

#[test]
fn node_phases_follow_the_mco_annotations() {
    let (mut observed, rollout) = converged(nodes_in_every_phase());
    observed.spec.kata_config_pool_selector = Some(expression_selector(
        mco::KATA_POOL_ROLE_LABEL,
        SelectorOperator::Exists,
        &[],
    ));
    let plan = plan(&observed, &rollout);
    assert_eq!(plan.nodes.installed, ["done"]);
    assert_eq!(plan.nodes.installing, ["working"]);
    assert_eq!(plan.nodes.waiting_to_install, ["waiting"]);
    assert_eq!(plan.nodes.failed_to_install, ["broken"]);
    assert_eq!(
        plan.nodes.failure_reasons,
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
    assert_eq!(
        plan.transitions,
        [
            NodeTransition::Installed {
                node: "done".into()
            },
            NodeTransition::FailedToInstall {
                node: "broken".into(),
                error: "disk full".into()
            },
        ],
        "against an empty recorded status, the installed and the failed node are transitions"
    );

    // The same cluster, with the status that plan wrote: nothing to announce.
    observed.recorded_nodes = crate::plan::nodes::written(&plan.nodes);
    assert_eq!(crate::plan::plan(&observed, &rollout).transitions, []);
}

#[test]
fn a_node_that_finishes_installing_is_announced_once() {
    let role = [(mco::KATA_POOL_ROLE_LABEL, "")];
    let rolling = on_config(
        worker("w0", &role),
        "rendered-worker-1",
        POOL_CONFIG,
        mco::STATE_WORKING,
    );
    let (mut observed, rollout) = converged(vec![rolling]);
    let while_rolling = plan(&observed, &rollout);
    assert_eq!(while_rolling.nodes.installing, ["w0"]);
    assert_eq!(while_rolling.transitions, []);

    observed.recorded_nodes = while_rolling.nodes;
    observed.nodes = vec![installed_worker("w0")];
    let finished = plan(&observed, &rollout);
    assert_eq!(
        finished.transitions,
        [NodeTransition::Installed { node: "w0".into() }]
    );
    observed.recorded_nodes = finished.nodes;
    assert_eq!(plan(&observed, &rollout).transitions, []);
}

#[test]
fn targeted_nodes_the_agents_call_unready_are_named() {
    let role = [(mco::KATA_POOL_ROLE_LABEL, "")];
    let mut sick = on_config(
        worker("sick", &role),
        POOL_CONFIG,
        POOL_CONFIG,
        mco::STATE_DONE,
    );
    sick.not_ready_reason = Some("DropInSyntaxError: crio-drop-in: bad".into());
    let mut elsewhere = worker("elsewhere", &[("zone", "b")]);
    elsewhere.not_ready_reason = Some("KvmDeviceMissing: kvm: none".into());
    let (mut observed, rollout) = converged(vec![sick, elsewhere]);
    observed.spec.kata_config_pool_selector = Some(PoolSelector {
        match_labels: Some([("zone".to_string(), "a".to_string())].into()),
        ..Default::default()
    });
    observed.nodes[0].labels.insert("zone".into(), "a".into());
    let plan = plan(&observed, &rollout);
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
    let (observed, mut rollout) = converged(vec![on_config(
        worker("w0", &[(mco::KATA_POOL_ROLE_LABEL, "")]),
        "rendered-kata-oc-old",
        "rendered-kata-oc-old",
        mco::STATE_DONE,
    )]);
    rollout.pools = vec![ObservedPool {
        rendered_config: Some("rendered-kata-oc-old".into()),
        sources: vec!["00-worker".into()],
        ..rendered_pool(1)
    }];
    assert_eq!(plan(&observed, &rollout).nodes.waiting_to_install, ["w0"]);
}

#[test]
fn invalid_spec_applies_nothing_and_says_why() {
    let observed = Observed {
        spec: KataConfigSpec {
            kata_config_pool_selector: Some(expression_selector(
                "k",
                SelectorOperator::Exists,
                &["v"],
            )),
            ..Default::default()
        },
        nodes: vec![worker("w0", &[])],
        ..Default::default()
    };
    let plan = plan(&observed, &MachineConfigRollout::default());
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
fn only_the_oldest_kata_config_acts() {
    let at = |s| Timestamp::from_second(s).ok();
    let (mut observed, rollout) = converged(vec![worker("w0", &[])]);
    observed.configs = vec![
        ConfigId {
            name: "second".into(),
            created: at(200),
        },
        ConfigId {
            name: "first".into(),
            created: at(100),
        },
    ];
    observed.name = "second".into();
    let plan = plan(&observed, &rollout);
    assert!(
        plan.steps.is_empty(),
        "a superseded KataConfig writes nothing but its status"
    );
    assert_eq!(plan.requeue, Requeue::OnChange);
    let ready = condition_of(&plan, "Ready");
    assert_eq!(ready.reason, "AnotherKataConfigExists");
    assert!(ready.message.contains("first is the active one"));
    observed.name = "first".into();
    assert!(
        condition_of(&crate::plan::plan(&observed, &rollout), "Ready").reason
            != "AnotherKataConfigExists"
    );
}

#[test]
fn uninstall_is_blocked_by_kata_pods_and_touches_nothing() {
    let (mut observed, rollout) = converged(vec![worker("w0", &[(mco::KATA_POOL_ROLE_LABEL, "")])]);
    observed.deleting = true;
    observed.pods_using_kata = (0..7).map(|i| format!("ns/pod-{i}")).collect();
    let plan = plan(&observed, &rollout);
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
                (mco::KATA_POOL_ROLE_LABEL, ""),
                (names::KATA_RUNTIME_LABEL, "true"),
            ],
        ),
        POOL_CONFIG,
        POOL_CONFIG,
        mco::STATE_DONE,
    );
    let (mut observed, rollout) = converged(vec![w0]);
    observed.deleting = true;
    let first = plan(&observed, &rollout);
    assert_eq!(first.steps[0], runtime_class::delete());
    assert!(first.steps.contains(&set_pool_role("w0", false)));
    let delete_mc = Step::Delete {
        kind: MACHINE_CONFIG,
        name: mco::MACHINE_CONFIG_NAME,
    };
    let delete_pool = Step::Delete {
        kind: POOL,
        name: mco::POOL_NAME,
    };
    assert!(
        !first.steps.contains(&delete_mc) && !first.steps.contains(&delete_pool),
        "the MachineConfig and the pool stay until nodes rolled back"
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
        ..Default::default()
    };
    let rollout = MachineConfigRollout {
        pool_object: Some(super::objects::machine_config_pool()),
        pools: vec![rendered_pool(0)],
        machine_config: Some(serde_json::json!({})),
        ..Default::default()
    };
    assert_eq!(
        plan(&finished, &rollout).steps,
        [
            delete_mc,
            delete_pool,
            Step::ReleaseNodeLabels { node: "w0".into() },
            Step::RemoveNodeCondition { node: "w0".into() },
            Step::RemoveFinalizer
        ]
    );
}

const MASTER: (&str, &str) = (mco::MASTER_ROLE_LABEL, "");
const MASTER_CONFIG: &str = "rendered-master-kata";

/// A master pool rendered with our master MachineConfig.
fn master_pool(machines: i64) -> ObservedPool {
    ObservedPool {
        name: mco::MASTER_POOL.into(),
        node_selector: None,
        rendered_config: Some(MASTER_CONFIG.into()),
        sources: vec!["00-master".into(), mco::MASTER_MACHINE_CONFIG_NAME.into()],
        machine_count: machines,
    }
}

fn compact_node(name: &str) -> ObservedNode {
    worker(name, &[MASTER])
}

fn applied_names(plan: &Plan) -> Vec<&str> {
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::Apply(d) => Some(d.name()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_compact_cluster_installs_through_the_master_pool_without_labels() {
    let observed = Observed {
        has_finalizer: true,
        nodes: vec![compact_node("m0"), compact_node("m1"), compact_node("m2")],
        ..Default::default()
    };
    let plan = plan(&observed, &MachineConfigRollout::default());
    assert_eq!(applied_names(&plan), [mco::MASTER_MACHINE_CONFIG_NAME]);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetNodeLabel { .. })),
        "no kata-oc label on a master: {:?}",
        plan.steps
    );
    assert_eq!(plan.nodes.waiting_to_install, ["m0", "m1", "m2"]);

    // Rendered and rolled: installed, RuntimeClass, Ready.
    let done = |name| {
        on_config(
            compact_node(name),
            MASTER_CONFIG,
            MASTER_CONFIG,
            mco::STATE_DONE,
        )
    };
    let observed = Observed {
        has_finalizer: true,
        nodes: vec![done("m0"), done("m1"), done("m2")],
        ..Default::default()
    };
    let rollout = MachineConfigRollout {
        pools: vec![master_pool(3)],
        master_machine_config: Some(super::objects::machine_config_for(
            super::placement::Role::Master,
            mco::EXTENSION,
            &objects::CrioRuntimeHandler::default(),
        )),
        ..Default::default()
    };
    let rolled = crate::plan::plan(&observed, &rollout);
    assert_eq!(rolled.nodes.installed, ["m0", "m1", "m2"]);
    assert_eq!(
        applied_names(&rolled),
        ["kata"],
        "only the RuntimeClass is new"
    );
    assert!(condition_of(&rolled, "Ready").status);
}

#[test]
fn part_of_the_master_pool_is_refused_and_nothing_is_applied_for_it() {
    let mut m2 = compact_node("m2");
    m2.labels.insert("kata".into(), "no".into());
    let observed = Observed {
        has_finalizer: true,
        spec: KataConfigSpec {
            kata_config_pool_selector: Some(expression_selector(
                "kata",
                SelectorOperator::DoesNotExist,
                &[],
            )),
            ..Default::default()
        },
        nodes: vec![compact_node("m0"), compact_node("m1"), m2],
        ..Default::default()
    };
    let plan = plan(&observed, &MachineConfigRollout::default());
    assert_eq!(plan.steps, Vec::<Step>::new());
    let ready = condition_of(&plan, "Ready");
    assert_eq!(ready.reason, "SelectionRefused");
    assert!(ready.message.contains("also holds m2"), "{}", ready.message);
    assert_eq!(plan.nodes.failed_to_install, ["m0", "m1"]);
    assert_eq!(plan.requeue, Requeue::Resync);
}

#[test]
fn workers_join_the_pool_once_it_is_rendered_and_masters_get_their_own_config() {
    let nodes = vec![compact_node("m0"), worker("w0", &[])];
    let (mut observed, mut rollout) = converged(nodes);
    observed.runtime_class = None;
    let plan_now = plan(&observed, &rollout);
    assert!(plan_now.steps.contains(&set_pool_role("w0", true)));
    assert!(applied_names(&plan_now).contains(&mco::MASTER_MACHINE_CONFIG_NAME));

    // The pool renders without the ContainerRuntimeConfig's config yet.
    observed.spec.log_level = crate::api::LogLevel::Debug;
    let waiting = plan(&observed, &rollout);
    assert!(!waiting.steps.contains(&set_pool_role("w0", true)));
    assert!(condition_of(&waiting, "InProgress").message.contains(
        "waits for the Machine Config Operator to accept ContainerRuntimeConfig kata-crio-config"
    ));
    rollout.container_runtime_config = Some(serde_json::json!({
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "Failure", "status": "True", "message": "Error: invalid log level"}]}
    }));
    let failing = plan(&observed, &rollout);
    let degraded = condition_of(&failing, "Degraded");
    assert_eq!(degraded.reason, "ContainerRuntimeConfigFailed");
    assert!(degraded.message.contains("Error: invalid log level"));
}

#[test]
fn a_worker_in_an_infra_pool_is_reported_and_the_others_still_get_the_runtime_class() {
    let infra = worker("i0", &[("node-role.kubernetes.io/infra", "")]);
    let (mut observed, mut rollout) = converged(vec![installed_worker("w0"), infra]);
    observed.runtime_class = None;
    rollout
        .pools
        .push(ObservedPool::from_object(&serde_json::json!({
            "metadata": {"name": "infra"},
            "spec": {"nodeSelector": {"matchLabels": {"node-role.kubernetes.io/infra": ""}}}
        })));
    let plan = plan(&observed, &rollout);
    assert!(
        !plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetNodeLabel { node, .. } if node == "i0"))
    );
    assert_eq!(plan.nodes.failed_to_install, ["i0"]);
    assert!(
        crate::plan::nodes::failure_reason(&plan.nodes, "i0").contains("MachineConfigPool infra")
    );
    assert!(applies(&plan, crate::kind::RUNTIME_CLASS));
    assert_eq!(condition_of(&plan, "Ready").reason, "SelectionRefused");
}
