//! Node phases from the MCO annotations, the status lists and Events, the
//! spec checks, and the uninstall.

use super::*;

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
    // A runtime profile's class is there too: it stays listed, so the next
    // reconcile still looks for the pods that use it.
    let large = crate::profiles::KataRuntimeProfile::of_size("kata-large", 4, 8192);
    observed.other_runtime_classes =
        vec![serde_json::to_value(large.runtime_class()).unwrap_or_default()];
    observed.profiles = vec![large];
    let plan = plan(&observed, &rollout);
    assert!(plan.steps.is_empty());
    assert_eq!(plan.runtime_classes, ["kata", "kata-large"]);
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
    // No pod uses it (the gate): its guard goes, then the class itself.
    assert!(matches!(
        first.steps[0],
        Step::ReleaseFinalizer {
            finalizer: names::RUNTIME_CLASS_FINALIZER,
            ..
        }
    ));
    assert_eq!(first.steps[1], runtime_class::delete());
    assert!(first.steps.contains(&set_pool_role("w0", false)));
    let delete_mc = Step::Delete {
        kind: MACHINE_CONFIG,
        name: mco::MACHINE_CONFIG_NAME.into(),
    };
    let delete_pool = Step::Delete {
        kind: POOL,
        name: mco::POOL_NAME.into(),
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
        pool_object: Some(crate::mco::objects::machine_config_pool()),
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
