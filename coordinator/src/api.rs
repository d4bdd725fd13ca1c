//! The `KataConfig` custom resource, `kataconfiguration.openshift.io/v1`,
//! field-compatible with the OpenShift sandboxed containers operator.
//!
//! What the schema can judge is refused at admission: an unknown selector
//! operator or log level, `In` without values, `Exists` with values,
//! `enablePeerPods: true`, a pool selector naming the operator's own node
//! labels. The CRD is generated from these types (`coordinator crd`) and
//! checked in under `deploy/`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::core::{Rule, cel::Message};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "kataconfiguration.openshift.io";
pub const KIND: &str = "KataConfig";

/// Desired state of Kata Containers in the cluster. Create one KataConfig per
/// cluster; the operator installs the Kata runtime on the selected workers and
/// creates the `kata` RuntimeClass.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kataconfiguration.openshift.io",
    version = "v1",
    kind = "KataConfig",
    plural = "kataconfigs",
    singular = "kataconfig",
    status = "KataConfigStatus",
    doc = "KataConfig installs the Kata Containers runtime (pods in lightweight VMs) on the selected worker nodes and creates the `kata` RuntimeClass. One per cluster.",
    printcolumn = r#"{"name":"InProgress","type":"string","jsonPath":".status.conditions[?(@.type==\"InProgress\")].status"}"#,
    printcolumn = r#"{"name":"Completed","type":"integer","description":"Nodes with the Kata runtime installed","jsonPath":".status.kataNodes.readyNodeCount"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","description":"Nodes selected for the Kata runtime","jsonPath":".status.kataNodes.nodeCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KataConfigSpec {
    /// Selects the worker nodes that get the Kata runtime, by their labels.
    /// Empty or absent: every worker node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kata_config_pool_selector: Option<PoolSelector>,

    /// Only install on nodes the node-agent has proven able to run Kata
    /// (labelled `feature.node.kubernetes.io/runtime.kata=true`).
    #[serde(default)]
    pub check_node_eligibility: bool,

    /// CRI-O log level on the Kata nodes. `info` (the default) leaves CRI-O's
    /// configuration alone; any other level adds a ContainerRuntimeConfig.
    #[serde(default)]
    pub log_level: LogLevel,

    /// Run sandboxed pods as peer pods on a cloud provider. Not supported yet:
    /// only `false` is accepted.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == false").message("enablePeerPods is not supported yet by this operator; set it to false or remove it"))]
    pub enable_peer_pods: bool,

    /// The OS extension the Machine Config Operator installs for Kata.
    /// `auto` (the default) picks it from each node's OS
    /// (`status.nodeInfo.osImage`): `sandboxed-containers` on Red Hat
    /// Enterprise Linux CoreOS, `kata-containers` on Fedora CoreOS and
    /// CentOS Stream CoreOS (OKD). Set it only for an OS the operator does
    /// not recognize.
    #[serde(default)]
    pub extension: ExtensionChoice,

    /// What becomes of a MachineConfig an earlier operator (the OpenShift
    /// sandboxed containers operator) left installed, which carries the
    /// extension without the operator's CRI-O drop-in. `keep` (the default)
    /// leaves it as it is, so taking the cluster over reboots no node; its
    /// nodes run Kata from the extension's own drop-in, and the
    /// `AdoptedConfiguration` condition says so. `replace` writes the
    /// operator's MachineConfig over it: one drain and reboot per node.
    #[serde(default, skip_serializing_if = "AdoptedMachineConfig::is_keep")]
    pub adopted_machine_config: AdoptedMachineConfig,
}

/// What becomes of an earlier operator's MachineConfig.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AdoptedMachineConfig {
    /// Left as it is: no reboot.
    #[default]
    Keep,
    /// Replaced by the operator's: one reboot per node.
    Replace,
    /// A value this version does not know (written by a newer one): read
    /// rather than refused, so one field cannot stop the reconcile; the
    /// planner holds the KataConfig and says which field (plan::validate).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl AdoptedMachineConfig {
    fn is_keep(&self) -> bool {
        *self == AdoptedMachineConfig::Keep
    }
}

/// Which OS extension installs Kata on the nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ExtensionChoice {
    /// From each node's OS.
    #[default]
    Auto,
    /// The RHCOS extension name.
    SandboxedContainers,
    /// The FCOS / SCOS (OKD) extension name.
    KataContainers,
    /// A value this version does not know (written by a newer one): read
    /// rather than refused, so one field cannot stop the reconcile; the
    /// planner holds the KataConfig and says which field (plan::validate).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// The labels the operator itself sets on nodes. A pool selector naming one
