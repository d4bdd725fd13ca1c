//! Our node labels that another field manager also owns: pure decisions.
//!
//! The labeller writes its labels by server-side apply, and an apply
//! without a label releases only the applier's share of it. When another
//! manager also owns the label (an admin's `kubectl label`, an `Update`; a
//! GitOps tool's apply), the label stays, and applying again changes
//! nothing. So a label that must come off and has other owners is removed
//! with a JSON patch (`test` its value, `remove` it), which removes it
//! whoever owns it.
//!
//! That is done even for a label an admin set on purpose: the runtime label
//! sends Kata pods to the node, and a node the agent reports not ready must
//! not keep it. But the other side may put it back (a GitOps tool
//! reconciling, a script): after [`ContestPolicy::removals`] removals within
//! [`ContestPolicy::window`] the labeller stops removing it and says so in
//! the node's `KataRuntimeReady` condition, in one Event and in a metric,
//! rather than fighting. It tries again only once the set of other owners
//! changes, or the label was gone in between.
//!
//! The report goes in the node's `KataRuntimeReady` condition rather than
//! in the KataConfig's Degraded condition: the fault is one node's, the
//! labeller writes only node marks and owns that condition (the
//! KataConfig's status is the reconciler's), it sits next to the label for
//! whoever looks at the node, and the KataConfig's status already lists a
//! targeted node whose condition is False, with its message.

use std::time::{Duration, Instant};

use crate::node::CachedNode;
use serde_json::json;

use super::ReadyCondition;
use crate::plan::ownership;

/// Another field manager owning one of our labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoOwner {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
}

/// The managers other than ours that own `label` on `node`, as its
/// `metadata.managedFields` say (the cached copy keeps exactly these
/// entries: [`crate::node::slim_node`]).
pub fn co_owners(node: &CachedNode, label: &str) -> Vec<CoOwner> {
    let Some(entries) = node.metadata.managed_fields.as_ref() else {
        return Vec::new();
    };
    let observed = json!({ "metadata": { "managedFields": entries } });
    let path = vec!["metadata".to_owned(), "labels".to_owned(), label.to_owned()];
    ownership::other_owners("Node", &[path], &observed)
        .into_iter()
        .map(|c| CoOwner {
            manager: c.manager,
            operation: c.operation,
        })
        .collect()
}

/// `owners` for people: `"gitops" (Apply), "admin" (Update)`.
pub fn describe(owners: &[CoOwner]) -> String {
    owners
        .iter()
        .map(|o| format!("{:?} ({})", o.manager, o.operation))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContestPolicy {
    /// Removals of one label within [`Self::window`] after which the
    /// labeller stops removing it.
    pub removals: usize,
    pub window: Duration,
}

impl ContestPolicy {
    pub const DEFAULT: ContestPolicy = ContestPolicy {
        removals: 3,
        window: Duration::from_secs(600),
    };
}

/// How a label that must come off is taken off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Only our managers own it: the apply without it removes it.
    Apply,
    /// Others own it too: a JSON patch removes it.
    Patch,
    /// It was put back after repeated removals: left in place, reported.
    Hold,
}

/// What is said about it, once per change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// These owners were seen for the first time: the label comes off by
    /// JSON patch.
    CoOwned,
    /// Removal stopped.
    Held,
}

/// What the labeller remembers of one label on one node that must come off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contest {
    /// When the label was removed by JSON patch, within the window.
    removals: Vec<Instant>,
    /// The other owners when removal stopped.
    held: Option<Vec<CoOwner>>,
    /// The other owners last announced.
    announced: Option<Vec<CoOwner>>,
}

impl Contest {
    /// How the label comes off now that `owners` own it besides us, and
    /// what to announce. A [`Removal::Patch`] is counted as done: a patch
    /// that failed counts toward the bound as well.
    pub fn step(
        &mut self,
        owners: &[CoOwner],
        now: Instant,
        policy: ContestPolicy,
    ) -> (Removal, Option<Notice>) {
        if owners.is_empty() {
            return (Removal::Apply, None);
        }
        match &self.held {
            Some(held) if held == owners => return (Removal::Hold, None),
            // Someone else owns it now: worth another try.
            Some(_) => self.forget_hold(),
            None => {}
        }
        self.removals
            .retain(|t| now.saturating_duration_since(*t) < policy.window);
        if self.removals.len() >= policy.removals {
            self.held = Some(owners.to_vec());
            return (Removal::Hold, Some(Notice::Held));
        }
        self.removals.push(now);
        let new_owners = self.announced.as_deref() != Some(owners);
        self.announced = Some(owners.to_vec());
        (Removal::Patch, new_owners.then_some(Notice::CoOwned))
    }

    /// The label was seen gone: whoever adds it again starts afresh.
    pub fn label_gone(&mut self) {
        self.forget_hold();
    }

    fn forget_hold(&mut self) {
        self.held = None;
        self.removals.clear();
    }

    /// Whether anything is left to remember at `now`: a hold, or removals
    /// within the window (a flip-flop is counted across them).
    pub fn live(&self, now: Instant, policy: ContestPolicy) -> bool {
        self.held.is_some()
            || self
                .removals
                .iter()
                .any(|t| now.saturating_duration_since(*t) < policy.window)
    }
}

/// The condition of a node whose `label` is held: not ready, saying which
/// label stays, who holds it, and why the node is not ready.
pub fn held_condition(
    label: &str,
    owners: &[CoOwner],
    policy: ContestPolicy,
    not_ready: &ReadyCondition,
) -> ReadyCondition {
    ReadyCondition {
        ready: false,
        reason: "LabelHeldByOtherManager".into(),
        message: format!(
            "{label} should be removed but field manager {} put it back after {} removals \
             within {}s; the coordinator no longer removes it, and pods using the kata \
             RuntimeClass may still land here. Remove the label from that tool's \
             configuration, then from the node. Not ready because {}: {}",
            describe(owners),
            policy.removals,
            policy.window.as_secs(),
            not_ready.reason,
            not_ready.message
        ),
    }
}

/// The Event note for `notice` about `label` on a node.
pub fn notice_note(
    notice: Notice,
    label: &str,
    owners: &[CoOwner],
    policy: ContestPolicy,
) -> String {
    match notice {
        Notice::CoOwned => format!(
            "{label} is also owned by field manager {}, so applying without it cannot \
             remove it; the coordinator removes it with a JSON patch (after {} removals \
             within {}s it stops and reports instead)",
            describe(owners),
            policy.removals,
            policy.window.as_secs()
        ),
        Notice::Held => format!(
            "{label} was put back by field manager {} after {} removals within {}s; the \
             coordinator stops removing it until its owners change (see the node's \
             KataRuntimeReady condition)",
            describe(owners),
            policy.removals,
            policy.window.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests;
