//! What the agents' reports mean for a node's labels and its
//! `KataRuntimeReady` condition: pure decisions, with the grace period for a
//! silent agent, the hold-down that keeps a flapping node from thrashing,
//! and the dwell that keeps pool membership from following one report
//! ([`eligibility`]).

pub mod brake;
pub mod contest;
pub mod eligibility;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kata_proto::health::v1::{
    FailureClass, HealthReport, ProbeStatus, RuntimeProfile as WireProfile, Verdicts,
};

use super::registry::NodeHealth;
use crate::names;

/// The Event reason for a node that lost the runtime-ready label.
pub const RUNTIME_LABEL_REMOVED: &str = "KataRuntimeLabelRemoved";

/// Why a node loses the runtime-ready label, for the Event that says so:
/// the condition the same write puts on the node.
pub fn runtime_label_removed_note(marks: &NodeMarks) -> String {
    format!(
        "{} removed, pods using the kata RuntimeClass no longer land here: {}: {}",
        names::KATA_RUNTIME_LABEL,
        marks.condition.reason,
        marks.condition.message
    )
}

/// The labels and condition the coordinator wants on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMarks {
    /// `feature.node.kubernetes.io/runtime.kata=true`.
    pub capable: bool,
    /// `katacontainers.io/kata-runtime=true`.
    pub runtime_ready: bool,
    /// `katacontainers.io/kata-runtime.<profile>=true`, sorted: the runtime
    /// profiles the node serves as rendered; only with `runtime_ready`.
    pub profiles: Vec<String>,
    pub condition: ReadyCondition,
}

/// The `KataRuntimeReady` node condition, without timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyCondition {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

/// The marks a node carries now, read from the Node object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrentMarks {
    pub capable: bool,
    pub runtime_ready: bool,
    /// The profiles whose label the node carries, sorted.
    pub profiles: Vec<String>,
    pub condition: Option<ReadyCondition>,
}

