//! What the coordinator may do to the Machine Config Operator's objects:
//! the MCO backend's part of the coordinator's ClusterRole
//! ([`crate::rbac::cluster_permissions`]).

use super::names;
use crate::rbac::Permission;

/// The MCO backend's cluster-wide permissions.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: names::GROUP,
        resources: &["machineconfigpools"],
        resource_names: &[],
        // pool_events watches every pool (the reflector needs the full list).
        verbs: &["list", "watch"],
        used_by: "mco::cluster::pool_events",
    },
    Permission {
        api_group: names::GROUP,
        resources: &["machineconfigpools"],
        resource_names: &[names::POOL_NAME],
        verbs: &["create", "patch", "delete"],
        // create: server-side apply of the absent pool needs it as well as patch.
        used_by: "controller::steps: Step::Apply / Step::Delete of the pool",
    },
    Permission {
        api_group: names::GROUP,
        resources: &["machineconfigs"],
        resource_names: &names::OUR_MACHINE_CONFIG_NAMES,
        // list/watch: mco::cluster::owned_watches selects metadata.name, which
        // is what lets them be limited by name.
        verbs: &["list", "watch", "create", "patch", "delete"],
        used_by: "mco::cluster::owned_watches, Step::Apply / Step::Delete of the MachineConfigs",
    },
    Permission {
        api_group: names::GROUP,
        resources: &["machineconfigs"],
        resource_names: &[],
        // Rendered configs have generated names: reading the ones master-pool
        // nodes run tells whether they still carry Kata.
        verbs: &["get"],
        used_by: "mco::cluster::observe (rendered configs of the master pool's nodes)",
    },
    Permission {
        api_group: names::GROUP,
        resources: &["containerruntimeconfigs"],
        resource_names: &[],
        // Every one, not only ours: the MCO renders no pool while a
        // ContainerRuntimeConfig selecting it has failed, and an admin's
        // holding kata-oc (or master) is reported. Read only.
        verbs: &["list", "watch"],
        used_by: "mco::cluster::owned_watches (every ContainerRuntimeConfig)",
    },
    Permission {
        api_group: names::GROUP,
        resources: &["containerruntimeconfigs"],
        resource_names: &names::OUR_CONTAINER_RUNTIME_CONFIG_NAMES,
        verbs: &["create", "patch", "delete"],
        used_by: "Step::Apply / Step::Delete of the ContainerRuntimeConfig",
    },
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_rule_has_verbs_and_a_reason() {
        crate::rbac::check_rules(super::PERMISSIONS);
    }
}
