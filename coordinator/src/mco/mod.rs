//! The OpenShift Machine Config Operator backend: everything the MCO
//! defines, in one place.
//!
//! - [`names`]: its vocabulary (kinds, annotations, node states) and the
//!   names of the objects we create for it;
//! - [`placement`]: which pool the MCO will manage each selected node in
//!   (our `kata-oc`, the master pool, or an admin's pool we leave alone);
//! - [`os`]: the extension's name on the nodes' OS;
//! - [`objects`]: the `kata-oc` MachineConfigPool, our MachineConfig per
//!   pool (the extension and the CRI-O drop-in) and the
//!   ContainerRuntimeConfig;
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
//! marked for the install), `assess` (each node's phase from whatever it reads on
//! the node) and `uninstall` (steps, whether every node is back, and the
//! objects to remove last). The planner, the applier, the health channel and
//! the status do not change.

#[cfg(test)]
mod cache_tests;
pub mod cluster;
pub mod names;
pub mod objects;
pub mod observe;
pub mod os;
pub mod placement;
#[cfg(test)]
mod planner_tests;
#[cfg(test)]
mod prerequisites_tests;
pub mod rbac;
pub mod takeover;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::api::{AdoptedMachineConfig, KataConfigSpec, LogLevel};
use crate::objects::CrioRuntimeHandler;
use crate::plan::rollout::{
    Assessment, HostConfigRollout, NodeAssessment, NodePhase, UninstallProgress, UpdatingNode,
};
use crate::plan::{NodeTarget, ObservedNode, Step, apply_if_drifted};
use crate::profiles::{KataRuntimeProfile, render};
use names::{ObjectNames, RoleNames};
pub use observe::ObservedPool;
use observe::RuntimeConfigVerdict;
use placement::{NodePlacement, Placement, Role};

/// The kinds of the MCO's CRDs the coordinator watches and writes: it waits
/// until the API server serves them.
pub const SERVED_KINDS: [crate::kind::Kind; 3] = [
    names::MACHINE_CONFIG,
    names::POOL,
    names::CONTAINER_RUNTIME_CONFIG,
];

/// What the MCO-side objects look like now, and how to move them: the
/// Machine Config Operator's [`HostConfigRollout`].
#[derive(Clone, Debug, Default)]
pub struct MachineConfigRollout {
    /// Every MachineConfigPool: where nodes are, and how far each rendered.
    pub pools: Vec<ObservedPool>,
    /// Our `kata-oc` pool, as the API server returns it (None: absent).
    pub pool_object: Option<Value>,
    /// Our MachineConfig and ContainerRuntimeConfig for `kata-oc`.
    pub machine_config: Option<Value>,
    pub container_runtime_config: Option<Value>,
    /// The same for the master pool.
    pub master_machine_config: Option<Value>,
    pub master_container_runtime_config: Option<Value>,
    /// Every other ContainerRuntimeConfig (other admins'): the MCO renders
    /// no pool one of them selects while it has failed or has no verdict.
    pub foreign_runtime_configs: Vec<Value>,
    /// Rendered configs some node runs that carry our drop-in, where the
    /// name does not say (the master pool's).
    pub rendered_with_kata: BTreeSet<String>,
    /// Which name each pool's objects have here.
    pub naming: RoleNames,
}

fn delete(kind: crate::kind::Kind, name: &'static str) -> Step {
    Step::Delete {
        kind,
        name: name.into(),
    }
}

fn set_pool_role(node: &ObservedNode, present: bool) -> Step {
    Step::SetNodeLabel {
        node: node.name.clone(),
        label: names::KATA_POOL_ROLE_LABEL,
        present,
    }
}

