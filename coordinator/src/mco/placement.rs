//! Where each selected node gets Kata: the pool the real MCO will manage it
//! in decides it, not we. Pure.
//!
//! The MCO's node controller (`pkg/controller/node/node_controller.go`,
//! GetPoolsForNode) keeps a node that matches `master` in the master pool
//! whatever custom pool it also matches, and leaves a node matching two
//! custom pools unmanaged. So:
//! - a pure worker joins our `kata-oc` pool (we label it);
//! - a node of the master pool (compact, single-node, compact plus workers)
//!   gets Kata from a MachineConfig of role `master`, never our label;
//! - a node already in another custom pool is not ours to move: labelling it
//!   would put it in two custom pools and out of every pool.
//!
//! A MachineConfig for the master pool reaches every node of that pool, so a
//! selection that picks only part of it is refused: nobody's node reboots
//! without being asked for.

use super::names;
use super::observe::ObservedPool;
use super::os;
use crate::api::{KataConfigSpec, PoolSelector};
use crate::plan::{NodeTarget, ObservedNode};
use crate::selector;

/// A pool our MachineConfig goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Our `kata-oc` pool: the worker configuration plus ours.
    KataPool,
    /// The stock master pool.
    Master,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::KataPool, Role::Master];

    /// The pool, which is also the role label of its MachineConfigs.
    pub fn pool(self) -> &'static str {
        match self {
            Role::KataPool => names::POOL_NAME,
            Role::Master => names::MASTER_POOL,
        }
    }

    /// The names of this pool's objects on a cluster named as `naming` says.
    pub fn objects(self, naming: &names::RoleNames) -> names::ObjectNames {
        match self {
            Role::KataPool => naming.kata_pool,
            Role::Master => naming.master,
        }
    }

    /// The pool's label a ContainerRuntimeConfig selects it by.
    pub fn pool_selector_label(self) -> &'static str {
        match self {
            Role::KataPool => names::POOL_SELECTOR_LABEL,
            Role::Master => names::MASTER_POOL_SELECTOR_LABEL,
        }
    }
}

/// What is done for one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePlacement {
    NotTargeted,
    /// Selected, and installed through this pool.
    Install(Role),
    /// Selected, but not installable as things stand. `frozen`: the node's
    /// pool as a whole is refused, so whatever it runs stays as it is (moving
    /// it out would be a reboot nobody asked for either).
    Refused {
        reason: String,
        frozen: bool,
    },
    /// Not selected, but in a pool whose selection is refused: nothing is
    /// applied to that pool, so the node keeps what it runs (Kata or not)
    /// and is not being uninstalled either.
    Held,
}

/// What is done for one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolePlacement {
    /// Indices of the selected nodes installed through this pool.
    pub targets: Vec<usize>,
    /// Why nothing is applied for this pool.
    pub refusal: Option<String>,
    /// The extension its MachineConfig carries.
    pub extension: &'static str,
}

impl RolePlacement {
    /// Our MachineConfig belongs in this pool.
    pub fn wanted(&self) -> bool {
        !self.targets.is_empty() && self.refusal.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Parallel to the nodes.
    pub nodes: Vec<NodePlacement>,
    pub kata_pool: RolePlacement,
    pub master: RolePlacement,
}

impl Placement {
    pub fn role(&self, role: Role) -> &RolePlacement {
        match role {
            Role::KataPool => &self.kata_pool,
            Role::Master => &self.master,
        }
    }

    /// Every refusal, once each, for the KataConfig's conditions.
    pub fn refusals(&self) -> Vec<String> {
        let mut refusals: Vec<String> = Role::ALL
            .iter()
            .filter_map(|role| self.role(*role).refusal.clone())
            .collect();
        for placement in &self.nodes {
            if let NodePlacement::Refused { reason, .. } = placement
                && !refusals.contains(reason)
            {
                refusals.push(reason.clone());
            }
        }
        refusals
    }
}

/// The pool the MCO manages a node in, ours aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachinePool {
    Master,
    /// Other custom pools the node matches (an admin's infra, DPU, … pool).
    Custom(Vec<String>),
    /// Only the worker pool: ours to move into `kata-oc`.
    Worker,
}

fn stock_master_selector() -> PoolSelector {
    PoolSelector {
        match_labels: Some([(names::MASTER_ROLE_LABEL.to_owned(), String::new())].into()),
        match_expressions: None,
    }
}

/// The pool the MCO manages the node in, ignoring `kata-oc` (whose
/// membership is ours to give): master wins over every custom pool, and any
/// other custom pool is the admin's.
pub fn machine_pool(node: &ObservedNode, pools: &[ObservedPool]) -> MachinePool {
    let stock = stock_master_selector();
    let master = pools
        .iter()
        .find(|p| p.name == names::MASTER_POOL)
        .and_then(|p| p.node_selector.as_ref())
        .unwrap_or(&stock);
    if selector::pool_selects(Some(master), &node.labels) {
        return MachinePool::Master;
    }
    let custom: Vec<String> = pools
        .iter()
        .filter(|p| {
            ![names::MASTER_POOL, names::WORKER_POOL, names::POOL_NAME].contains(&p.name.as_str())
        })
        .filter(|p| selector::pool_selects(p.node_selector.as_ref(), &node.labels))
        .map(|p| p.name.clone())
        .collect();
    if custom.is_empty() {
        MachinePool::Worker
    } else {
        MachinePool::Custom(custom)
    }
}

