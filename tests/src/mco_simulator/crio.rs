//! ContainerRuntimeConfig: the MCO's container-runtime-config controller turns
//! each one into a generated MachineConfig per selected pool, holding CRI-O
//! drop-ins. Pure.

use base64::Engine as _;
use serde_json::json;

use std::collections::BTreeMap;

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

/// Where [`MC_NAME_SUFFIX`] says a ContainerRuntimeConfig's generated
/// config is named (`MCNameSuffixAnnotationKey`,
/// `pkg/controller/common/constants.go`).
pub const MC_NAME_SUFFIX: &str = "machineconfiguration.openshift.io/mc-name-suffix";
/// The highest suffix the controller hands out (`MaxMCNameSuffix`,
/// `pkg/controller/common/constants.go`).
const MAX_SUFFIX: u32 = 9;

/// What the container-runtime-config controller does in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerPass {
    pub generated: Vec<GeneratedConfig>,
    /// The status each ContainerRuntimeConfig it synced must have.
    pub statuses: Vec<(String, RuntimeConfigStatus)>,
    /// The [`MC_NAME_SUFFIX`] to write on each ContainerRuntimeConfig that
    /// has none yet.
    pub suffixes: Vec<(String, String)>,
}

/// The generated configs of every ContainerRuntimeConfig in `due` (those the
/// controller syncs now), and the status each one must have; `all` is every
/// ContainerRuntimeConfig, deleted ones too, which the naming counts.
/// `faults` (name → error) makes the controller fail one, as an invalid
/// setting would.
///
/// A failure is condition `Failure`, status `True`, message `Error: …`, and
/// the conditions are a history: a new message is appended, the same one
/// replaces the last (`container_runtime_config_controller.go`,
/// `wrapErrorWithCondition` in `helpers.go`). A failed config generates
/// nothing (its earlier generated configs stay).
///
/// A failed sync is retried rate-limited (`handleErr` in
/// `container_runtime_config_controller.go`), so one whose last verdict is a
/// failure is synced after the others; otherwise the queue holds them in
/// creation order. The order decides the names ([`managed_suffix`]).
pub fn plan(
    due: &[&RuntimeConfig],
    all: &[RuntimeConfig],
    pools: &[Pool],
    faults: &BTreeMap<String, String>,
) -> ControllerPass {
    let mut sorted: Vec<&RuntimeConfig> = due.to_vec();
    sorted.sort_by_key(|rc| {
        (
            failed(rc),
            rc.metadata.creation_timestamp.clone(),
            rc.name(),
        )
    });
    let mut suffixes: BTreeMap<String, String> = all
        .iter()
        .filter_map(|rc| Some((rc.name().to_owned(), suffix_of(rc)?.to_owned())))
        .collect();
    let mut pass = ControllerPass::default();
    for runtime_config in sorted {
        let selected: Vec<&Pool> = pools
            .iter()
            .filter(|pool| selects_pool(runtime_config, pool))
            .collect();
        let mut names = Vec::new();
        let mut error = sync_error(runtime_config, &selected, faults);
        for pool in &selected {
            if error.is_some() {
                break;
            }
            match managed_suffix(runtime_config, pool, all, &suffixes) {
                Ok(suffix) => {
                    if suffix_of(runtime_config).is_none()
                        && !suffixes.contains_key(runtime_config.name())
                    {
                        pass.suffixes
                            .push((runtime_config.name().to_owned(), suffix.clone()));
                    }
                    suffixes.insert(runtime_config.name().to_owned(), suffix.clone());
                    names.push((pool, generated_name(pool.name(), &suffix)));
                }
                // `syncStatusOnly(cfg, err, "could not get ctrcfg key: %v", err)`:
                // the format replaces the `Error: ` message.
                Err(why) => error = Some(format!("could not get ctrcfg key: {why}")),
            }
        }
        pass.statuses.push((
            runtime_config.name().to_owned(),
            status(runtime_config, error.as_deref()),
        ));
        if error.is_some() {
            // What it generated before stays until it succeeds again.
            continue;
        }
        for (pool, name) in names {
            pass.generated.push(GeneratedConfig {
                name,
                role: pool.name().to_owned(),
                owner_name: runtime_config.name().to_owned(),
                owner_uid: runtime_config.metadata.uid.clone().unwrap_or_default(),
                spec: drop_ins(runtime_config),
            });
        }
    }
    pass
}

