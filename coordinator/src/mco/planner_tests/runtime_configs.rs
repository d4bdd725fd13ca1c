//! ContainerRuntimeConfigs: ours under the name the MCO gives its generated
//! MachineConfig, and other admins' that hold the pools we install through.

use super::*;

const WITH_LOG_LEVEL: &str = "rendered-kata-oc-debug";

/// Our ContainerRuntimeConfig, accepted by the MCO, with the suffix it
/// recorded (None: not processed yet).
fn ours_accepted(suffix: Option<&str>) -> serde_json::Value {
    let mut crc = super::super::objects::container_runtime_config(crate::api::LogLevel::Debug)
        .unwrap_or_default();
    crc["metadata"]["generation"] = 1.into();
    crc["status"] = serde_json::json!({"observedGeneration": 1,
        "conditions": [{"type": "Success", "status": "True", "message": "Success"}]});
    if let Some(suffix) = suffix {
        crc["metadata"]["annotations"] = serde_json::json!({ mco::MC_NAME_SUFFIX: suffix });
    }
    crc
}

fn pool_rendering(generated: &[&str]) -> ObservedPool {
    let mut sources = vec!["00-worker".to_owned(), mco::MACHINE_CONFIG_NAME.to_owned()];
    sources.extend(generated.iter().map(|g| (*g).to_owned()));
    ObservedPool {
        rendered_config: Some(WITH_LOG_LEVEL.into()),
        sources,
        ..rendered_pool(1)
    }
}

#[test]
fn our_generated_config_is_followed_under_the_name_the_controller_recorded() {
    let w0 = on_config(
        worker("w0", &[(mco::KATA_POOL_ROLE_LABEL, "")]),
        WITH_LOG_LEVEL,
        WITH_LOG_LEVEL,
        mco::STATE_DONE,
    );
    let (mut observed, mut rollout) = converged(vec![w0]);
    observed.spec.log_level = crate::api::LogLevel::Debug;
    let admins = "99-kata-oc-generated-containerruntime";
    let ours = "99-kata-oc-generated-containerruntime-1";

    // The admin's config is rendered, ours not yet named: nothing to follow.
    rollout.pools = vec![pool_rendering(&[admins])];
    rollout.container_runtime_config = Some(ours_accepted(None));
    assert_eq!(plan(&observed, &rollout).nodes.waiting_to_install, ["w0"]);

    // Named -1, not rendered yet: the admin's plain one is not ours.
    rollout.container_runtime_config = Some(ours_accepted(Some("1")));
    assert_eq!(plan(&observed, &rollout).nodes.waiting_to_install, ["w0"]);

    // Rendered under -1: installed.
    rollout.pools = vec![pool_rendering(&[admins, ours])];
    let installed = plan(&observed, &rollout);
    assert_eq!(installed.nodes.installed, ["w0"]);
    assert!(condition_of(&installed, "Ready").status);

    // The only one selecting the pool: the plain name is ours.
    rollout.container_runtime_config = Some(ours_accepted(Some("")));
    rollout.pools = vec![pool_rendering(&[admins])];
    assert_eq!(plan(&observed, &rollout).nodes.installed, ["w0"]);
}

/// An admin's ContainerRuntimeConfig selecting the pool by `label`, at
/// generation 1, with the controller's conditions so far and the generation
/// it last looked at.
fn admins(label: &str, observed: i64, conditions: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"name": "admin-crio", "generation": 1},
        "spec": {"machineConfigPoolSelector": {"matchLabels": {label: ""}}},
        "status": {"observedGeneration": observed, "conditions": conditions}
    })
}

/// A first install: our pool exists, rendered without our MachineConfig.
fn unrendered_install() -> (Observed, MachineConfigRollout) {
    let (mut observed, mut rollout) = converged(vec![worker("w0", &[])]);
    observed.runtime_class = None;
    rollout.pools = vec![ObservedPool {
        rendered_config: Some("rendered-kata-oc-worker".into()),
        sources: vec!["00-worker".into()],
        ..rendered_pool(0)
    }];
    (observed, rollout)
}

#[test]
fn a_failing_foreign_runtime_config_on_our_pool_degrades_naming_it() {
    let (observed, mut rollout) = unrendered_install();
    let failure = serde_json::json!([{"type": "Failure", "status": "True",
        "message": "Error: invalid LogLevel \"warning\""}]);
    rollout.foreign_runtime_configs = vec![admins(mco::POOL_SELECTOR_LABEL, 1, failure.clone())];
    let held = plan(&observed, &rollout);
    let degraded = condition_of(&held, "Degraded");
    assert!(degraded.status);
    assert_eq!(degraded.reason, "ContainerRuntimeConfigFailed");
    assert_eq!(
        degraded.message,
        "ContainerRuntimeConfig admin-crio (not the operator's) failed, which keeps pool kata-oc from rendering: Error: invalid LogLevel \"warning\""
    );
    let in_progress = condition_of(&held, "InProgress");
    assert!(
        in_progress.status
            && in_progress
                .message
                .contains("keeps pool kata-oc from rendering")
    );
    assert!(
        !held
            .steps
            .iter()
            .any(|s| matches!(s, Step::SetNodeLabel { .. })),
        "no node joins a pool that will not render: {:?}",
        held.steps
    );

    // One selecting another pool is none of ours.
    rollout.foreign_runtime_configs = vec![admins(
        "pools.operator.machineconfiguration.openshift.io/worker",
        1,
        failure,
    )];
    assert!(!condition_of(&plan(&observed, &rollout), "Degraded").status);

    // A verdict still to come is a wait, named in InProgress, not a failure.
    let success = serde_json::json!([{"type": "Success", "status": "True", "message": "Success"}]);
    rollout.foreign_runtime_configs = vec![admins(mco::POOL_SELECTOR_LABEL, 0, success)];
    let waiting = plan(&observed, &rollout);
    assert!(!condition_of(&waiting, "Degraded").status);
    assert!(condition_of(&waiting, "InProgress").message.ends_with(
        "pool kata-oc waits for the Machine Config Operator to accept ContainerRuntimeConfig admin-crio (not the operator's)"
    ));
}

#[test]
fn a_foreign_failure_after_our_config_rendered_holds_nothing_of_ours() {
    let (observed, mut rollout) = converged(vec![installed_worker("w0")]);
    let failure = serde_json::json!([{"type": "Failure", "status": "True", "message": "Error: x"}]);
    rollout.foreign_runtime_configs = vec![admins(mco::POOL_SELECTOR_LABEL, 1, failure)];
    let plan = plan(&observed, &rollout);
    assert!(!condition_of(&plan, "Degraded").status);
    assert!(condition_of(&plan, "Ready").status);
}
