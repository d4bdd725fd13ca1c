//! The Machine Config Operator's vocabulary, and the names of the objects
//! the operator creates for it.

use crate::kind::Kind;

pub const GROUP: &str = "machineconfiguration.openshift.io";
pub const VERSION: &str = "v1";

pub const POOL: Kind = Kind {
    group: GROUP,
    version: VERSION,
    kind: "MachineConfigPool",
    plural: "machineconfigpools",
};
pub const MACHINE_CONFIG: Kind = Kind {
    group: GROUP,
    version: VERSION,
    kind: "MachineConfig",
    plural: "machineconfigs",
};
pub const CONTAINER_RUNTIME_CONFIG: Kind = Kind {
    group: GROUP,
    version: VERSION,
    kind: "ContainerRuntimeConfig",
    plural: "containerruntimeconfigs",
};

/// Our pool, and the role its MachineConfigs carry.
pub const POOL_NAME: &str = "kata-oc";
pub const MACHINE_CONFIG_NAME: &str = "50-enable-sandboxed-containers-extension";
pub const CONTAINER_RUNTIME_CONFIG_NAME: &str = "kata-crio-config";
/// The RHCOS extension; the MCO installs [`kata_proto::contract::EXTENSION_PACKAGE`] for it.
pub const EXTENSION: &str = "sandboxed-containers";

/// Marks a node as targeted: the `kata-oc` pool's nodeSelector.
pub const KATA_POOL_ROLE_LABEL: &str = "node-role.kubernetes.io/kata-oc";
/// Label by which a ContainerRuntimeConfig selects the pool.
pub const POOL_SELECTOR_LABEL: &str = "pools.operator.machineconfiguration.openshift.io/kata-oc";

/// The role a MachineConfig is rendered for.
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";
pub const WORKER_POOL: &str = "worker";

/// Node annotations the MCO's controllers and daemon write.
pub const CURRENT_CONFIG: &str = "machineconfiguration.openshift.io/currentConfig";
pub const DESIRED_CONFIG: &str = "machineconfiguration.openshift.io/desiredConfig";
pub const STATE: &str = "machineconfiguration.openshift.io/state";
pub const REASON: &str = "machineconfiguration.openshift.io/reason";
pub const STATE_DONE: &str = "Done";
pub const STATE_WORKING: &str = "Working";
pub const STATE_DEGRADED: &str = "Degraded";
