//! Which node transitions become Events: pure.
//!
//! A transition is a node whose phase in the status last written differs
//! from its phase now. The status holds at most
//! [`crate::api::MAX_LISTED_NODES`] nodes a list, so what it was written
//! from comes, in full, from the coordinator's memory of its own last write
//! ([`Previous::new`]), used only while the status observed is still that
//! write; a restarted coordinator (or a new leader) has only the status it
//! finds. Either way nothing is announced twice: a restarted coordinator
//! that finds the status it left behind announces nothing again, and a
//! steady cluster announces nothing at all. From a written list that leaves
//! nodes out, a node it does not show is known not to have been in it only
//! when its name sorts before the list's last entry (the list is the sorted
//! full list's first entries); of any other node nothing is known, and it
//! is not announced, rather than announced a second time.

use std::collections::BTreeSet;

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

/// What a coordinator remembers of its last status write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastWrite {
    /// The full node lists the status was written from.
    pub full: KataNodesStatus,
    /// The status's node lists as observed when it was written: what a
    /// cache that has not seen the write yet still shows.
    pub before: KataNodesStatus,
}

/// The node lists the status last written was made from, as far as they
/// are known.
#[derive(Clone, Copy, Debug)]
pub struct Previous<'a>(&'a KataNodesStatus);

impl<'a> Previous<'a> {
    /// `written`: the node lists of the KataConfig's status as observed
    /// (default before the first write); `last`: what this coordinator
    /// remembers of its own last write, if it made one. The full lists are
    /// used only when `written` is that write (in its capped form), or what
    /// it replaced (the cache is behind): otherwise another writer (an
    /// earlier leader) came between, and only `written` says what was
    /// announced.
    pub fn new(written: &'a KataNodesStatus, last: Option<&'a LastWrite>) -> Self {
        match last {
            Some(last)
                if *written == last.before || super::nodes::written(&last.full) == *written =>
            {
                Previous(&last.full)
            }
            _ => Previous(written),
        }
    }
}

/// The names of one previous list, and whether a name absent from them can
/// still have been in the list (one that leaves nodes out).
struct Listed<'a> {
    names: BTreeSet<&'a str>,
    /// With nodes left out: the last name shown. Names after it may be
    /// among those left out.
    shown_until: Option<&'a str>,
}

impl<'a> Listed<'a> {
    fn new(names: impl Iterator<Item = &'a str>, omitted: Option<i32>) -> Self {
        let names: BTreeSet<&str> = names.collect();
        let shown_until = omitted
            .filter(|count| *count > 0)
            .map(|_| names.last().copied().unwrap_or_default());
        Listed { names, shown_until }
    }

    /// Whether `node` was certainly not in the list.
    fn certainly_absent(&self, node: &str) -> bool {
        !self.names.contains(node) && self.shown_until.is_none_or(|last| node < last)
    }
}

