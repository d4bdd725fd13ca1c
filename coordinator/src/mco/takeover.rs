//! A cluster installed by the OpenShift sandboxed containers operator (OSC),
//! taken over: pure.
//!
//! OSC's MachineConfig (`newMCForCR`, `controllers/openshift_controller.go`)
//! has our MachineConfig's name and installs the same extension, but carries
//! no file: CRI-O's `kata` handler comes from the drop-in the extension's
//! package ships. Its nodes run Kata already. Writing ours over it would
//! change the pool's rendered configuration, and so drain and reboot every
//! Kata node, for a drop-in that registers the same handler. So it is kept
//! as it is ([`AdoptedMachineConfig::Keep`], the default) and the status
//! says so; the admin replaces it with ours when a reboot suits them
//! (`spec.adoptedMachineConfig: replace`): one rollout per node. An
//! uninstall removes it like ours.
//!
//! [`AdoptedMachineConfig::Keep`]: crate::api::AdoptedMachineConfig::Keep

use serde_json::Value;

/// Whether `machine_config` (one of ours by name) is an earlier operator's:
/// it installs Kata's extension without our CRI-O drop-in.
pub fn is_predecessors(machine_config: &Value) -> bool {
    super::observe::installs_extension(machine_config)
        && !super::observe::carries_drop_in(machine_config)
}

/// What the status says of a MachineConfig kept as an earlier operator
/// wrote it.
pub fn kept_message(machine_config: &str, pool: &str) -> String {
    format!(
        "MachineConfig {machine_config} (pool {pool}) is kept as an earlier operator wrote it: \
         its nodes run Kata from the extension's own CRI-O drop-in, not the operator's; set \
         spec.adoptedMachineConfig to replace to write the operator's configuration \
         (one drain and reboot per node)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mco::{names, objects};
    use crate::objects::CrioRuntimeHandler;
    use serde_json::json;

    fn osc_machine_config(extension: &str) -> Value {
        json!({
            "metadata": {"name": names::MACHINE_CONFIG_NAME,
                "labels": {names::ROLE_LABEL: "kata-oc", "app": "example-kataconfig"}},
            "spec": {"extensions": [extension], "config": {"ignition": {"version": "3.2.0"}}},
        })
    }

    #[test]
    fn osc_machine_configs_are_recognised_on_every_os() {
        assert!(is_predecessors(&osc_machine_config(names::EXTENSION)));
        assert!(is_predecessors(&osc_machine_config(names::EXTENSION_FCOS)));
    }

    #[test]
    fn ours_and_unrelated_ones_are_not() {
        assert!(!is_predecessors(&objects::machine_config(
            &CrioRuntimeHandler::default()
        )));
        assert!(!is_predecessors(&osc_machine_config("usbguard")));
        assert!(!is_predecessors(&json!({"metadata": {}})));
    }
}
