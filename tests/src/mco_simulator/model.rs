//! The MCO's objects as the simulator reads them: only the fields it uses.
//!
//! The names are spelled out here rather than taken from the coordinator: the
//! simulator stands in for the real MCO, so it must not inherit a mistake the
//! coordinator might make about the MCO's vocabulary.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, GroupVersionKind};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "machineconfiguration.openshift.io";
pub const VERSION: &str = "v1";
pub const API_VERSION: &str = "machineconfiguration.openshift.io/v1";
pub const ROLE_LABEL: &str = "machineconfiguration.openshift.io/role";
pub const CURRENT_CONFIG: &str = "machineconfiguration.openshift.io/currentConfig";
pub const DESIRED_CONFIG: &str = "machineconfiguration.openshift.io/desiredConfig";
pub const STATE: &str = "machineconfiguration.openshift.io/state";
pub const REASON: &str = "machineconfiguration.openshift.io/reason";
pub const GENERATED_BY: &str = "machineconfiguration.openshift.io/generated-by-controller-version";
pub const STATE_DONE: &str = "Done";
pub const STATE_WORKING: &str = "Working";
pub const STATE_DEGRADED: &str = "Degraded";
/// A change the daemon cannot apply at all.
pub const STATE_UNRECONCILABLE: &str = "Unreconcilable";
pub const MASTER_POOL: &str = "master";
pub const WORKER_POOL: &str = "worker";
/// What the simulator puts where the MCO puts its release version.
pub const CONTROLLER_VERSION: &str = "kata-tests-mco-simulator";

pub fn machine_config_resource() -> ApiResource {
    resource("MachineConfig", "machineconfigs")
}

pub fn pool_resource() -> ApiResource {
    resource("MachineConfigPool", "machineconfigpools")
}

pub fn runtime_config_resource() -> ApiResource {
    resource("ContainerRuntimeConfig", "containerruntimeconfigs")
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MachineConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MachineConfigSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineConfigSpec {
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub kernel_arguments: Vec<String>,
}

impl MachineConfig {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        labels(&self.metadata)
    }

    /// The owner of kind `kind`, if any: rendered configs are owned by their
    /// pool, generated ones by their ContainerRuntimeConfig.
    pub fn owner_uid(&self, kind: &str) -> Option<&str> {
        self.metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.kind == kind)
            .map(|owner| owner.uid.as_str())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pool {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PoolSpec,
    #[serde(default)]
    pub status: PoolStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    pub machine_config_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    pub max_unavailable: Option<IntOrString>,
    #[serde(default)]
    pub paused: bool,
    pub configuration: Option<PoolConfiguration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolConfiguration {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source: Vec<ObjectReference>,
}

/// The status fields the simulator owns; the pool's other status fields are
/// left to whoever writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    #[serde(default)]
    pub machine_count: i32,
    #[serde(default)]
    pub updated_machine_count: i32,
    #[serde(default)]
    pub ready_machine_count: i32,
    #[serde(default)]
    pub unavailable_machine_count: i32,
    #[serde(default)]
    pub degraded_machine_count: i32,
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration: Option<PoolConfiguration>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// A pool or ContainerRuntimeConfig condition (same shape in both CRDs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

impl Condition {
    pub fn new(
        type_: &str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            last_transition_time: None,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Stamps each condition with its transition time: kept from `previous` when
/// the status did not change, `now` when it did, as Kubernetes conventions ask.
pub fn stamp_transitions(conditions: &mut [Condition], previous: &[Condition], now: &Time) {
    for condition in conditions {
        let before = previous.iter().find(|old| old.type_ == condition.type_);
        condition.last_transition_time = match before {
            Some(old) if old.status == condition.status => old
                .last_transition_time
                .clone()
                .or_else(|| Some(now.clone())),
            _ => Some(now.clone()),
        };
    }
}

impl Pool {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        labels(&self.metadata)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RuntimeConfigSpec,
    #[serde(default)]
    pub status: RuntimeConfigStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfigSpec {
    pub machine_config_pool_selector: Option<LabelSelector>,
    #[serde(default)]
    pub container_runtime_config: CrioSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrioSettings {
    pub log_level: Option<String>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfigStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

impl RuntimeConfig {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// A Node as the MCO sees it: labels, its daemon's annotations, readiness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub current_config: Option<String>,
    pub desired_config: Option<String>,
    pub state: Option<String>,
    pub reason: Option<String>,
    /// Plain test Nodes have no kubelet and no Ready condition: those count as
    /// ready; only an explicit `Ready` other than `True` makes a node unready.
    pub ready: bool,
}

impl NodeView {
    pub fn from_node(node: &Node) -> Self {
        let annotation = |key: &str| {
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
        };
        let ready = node
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|ready| ready.status == "True");
        NodeView {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: labels(&node.metadata).clone(),
            current_config: annotation(CURRENT_CONFIG),
            desired_config: annotation(DESIRED_CONFIG),
            state: annotation(STATE),
            reason: annotation(REASON),
            ready,
        }
    }

    pub fn in_state(&self, state: &str) -> bool {
        self.state.as_deref() == Some(state)
    }
}

fn labels(metadata: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    metadata.labels.as_ref().unwrap_or(&EMPTY)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
