//! Names, labels and annotations the operator writes or reads, whatever
//! installs the host configuration. One place, so the uninstall can be sure
//! it removes every one of them. The Machine Config Operator's own
//! vocabulary is in [`crate::mco::names`]; what the agent must agree on is
//! in [`kata_proto::contract`].

/// Field managers for server-side apply. Separate managers per concern, so
/// applying one set of labels never removes labels another part owns.
pub const MANAGER: &str = "kata-operator";
pub const MANAGER_TARGETING: &str = "kata-operator/targeting";
pub const MANAGER_HEALTH: &str = "kata-operator/health";
/// The field manager of the OpenShift sandboxed containers operator (OSC),
/// which this operator takes over from: OSC's controller-runtime client
/// writes with `Update` and sets no field owner, so the API server records
/// its binary's name. Its fields on objects with our names are taken over
/// rather than held as a conflict (the migration guide removes OSC first).
pub const PREDECESSOR_MANAGER: &str = "manager";

pub const FINALIZER: &str = "kataconfiguration.openshift.io/finalizer";
/// Holds the deletion of our RuntimeClass while pods use it (without it a
/// pod using the class could not restart). The name newer releases of the
/// OpenShift sandboxed containers operator put on theirs, so a RuntimeClass
/// taken over from it is guarded the same way.
pub const RUNTIME_CLASS_FINALIZER: &str = "kataconfig.openshift.io/runtime-class-cleanup";

pub const RUNTIME_CLASS_NAME: &str = kata_proto::contract::RUNTIME_CLASS_NAME;
pub const RUNTIME_HANDLER: &str = kata_proto::contract::RUNTIME_HANDLER;

/// Marks a node as a worker.
pub const WORKER_ROLE_LABEL: &str = "node-role.kubernetes.io/worker";
/// The agent proved the hardware can run Kata.
pub const KATA_CAPABLE_LABEL: &str = "feature.node.kubernetes.io/runtime.kata";
/// The runtime is installed and healthy; the RuntimeClass selects on it.
pub const KATA_RUNTIME_LABEL: &str = "katacontainers.io/kata-runtime";
/// Marks a node as targeted. The Machine Config Operator backend's
/// `kata-oc` pool selects on it; a pool selector of the KataConfig may not.
pub const KATA_POOL_ROLE_LABEL: &str = "node-role.kubernetes.io/kata-oc";
/// Node condition with the agent's verdict.
pub const NODE_CONDITION: &str = "KataRuntimeReady";
/// Labels every object the operator creates.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = MANAGER;
/// The Events' reporting controller.
pub const EVENT_REPORTER: &str = MANAGER;
