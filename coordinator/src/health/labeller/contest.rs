//! The labeller's side of labels another field manager co-owns
//! ([`crate::health::marks::contest`] decides): what it remembers per node
//! and label, how a planned write changes, the JSON patches and the Events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::node::CachedNode;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::{Labeller, NodeWrite, current_condition};
use crate::health::marks::CurrentMarks;
use crate::health::marks::contest::{
    CoOwner, Contest, ContestPolicy, Notice, Removal, co_owners, describe, held_condition,
    notice_note,
};
use crate::metrics::{CONTEST_HELD, CONTEST_REMOVED, OutcomeLabel};
use crate::names;

/// Event reasons: the label has other owners and comes off by JSON patch;
/// removal stopped.
pub const LABEL_CO_OWNED: &str = "KataLabelCoOwned";
pub const LABEL_HELD: &str = "KataLabelHeld";

/// Something to say about one label of a node.
pub(super) struct LabelNotice {
    label: &'static str,
    notice: Notice,
    owners: Vec<CoOwner>,
}

pub(super) struct Contests {
    policy: ContestPolicy,
    by_label: HashMap<(String, &'static str), Contest>,
}

impl Contests {
    pub(super) fn new(policy: ContestPolicy) -> Self {
        Contests {
            policy,
            by_label: HashMap::new(),
        }
    }

    /// Notes the labels seen gone (the next owners start afresh), and
    /// forgets contests of deleted nodes and those with nothing left to
    /// remember.
    pub(super) fn observe(&mut self, workers: &[Arc<CachedNode>], now: Instant) {
        let nodes: HashMap<String, &Arc<CachedNode>> =
            workers.iter().map(|n| (n.name_any(), n)).collect();
        let policy = self.policy;
        self.by_label.retain(|(node, label), contest| {
            let Some(node) = nodes.get(node) else {
                return false;
            };
            if !node.labels().contains_key(*label) {
                contest.label_gone();
            }
            contest.live(now, policy)
        });
    }

    /// Decides how each label `write` takes off comes off: by its apply
    /// when only our managers own it, else by JSON patch, or not at all
    /// when it is held (and the condition says so). Afterwards `write`
    /// applies only what an apply can change.
    pub(super) fn settle(&mut self, write: &mut NodeWrite, now: Instant) {
        let current =
            CurrentMarks::from_labels(write.node.labels(), current_condition(&write.node));
        let name = write.node.name_any();
        let mut pending = [
            (
                names::KATA_RUNTIME_LABEL,
                current.runtime_ready,
                write.marks.runtime_ready,
            ),
            (
                names::KATA_CAPABLE_LABEL,
                current.capable,
                write.marks.capable,
            ),
        ];
        let mut held = None;
        for (label, has, wants) in &mut pending {
            let label: &'static str = label;
            let owners = co_owners(&write.node, label);
            if !*has || *wants || owners.is_empty() {
                continue;
            }
            let contest = self.by_label.entry((name.clone(), label)).or_default();
            let (removal, notice) = contest.step(&owners, now, self.policy);
            if let Some(notice) = notice {
                write.notices.push(LabelNotice {
                    label,
                    notice,
                    owners: owners.clone(),
                });
            }
            match removal {
                Removal::Apply => continue,
                Removal::Patch => write.patched.push(label),
                Removal::Hold => {
                    held.get_or_insert((label, owners));
                    if label == names::KATA_RUNTIME_LABEL {
                        write.removes_runtime_label = false;
                    } else {
                        write.removes_capable_label = false;
                    }
                }
            }
            // Not the apply's to change: patched away, or left in place.
            *wants = *has;
        }
        if let Some((label, owners)) = held {
            write.marks.condition =
                held_condition(label, &owners, self.policy, &write.marks.condition);
        }
        write.labels = pending.iter().any(|(_, has, wants)| has != wants);
        write.condition = current.condition.as_ref() != Some(&write.marks.condition);
    }
}

impl NodeWrite {
    /// Whether anything is left to do: a write or an Event.
    pub(super) fn any(&self) -> bool {
        self.labels || self.condition || !self.patched.is_empty() || !self.notices.is_empty()
    }
}

impl Labeller {
    /// Takes the co-owned labels of `write` off by JSON patch; whether
    /// every one came off.
    pub(super) async fn remove_co_owned(&self, write: &NodeWrite) -> bool {
        let name = write.node.name_any();
        let mut removed = true;
        for label in &write.patched {
            let value = write.node.labels().get(*label).cloned().unwrap_or_default();
            match self.applier.remove_node_label(&name, label, &value).await {
                Ok(()) => {
                    self.count_contest(CONTEST_REMOVED);
                    info!(node = %name, label, "removed a label another field manager also owned");
                }
                Err(error) => {
                    removed = false;
                    warn!(node = %name, label, %error, "could not remove the co-owned label");
                }
            }
        }
        removed
    }

    /// One Event per notice: a notice is due once per change of owners.
    pub(super) async fn announce_contests(&self, write: &NodeWrite) {
        for notice in &write.notices {
            let reason = match notice.notice {
                Notice::CoOwned => LABEL_CO_OWNED,
                Notice::Held => {
                    self.count_contest(CONTEST_HELD);
                    warn!(node = %write.node.name_any(), label = notice.label, owners = %describe(&notice.owners), "a label keeps coming back; no longer removing it");
                    LABEL_HELD
                }
            };
            let note = notice_note(
                notice.notice,
                notice.label,
                &notice.owners,
                self.contests.policy,
            );
            let event = Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(note),
                action: "Label".into(),
                secondary: None,
            };
            self.applier
                .publish(event, &write.node.object_ref(&()))
                .await;
        }
    }

    fn count_contest(&self, outcome: &str) {
        self.metrics
            .label_contests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }
}