fn selects_pool(runtime_config: &RuntimeConfig, pool: &Pool) -> bool {
    selects(
        runtime_config.spec.machine_config_pool_selector.as_ref(),
        pool.labels(),
    )
}

fn suffix_of(runtime_config: &RuntimeConfig) -> Option<&str> {
    runtime_config
        .metadata
        .annotations
        .as_ref()?
        .get(MC_NAME_SUFFIX)
        .map(String::as_str)
}

/// Whether the controller's last verdict on the current generation is a
/// failure.
fn failed(runtime_config: &RuntimeConfig) -> bool {
    runtime_config.status.observed_generation >= runtime_config.metadata.generation.unwrap_or(0)
        && runtime_config
            .status
            .conditions
            .last()
            .is_some_and(|c| c.type_ == "Failure")
}

/// Why the sync fails before any name is chosen: a fault, no pool, a bad
/// setting (`validateUserContainerRuntimeConfig`, `helpers.go`).
fn sync_error(
    runtime_config: &RuntimeConfig,
    selected: &[&Pool],
    faults: &BTreeMap<String, String>,
) -> Option<String> {
    let level = runtime_config
        .spec
        .container_runtime_config
        .log_level
        .as_deref();
    if let Some(fault) = faults.get(runtime_config.name()) {
        Some(format!("Error: {fault}"))
    } else if let Some(l) = level.filter(|l| !LOG_LEVELS.contains(l)) {
        Some(format!(
            "Error: invalid LogLevel {l:?}, must be one of error, fatal, panic, warn, info, debug, or trace"
        ))
    } else if selected.is_empty() {
        Some(format!(
            "Error: could not find any MachineConfigPool set for ContainerRuntimeConfig {}",
            runtime_config.name()
        ))
    } else {
        None
    }
}

/// The status after a sync that failed with `error` (the condition's
/// message) or succeeded.
fn status(runtime_config: &RuntimeConfig, error: Option<&str>) -> RuntimeConfigStatus {
    let condition = match error {
        Some(error) => Condition::new("Failure", true, "", error),
        None => Condition::new("Success", true, "", "Success"),
    };
    let mut conditions = runtime_config.status.conditions.clone();
    match conditions.last_mut() {
        Some(last) if last.message == condition.message => *last = condition,
        _ => conditions.push(condition),
    }
    RuntimeConfigStatus {
        observed_generation: runtime_config.metadata.generation.unwrap_or_default(),
        conditions,
    }
}

/// `99-<pool>-generated-containerruntime`, then `-<suffix>`.
pub fn generated_name(pool: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("99-{pool}-generated-containerruntime")
    } else {
        format!("99-{pool}-generated-containerruntime-{suffix}")
    }
}