/// would select on the operator's own writes: every label change would move
/// nodes in or out of the pool (a drain and a reboot each on OpenShift), and
/// the move changes the labels again. Admission refuses such a selector.
pub const OPERATOR_NODE_LABELS: [&str; 3] = [
    crate::names::KATA_RUNTIME_LABEL,
    crate::names::KATA_POOL_ROLE_LABEL,
    crate::names::KATA_CAPABLE_LABEL,
];

/// The CEL rule refusing [`OPERATOR_NODE_LABELS`] in one part of the
/// selector: `field` (`matchLabels` or `matchExpressions`), whose keys
/// `key_of` reads from an element `k`.
fn operator_labels_refused(field: &str, key_of: &str) -> Rule {
    let keys = OPERATOR_NODE_LABELS
        .iter()
        .map(|key| format!("'{key}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let message = format!(
        "kataConfigPoolSelector.{field} must not use the labels the operator sets on nodes ({}): the selection would follow the operator's own writes and move nodes in and out of the pool, a reboot each; select on labels of your own",
        OPERATOR_NODE_LABELS.join(", ")
    );
    Rule::new(format!(
        "!has(self.{field}) || self.{field}.all(k, !({key_of} in [{keys}]))"
    ))
    .message(Message::Message(message))
}

/// A label selector (the same shape as Kubernetes' LabelSelector), with the
/// rules of a valid one enforced at admission, and none of the operator's
/// own node labels.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = operator_labels_refused("matchLabels", "k"))]
#[x_kube(validation = operator_labels_refused("matchExpressions", "k.key"))]
pub struct PoolSelector {
    /// Labels a node must all carry, with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub match_labels: Option<std::collections::BTreeMap<String, String>>,

    /// Requirements a node's labels must all meet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

/// One requirement of a label selector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)").message("operators In and NotIn need at least one value; Exists and DoesNotExist take no values"))]
pub struct SelectorRequirement {
    /// The label key the requirement applies to.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How the label's value is compared: In, NotIn, Exists or DoesNotExist.
    pub operator: SelectorOperator,
    /// The values for In and NotIn; empty for Exists and DoesNotExist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Option<Vec<String>>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// A value this version does not know (written by a newer one): read
    /// rather than refused, so one field cannot stop the reconcile; the
    /// planner holds the KataConfig and says which field (plan::validate).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

/// CRI-O log levels.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Fatal,
    Panic,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
    /// A value this version does not know (written by a newer one): read
    /// rather than refused, so one field cannot stop the reconcile; the
    /// planner holds the KataConfig and says which field (plan::validate).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Fatal => "fatal",
            LogLevel::Panic => "panic",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
            // Never written: the planner holds a spec holding it.
            LogLevel::Unknown => "unknown",
        }
    }
}

/// Observed state, written by the coordinator only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KataConfigStatus {
    /// RuntimeClasses the operator created.
    #[serde(default)]
    pub runtime_classes: Vec<String>,
    /// Where each selected node is in the install or uninstall. Each node
    /// list is sorted by name and holds at most 100 nodes, so that the
    /// status stays within etcd's object size limit at any cluster size;
    /// `omitted` counts the rest, and `nodeCount` and `readyNodeCount` are
    /// exact.
    #[serde(default)]
    pub kata_nodes: KataNodesStatus,
    /// InProgress, Ready and Degraded, following Kubernetes API conventions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The most entries each node list of `status.kataNodes` holds; the rest
/// are counted in `omitted`. An object is limited to 1.5 MiB in etcd and
/// every status write fails once the KataConfig passes it, so the lists
/// must stay small however many nodes the cluster has. At 100 the worst
/// case (8 lists of 100 names of 253 bytes, and the 300 nodes of
/// `failureReasons` and `notRuntimeReady` each with a 1,100-byte error) is about 0.6 MiB, while a cluster of up to 100
/// Kata nodes, most clusters, still sees every node listed, as the
/// OpenShift sandboxed containers operator lists them.
pub const MAX_LISTED_NODES: usize = 100;

/// Node names by phase of the install or uninstall. Each list is sorted by
/// node name and holds at most 100 entries (the first 100 names); how many
/// more each leaves out is in `omitted`. `nodeCount` and `readyNodeCount`
/// are always exact.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KataNodesStatus {
    /// Nodes selected for the Kata runtime.
    #[serde(default)]
    pub node_count: i32,
    /// Selected nodes with the runtime installed.
    #[serde(default)]
    pub ready_node_count: i32,
    /// Selected nodes with the runtime installed. At most 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed: Vec<String>,
    /// Nodes the host configuration is being installed on. At most 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installing: Vec<String>,
    /// Selected nodes waiting for their turn to install. At most 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_to_install: Vec<String>,
    /// Nodes whose install failed, why in `failureReasons`. At most 100, by name (see `omitted`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "node_names"
    )]
    pub failed_to_install: Vec<String>,
    /// Nodes the host configuration is being removed from. At most 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uninstalling: Vec<String>,
    /// Nodes waiting for their turn to uninstall. At most 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_to_uninstall: Vec<String>,
    /// Nodes whose uninstall failed, why in `failureReasons`. At most 100, by name (see `omitted`).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "node_names"
    )]
    pub failed_to_uninstall: Vec<String>,
    /// Why each node listed in `failedToInstall` or `failedToUninstall`
    /// failed, one entry per listed node, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_reasons: Vec<FailedNode>,
    /// Selected nodes whose node-agent reports the Kata runtime not ready,
    /// with the reason from the node's `KataRuntimeReady` condition. At most
    /// 100, by name (see `omitted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_runtime_ready: Vec<FailedNode>,
    /// How many nodes each list above leaves out because it holds its
    /// first 100 entries only (by node name), so that the status stays
    /// within etcd's object size limit at any cluster size. Absent when
    /// every list is complete; a list's count is absent when it is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<OmittedNodes>,
}

