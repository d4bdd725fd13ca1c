//! Which node transitions become Events: pure.
//!
//! A transition is a node whose phase in the status last written differs
//! from its phase now. Both come from observation (the KataConfig's status
//! and the plan's node lists), never from memory, so a restarted
//! coordinator that finds the status it left behind announces nothing
//! again, and a steady cluster announces nothing at all.

use crate::api::KataNodesStatus;

/// Event reasons (CamelCase, as for condition reasons).
pub mod reason {
    /// A node now runs the Kata host configuration.
    pub const NODE_INSTALLED: &str = "NodeInstalled";
    /// The rollout failed on a node.
    pub const NODE_FAILED_TO_INSTALL: &str = "NodeFailedToInstall";
}

/// A node phase change an admin hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeTransition {
    Installed {
        node: String,
    },
    /// `error` is the rollout's reason (on OpenShift the Machine Config
    /// Operator's), empty when it gave none.
    FailedToInstall {
        node: String,
        error: String,
    },
}

impl NodeTransition {
    pub fn node(&self) -> &str {
        match self {
            NodeTransition::Installed { node } | NodeTransition::FailedToInstall { node, .. } => {
                node
            }
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            NodeTransition::Installed { .. } => reason::NODE_INSTALLED,
            NodeTransition::FailedToInstall { .. } => reason::NODE_FAILED_TO_INSTALL,
        }
    }

    /// A failure asks an admin to look; an install does not.
    pub fn is_warning(&self) -> bool {
        matches!(self, NodeTransition::FailedToInstall { .. })
    }

    /// For a person. Deterministic, so the same transition published twice
    /// (a retried reconcile) aggregates into one Event's series.
    pub fn note(&self) -> String {
        match self {
            NodeTransition::Installed { node } => {
                format!("the Kata runtime's host configuration is installed on node {node}")
            }
            NodeTransition::FailedToInstall { node, error } if error.is_empty() => {
                format!("installing the Kata runtime failed on node {node}")
            }
            NodeTransition::FailedToInstall { node, error } => {
                format!("installing the Kata runtime failed on node {node}: {error}")
            }
        }
    }
}

/// The nodes that entered `installed` or `failed_to_install` between the
/// status last written (`recorded`; default when none was) and `now`, in
/// the order of `now`'s lists.
pub fn node_transitions(recorded: &KataNodesStatus, now: &KataNodesStatus) -> Vec<NodeTransition> {
    let installed = now
        .installed
        .iter()
        .filter(|node| !recorded.installed.contains(node))
        .map(|node| NodeTransition::Installed { node: node.clone() });
    let failed = now
        .failed_to_install
        .iter()
        .filter(|failed| {
            !recorded
                .failed_to_install
                .iter()
                .any(|before| before.name == failed.name)
        })
        .map(|failed| NodeTransition::FailedToInstall {
            node: failed.name.clone(),
            error: failed.error.clone(),
        });
    installed.chain(failed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FailedNode;

    fn status(installed: &[&str], failed: &[(&str, &str)]) -> KataNodesStatus {
        KataNodesStatus {
            installed: installed.iter().map(|n| n.to_string()).collect(),
            failed_to_install: failed
                .iter()
                .map(|(name, error)| FailedNode {
                    name: name.to_string(),
                    error: error.to_string(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_first_status_announces_every_installed_and_failed_node() {
        let transitions = node_transitions(
            &KataNodesStatus::default(),
            &status(&["a", "b"], &[("c", "drain failed")]),
        );
        assert_eq!(
            transitions,
            [
                NodeTransition::Installed { node: "a".into() },
                NodeTransition::Installed { node: "b".into() },
                NodeTransition::FailedToInstall {
                    node: "c".into(),
                    error: "drain failed".into()
                },
            ]
        );
        assert!(transitions[2].is_warning() && !transitions[0].is_warning());
        assert_eq!(transitions[2].reason(), reason::NODE_FAILED_TO_INSTALL);
        assert!(transitions[2].note().ends_with("on node c: drain failed"));
    }

    #[test]
    fn an_unchanged_status_announces_nothing() {
        let steady = status(&["a", "b"], &[("c", "drain failed")]);
        assert_eq!(node_transitions(&steady, &steady), []);
    }

    #[test]
    fn a_failure_whose_message_changes_is_not_a_new_transition() {
        let before = status(&[], &[("c", "drain failed")]);
        let after = status(&[], &[("c", "drain failed: PDB")]);
        assert_eq!(node_transitions(&before, &after), []);
    }

    #[test]
    fn only_the_node_that_moved_is_announced() {
        let before = status(&["a"], &[("c", "drain failed")]);
        let after = status(&["a", "c"], &[]);
        assert_eq!(
            node_transitions(&before, &after),
            [NodeTransition::Installed { node: "c".into() }]
        );
        // Leaving the installed list is not an install transition.
        assert_eq!(node_transitions(&after, &status(&["c"], &[])), []);
        let failed_again = status(&["a"], &[("c", "")]);
        let transitions = node_transitions(&after, &failed_again);
        assert_eq!(transitions.len(), 1);
        assert_eq!(
            transitions[0].note(),
            "installing the Kata runtime failed on node c"
        );
    }
}