impl CurrentMarks {
    pub fn from_labels(
        labels: &BTreeMap<String, String>,
        condition: Option<ReadyCondition>,
    ) -> Self {
        let is_true = |key: &str| labels.get(key).is_some_and(|v| v == "true");
        let prefix = crate::profiles::runtime_label("");
        let profiles = labels
            .iter()
            .filter(|(_, value)| *value == "true")
            .filter_map(|(key, _)| key.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect();
        CurrentMarks {
            capable: is_true(names::KATA_CAPABLE_LABEL),
            runtime_ready: is_true(names::KATA_RUNTIME_LABEL),
            profiles,
            condition,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MarkPolicy {
    /// How long an agent may be silent before its node stops counting as
    /// ready: a few heartbeats.
    pub grace: Duration,
    /// After the runtime label was taken away, how long the node must wait
    /// before it gets it back. Bounds label writes for a flapping node to two
    /// per hold-down.
    pub hold_down: Duration,
    /// How long the agent must report the node capable, without a break,
    /// before it gets the capable label (and, with `checkNodeEligibility`,
    /// joins the pool: a reboot on OpenShift).
    pub join_dwell: Duration,
    /// How long the agent must report the node incapable (or stay silent
    /// after saying so) before the capable label comes off.
    pub leave_dwell: Duration,
    /// When leaves that are due are held fleet-wide ([`brake`]).
    pub brake: brake::BrakePolicy,
}

impl Default for MarkPolicy {
    fn default() -> Self {
        MarkPolicy {
            grace: Duration::from_secs(90),
            hold_down: Duration::from_secs(60),
            // Four heartbeats of the default 30 s: a probe that fails once
            // (a device busy, a module loading) recovers well within it.
            join_dwell: Duration::from_secs(120),
            // Longer than the join: leaving costs the node its Kata pods as
            // well as a reboot, and a node already in the pool is worth
            // keeping through a passing fault.
            leave_dwell: Duration::from_secs(300),
            brake: brake::BrakePolicy::DEFAULT,
        }
    }
}

/// The first probe that keeps the node from being ready: FAIL before WARN,
/// in the agent's probe order.
fn first_problem(report: &HealthReport) -> Option<(&str, &str, &str)> {
    let with = |status: ProbeStatus| {
        report
            .outcomes
            .iter()
            .find(|o| o.status == status as i32)
            .map(|o| (o.name.as_str(), o.reason.as_str(), o.message.as_str()))
    };
    with(ProbeStatus::Fail).or_else(|| with(ProbeStatus::Warn))
}

/// The marks the reports call for, the capable label as the latest report
/// says (before the dwell of [`settled`]). `None` when the coordinator has not heard
/// enough to say anything yet (just started, agent not reconnected): the
/// node keeps what it has, so a coordinator restart flaps nothing.
pub fn desired_marks(
    health: Option<&NodeHealth>,
    current: &CurrentMarks,
    now: Instant,
    started: Instant,
    policy: MarkPolicy,
) -> Option<NodeMarks> {
    let silent_since = match health {
        Some(h) => h.last_seen,
        None => started,
    };
    let silent = now.saturating_duration_since(silent_since) > policy.grace;
    let report = health.and_then(|h| h.last_report.as_ref());
    match (report, silent) {
        (_, true) => Some(NodeMarks {
            // The hardware did not change because the agent went quiet;
            // [`settled`] decides whether a loss reported before goes on.
            capable: current.capable,
            runtime_ready: false,
            profiles: Vec::new(),
            condition: ReadyCondition {
                ready: false,
                reason: "AgentNotReporting".into(),
                message: format!(
                    "the node-agent has not reported for more than {}s",
                    policy.grace.as_secs()
                ),
            },
        }),
        (None, false) => None,
        (Some(report), false) => {
            let verdicts = report.verdicts.clone().unwrap_or_default();
            let condition = if verdicts.runtime_ready {
                ReadyCondition {
                    ready: true,
                    reason: "RuntimeReady".into(),
                    message: "the Kata runtime is installed, configured and served".into(),
                }
            } else {
                match first_problem(report) {
                    Some((probe, reason, message)) => ReadyCondition {
                        ready: false,
                        reason: if reason.is_empty() {
                            "NotReady".into()
                        } else {
                            reason.to_string()
                        },
                        message: format!("{probe}: {message}"),
                    },
                    None => ReadyCondition {
                        ready: false,
                        reason: "NotReady".into(),
                        message: "the agent reports the runtime not ready".into(),
                    },
                }
            };
            let mut profiles = verdicts.ready_profiles;
            profiles.sort_unstable();
            profiles.dedup();
            Some(NodeMarks {
                capable: verdicts.kvm_capable,
                runtime_ready: verdicts.runtime_ready,
                profiles,
                condition,
            })
        }
    }
}

/// What the agent says of the hardware now: the verdict of a report within
/// the grace period, `None` when it is silent or has not reported.
pub fn capability_evidence(
    health: Option<&NodeHealth>,
    now: Instant,
    policy: MarkPolicy,
) -> Option<eligibility::Evidence> {
    let health = health.filter(|h| now.saturating_duration_since(h.last_seen) <= policy.grace)?;
    let verdicts = health.last_report.as_ref()?.verdicts.as_ref()?;
    Some(evidence_of(verdicts))
}

/// A report's verdict as evidence. An agent that does not classify its
/// failures (`FailureClass` unspecified) is read as proving them: that is
/// how every report was read before the class existed.
pub fn evidence_of(verdicts: &Verdicts) -> eligibility::Evidence {
    use eligibility::Evidence;
    match (verdicts.kvm_capable, verdicts.kvm_failure()) {
        (true, _) => Evidence::Capable,
        (false, FailureClass::Transient) => Evidence::Unproven,
        (false, FailureClass::Definitive | FailureClass::Unspecified) => Evidence::Incapable,
    }
}

/// Gives `desired` the capable label `capability` settled on (what
/// [`eligibility::settle`] made of the node's dwell). With `explain` (the
/// label decides pool membership), a node not runtime-ready says in its
/// condition that it is waiting out a dwell, and until when.
pub fn settled(
    mut desired: NodeMarks,
    current: &CurrentMarks,
    capability: eligibility::Capability,
    policy: MarkPolicy,
    explain: bool,
) -> NodeMarks {
    desired.capable = capability.capable;
    if let Some(running) = capability
        .waiting(current.capable)
        .filter(|_| explain && !desired.condition.ready)
    {
        desired.condition = eligibility::dwell_condition(&running, &desired.condition, &policy);
    }
    desired
}

/// Applies the hold-down: a runtime label removed at `last_removal` is not
/// given back before `hold_down` has passed. Removal is never delayed:
/// pods must stop landing on a broken node at once.
pub fn damped(
    mut desired: NodeMarks,
    current: &CurrentMarks,
    last_removal: Option<Instant>,
    now: Instant,
    policy: MarkPolicy,
) -> NodeMarks {
    let regaining = desired.runtime_ready && !current.runtime_ready;
    if regaining
        && last_removal.is_some_and(|t| now.saturating_duration_since(t) < policy.hold_down)
    {
        desired.runtime_ready = false;
        desired.condition = ReadyCondition {
            ready: false,
            reason: "Stabilizing".into(),
            message: format!(
                "the node recovered; the runtime label returns after {}s without failure",
                policy.hold_down.as_secs()
            ),
        };
    }
    desired
}

/// The profile labels a node gets: none unless it keeps the runtime label
/// (a profile label without it would schedule pods where the runtime is
/// not); of the profiles `in_force`, those its agent reports served when
/// the agent had been `told` of them as they are now, and for the others
/// (told nothing yet, or a profile changed since) the label it has. Before
/// the profiles in force are known, the labels it has.
pub fn profiles_in_force(
    mut desired: NodeMarks,
    current: &CurrentMarks,
    in_force: Option<&[WireProfile]>,
    told: Option<&[WireProfile]>,
) -> NodeMarks {
    let reported = std::mem::take(&mut desired.profiles);
    if !desired.runtime_ready {
        return desired;
    }
    let Some(in_force) = in_force else {
        desired.profiles.clone_from(&current.profiles);
        return desired;
    };
    let judged = |p: &WireProfile| told.is_some_and(|told| told.contains(p));
    desired.profiles = in_force
        .iter()
        .filter(|p| {
            let served = if judged(p) {
                &reported
            } else {
                &current.profiles
            };
            served.contains(&p.name)
        })
        .map(|p| p.name.clone())
        .collect();
    desired.profiles.sort_unstable();
    desired
}

/// The profile labels of `current` that the labeller compares with what it
/// wants: those of profiles in force (once known). A label of another name
/// is not the labeller's to keep or remove (an admin's, or one of a profile
/// gone, which the node's next label write drops).
pub fn current_profiles(current: &CurrentMarks, in_force: Option<&[WireProfile]>) -> Vec<String> {
    match in_force {
        None => current.profiles.clone(),
        Some(in_force) => (current.profiles.iter())
            .filter(|name| in_force.iter().any(|p| p.name == **name))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests;
