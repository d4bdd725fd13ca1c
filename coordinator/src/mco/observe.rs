//! Reading what the Machine Config Operator says: a pool's rendered
//! configuration and each node's progress from the MCO's node annotations.
//! Pure: the objects were read before.

use serde_json::Value;

use super::names::{self, CURRENT_CONFIG, DESIRED_CONFIG, REASON, STATE};
use crate::plan::ObservedNode;
use crate::plan::rollout::NodePhase;

/// What the MCO says about the `kata-oc` pool.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedPool {
    /// `spec.configuration.name`: the rendered config nodes should reach.
    pub rendered_config: Option<String>,
    /// `spec.configuration.source[].name`: the MachineConfigs rendered into it.
    pub sources: Vec<String>,
    pub machine_count: i64,
}

impl ObservedPool {
    pub fn from_object(pool: &Value) -> Self {
        ObservedPool {
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

    /// The rendered config that includes our MachineConfig, once the MCO has
    /// rendered it.
    pub fn config_with_extension(&self) -> Option<&str> {
        self.rendered_config
            .as_deref()
            .filter(|_| self.sources.iter().any(|s| s == names::MACHINE_CONFIG_NAME))
    }
}

/// The configuration the node runs, by the MCO daemon's word.
pub fn current_config(annotations: &std::collections::BTreeMap<String, String>) -> Option<&str> {
    annotations.get(CURRENT_CONFIG).map(String::as_str)
}

/// Whether the node runs (or last ran) a configuration rendered for our
/// pool: it still has, or may still have, the extension.
pub fn runs_kata_pool_config(node: &ObservedNode) -> bool {
    current_config(&node.annotations)
        .is_some_and(|c| c.starts_with(&format!("rendered-{}-", names::POOL_NAME)))
}

/// Where one node stands, from the MCO annotations and our pool.
pub fn node_phase(node: &ObservedNode, targeted: bool, pool: Option<&ObservedPool>) -> NodePhase {
    let annotation = |key: &str| node.annotations.get(key).map(String::as_str);
    let state = annotation(STATE);
    let current = annotation(CURRENT_CONFIG);
    let desired = annotation(DESIRED_CONFIG);
    let reason = || {
        annotation(REASON)
            .unwrap_or("the Machine Config Operator reports the node Degraded")
            .to_string()
    };
    if targeted {
        let Some(target_config) = pool.and_then(ObservedPool::config_with_extension) else {
            return NodePhase::WaitingToInstall;
        };
        if state == Some(names::STATE_DEGRADED) {
            NodePhase::FailedToInstall(reason())
        } else if current == Some(target_config) && state == Some(names::STATE_DONE) {
            NodePhase::Installed
        } else if desired == Some(target_config) {
            NodePhase::Installing
        } else {
            NodePhase::WaitingToInstall
        }
    } else if runs_kata_pool_config(node) {
        if state == Some(names::STATE_DEGRADED) {
            NodePhase::FailedToUninstall(reason())
        } else if desired.is_some() && desired != current {
            NodePhase::Uninstalling
        } else {
            NodePhase::WaitingToUninstall
        }
    } else {
        NodePhase::Untouched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pool_object_reads_its_rendered_configuration() {
        let pool = ObservedPool::from_object(&json!({
            "spec": {"configuration": {"name": "rendered-kata-oc-1",
                "source": [{"name": "00-worker"}, {"name": names::MACHINE_CONFIG_NAME}]}},
            "status": {"machineCount": 2}
        }));
        assert_eq!(pool.config_with_extension(), Some("rendered-kata-oc-1"));
        assert_eq!(pool.machine_count, 2);
        let unrendered = ObservedPool::from_object(&json!({"spec": {}}));
        assert_eq!(unrendered, ObservedPool::default());
        assert_eq!(unrendered.config_with_extension(), None);
    }
}