/// The suffix of the config `runtime_config` generates for `pool`
/// (`getManagedKeyCtrCfg`, `pkg/controller/container-runtime-config/helpers.go`):
/// the one recorded on it; else none when it is the only
/// ContainerRuntimeConfig selecting the pool; else one more than the highest
/// recorded among those selecting it, at most [`MAX_SUFFIX`]. `recorded`
/// holds the annotations as the controller has written them so far.
fn managed_suffix(
    runtime_config: &RuntimeConfig,
    pool: &Pool,
    all: &[RuntimeConfig],
    recorded: &BTreeMap<String, String>,
) -> Result<String, String> {
    if let Some(suffix) = recorded.get(runtime_config.name()) {
        return Ok(suffix.clone());
    }
    let selecting: Vec<&RuntimeConfig> = all.iter().filter(|rc| selects_pool(rc, pool)).collect();
    if selecting.len() == 1 {
        return Ok(String::new());
    }
    let mut highest = 0;
    for rc in selecting {
        if let Some(value) = recorded.get(rc.name()).filter(|v| !v.is_empty()) {
            let value: u32 = value
                .parse()
                .map_err(|e| format!("error converting {value} to int: {e}"))?;
            highest = highest.max(value);
        }
    }
    if highest + 1 > MAX_SUFFIX {
        return Err("max number of supported ctrcfgs (10) has been reached. Please delete old ctrcfgs before retrying".to_owned());
    }
    Ok((highest + 1).to_string())
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

    const KATA_SELECTOR_LABEL: &str = "pools.operator.machineconfiguration.openshift.io/kata-oc";

    fn runtime_config(name: &str, selector: serde_json::Value) -> RuntimeConfig {
        serde_json::from_value(json!({
            "metadata": { "name": name, "uid": format!("uid-{name}"), "generation": 2 },
            "spec": { "machineConfigPoolSelector": selector, "containerRuntimeConfig": { "logLevel": "debug" } }
        }))
        .unwrap()
    }

    fn kata_pool() -> Pool {
        let mut kata = pool("kata-oc", json!({}), json!({}));
        kata.metadata.labels = Some([(KATA_SELECTOR_LABEL.to_owned(), String::new())].into());
        kata
    }

    fn selecting_kata(name: &str, suffix: Option<&str>) -> RuntimeConfig {
        let mut rc = runtime_config(name, json!({ "matchLabels": { KATA_SELECTOR_LABEL: "" } }));
        if let Some(suffix) = suffix {
            rc.metadata.annotations = Some([(MC_NAME_SUFFIX.to_owned(), suffix.to_owned())].into());
        }
        rc
    }

    /// One pass over all of `configs`.
    fn pass(configs: &[RuntimeConfig], pools: &[Pool]) -> ControllerPass {
        let due: Vec<&RuntimeConfig> = configs.iter().collect();
        plan(&due, configs, pools, &Default::default())
    }

    fn names(pass: &ControllerPass) -> Vec<(&str, &str)> {
        pass.generated
            .iter()
            .map(|g| (g.name.as_str(), g.owner_name.as_str()))
            .collect()
    }

    #[test]
    fn the_only_config_selecting_a_pool_gets_the_plain_name_and_carries_the_log_level() {
        let pools = [pool("worker", json!({}), json!({})), kata_pool()];
        let pass = pass(&[selecting_kata("a", None)], &pools);
        assert_eq!(
            names(&pass),
            [("99-kata-oc-generated-containerruntime", "a")]
        );
        assert_eq!(pass.suffixes, [("a".to_owned(), String::new())]);
        let files = files_of(&pass.generated[0].spec).unwrap();
        assert_eq!(files[0].path, "/etc/crio/crio.conf.d/01-ctrcfg-logLevel");
        assert!(
            String::from_utf8(files[0].contents.clone())
                .unwrap()
                .contains("log_level = \"debug\"")
        );
        assert_eq!(pass.statuses[0].1.conditions[0].type_, "Success");
        assert_eq!(pass.statuses[0].1.observed_generation, 2);
    }

    #[test]
    fn beside_another_config_the_name_takes_the_next_suffix_and_keeps_it() {
        let pools = [kata_pool()];
        // An admin's config named first; ours is then one more.
        let first = pass(
            &[
                selecting_kata("admin", Some("")),
                selecting_kata("ours", None),
            ],
            &pools,
        );
        assert_eq!(
            names(&first),
            [
                ("99-kata-oc-generated-containerruntime", "admin"),
                ("99-kata-oc-generated-containerruntime-1", "ours")
            ]
        );
        assert_eq!(first.suffixes, [("ours".to_owned(), "1".to_owned())]);
        // Two new ones in one pass: neither is the only one, so neither gets
        // the plain name; the one synced first gets -1, the next -2.
        let both = pass(
            &[selecting_kata("b", None), selecting_kata("a", None)],
            &pools,
        );
        assert_eq!(
            names(&both),
            [
                ("99-kata-oc-generated-containerruntime-1", "a"),
                ("99-kata-oc-generated-containerruntime-2", "b")
            ]
        );
        // A recorded suffix stands, whoever else selects the pool.
        let kept = pass(&[selecting_kata("ours", Some("3"))], &pools);
        assert_eq!(
            names(&kept),
            [("99-kata-oc-generated-containerruntime-3", "ours")]
        );
        assert!(kept.suffixes.is_empty());
    }

    #[test]
    fn a_failed_config_is_retried_after_the_others() {
        let pools = [kata_pool()];
        let mut admin = selecting_kata("admin", None);
        admin.status = status(&admin, Some("Error: could not find any MachineConfigPool"));
        let pass = pass(&[admin, selecting_kata("ours", None)], &pools);
        assert_eq!(
            names(&pass),
            [
                ("99-kata-oc-generated-containerruntime-1", "ours"),
                ("99-kata-oc-generated-containerruntime-2", "admin")
            ]
        );
    }

    #[test]
    fn past_nine_suffixes_the_config_fails() {
        let pools = [kata_pool()];
        let full = pass(
            &[
                selecting_kata("old", Some("9")),
                selecting_kata("new", None),
            ],
            &pools,
        );
        assert_eq!(
            names(&full),
            [("99-kata-oc-generated-containerruntime-9", "old")]
        );
        let (_, status) = full.statuses.iter().find(|(n, _)| n == "new").unwrap();
        let failure = status.conditions.last().unwrap();
        assert_eq!(failure.type_, "Failure");
        assert_eq!(
            failure.message,
            "could not get ctrcfg key: max number of supported ctrcfgs (10) has been reached. Please delete old ctrcfgs before retrying"
        );
        assert!(full.suffixes.is_empty());
    }

    #[test]
    fn a_config_selecting_no_pool_reports_failure() {
        let pass = pass(
            &[runtime_config("a", json!({ "matchLabels": { "x": "y" } }))],
            &[pool("worker", json!({}), json!({}))],
        );
        assert!(pass.generated.is_empty());
        let failure = &pass.statuses[0].1.conditions[0];
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
        let kata = kata_pool();
        let mut rc = selecting_kata("a", None);
        rc.spec.container_runtime_config.log_level = Some("warning".into());
        assert_eq!(
            blocks_render(std::slice::from_ref(&rc), &kata),
            Some("a".into()),
            "no verdict yet"
        );
        let failed = pass(std::slice::from_ref(&rc), std::slice::from_ref(&kata));
        assert!(failed.generated.is_empty());
        assert!(
            failed.statuses[0].1.conditions[0]
                .message
                .contains("invalid LogLevel \"warning\"")
        );
        rc.status = failed.statuses[0].1.clone();
        assert_eq!(
            blocks_render(std::slice::from_ref(&rc), &kata),
            Some("a".into())
        );

        rc.spec.container_runtime_config.log_level = Some("warn".into());
        let fixed = pass(std::slice::from_ref(&rc), std::slice::from_ref(&kata));
        assert_eq!(fixed.generated.len(), 1);
        let history: Vec<&str> = fixed.statuses[0]
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
        rc.status = fixed.statuses[0].1.clone();
        assert_eq!(blocks_render(std::slice::from_ref(&rc), &kata), None);
        rc.metadata.generation = Some(3);
        assert_eq!(
            blocks_render(&[rc], &kata),
            Some("a".into()),
            "a generation without a verdict blocks too"
        );
    }
}