/// Per node list of `kataNodes`, how many nodes it leaves out (absent: none).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OmittedNodes {
    /// Nodes `installed` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub installed: Option<i32>,
    /// Nodes `installing` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub installing: Option<i32>,
    /// Nodes `waitingToInstall` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub waiting_to_install: Option<i32>,
    /// Nodes `failedToInstall` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failed_to_install: Option<i32>,
    /// Nodes `uninstalling` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub uninstalling: Option<i32>,
    /// Nodes `waitingToUninstall` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub waiting_to_uninstall: Option<i32>,
    /// Nodes `failedToUninstall` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failed_to_uninstall: Option<i32>,
    /// Nodes `notRuntimeReady` leaves out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub not_runtime_ready: Option<i32>,
}

/// A node list of `kataNodes` as read back: node names, as the OpenShift
/// sandboxed containers operator writes them and as this version writes
/// them. Entries of the `{name, error}` shape that earlier builds of this
/// operator wrote are read as their names, so a status written before an
/// upgrade never stops the reconcile; the next status write replaces it.
fn node_names<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entry {
        Name(String),
        Named { name: String },
    }
    let entries = Vec::<Entry>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|entry| match entry {
            Entry::Name(name) | Entry::Named { name } => name,
        })
        .collect())
}

/// A node whose install or uninstall failed, with the Machine Config
/// Operator's reason.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailedNode {
    pub name: String,
    /// Why, in the words of what failed; at most 1,100 bytes (a longer
    /// reason is cut).
    #[serde(default)]
    pub error: String,
}

/// Condition types.
pub mod condition {
    pub const IN_PROGRESS: &str = "InProgress";
    pub const READY: &str = "Ready";
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (CamelCase, as the API conventions ask).
pub mod reason {
    pub const INSTALLING: &str = "Installing";
    pub const UPDATING: &str = "Updating";
    pub const INSTALLED: &str = "Installed";
    pub const FAILED: &str = "Failed";
    pub const NO_TARGET_NODES: &str = "NoTargetNodes";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const INVALID_RUNTIME_PROFILE: &str = "InvalidRuntimeProfile";
    pub const ANOTHER_KATA_CONFIG_EXISTS: &str = "AnotherKataConfigExists";
    pub const UNINSTALLING: &str = "Uninstalling";
    pub const BLOCKED_BY_EXISTING_KATA_PODS: &str = "BlockedByExistingKataPods";
    /// Degraded=False.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Degraded=True: a node's configuration change failed.
    pub const NODE_DEGRADED: &str = "NodeDegraded";
    /// Ready=False: the selection cannot be installed as it stands (a shared
    /// pool partly selected, a node in another custom pool, an unknown OS).
    pub const SELECTION_REFUSED: &str = "SelectionRefused";
    /// Degraded=True: the Machine Config Operator failed our
    /// ContainerRuntimeConfig, which freezes the pool.
    pub const CONTAINER_RUNTIME_CONFIG_FAILED: &str = "ContainerRuntimeConfigFailed";
}

#[cfg(test)]
mod tests {
    use super::KataNodesStatus;

    #[test]
    fn failed_node_lists_read_names_and_the_shape_earlier_builds_wrote() {
        let read: KataNodesStatus = serde_json::from_value(serde_json::json!({
            "nodeCount": 3,
            "failedToInstall": ["w0", {"name": "w1", "error": "disk full"}],
            "failedToUninstall": [{"name": "w2"}],
        }))
        .unwrap_or_default();
        assert_eq!(read.failed_to_install, ["w0", "w1"]);
        assert_eq!(read.failed_to_uninstall, ["w2"]);
        assert_eq!(read.node_count, 3);
        let refused =
            serde_json::from_value::<KataNodesStatus>(serde_json::json!({"failedToInstall": [3]}));
        assert!(refused.is_err(), "a number is neither shape: {refused:?}");
    }
}