impl MachineConfigRollout {
    /// Takes our MachineConfigs and ContainerRuntimeConfigs, found under
    /// any of our names: settles which name each pool's objects have
    /// ([`RoleNames`]) and holds each pool's. An object under a name
    /// neither pool has is not held (no plan makes one).
    pub fn hold_ours(
        &mut self,
        machine_configs: Vec<(&'static str, Value)>,
        runtime_configs: Vec<(&'static str, Value)>,
    ) {
        let plain = |objects: &[(&str, Value)], plain: &str| {
            objects
                .iter()
                .find(|(name, _)| *name == plain)
                .map(|(_, o)| o.clone())
        };
        let mc_on_master = plain(&machine_configs, names::MACHINE_CONFIG_NAME)
            .is_some_and(|mc| mc["metadata"]["labels"][names::ROLE_LABEL] == names::MASTER_POOL);
        let crc_on_master = plain(&runtime_configs, names::CONTAINER_RUNTIME_CONFIG_NAME)
            .is_some_and(|crc| {
                !crc["spec"]["machineConfigPoolSelector"]["matchLabels"]
                    [names::MASTER_POOL_SELECTOR_LABEL]
                    .is_null()
            });
        self.naming = RoleNames::settle(mc_on_master, crc_on_master);
        let naming = self.naming;
        self.machine_config = plain(&machine_configs, naming.kata_pool.machine_config);
        self.master_machine_config = plain(&machine_configs, naming.master.machine_config);
        self.container_runtime_config = plain(&runtime_configs, naming.kata_pool.runtime_config);
        self.master_container_runtime_config =
            plain(&runtime_configs, naming.master.runtime_config);
    }

    pub fn pool(&self, name: &str) -> Option<&ObservedPool> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn machine_config_of(&self, role: Role) -> Option<&Value> {
        match role {
            Role::KataPool => self.machine_config.as_ref(),
            Role::Master => self.master_machine_config.as_ref(),
        }
    }

    fn names_of(&self, role: Role) -> ObjectNames {
        role.objects(&self.naming)
    }

    fn runtime_config_of(&self, role: Role) -> Option<&Value> {
        match role {
            Role::KataPool => self.container_runtime_config.as_ref(),
            Role::Master => self.master_container_runtime_config.as_ref(),
        }
    }

    fn placement(&self, spec: &KataConfigSpec, nodes: &[NodeTarget<'_>]) -> Placement {
        placement::place(spec, nodes, &self.pools)
    }

    /// The rendered config the nodes of `role` must reach: the pool's, once
    /// the MCO rendered our MachineConfig into it, and the
    /// ContainerRuntimeConfig's generated one when we asked for a log level.
    /// That one's name depends on the other ContainerRuntimeConfigs selecting
    /// the pool (`-1` beside an admin's), so it is read from what the
    /// controller recorded on ours; until it has, the pool cannot hold it.
    fn target_config(&self, spec: &KataConfigSpec, role: Role) -> Option<&str> {
        let mut inputs = vec![self.names_of(role).machine_config.to_owned()];
        if spec.log_level != LogLevel::Info {
            let ours = self.runtime_config_of(role)?;
            inputs.push(observe::generated_config(ours, role.pool())?);
        }
        let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.pool(role.pool())?.config_with(&inputs)
    }

    /// Whether the node runs (or last ran) a config with our extension.
    fn runs_kata(&self, node: &ObservedNode) -> bool {
        observe::runs_kata_pool_config(node)
            || observe::current_config(&node.annotations)
                .is_some_and(|c| self.rendered_with_kata.contains(c))
    }

    /// Our pool can go: no node is in it, labelled for it or still on its
    /// configuration.
    fn kata_pool_empty<'a>(&self, mut nodes: impl Iterator<Item = &'a ObservedNode>) -> bool {
        nodes.all(|n| {
            !observe::runs_kata_pool_config(n) && !n.has_label(names::KATA_POOL_ROLE_LABEL)
        }) && self
            .pool(names::POOL_NAME)
            .is_none_or(|p| p.machine_count == 0)
    }

    /// The ContainerRuntimeConfig, then the MachineConfig: the MCO renders
    /// no pool while a ContainerRuntimeConfig selecting it has no verdict,
    /// so both land in one rendered config and the nodes reboot once.
    fn apply_role_objects(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        role: Role,
        extension: &str,
        steps: &mut Vec<Step>,
    ) {
        let naming = &self.naming;
        match objects::container_runtime_config_for(role, naming, spec.log_level) {
            Some(crc) => steps.extend(apply_if_drifted(
                names::CONTAINER_RUNTIME_CONFIG,
                crc,
                self.runtime_config_of(role),
            )),
            None if self.runtime_config_of(role).is_some() => steps.push(delete(
                names::CONTAINER_RUNTIME_CONFIG,
                self.names_of(role).runtime_config,
            )),
            None => {}
        }
        if self.adopted(spec, profiles, role).is_some() {
            // Kept as the earlier operator wrote it: the nodes run it now,
            // and writing ours would reboot every one of them.
            return;
        }
        steps.extend(apply_if_drifted(
            names::MACHINE_CONFIG,
            objects::machine_config_for(
                role,
                naming,
                extension,
                &CrioRuntimeHandler::default(),
                &render::files(profiles),
            ),
            self.machine_config_of(role),
        ));
    }

    /// The role's MachineConfig, when it is an earlier operator's that is
    /// kept as it is (see [`takeover`]). Runtime profiles are in ours only:
    /// the first one is the change that replaces it, in the one rollout the
    /// profile costs anyway.
    fn adopted(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        role: Role,
    ) -> Option<&Value> {
        self.machine_config_of(role)
            .filter(|mc| takeover::is_predecessors(mc))
            .filter(|_| spec.adopted_machine_config == AdoptedMachineConfig::Keep)
            .filter(|_| profiles.is_empty())
    }

    /// Deletes the role's ContainerRuntimeConfig and MachineConfig, the
    /// pool re-renders without them.
    fn delete_role_objects(&self, role: Role, steps: &mut Vec<Step>) {
        if self.runtime_config_of(role).is_some() {
            steps.push(delete(
                names::CONTAINER_RUNTIME_CONFIG,
                self.names_of(role).runtime_config,
            ));
        }
        if self.machine_config_of(role).is_some() {
            steps.push(delete(
                names::MACHINE_CONFIG,
                self.names_of(role).machine_config,
            ));
        }
    }

    /// What the ContainerRuntimeConfigs selecting each pool we install
    /// through say: ours, and other admins' while the pool has still to
    /// render what we need (once it has, its nodes move onto that config
    /// whatever the render does next). A failure holds the pool until a
    /// person acts; a verdict still to come is a wait of seconds.
    fn runtime_config_news(
        &self,
        spec: &KataConfigSpec,
        placement: &Placement,
        assessment: &mut Assessment,
    ) {
        for role in Role::ALL {
            if !placement.role(role).wanted() {
                continue;
            }
            if spec.log_level != LogLevel::Info {
                let verdict = self.runtime_config_of(role).map_or(
                    RuntimeConfigVerdict::Pending,
                    observe::runtime_config_verdict,
                );
                let what = format!(
                    "ContainerRuntimeConfig {}",
                    self.names_of(role).runtime_config
                );
                report_verdict(assessment, role.pool(), &what, verdict);
            }
            if self.target_config(spec, role).is_some() {
                continue;
            }
            let pool = self.pool(role.pool());
            for crc in &self.foreign_runtime_configs {
                if pool.is_some_and(|p| observe::selects_pool(crc, p)) {
                    let name = crc["metadata"]["name"].as_str().unwrap_or_default();
                    let what = format!("ContainerRuntimeConfig {name} (not the operator's)");
                    let verdict = observe::runtime_config_verdict(crc);
                    report_verdict(assessment, role.pool(), &what, verdict);
                }
            }
        }
    }
}

/// A ContainerRuntimeConfig's verdict, as what holds `pool`.
fn report_verdict(
    assessment: &mut Assessment,
    pool: &str,
    what: &str,
    verdict: RuntimeConfigVerdict,
) {
    match verdict {
        RuntimeConfigVerdict::Failed(message) => assessment.failures.push(format!(
            "{what} failed, which keeps pool {pool} from rendering: {message}"
        )),
        RuntimeConfigVerdict::Pending => assessment.waiting_on.push(format!(
            "pool {pool} waits for the Machine Config Operator to accept {what}"
        )),
        RuntimeConfigVerdict::Succeeded => {}
    }
}

impl HostConfigRollout for MachineConfigRollout {
    fn install_steps(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        nodes: &[NodeTarget<'_>],
    ) -> Vec<Step> {
        let placement = self.placement(spec, nodes);
        let mut steps = Vec::new();
        let kata_pool = &placement.kata_pool;
        if kata_pool.wanted() {
            steps.extend(apply_if_drifted(
                names::POOL,
                objects::machine_config_pool(),
                self.pool_object.as_ref(),
            ));
            self.apply_role_objects(
                spec,
                profiles,
                Role::KataPool,
                kata_pool.extension,
                &mut steps,
            );
        } else if kata_pool.refusal.is_none() && self.kata_pool_empty(nodes.iter().map(|t| t.node))
        {
            // No node of ours left in it: nothing to render, no pool to
            // show (as on a compact cluster, where OSC creates none).
            self.delete_role_objects(Role::KataPool, &mut steps);
            if self.pool_object.is_some() {
                steps.push(delete(names::POOL, names::POOL_NAME));
            }
        }
        // The pool's nodeSelector is our role label: labelling a node is
        // what moves it into the pool (and removing it, out). A node moves
        // in only once the pool is rendered with everything of ours, so it
        // is rebooted once, straight onto the complete configuration.
        let rendered = self.target_config(spec, Role::KataPool).is_some();
        for (node, placed) in nodes.iter().map(|t| t.node).zip(&placement.nodes) {
            let labelled = node.has_label(names::KATA_POOL_ROLE_LABEL);
            let wanted = match placed {
                NodePlacement::Install(Role::KataPool) => labelled || rendered,
                NodePlacement::Refused { frozen: true, .. } => labelled,
                _ => false,
            };
            if wanted != labelled {
                steps.push(set_pool_role(node, wanted));
            }
        }
        let master = &placement.master;
        if master.wanted() {
            self.apply_role_objects(spec, profiles, Role::Master, master.extension, &mut steps);
        } else if master.refusal.is_none() {
            self.delete_role_objects(Role::Master, &mut steps);
        }
        steps
    }

    fn assess(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        nodes: &[NodeTarget<'_>],
    ) -> Assessment {
        let placement = self.placement(spec, nodes);
        let phases = nodes
            .iter()
            .map(|t| t.node)
            .zip(&placement.nodes)
            .map(|(node, placed)| NodeAssessment {
                name: node.name.clone(),
                phase: match placed {
                    NodePlacement::Install(role) => {
                        observe::install_phase(node, self.target_config(spec, *role))
                    }
                    NodePlacement::Refused { reason, .. } => NodePhase::Refused(reason.clone()),
                    NodePlacement::Held => NodePhase::Untouched,
                    NodePlacement::NotTargeted => {
                        observe::uninstall_phase(node, self.runs_kata(node))
                    }
                },
            })
            .collect();
        let mut assessment = Assessment {
            phases,
            refusals: placement.refusals(),
            ..Default::default()
        };
        self.runtime_config_news(spec, &placement, &mut assessment);
        for role in Role::ALL
            .into_iter()
            .filter(|r| placement.role(*r).wanted())
        {
            if self.adopted(spec, profiles, role).is_some() {
                let name = self.names_of(role).machine_config;
                assessment
                    .adopted
                    .push(takeover::kept_message(name, role.pool()));
            }
        }
        assessment
    }

    fn uninstall(&self, nodes: &[ObservedNode]) -> UninstallProgress {
        let labelled = nodes
            .iter()
            .filter(|n| n.has_label(names::KATA_POOL_ROLE_LABEL));
        let mut steps: Vec<Step> = labelled.map(|n| set_pool_role(n, false)).collect();
        // The master pool's nodes leave Kata when its MachineConfig goes.
        self.delete_role_objects(Role::Master, &mut steps);
        let master_rendered_without_ours = self
            .pool(names::MASTER_POOL)
            .is_none_or(|p| !p.renders(self.naming.master.machine_config));
        let nodes_back = self.kata_pool_empty(nodes.iter())
            && nodes.iter().all(|n| !self.runs_kata(n))
            && self.master_machine_config.is_none()
            && master_rendered_without_ours;
        // The MCO keeps a deleted ContainerRuntimeConfig (its finalizer)
        // until it has removed the MachineConfig generated from it. Ours
        // goes first, and the uninstall is over only once it is gone: else
        // the KataConfig would vanish while the ContainerRuntimeConfig is
        // still there, and nobody would look at it again.
        if nodes_back && self.container_runtime_config.is_some() {
            steps.push(delete(
                names::CONTAINER_RUNTIME_CONFIG,
                self.naming.kata_pool.runtime_config,
            ));
        }
        let rolled_back = nodes_back
            && self.container_runtime_config.is_none()
            && self.master_container_runtime_config.is_none();
        // Our pool's objects go once no node is in it: deleting them while
        // nodes still are would re-render the pool and could start a node
        // on a config it is about to leave anyway. The pool goes last.
        let mut cleanup = Vec::new();
        self.delete_role_objects(Role::KataPool, &mut cleanup);
        if self.pool_object.is_some() {
            cleanup.push(delete(names::POOL, names::POOL_NAME));
        }
        UninstallProgress {
            steps,
            rolled_back,
            cleanup,
        }
    }

    fn owned_objects(&self) -> Vec<(crate::kind::Kind, Value)> {
        [
            (names::POOL, &self.pool_object),
            (names::MACHINE_CONFIG, &self.machine_config),
            (
                names::CONTAINER_RUNTIME_CONFIG,
                &self.container_runtime_config,
            ),
            (names::MACHINE_CONFIG, &self.master_machine_config),
            (
                names::CONTAINER_RUNTIME_CONFIG,
                &self.master_container_runtime_config,
            ),
        ]
        .into_iter()
        .filter_map(|(kind, object)| object.clone().map(|o| (kind, o)))
        .collect()
    }

    /// The nodes whose MCO daemon is `Working`, toward their
    /// `desiredConfig`.
    fn updating_nodes<'a>(&self, nodes: &'a [ObservedNode]) -> Vec<UpdatingNode<'a>> {
        nodes
            .iter()
            .filter(|n| {
                n.annotations.get(names::STATE).map(String::as_str) == Some(names::STATE_WORKING)
            })
            .map(|n| UpdatingNode {
                name: n.name.as_str(),
                toward: n.annotations.get(names::DESIRED_CONFIG).map(String::as_str),
            })
            .collect()
    }
}
