//! The seam between the generic planner and whatever installs Kata's host
//! configuration (the runtime package and the CRI-O drop-in) on the nodes.
//!
//! The planner decides *which* nodes get Kata, the RuntimeClass, the
//! finalizer, the node marks and the status. A [`HostConfigRollout`] decides
//! *how* the configuration reaches the targeted nodes and leaves the others,
//! and says where each node stands. On OpenShift that is the Machine Config
//! Operator ([`crate::mco::MachineConfigRollout`]).

use serde_json::Value;

use super::{NodeTarget, ObservedNode, Step};
use crate::api::KataConfigSpec;
use crate::kind::Kind;
use crate::profiles::KataRuntimeProfile;

/// Where one node stands in the rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePhase {
    Installed,
    Installing,
    WaitingToInstall,
    FailedToInstall(String),
    Uninstalling,
    WaitingToUninstall,
    FailedToUninstall(String),
    /// Selected, but the rollout will not install it as things stand (listed
    /// with the failed installs, with why).
    Refused(String),
    /// Not ours and not on our configuration.
    Untouched,
}

/// Where the rollout stands as a whole.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// Each node's phase.
    pub phases: Vec<NodeAssessment>,
    /// Why part of the selection will not be installed, each said once.
    pub refusals: Vec<String>,
    /// Failures of the mechanism itself (not of a node), with its words.
    pub failures: Vec<String>,
    /// What the rollout waits on besides the nodes.
    pub waiting_on: Vec<String>,
    /// Configuration an earlier operator wrote that the nodes run and that
    /// is kept as it is, each said once.
    pub adopted: Vec<String>,
}

/// Where one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAssessment {
    pub name: String,
    pub phase: NodePhase,
}

/// How far taking the configuration back has come.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UninstallProgress {
    /// Writes that move every node off the configuration.
    pub steps: Vec<Step>,
    /// Every node is back on a configuration without Kata.
    pub rolled_back: bool,
    /// Writes that remove what the rollout still holds once `rolled_back`.
    pub cleanup: Vec<Step>,
}

/// Installs the host configuration on the targeted nodes through some
/// mechanism, and takes it back. Implementations are pure: they plan from a
/// snapshot observed before, and the reconciler performs their steps.
pub trait HostConfigRollout {
    /// Writes that bring the rollout's own objects to what `spec` asks and
    /// move exactly the targeted nodes onto the configuration, and the
    /// others off it.
    fn install_steps(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        nodes: &[NodeTarget<'_>],
    ) -> Vec<Step>;

    /// Where every node stands, given which are (still) targets, and what
    /// else holds the rollout.
    fn assess(
        &self,
        spec: &KataConfigSpec,
        profiles: &[KataRuntimeProfile],
        nodes: &[NodeTarget<'_>],
    ) -> Assessment;

    /// Writes that take the configuration off every node, and whether that
    /// has finished.
    fn uninstall(&self, nodes: &[ObservedNode]) -> UninstallProgress;

    /// The objects of its own the rollout writes, as observed: the planner
    /// holds a write to one another manager took over.
    fn owned_objects(&self) -> Vec<(Kind, Value)>;

    /// The nodes the mechanism is updating now, each with the configuration
    /// it moves to (when it says): the clock of a stuck rollout runs on them.
    fn updating_nodes<'a>(&self, nodes: &'a [ObservedNode]) -> Vec<UpdatingNode<'a>>;
}

/// A node the rollout is updating, and the configuration it moves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatingNode<'a> {
    pub name: &'a str,
    pub toward: Option<&'a str>,
}