/// The nodes that entered `installed` or `failed_to_install` between the
/// status last written (`previous`) and `now` (the planner's full lists),
/// in the order of `now`'s lists.
pub fn node_transitions(previous: Previous<'_>, now: &KataNodesStatus) -> Vec<NodeTransition> {
    let recorded = previous.0;
    let omitted = recorded.omitted.clone().unwrap_or_default();
    let was_installed = Listed::new(
        recorded.installed.iter().map(String::as_str),
        omitted.installed,
    );
    let had_failed = Listed::new(
        recorded.failed_to_install.iter().map(String::as_str),
        omitted.failed_to_install,
    );
    let installed = now
        .installed
        .iter()
        .filter(|node| was_installed.certainly_absent(node))
        .map(|node| NodeTransition::Installed { node: node.clone() });
    let failed = now
        .failed_to_install
        .iter()
        .filter(|node| had_failed.certainly_absent(node))
        .map(|node| NodeTransition::FailedToInstall {
            node: node.clone(),
            error: super::nodes::failure_reason(now, node).to_owned(),
        });
    installed.chain(failed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FailedNode, MAX_LISTED_NODES};
    use crate::plan::nodes::written;

    /// Transitions measured against a status written by another
    /// coordinator (nothing remembered).
    fn node_transitions(before: &KataNodesStatus, now: &KataNodesStatus) -> Vec<NodeTransition> {
        super::node_transitions(Previous::new(before, None), now)
    }

    fn names(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("{prefix}{i:04}")).collect()
    }

    fn installed_nodes(names: &[String]) -> KataNodesStatus {
        KataNodesStatus {
            installed: names.to_vec(),
            ..Default::default()
        }
    }

    fn status(installed: &[&str], failed: &[(&str, &str)]) -> KataNodesStatus {
        KataNodesStatus {
            installed: installed.iter().map(|n| n.to_string()).collect(),
            failed_to_install: failed.iter().map(|(name, _)| name.to_string()).collect(),
            failure_reasons: failed
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

    #[test]
    fn remembered_full_lists_announce_every_node_beyond_the_cap_exactly_once() {
        let count = MAX_LISTED_NODES + 20;
        let all = names("w", count);
        // The last node, beyond the written list's cap, fails, then installs.
        let mut failing = installed_nodes(&all[..count - 1]);
        failing.failed_to_install = vec![all[count - 1].clone()];
        failing.failure_reasons = vec![FailedNode {
            name: all[count - 1].clone(),
            error: "drain failed".into(),
        }];
        let steady = installed_nodes(&all);
        let failing_written = written(&failing);
        assert_eq!(failing_written.installed.len(), MAX_LISTED_NODES);

        let last = LastWrite {
            full: failing,
            before: KataNodesStatus::default(),
        };
        let previous = Previous::new(&failing_written, Some(&last));
        assert_eq!(
            super::node_transitions(previous, &steady),
            [NodeTransition::Installed {
                node: all[count - 1].clone()
            }]
        );
        // The node falls off the written list's end: it is still installed,
        // so nothing; and a node that left is no transition either.
        let last = LastWrite {
            full: steady.clone(),
            before: failing_written.clone(),
        };
        let steady_written = written(&steady);
        let previous = Previous::new(&steady_written, Some(&last));
        assert_eq!(super::node_transitions(previous, &steady), []);
        let shrunk = installed_nodes(&all[1..]);
        assert_eq!(super::node_transitions(previous, &shrunk), []);
        // A cache that has not seen the write yet shows what it replaced:
        // still the write's full lists, so nothing is announced again.
        let previous = Previous::new(&failing_written, Some(&last));
        assert_eq!(super::node_transitions(previous, &steady), []);
    }

    #[test]
    fn remembered_lists_another_writer_replaced_are_not_trusted() {
        let all = names("w", MAX_LISTED_NODES + 20);
        let last = LastWrite {
            full: installed_nodes(&all[..10]),
            before: KataNodesStatus::default(),
        };
        // Another leader wrote since: every node installed.
        let theirs = written(&installed_nodes(&all));
        let previous = Previous::new(&theirs, Some(&last));
        assert_eq!(
            super::node_transitions(previous, &installed_nodes(&all)),
            [],
            "what the other leader wrote was announced by it"
        );
    }

    #[test]
    fn from_a_capped_written_status_only_nodes_it_cannot_have_held_are_announced() {
        let all = names("w", MAX_LISTED_NODES + 20);
        // Every node but w0003 and the last were installed, as written
        // (capped) by a coordinator that then restarted.
        let before: Vec<String> = all[..all.len() - 1]
            .iter()
            .filter(|n| *n != "w0003")
            .cloned()
            .collect();
        let before = written(&installed_nodes(&before));
        assert!(before.omitted.is_some());
        let transitions = node_transitions(&before, &installed_nodes(&all));
        assert_eq!(
            transitions,
            [NodeTransition::Installed {
                node: "w0003".into()
            }],
            "w0003 sorts inside the written list, so it was not installed; the \
             last node sorts among those left out, so it may have been"
        );
        // The same holds for failures.
        let failed = |names: &[String]| KataNodesStatus {
            failed_to_install: names.to_vec(),
            failure_reasons: names
                .iter()
                .map(|name| FailedNode {
                    name: name.clone(),
                    error: "x".into(),
                })
                .collect(),
            ..Default::default()
        };
        let before = written(&failed(&all[1..all.len() - 1]));
        let transitions = node_transitions(&before, &failed(&all));
        assert_eq!(transitions.len(), 1);
        assert_eq!(transitions[0].node(), "w0000");
    }
}
