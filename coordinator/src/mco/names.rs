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
/// The MCO's stock pool of the control-plane nodes. On compact, single-node
/// and compact-plus-workers clusters its nodes are workers too, and the MCO
/// keeps them in it whatever custom pool they match, so Kata reaches them
/// through a MachineConfig of role `master` (as OSC does).
pub const MASTER_POOL: &str = "master";
/// The nodeSelector of the stock master pool, for a cluster whose pool we
/// have not seen.
pub const MASTER_ROLE_LABEL: &str = "node-role.kubernetes.io/master";
pub const MASTER_MACHINE_CONFIG_NAME: &str = "50-enable-sandboxed-containers-extension-master";
pub const MASTER_CONTAINER_RUNTIME_CONFIG_NAME: &str = "kata-crio-config-master";
/// Our `kata-oc` pool's objects on a cluster where OSC's names
/// ([`MACHINE_CONFIG_NAME`], [`CONTAINER_RUNTIME_CONFIG_NAME`]) already hold
/// the master pool's: OSC installs a compact or single-node cluster through
/// the master pool under those names, and a taken-over cluster keeps them
/// there (see [`RoleNames`]).
pub const KATA_POOL_MACHINE_CONFIG_ALT_NAME: &str =
    "50-enable-sandboxed-containers-extension-kata-oc";
pub const KATA_POOL_CONTAINER_RUNTIME_CONFIG_ALT_NAME: &str = "kata-crio-config-kata-oc";
/// Every name a MachineConfig of ours may have.
pub const OUR_MACHINE_CONFIG_NAMES: [&str; 3] = [
    MACHINE_CONFIG_NAME,
    MASTER_MACHINE_CONFIG_NAME,
    KATA_POOL_MACHINE_CONFIG_ALT_NAME,
];
/// Every name a ContainerRuntimeConfig of ours may have.
pub const OUR_CONTAINER_RUNTIME_CONFIG_NAMES: [&str; 3] = [
    CONTAINER_RUNTIME_CONFIG_NAME,
    MASTER_CONTAINER_RUNTIME_CONFIG_NAME,
    KATA_POOL_CONTAINER_RUNTIME_CONFIG_ALT_NAME,
];

/// The names of one pool's objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectNames {
    pub machine_config: &'static str,
    pub runtime_config: &'static str,
}

/// Which name each pool's objects have on this cluster. By default OSC's
/// names are the `kata-oc` pool's and the master pool's carry `-master`.
/// Where OSC's name already holds an object for the master pool (OSC's
/// install of a compact or single-node cluster, taken over), that object
/// keeps its name, so the nodes keep its rendered configuration: renaming
/// it would be two renders (the MCO's merge appends extensions, so two
/// copies render differently from one) and two reboots for nothing. The
/// `kata-oc` pool's object then takes the `-kata-oc` name. Pure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleNames {
    pub kata_pool: ObjectNames,
    pub master: ObjectNames,
}

impl Default for RoleNames {
    fn default() -> Self {
        RoleNames::settle(false, false)
    }
}

impl RoleNames {
    /// `machine_config_on_master` / `runtime_config_on_master`: OSC's
    /// MachineConfig name holds a `master`-role config, OSC's
    /// ContainerRuntimeConfig name one that selects the master pool.
    pub fn settle(machine_config_on_master: bool, runtime_config_on_master: bool) -> Self {
        let (kata_mc, master_mc) = if machine_config_on_master {
            (KATA_POOL_MACHINE_CONFIG_ALT_NAME, MACHINE_CONFIG_NAME)
        } else {
            (MACHINE_CONFIG_NAME, MASTER_MACHINE_CONFIG_NAME)
        };
        let (kata_crc, master_crc) = if runtime_config_on_master {
            (
                KATA_POOL_CONTAINER_RUNTIME_CONFIG_ALT_NAME,
                CONTAINER_RUNTIME_CONFIG_NAME,
            )
        } else {
            (
                CONTAINER_RUNTIME_CONFIG_NAME,
                MASTER_CONTAINER_RUNTIME_CONFIG_NAME,
            )
        };
        RoleNames {
            kata_pool: ObjectNames {
                machine_config: kata_mc,
                runtime_config: kata_crc,
            },
            master: ObjectNames {
                machine_config: master_mc,
                runtime_config: master_crc,
            },
        }
    }
}
/// The label the stock master pool carries, by which a
/// ContainerRuntimeConfig selects it.
pub const MASTER_POOL_SELECTOR_LABEL: &str =
    "pools.operator.machineconfiguration.openshift.io/master";
/// The RHCOS extension; the MCO installs [`kata_proto::contract::EXTENSION_PACKAGE`] for it.
pub const EXTENSION: &str = "sandboxed-containers";
/// The same extension's name on Fedora CoreOS and CentOS Stream CoreOS (OKD);
/// it installs the same package.
pub const EXTENSION_FCOS: &str = "kata-containers";
/// Where the container-runtime-config controller records, on a
/// ContainerRuntimeConfig, the suffix of the MachineConfig it generates from
/// it (`MCNameSuffixAnnotationKey`, `pkg/controller/common/constants.go`):
/// `""` for the plain name, `"1"` … `"9"` beside other
/// ContainerRuntimeConfigs selecting the same pool. Absent until the
/// controller has processed it.
pub const MC_NAME_SUFFIX: &str = "machineconfiguration.openshift.io/mc-name-suffix";

/// The MachineConfig the MCO's container-runtime-config controller generates
/// for `pool` from a ContainerRuntimeConfig whose [`MC_NAME_SUFFIX`] is
/// `suffix` (`getManagedKeyCtrCfg`,
/// `pkg/controller/container-runtime-config/helpers.go`).
pub fn generated_runtime_config(pool: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("99-{pool}-generated-containerruntime")
    } else {
        format!("99-{pool}-generated-containerruntime-{suffix}")
    }
}

/// Marks a node as targeted: the `kata-oc` pool's nodeSelector (defined
/// with the operator's other node labels, which the KataConfig's admission
/// rules name).
pub use crate::names::KATA_POOL_ROLE_LABEL;
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
/// Every node annotation the backend reads.
pub const NODE_ANNOTATIONS: [&str; 4] = [CURRENT_CONFIG, DESIRED_CONFIG, STATE, REASON];
pub const STATE_DONE: &str = "Done";
pub const STATE_WORKING: &str = "Working";
pub const STATE_DEGRADED: &str = "Degraded";
/// The daemon's state for a change it cannot apply at all (it will not retry).
pub const STATE_UNRECONCILABLE: &str = "Unreconcilable";

/// ContainerRuntimeConfig condition types; the last condition is the
/// controller's verdict.
pub const CRC_SUCCESS: &str = "Success";
pub const CRC_FAILURE: &str = "Failure";
