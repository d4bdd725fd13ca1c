//! Reading what the Machine Config Operator says: a pool's rendered
//! configuration, a ContainerRuntimeConfig's verdict and each node's
//! progress from the MCO's node annotations. Pure: the objects were read
//! before.

use serde_json::Value;

use super::names::{self, CURRENT_CONFIG, DESIRED_CONFIG, REASON, STATE};
use std::collections::BTreeMap;

use crate::api::PoolSelector;
use crate::plan::ObservedNode;
use crate::plan::rollout::NodePhase;
use crate::selector;

/// What the MCO says about a pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedPool {
    pub name: String,
    /// `spec.nodeSelector` (None when absent or not a selector we can read:
    /// either way the MCO selects no node with it).
    pub node_selector: Option<PoolSelector>,
    /// `metadata.labels`: a ContainerRuntimeConfig selects the pool by them.
    pub labels: BTreeMap<String, String>,
    /// `spec.configuration.name`: the rendered config nodes should reach.
    pub rendered_config: Option<String>,
    /// `spec.configuration.source[].name`: the MachineConfigs rendered into it.
    pub sources: Vec<String>,
    pub machine_count: i64,
}

impl ObservedPool {
    pub fn from_object(pool: &Value) -> Self {
        ObservedPool {
            name: pool["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            node_selector: serde_json::from_value(pool["spec"]["nodeSelector"].clone()).ok(),
            labels: serde_json::from_value(pool["metadata"]["labels"].clone()).unwrap_or_default(),
            rendered_config: pool["spec"]["configuration"]["name"]
                .as_str()
                .map(str::to_string),
            sources: pool["spec"]["configuration"]["source"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect(),
            machine_count: pool["status"]["machineCount"].as_i64().unwrap_or(0),
        }
    }

    /// The rendered config once it includes every one of `inputs`.
    pub fn config_with(&self, inputs: &[&str]) -> Option<&str> {
        self.rendered_config
            .as_deref()
            .filter(|_| inputs.iter().all(|i| self.sources.iter().any(|s| s == i)))
    }

    /// The rendered config that includes our `kata-oc` MachineConfig.
    pub fn config_with_extension(&self) -> Option<&str> {
        self.config_with(&[names::MACHINE_CONFIG_NAME])
    }

    pub fn renders(&self, machine_config: &str) -> bool {
        self.sources.iter().any(|s| s == machine_config)
    }
}

/// What the container-runtime-config controller said last about a
/// ContainerRuntimeConfig. Its conditions are a history: the last one is the
/// verdict (`container_runtime_config_controller.go` appends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeConfigVerdict {
    /// Not yet looked at this generation: the render controller renders
    /// none of the pools it selects meanwhile.
    Pending,
    Succeeded,
    /// `Failure`, with the controller's message (`Error: …`); the pools it
    /// selects stay frozen, with no pool condition saying so.
    Failed(String),
}

pub fn runtime_config_verdict(crc: &Value) -> RuntimeConfigVerdict {
    let generation = crc["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = crc["status"]["observedGeneration"].as_i64().unwrap_or(0);
    let last = crc["status"]["conditions"]
        .as_array()
        .and_then(|c| c.last());
    match last {
        Some(c) if c["type"] == names::CRC_FAILURE && observed >= generation => {
            RuntimeConfigVerdict::Failed(c["message"].as_str().unwrap_or_default().to_string())
        }
        Some(c) if c["type"] == names::CRC_SUCCESS && observed >= generation => {
            RuntimeConfigVerdict::Succeeded
        }
        _ => RuntimeConfigVerdict::Pending,
    }
}

/// Whether ContainerRuntimeConfig `crc` selects `pool`, as the MCO reads
/// its `machineConfigPoolSelector`: an absent, empty or unreadable one
/// selects none (`getManagedKeyCtrCfg`,
/// `pkg/controller/container-runtime-config/helpers.go`).
pub fn selects_pool(crc: &Value, pool: &ObservedPool) -> bool {
    let selector: Option<PoolSelector> =
        serde_json::from_value(crc["spec"]["machineConfigPoolSelector"].clone()).ok();
    selector::pool_selects(selector.as_ref(), &pool.labels)
}

/// The MachineConfig the controller generates for `pool` from `crc`, once
/// it has recorded its name on it (None before: nothing to wait for by name
/// yet).
pub fn generated_config(crc: &Value, pool: &str) -> Option<String> {
    crc["metadata"]["annotations"][names::MC_NAME_SUFFIX]
        .as_str()
        .map(|suffix| names::generated_runtime_config(pool, suffix))
}

/// The configuration the node runs, by the MCO daemon's word.
pub fn current_config(annotations: &dyn crate::node::Annotations) -> Option<&str> {
    annotations.annotation(CURRENT_CONFIG)
}

/// Whether the node runs (or last ran) a configuration rendered for our
/// pool: it still has, or may still have, the extension.
pub fn runs_kata_pool_config(node: &ObservedNode) -> bool {
    current_config(&node.annotations)
        .is_some_and(|c| c.starts_with(&format!("rendered-{}-", names::POOL_NAME)))
}

/// The daemon's verdict when it failed: `Degraded` (it retries) or
/// `Unreconcilable` (a change it cannot apply at all), with the node's
/// `reason` annotation.
fn failure(node: &ObservedNode) -> Option<String> {
    let state = node.annotations.get(STATE).map(String::as_str)?;
    (state == names::STATE_DEGRADED || state == names::STATE_UNRECONCILABLE).then(|| {
        node.annotations
            .get(REASON)
            .filter(|r| !r.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("the Machine Config Operator reports the node {state}"))
    })
}

/// Where a node that should get Kata stands; `target` is its pool's
/// rendered config once it holds all our inputs.
pub fn install_phase(node: &ObservedNode, target: Option<&str>) -> NodePhase {
    let annotation = |key: &str| node.annotations.get(key).map(String::as_str);
    let Some(target) = target else {
        return NodePhase::WaitingToInstall;
    };
    if let Some(reason) = failure(node) {
        NodePhase::FailedToInstall(reason)
    } else if annotation(CURRENT_CONFIG) == Some(target)
        && annotation(STATE) == Some(names::STATE_DONE)
    {
        NodePhase::Installed
    } else if annotation(DESIRED_CONFIG) == Some(target) {
        NodePhase::Installing
    } else {
        NodePhase::WaitingToInstall
    }
}

/// Where a node that should not have Kata stands; `runs_kata`: its current
/// config carries ours.
pub fn uninstall_phase(node: &ObservedNode, runs_kata: bool) -> NodePhase {
    if !runs_kata {
        return NodePhase::Untouched;
    }
    let annotation = |key: &str| node.annotations.get(key).map(String::as_str);
    let desired = annotation(DESIRED_CONFIG);
    if let Some(reason) = failure(node) {
        NodePhase::FailedToUninstall(reason)
    } else if desired.is_some() && desired != annotation(CURRENT_CONFIG) {
        NodePhase::Uninstalling
    } else {
        NodePhase::WaitingToUninstall
    }
}

/// Whether a rendered config (as the API server returns it) installs Kata:
/// our CRI-O drop-in, or Kata's extension alone (as an earlier operator's
/// MachineConfig does). The master pool's rendered names do not say.
pub fn carries_kata(rendered: &Value) -> bool {
    installs_extension(rendered) || carries_drop_in(rendered)
}

/// Whether a MachineConfig installs Kata's extension (by either OS's name).
pub fn installs_extension(machine_config: &Value) -> bool {
    machine_config["spec"]["extensions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e == names::EXTENSION || e == names::EXTENSION_FCOS)
}

/// Whether a MachineConfig writes our CRI-O drop-in.
pub fn carries_drop_in(machine_config: &Value) -> bool {
    machine_config["spec"]["config"]["storage"]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|f| f["path"] == kata_proto::contract::DROP_IN_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::worker;
    use serde_json::json;

    #[test]
    fn a_pool_object_reads_its_rendered_configuration() {
        let pool = ObservedPool::from_object(&json!({
            "metadata": {"name": "kata-oc"},
            "spec": {"configuration": {"name": "rendered-kata-oc-1",
                "source": [{"name": "00-worker"}, {"name": names::MACHINE_CONFIG_NAME}]},
                "nodeSelector": {"matchLabels": {names::KATA_POOL_ROLE_LABEL: ""}}},
            "status": {"machineCount": 2}
        }));
        assert_eq!(pool.config_with_extension(), Some("rendered-kata-oc-1"));
        assert_eq!(pool.config_with(&["00-worker", "99-x"]), None);
        assert_eq!(pool.machine_count, 2);
        assert_eq!(pool.name, "kata-oc");
        assert!(pool.node_selector.is_some());
        let unrendered = ObservedPool::from_object(&json!({"spec": {}}));
        assert_eq!(unrendered, ObservedPool::default());
        assert_eq!(unrendered.config_with_extension(), None);
    }

    #[test]
    fn the_last_container_runtime_config_condition_is_the_verdict() {
        let crc = |generation: i64, observed: i64, types: &[&str]| {
            let conditions: Vec<_> = types
                .iter()
                .map(|t| json!({"type": t, "status": "True", "message": format!("Error: {t}")}))
                .collect();
            json!({"metadata": {"generation": generation},
                   "status": {"observedGeneration": observed, "conditions": conditions}})
        };
        assert_eq!(
            runtime_config_verdict(&json!({})),
            RuntimeConfigVerdict::Pending
        );
        assert_eq!(
            runtime_config_verdict(&crc(1, 1, &["Failure", "Success"])),
            RuntimeConfigVerdict::Succeeded
        );
        assert_eq!(
            runtime_config_verdict(&crc(1, 1, &["Success", "Failure"])),
            RuntimeConfigVerdict::Failed("Error: Failure".into())
        );
        assert_eq!(
            runtime_config_verdict(&crc(2, 1, &["Success"])),
            RuntimeConfigVerdict::Pending,
            "an older generation's verdict says nothing about this one"
        );
    }

    #[test]
    fn unreconcilable_is_a_failure_with_the_nodes_reason() {
        let mut node = worker("w0", &[]);
        node.annotations
            .insert(STATE.into(), names::STATE_UNRECONCILABLE.into());
        node.annotations
            .insert(REASON.into(), "can't reconcile config: ignition".into());
        node.annotations
            .insert(DESIRED_CONFIG.into(), "rendered-kata-oc-2".into());
        assert_eq!(
            install_phase(&node, Some("rendered-kata-oc-2")),
            NodePhase::FailedToInstall("can't reconcile config: ignition".into())
        );
        assert_eq!(install_phase(&node, None), NodePhase::WaitingToInstall);
        assert_eq!(uninstall_phase(&node, false), NodePhase::Untouched);
    }

    #[test]
    fn only_a_rendered_config_with_our_drop_in_carries_kata() {
        let with = json!({"spec": {"config": {"storage": {"files": [{"path": kata_proto::contract::DROP_IN_PATH}]}}}});
        assert!(carries_kata(&with));
        assert!(!carries_kata(&json!({"spec": {"config": {}}})));
    }
}
