//! Compact, single-node and mixed clusters, and workers in other pools.

use super::*;

const MASTER: (&str, &str) = (mco::MASTER_ROLE_LABEL, "");
const MASTER_CONFIG: &str = "rendered-master-kata";

/// A master pool rendered with our master MachineConfig.
fn master_pool(machines: i64) -> ObservedPool {
    ObservedPool {
        name: mco::MASTER_POOL.into(),
        node_selector: None,
        labels: [(mco::MASTER_POOL_SELECTOR_LABEL.to_owned(), String::new())].into(),
        rendered_config: Some(MASTER_CONFIG.into()),
        sources: vec!["00-master".into(), mco::MASTER_MACHINE_CONFIG_NAME.into()],
        machine_count: machines,
    }
}

/// The master pool of three rendered with our master MachineConfig.
fn master_rollout() -> MachineConfigRollout {
    MachineConfigRollout {
        pools: vec![master_pool(3)],
        master_machine_config: Some(crate::mco::objects::machine_config_for(
            crate::mco::placement::Role::Master,
            &mco::RoleNames::default(),
            mco::EXTENSION,
            &objects::CrioRuntimeHandler::default(),
            &[],
        )),
        ..Default::default()
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
    let rollout = master_rollout();
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

#[test]
fn narrowing_an_installed_master_pool_is_refused_and_uninstalls_nothing() {
    let done = |name| {
        let mut node = on_config(
            compact_node(name),
            MASTER_CONFIG,
            MASTER_CONFIG,
            mco::STATE_DONE,
        );
        node.labels.insert("kata".into(), "yes".into());
        node
    };
    let mut m2 = done("m2");
    m2.labels.remove("kata");
    let observed = Observed {
        has_finalizer: true,
        spec: KataConfigSpec {
            kata_config_pool_selector: Some(expression_selector(
                "kata",
                SelectorOperator::Exists,
                &[],
            )),
            ..Default::default()
        },
        runtime_class: Some(serde_json::to_value(objects::runtime_class()).unwrap_or_default()),
        nodes: vec![done("m0"), done("m1"), m2],
        ..Default::default()
    };
    let rollout = MachineConfigRollout {
        rendered_with_kata: [MASTER_CONFIG.to_owned()].into(),
        ..master_rollout()
    };
    let plan = plan(&observed, &rollout);
    assert_eq!(plan.steps, Vec::<Step>::new(), "nothing removed");
    assert!(plan.nodes.waiting_to_uninstall.is_empty() && plan.nodes.uninstalling.is_empty());
    let in_progress = condition_of(&plan, "InProgress");
    assert_eq!(
        (in_progress.status, in_progress.reason.as_str()),
        (false, "SelectionRefused")
    );
    assert!(
        in_progress.message.contains("also holds m2")
            && !in_progress.message.contains("uninstalling: [m2]"),
        "{}",
        in_progress.message
    );
}
