//! ContainerRuntimeConfig: the MCO's container-runtime-config controller turns
//! each one into a generated MachineConfig per selected pool, holding CRI-O
//! drop-ins. Pure.

use base64::Engine as _;
use serde_json::json;

use super::model::{Condition, MachineConfigSpec, Pool, RuntimeConfig, RuntimeConfigStatus};
use super::render::{IGNITION_VERSION, selects};

/// A MachineConfig generated from a ContainerRuntimeConfig for one pool.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedConfig {
    pub name: String,
    /// Its role label: the pool's name, as the MCO does.
    pub role: String,
    pub owner_name: String,
    pub owner_uid: String,
    pub spec: MachineConfigSpec,
}

/// The log levels CRI-O accepts, as the controller validates them
/// (`pkg/controller/container-runtime-config/helpers.go`).
const LOG_LEVELS: [&str; 7] = ["error", "fatal", "panic", "warn", "info", "debug", "trace"];

/// The generated configs of every ContainerRuntimeConfig, and the status
/// each one must have. The first config for a pool is named
/// `99-<pool>-generated-containerruntime`, later ones get `-1`, `-2`, ... by
/// name order of the ContainerRuntimeConfigs. `faults` (name → error) makes
/// the controller fail one, as an invalid setting would.
///
/// A failure is condition `Failure`, status `True`, message `Error: …`, and
/// the conditions are a history: a new message is appended, the same one
/// replaces the last (`container_runtime_config_controller.go`,
/// `wrapErrorWithCondition` in `helpers.go`). A failed config generates
/// nothing (its earlier generated configs stay).
pub fn plan(
    runtime_configs: &[RuntimeConfig],
    pools: &[Pool],
    faults: &std::collections::BTreeMap<String, String>,
) -> (Vec<GeneratedConfig>, Vec<(String, RuntimeConfigStatus)>) {
    let mut sorted: Vec<&RuntimeConfig> = runtime_configs.iter().collect();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    let mut generated: Vec<GeneratedConfig> = Vec::new();
    let mut statuses = Vec::new();
    for runtime_config in sorted {
        let selected: Vec<&Pool> = pools
            .iter()
            .filter(|pool| {
                selects(
                    runtime_config.spec.machine_config_pool_selector.as_ref(),
                    pool.labels(),
                )
            })
            .collect();
        let level = runtime_config
            .spec
            .container_runtime_config
            .log_level
            .as_deref();
        let error = if let Some(fault) = faults.get(runtime_config.name()) {
            Some(fault.clone())
        } else if selected.is_empty() {
            Some(format!(
                "could not find any MachineConfigPool set for ContainerRuntimeConfig {}",
                runtime_config.name()
            ))
        } else {
            level.filter(|l| !LOG_LEVELS.contains(l)).map(|l| {
                format!(
                    "invalid LogLevel {l:?}, must be one of error, fatal, panic, warn, info, debug, or trace"
                )
            })
        };
        let condition = match &error {
            Some(error) => Condition::new("Failure", true, "", format!("Error: {error}")),
            None => Condition::new("Success", true, "", "Success"),
        };
        let mut conditions = runtime_config.status.conditions.clone();
        match conditions.last_mut() {
            Some(last) if last.message == condition.message => *last = condition,
            _ => conditions.push(condition),
        }
        let status = RuntimeConfigStatus {
            observed_generation: runtime_config.metadata.generation.unwrap_or_default(),
            conditions,
        };
        statuses.push((runtime_config.name().to_owned(), status));
        if error.is_some() {
            // What it generated before stays until it succeeds again.
            continue;
        }
        for pool in &selected {
            let earlier = generated.iter().filter(|g| g.role == pool.name()).count();
            let suffix = if earlier == 0 {
                String::new()
            } else {
                format!("-{earlier}")
            };
            generated.push(GeneratedConfig {
                name: format!("99-{}-generated-containerruntime{suffix}", pool.name()),
                role: pool.name().to_owned(),
                owner_name: runtime_config.name().to_owned(),
                owner_uid: runtime_config.metadata.uid.clone().unwrap_or_default(),
                spec: drop_ins(runtime_config),
            });
        }
    }
    (generated, statuses)
}

/// Whether a pool may be rendered now: the render controller renders no pool
/// while a ContainerRuntimeConfig selecting it has not reported `Success`
/// for its current generation (`syncMachineConfigPool` in
/// `pkg/controller/render/render_controller.go` calls
/// `AreMCGeneratingSubControllersCompletedForPool`, `pkg/apihelpers/apihelpers.go`).
/// A ContainerRuntimeConfig being deleted counts too: marking it deleted
/// bumps its generation, and its finalizer keeps it until the controller
/// removed what it generated.
pub fn blocks_render(runtime_configs: &[RuntimeConfig], pool: &Pool) -> Option<String> {
    runtime_configs
        .iter()
        .filter(|rc| selects(rc.spec.machine_config_pool_selector.as_ref(), pool.labels()))
        .find(|rc| {
            rc.status.observed_generation < rc.metadata.generation.unwrap_or_default()
                || rc
                    .status
                    .conditions
                    .last()
                    .is_none_or(|c| c.type_ != "Success")
        })
        .map(|rc| rc.name().to_owned())
}