/// The nodes [`place`] places, in order, with what it reads of each.
struct Candidates<'a> {
    nodes: Vec<&'a ObservedNode>,
    targeted: Vec<bool>,
    machine_pools: Vec<MachinePool>,
}

/// Which selected nodes `role`'s pool installs, and whether it refuses them
/// all: for a pool that would reboot unselected nodes, or whose nodes need
/// different extensions.
fn place_role(
    role: Role,
    spec: &KataConfigSpec,
    candidates: &Candidates<'_>,
    placements: &[NodePlacement],
) -> RolePlacement {
    let Candidates {
        nodes,
        targeted,
        machine_pools,
    } = candidates;
    let targets: Vec<usize> = placements
        .iter()
        .enumerate()
        .filter(|(_, p)| **p == NodePlacement::Install(role))
        .map(|(i, _)| i)
        .collect();
    // The nodes its MachineConfig reaches: the labelled ones for our
    // pool, every member for the master pool.
    let reached: Vec<usize> = match role {
        Role::KataPool => targets.clone(),
        Role::Master => (0..nodes.len())
            .filter(|i| machine_pools[*i] == MachinePool::Master)
            .collect(),
    };
    let mut refusal = None;
    if !targets.is_empty() {
        let unselected: Vec<&str> = reached
            .iter()
            .filter(|i| !targeted[**i])
            .map(|i| nodes[*i].name.as_str())
            .collect();
        if !unselected.is_empty() {
            refusal = Some(format!(
                "MachineConfigPool {} also holds {}, which would be rebooted without being selected; select every node of that pool or none of them",
                role.pool(),
                unselected.join(", ")
            ));
        }
    }
    let mut extension = names::EXTENSION;
    if refusal.is_none() && !targets.is_empty() {
        let reached_os = reached
            .iter()
            .map(|i| (nodes[*i].name.as_str(), nodes[*i].os_image.as_deref()));
        match os::extension_for(spec.extension, reached_os) {
            Ok(chosen) => extension = chosen,
            Err(why) => refusal = Some(format!("MachineConfigPool {}: {why}", role.pool())),
        }
    }
    RolePlacement {
        targets,
        refusal,
        extension,
    }
}

/// Where each node gets Kata; [`Placement::nodes`] is in the order of
/// `targets`.
pub fn place(
    spec: &KataConfigSpec,
    targets: &[NodeTarget<'_>],
    pools: &[ObservedPool],
) -> Placement {
    let nodes: Vec<&ObservedNode> = targets.iter().map(|t| t.node).collect();
    let targeted: Vec<bool> = targets.iter().map(|t| t.targeted).collect();
    let machine_pools: Vec<MachinePool> = nodes.iter().map(|n| machine_pool(n, pools)).collect();
    let mut placements: Vec<NodePlacement> = machine_pools
        .iter()
        .zip(&targeted)
        .zip(&nodes)
        .map(|((pool, targeted), node)| match (targeted, pool) {
            (false, _) => NodePlacement::NotTargeted,
            (true, MachinePool::Master) => NodePlacement::Install(Role::Master),
            (true, MachinePool::Worker) => NodePlacement::Install(Role::KataPool),
            (true, MachinePool::Custom(custom)) => NodePlacement::Refused {
                reason: format!(
                    "node {} is in MachineConfigPool {}: the operator does not move a node out of another custom pool (the Machine Config Operator manages no node that matches two custom pools); deselect it, or take it out of that pool",
                    node.name,
                    custom.join(", ")
                ),
                frozen: false,
            },
        })
        .collect();

    let candidates = Candidates {
        nodes,
        targeted,
        machine_pools,
    };
    let roles = Role::ALL.map(|role| place_role(role, spec, &candidates, &placements));
    for role in &roles {
        if let Some(reason) = &role.refusal {
            for i in &role.targets {
                placements[*i] = NodePlacement::Refused {
                    reason: reason.clone(),
                    frozen: true,
                };
            }
        }
    }
    let [kata_pool, master] = roles;
    // The unselected nodes a refused master pool holds (our pool holds only
    // the selected ones) stay as they are with the rest of it.
    if master.refusal.is_some() {
        for (placed, pool) in placements.iter_mut().zip(&candidates.machine_pools) {
            if *placed == NodePlacement::NotTargeted && *pool == MachinePool::Master {
                *placed = NodePlacement::Held;
            }
        }
    }
    Placement {
        nodes: placements,
        kata_pool,
        master,
    }
}

#[cfg(test)]
mod tests;
