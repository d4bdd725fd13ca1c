//! The OpenShift Machine Config Operator backend: everything the MCO
//! defines, in one place.
//!
//! - [`names`]: its vocabulary (kinds, annotations, node states) and the
//!   names of the objects we create for it;
//! - [`objects`]: the `kata-oc` MachineConfigPool, our MachineConfig (the
//!   extension and the CRI-O drop-in) and the ContainerRuntimeConfig;
//! - [`observe`]: reading a pool's rendered configuration and each node's
//!   phase from the MCO's node annotations;
//! - [`cluster`]: the I/O: reading those objects and watching the pools;
//! - [`MachineConfigRollout`]: the [`HostConfigRollout`] the generic planner
//!   asks — targets in, install steps and per-node phases out, and how far
//!   the uninstall has come.
//!
//! # A second backend
//! A cluster without the MCO (plain Kubernetes, where a privileged
//! DaemonSet would install the package and write the drop-in) would get a
//! sibling module with its own snapshot type implementing
//! [`HostConfigRollout`]: `install_steps` (its objects, and how nodes are
//! marked for the install), `node_phase` (from whatever it reads on the
//! node) and `uninstall` (steps, whether every node is back, and the
//! objects to remove last). The planner, the applier, the health channel and
//! the status do not change.

pub mod cluster;
pub mod names;
pub mod objects;
pub mod observe;

use serde_json::Value;

use crate::api::KataConfigSpec;
use crate::plan::rollout::{HostConfigRollout, NodePhase, UninstallProgress};
use crate::plan::{ObservedNode, Step, apply_if_drifted};
pub use observe::ObservedPool;

/// What the MCO-side objects look like now, and how to move them: the
/// Machine Config Operator's [`HostConfigRollout`].
#[derive(Clone, Debug, Default)]
pub struct MachineConfigRollout {
    /// Our objects, as the API server returns them (None: absent).
    pub pool_object: Option<Value>,
    pub pool: Option<ObservedPool>,
    pub machine_config: Option<Value>,
    pub container_runtime_config: Option<Value>,
}

fn delete(kind: crate::kind::Kind, name: &'static str) -> Step {
    Step::Delete { kind, name }
}

fn set_pool_role(node: &ObservedNode, present: bool) -> Step {
    Step::SetNodeLabel {
        node: node.name.clone(),
        label: names::KATA_POOL_ROLE_LABEL,
        present,
    }
}

impl HostConfigRollout for MachineConfigRollout {
    fn install_steps(
        &self,
        spec: &KataConfigSpec,
        nodes: &[ObservedNode],
        targeted: &[bool],
    ) -> Vec<Step> {
        let mut steps: Vec<Step> = [
            apply_if_drifted(
                names::POOL,
                objects::machine_config_pool(),
                self.pool_object.as_ref(),
            ),
            apply_if_drifted(
                names::MACHINE_CONFIG,
                objects::machine_config(&crate::objects::CrioRuntimeHandler::default()),
                self.machine_config.as_ref(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        match objects::container_runtime_config(spec.log_level) {
            Some(crc) => steps.extend(apply_if_drifted(
                names::CONTAINER_RUNTIME_CONFIG,
                crc,
                self.container_runtime_config.as_ref(),
            )),
            None if self.container_runtime_config.is_some() => steps.push(delete(
                names::CONTAINER_RUNTIME_CONFIG,
                names::CONTAINER_RUNTIME_CONFIG_NAME,
            )),
            None => {}
        }
        // The pool's nodeSelector is our role label: labelling a node is
        // what moves it into the pool (and removing it, out).
        for (node, targeted) in nodes.iter().zip(targeted) {
            if *targeted != node.has_label(names::KATA_POOL_ROLE_LABEL) {
                steps.push(set_pool_role(node, *targeted));
            }
        }
        steps
    }

    fn node_phase(&self, node: &ObservedNode, targeted: bool) -> NodePhase {
        observe::node_phase(node, targeted, self.pool.as_ref())
    }

    fn uninstall(&self, nodes: &[ObservedNode]) -> UninstallProgress {
        let labelled = nodes
            .iter()
            .filter(|n| n.has_label(names::KATA_POOL_ROLE_LABEL));
        let mut steps: Vec<Step> = labelled.map(|n| set_pool_role(n, false)).collect();
        if self.container_runtime_config.is_some() {
            steps.push(delete(
                names::CONTAINER_RUNTIME_CONFIG,
                names::CONTAINER_RUNTIME_CONFIG_NAME,
            ));
        }
        if self.machine_config.is_some() {
            steps.push(delete(names::MACHINE_CONFIG, names::MACHINE_CONFIG_NAME));
        }
        let rolled_back = nodes.iter().all(|n| {
            !observe::runs_kata_pool_config(n) && !n.has_label(names::KATA_POOL_ROLE_LABEL)
        }) && self.pool.as_ref().is_none_or(|p| p.machine_count == 0);
        // The pool goes last: deleting it while nodes still run its rendered
        // configuration would leave them on it.
        let cleanup = self
            .pool_object
            .is_some()
            .then(|| delete(names::POOL, names::POOL_NAME))
            .into_iter()
            .collect();
        UninstallProgress {
            steps,
            rolled_back,
            cleanup,
        }
    }
}
