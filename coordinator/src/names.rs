//! Names, labels and annotations the operator writes or reads. One place, so
//! the uninstall can be sure it removes every one of them.

/// Field managers for server-side apply. Separate managers per concern, so
/// applying one set of labels never removes labels another part owns.
pub const MANAGER: &str = "kata-operator";
pub const MANAGER_TARGETING: &str = "kata-operator/targeting";
pub const MANAGER_HEALTH: &str = "kata-operator/health";

pub const FINALIZER: &str = "kataconfiguration.openshift.io/finalizer";

pub const POOL_NAME: &str = "kata-oc";
pub const MACHINE_CONFIG_NAME: &str = "50-enable-sandboxed-containers-extension";
pub const RUNTIME_CLASS_NAME: &str = "kata";
pub const RUNTIME_HANDLER: &str = "kata";
pub const CONTAINER_RUNTIME_CONFIG_NAME: &str = "kata-crio-config";
pub const EXTENSION: &str = "sandboxed-containers";
/// The package the MCO installs for [`EXTENSION`].
pub const EXTENSION_PACKAGE: &str = "kata-containers";
pub const DROP_IN_PATH: &str = "/etc/crio/crio.conf.d/50-kata";

/// Marks a node as a worker.
pub const WORKER_ROLE_LABEL: &str = "node-role.kubernetes.io/worker";
/// Marks a node as targeted: the `kata-oc` pool's nodeSelector.
pub const KATA_POOL_ROLE_LABEL: &str = "node-role.kubernetes.io/kata-oc";
/// The agent proved the hardware can run Kata.
pub const KATA_CAPABLE_LABEL: &str = "feature.node.kubernetes.io/runtime.kata";
/// The runtime is installed and healthy; the RuntimeClass selects on it.
pub const KATA_RUNTIME_LABEL: &str = "katacontainers.io/kata-runtime";
/// Node condition with the agent's verdict.
pub const NODE_CONDITION: &str = "KataRuntimeReady";
/// Labels every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "kata-operator";

/// Machine Config Operator vocabulary.
pub mod mco {
    pub const GROUP: &str = "machineconfiguration.openshift.io";
    pub const VERSION: &str = "v1";
    pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";
    pub const CURRENT_CONFIG: &str = "machineconfiguration.openshift.io/currentConfig";
    pub const DESIRED_CONFIG: &str = "machineconfiguration.openshift.io/desiredConfig";
    pub const STATE: &str = "machineconfiguration.openshift.io/state";
    pub const REASON: &str = "machineconfiguration.openshift.io/reason";
    pub const STATE_DONE: &str = "Done";
    pub const STATE_WORKING: &str = "Working";
    pub const STATE_DEGRADED: &str = "Degraded";
    pub const WORKER_POOL: &str = "worker";
}