/// One drop-in per setting, named like the MCO's (`01-ctrcfg-<setting>`).
fn drop_ins(runtime_config: &RuntimeConfig) -> MachineConfigSpec {
    let settings = &runtime_config.spec.container_runtime_config;
    let mut files = Vec::new();
    let mut add = |setting: &str, line: String| {
        let contents = format!("[crio]\n  [crio.runtime]\n    {line}\n");
        let source = format!(
            "data:text/plain;charset=utf-8;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(contents)
        );
        files.push(json!({ "path": format!("/etc/crio/crio.conf.d/01-ctrcfg-{setting}"), "mode": 420, "overwrite": true, "contents": { "source": source } }));
    };
    if let Some(level) = &settings.log_level {
        add("logLevel", format!("log_level = {level:?}"));
    }
    if let Some(limit) = settings.pids_limit {
        add("pidsLimit", format!("pids_limit = {limit}"));
    }
    MachineConfigSpec {
        config: json!({ "ignition": { "version": IGNITION_VERSION }, "storage": { "files": files } }),
        extensions: vec![],
        kernel_arguments: vec![],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::mco_simulator::fixtures::pool;
    use crate::mco_simulator::render::files_of;

    fn runtime_config(name: &str, selector: serde_json::Value) -> RuntimeConfig {
        serde_json::from_value(json!({
            "metadata": { "name": name, "uid": format!("uid-{name}"), "generation": 2 },
            "spec": { "machineConfigPoolSelector": selector, "containerRuntimeConfig": { "logLevel": "debug" } }
        }))
        .unwrap()
    }

    #[test]
    fn a_config_per_selected_pool_carries_the_log_level() {
        let mut kata = pool("kata-oc", json!({}), json!({}));
        kata.metadata.labels = Some(
            [(
                "pools.operator.machineconfiguration.openshift.io/kata-oc".to_owned(),
                String::new(),
            )]
            .into(),
        );
        let pools = [pool("worker", json!({}), json!({})), kata];
        let selector = json!({ "matchLabels": { "pools.operator.machineconfiguration.openshift.io/kata-oc": "" } });
        let (generated, statuses) = plan(
            &[
                runtime_config("b", selector.clone()),
                runtime_config("a", selector),
            ],
            &pools,
            &Default::default(),
        );

        let names: Vec<(&str, &str)> = generated
            .iter()
            .map(|g| (g.name.as_str(), g.owner_name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("99-kata-oc-generated-containerruntime", "a"),
                ("99-kata-oc-generated-containerruntime-1", "b")
            ]
        );
        let files = files_of(&generated[0].spec).unwrap();
        assert_eq!(files[0].path, "/etc/crio/crio.conf.d/01-ctrcfg-logLevel");
        assert!(
            String::from_utf8(files[0].contents.clone())
                .unwrap()
                .contains("log_level = \"debug\"")
        );
        assert_eq!(statuses[0].1.conditions[0].type_, "Success");
        assert_eq!(statuses[0].1.observed_generation, 2);
    }

    #[test]
    fn a_config_selecting_no_pool_reports_failure() {
        let (generated, statuses) = plan(
            &[runtime_config("a", json!({ "matchLabels": { "x": "y" } }))],
            &[pool("worker", json!({}), json!({}))],
            &Default::default(),
        );
        assert!(generated.is_empty());
        let failure = &statuses[0].1.conditions[0];
        assert_eq!(
            (failure.type_.as_str(), failure.status.as_str()),
            ("Failure", "True")
        );
        assert!(
            failure
                .message
                .starts_with("Error: could not find any MachineConfigPool")
        );
    }

    #[test]
    fn a_bad_log_level_fails_and_blocks_the_render_until_fixed() {
        let mut kata = pool("kata-oc", json!({}), json!({}));
        kata.metadata.labels = Some([("p".to_owned(), String::new())].into());
        let mut rc = runtime_config("a", json!({ "matchLabels": { "p": "" } }));
        rc.spec.container_runtime_config.log_level = Some("warning".into());
        assert_eq!(
            blocks_render(std::slice::from_ref(&rc), &kata),
            Some("a".into()),
            "no verdict yet"
        );
        let (generated, statuses) = plan(
            std::slice::from_ref(&rc),
            std::slice::from_ref(&kata),
            &Default::default(),
        );
        assert!(generated.is_empty());
        assert!(
            statuses[0].1.conditions[0]
                .message
                .contains("invalid LogLevel \"warning\"")
        );
        rc.status = statuses[0].1.clone();
        assert_eq!(
            blocks_render(std::slice::from_ref(&rc), &kata),
            Some("a".into())
        );

        rc.spec.container_runtime_config.log_level = Some("warn".into());
        let (generated, statuses) = plan(
            std::slice::from_ref(&rc),
            std::slice::from_ref(&kata),
            &Default::default(),
        );
        assert_eq!(generated.len(), 1);
        let history: Vec<&str> = statuses[0]
            .1
            .conditions
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            history,
            ["Failure", "Success"],
            "the conditions are a history"
        );
        rc.status = statuses[0].1.clone();
        assert_eq!(blocks_render(&[rc], &kata), None);
    }
}
