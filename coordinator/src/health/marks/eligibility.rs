//! When the capable label follows the agent's verdict. With
//! `checkNodeEligibility` the label decides pool membership, and on OpenShift
//! every change of membership is a drain and a reboot: so the label turns
//! `true` only after the agent has reported the node capable for the whole
//! join dwell, and `false` only after it has reported it incapable (or said
//! nothing since) for the whole leave dwell. A verdict that changes back
//! within the dwell changes nothing. Pure: the clock is passed in.
//!
//! Only proof takes a node out. A definitive failure (no KVM device, a
//! wrong API version, guest code that gave a wrong result) runs the leave
//! dwell as it always has: silence after it does not stop the leave. A
//! transient one (ENOMEM, EBUSY, a guest run that did not come back) counts
//! only once it has persisted through the whole leave dwell, every report
//! of it seen: silence cancels its leave, as it cancels a join, and once
//! it has lasted the dwell it is treated as definitive. The fleet-wide
//! [`super::brake`] may still hold a leave that is due.

use std::time::{Duration, Instant, SystemTime};

use super::{MarkPolicy, ReadyCondition};
use crate::names;

/// The `KataRuntimeReady` reason while a node waits out a dwell.
pub const ELIGIBILITY_DWELL: &str = "EligibilityDwell";

/// What a report within the grace period says of the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evidence {
    Capable,
    /// Not capable, and the agent says that is proven (or, an agent that
    /// does not classify, says nothing of it).
    Incapable,
    /// Not capable as far as the probes could tell: a condition that may
    /// pass.
    Unproven,
}

impl Evidence {
    fn capable(self) -> bool {
        self == Evidence::Capable
    }
}

/// A verdict that differs from the label, and since when it has held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dwell {
    /// The label value the reports argue for.
    pub toward: bool,
    /// A leave: whether a report since `since` proved the node incapable.
    /// Only a proven leave survives the agent's silence.
    pub proven: bool,
    pub since: Instant,
    /// `since` on the wall clock: the condition names a time a person can
    /// read, which stays the same from scan to scan (a countdown would
    /// rewrite the condition every second).
    pub since_wall: SystemTime,
}

impl Dwell {
    fn length(&self, policy: &MarkPolicy) -> Duration {
        if self.toward {
            policy.join_dwell
        } else {
            policy.leave_dwell
        }
    }

    /// When the label changes if the verdict holds.
    pub fn deadline_wall(&self, policy: &MarkPolicy) -> SystemTime {
        self.since_wall + self.length(policy)
    }
}

/// What the capable label should be now, and the dwell to keep for the
/// next scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub capable: bool,
    /// Kept while the label differs from the verdict, the dwell over or
    /// not: a change not written yet (no KataConfig in force, a failed
    /// write) is not timed again.
    pub dwell: Option<Dwell>,
}

impl Capability {
    /// The dwell the node is still waiting out, if any.
    pub fn waiting(&self, labelled: bool) -> Option<Dwell> {
        self.dwell.filter(|_| self.capable == labelled)
    }
}

/// Advances one node's dwell by what its agent says now.
///
/// `evidence` is the verdict of a report within the grace period; `None`
/// when the agent is silent. Silence proves nothing new: it cancels a
/// join (capability must be shown the whole time) but not a leave (a node
/// that reported itself incapable and then went quiet has not recovered).
/// With nothing pending, silence keeps the label: the hardware did not
/// change because the agent went quiet.
pub fn settle(
    labelled: bool,
    evidence: Option<Evidence>,
    dwell: Option<Dwell>,
    now: Instant,
    wall: SystemTime,
    policy: &MarkPolicy,
) -> Capability {
    let pending = match evidence {
        Some(seen) if seen.capable() == labelled => None,
        Some(seen) => {
            let proven = seen == Evidence::Incapable;
            Some(match dwell {
                Some(running) if running.toward == seen.capable() => Dwell {
                    proven: running.proven || proven,
                    ..running
                },
                _ => Dwell {
                    toward: seen.capable(),
                    proven,
                    since: now,
                    since_wall: wall,
                },
            })
        }
        // Silence carries on only a proven leave: an unproven one must be
        // seen to persist.
        None => dwell.filter(|running| !running.toward && running.proven && labelled),
    };
    let capable = match pending {
        Some(running) if now.saturating_duration_since(running.since) >= running.length(policy) => {
            running.toward
        }
        _ => labelled,
    };
    Capability {
        capable,
        dwell: pending,
    }
}

fn rfc3339(time: SystemTime) -> String {
    let seconds = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    k8s_openapi::jiff::Timestamp::from_second(i64::try_from(seconds).unwrap_or(i64::MAX))
        .map_or_else(|_| format!("{seconds}s after the epoch"), |t| t.to_string())
}

/// The condition of a node waiting out `dwell`; `underlying` is what the
/// reports say of the runtime, kept in the message of a node about to leave
/// (it names what broke).
pub fn dwell_condition(
    dwell: &Dwell,
    underlying: &ReadyCondition,
    policy: &MarkPolicy,
) -> ReadyCondition {
    let deadline = rfc3339(dwell.deadline_wall(policy));
    let length = dwell.length(policy).as_secs();
    let message = if dwell.toward {
        format!(
            "the node-agent has reported the node KVM-capable since {}; it is labelled {}=true, and eligible for the Kata pool, at {deadline} if every report until then agrees ({length}s join dwell)",
            rfc3339(dwell.since_wall),
            names::KATA_CAPABLE_LABEL,
        )
    } else {
        let unless = if dwell.proven {
            "unless the node-agent reports it KVM-capable again before then"
        } else {
            "if the node-agent, which reports this as a transient failure, keeps reporting it until then"
        };
        format!(
            "{}: {}; the node loses {} and leaves the Kata pool at {deadline} {unless} ({length}s leave dwell)",
            underlying.reason,
            underlying.message,
            names::KATA_CAPABLE_LABEL,
        )
    };
    ReadyCondition {
        ready: false,
        reason: ELIGIBILITY_DWELL.into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: MarkPolicy = MarkPolicy {
        grace: Duration::from_secs(30),
        hold_down: Duration::from_secs(60),
        join_dwell: Duration::from_secs(120),
        leave_dwell: Duration::from_secs(300),
        brake: super::super::brake::BrakePolicy::DEFAULT,
    };

    /// Feeds `reports` (seconds after the start, verdict; `None`: silent) to
    /// a node labelled `labelled`, one scan each, applying each decision to
    /// the label as the labeller would; returns the label changes.
    fn label_changes(labelled: bool, reports: &[(u64, Option<bool>)]) -> Vec<(u64, bool)> {
        let as_evidence = |verdict: bool| {
            if verdict {
                Evidence::Capable
            } else {
                Evidence::Incapable
            }
        };
        let reports: Vec<(u64, Option<Evidence>)> = reports
            .iter()
            .map(|&(at, verdict)| (at, verdict.map(as_evidence)))
            .collect();
        evidence_changes(labelled, &reports)
    }

    /// [`label_changes`] with the class of each report.
    fn evidence_changes(labelled: bool, reports: &[(u64, Option<Evidence>)]) -> Vec<(u64, bool)> {
        let start = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (mut label, mut dwell, mut changes) = (labelled, None, Vec::new());
        for &(at, evidence) in reports {
            let offset = Duration::from_secs(at);
            let decided = settle(
                label,
                evidence,
                dwell,
                start + offset,
                wall + offset,
                &POLICY,
            );
            if decided.capable != label {
                changes.push((at, decided.capable));
            }
            label = decided.capable;
            dwell = decided.dwell;
        }
        changes
    }

    /// A report every `step` seconds from `from` to `to`, all saying `verdict`.
    fn steady(from: u64, to: u64, step: u64, verdict: Option<bool>) -> Vec<(u64, Option<bool>)> {
        (from..=to)
            .step_by(usize::try_from(step).unwrap_or(1))
            .map(|at| (at, verdict))
            .collect()
    }

    #[test]
    fn flapping_within_the_dwell_changes_no_label() {
        // true, false, true, ... every 50 s: never 120 s capable in a row.
        let flaps: Vec<_> = (0..40).map(|i| (i * 50, Some(i % 2 == 0))).collect();
        assert_eq!(label_changes(false, &flaps), []);
        // And never 300 s incapable in a row for a labelled node.
        assert_eq!(label_changes(true, &flaps), []);
    }

    #[test]
    fn a_sustained_verdict_changes_the_label_exactly_once() {
        assert_eq!(
            label_changes(false, &steady(0, 1000, 10, Some(true))),
            [(120, true)]
        );
        assert_eq!(
            label_changes(true, &steady(0, 1000, 10, Some(false))),
            [(300, false)]
        );
    }

    #[test]
    fn one_contrary_report_restarts_the_dwell() {
        let mut reports = steady(0, 110, 10, Some(true));
        reports.push((115, Some(false)));
        reports.extend(steady(120, 400, 10, Some(true)));
        assert_eq!(label_changes(false, &reports), [(240, true)]);
    }

    #[test]
    fn silence_cancels_a_join_but_not_a_leave() {
        let mut joining = steady(0, 100, 10, Some(true));
        joining.extend(steady(110, 150, 10, None));
        joining.extend(steady(160, 400, 10, Some(true)));
        assert_eq!(label_changes(false, &joining), [(280, true)]);

        let mut leaving = steady(0, 100, 10, Some(false));
        leaving.extend(steady(110, 400, 10, None));
        assert_eq!(label_changes(true, &leaving), [(300, false)]);
    }

    /// Reports every `step` seconds from `from` to `to`, all of `evidence`.
    fn seen(
        from: u64,
        to: u64,
        step: u64,
        evidence: Option<Evidence>,
    ) -> Vec<(u64, Option<Evidence>)> {
        steady(from, to, step, None)
            .into_iter()
            .map(|(at, _)| (at, evidence))
            .collect()
    }

    #[test]
    fn a_transient_failure_leaves_only_once_it_lasted_the_whole_dwell() {
        let unproven = Some(Evidence::Unproven);
        // Persisting through the dwell: treated as definitive, at the same time.
        assert_eq!(
            evidence_changes(true, &seen(0, 1000, 10, unproven)),
            [(300, false)]
        );
        // Gone before the dwell ends: nothing happens.
        let mut passing = seen(0, 290, 10, unproven);
        passing.extend(seen(300, 1000, 10, Some(Evidence::Capable)));
        assert_eq!(evidence_changes(true, &passing), []);
        // The agent falls silent after it: the failure was not seen to
        // persist, so the leave is off; reported again, it starts over.
        let mut silent = seen(0, 100, 10, unproven);
        silent.extend(seen(110, 400, 10, None));
        assert_eq!(
            evidence_changes(true, &silent),
            [],
            "silence is not persistence"
        );
        silent.extend(seen(410, 1000, 10, unproven));
        assert_eq!(evidence_changes(true, &silent), [(710, false)]);
        // A definitive failure keeps today's rule: silence after it carries
        // the leave.
        let mut proven = seen(0, 100, 10, Some(Evidence::Incapable));
        proven.extend(seen(110, 400, 10, None));
        assert_eq!(evidence_changes(true, &proven), [(300, false)]);
        // Transient, then proof, then silence: the proof counts from the
        // first failure.
        let mut mixed = seen(0, 100, 10, unproven);
        mixed.extend(seen(110, 150, 10, Some(Evidence::Incapable)));
        mixed.extend(seen(160, 400, 10, None));
        assert_eq!(evidence_changes(true, &mixed), [(300, false)]);
        // A transient failure never helps a node join.
        assert_eq!(evidence_changes(false, &seen(0, 1000, 10, unproven)), []);
    }

    #[test]
    fn silence_alone_keeps_the_label() {
        assert_eq!(label_changes(true, &steady(0, 2000, 10, None)), []);
        assert_eq!(label_changes(false, &steady(0, 2000, 10, None)), []);
    }

    #[test]
    fn a_change_not_written_is_not_timed_again() {
        let start = Instant::now();
        let wall = SystemTime::now();
        let first = settle(false, Some(Evidence::Capable), None, start, wall, &POLICY);
        let over = start + POLICY.join_dwell;
        let due = settle(
            false,
            Some(Evidence::Capable),
            first.dwell,
            over,
            wall,
            &POLICY,
        );
        assert!(due.capable && due.waiting(false).is_none());
        // The label was not written: the next scan still calls for it.
        let again = settle(
            false,
            Some(Evidence::Capable),
            due.dwell,
            over,
            wall,
            &POLICY,
        );
        assert!(again.capable);
        // Written, the dwell is done with.
        assert_eq!(
            settle(
                true,
                Some(Evidence::Capable),
                again.dwell,
                over,
                wall,
                &POLICY
            )
            .dwell,
            None
        );
    }

    #[test]
    fn zero_dwell_follows_every_report() {
        let policy = MarkPolicy {
            join_dwell: Duration::ZERO,
            leave_dwell: Duration::ZERO,
            ..POLICY
        };
        let now = Instant::now();
        let wall = SystemTime::now();
        assert!(settle(false, Some(Evidence::Capable), None, now, wall, &policy).capable);
        assert!(!settle(true, Some(Evidence::Incapable), None, now, wall, &policy).capable);
    }

    #[test]
    fn the_dwell_condition_says_when_and_why() {
        let since_wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let joining = Dwell {
            toward: true,
            proven: true,
            since: Instant::now(),
            since_wall,
        };
        let underlying = ReadyCondition {
            ready: false,
            reason: "KvmDeviceMissing".into(),
            message: "kvm: /dev/kvm is missing".into(),
        };
        let join = dwell_condition(&joining, &underlying, &POLICY);
        assert_eq!(join.reason, ELIGIBILITY_DWELL);
        assert!(
            join.message.contains("since 2027-01-15T08:00:00Z")
                && join.message.contains("at 2027-01-15T08:02:00Z")
                && join.message.contains("120s join dwell"),
            "{}",
            join.message
        );
        let leave = dwell_condition(
            &Dwell {
                toward: false,
                ..joining
            },
            &underlying,
            &POLICY,
        );
        assert!(
            leave
                .message
                .starts_with("KvmDeviceMissing: kvm: /dev/kvm is missing; ")
                && leave.message.contains("at 2027-01-15T08:05:00Z"),
            "{}",
            leave.message
        );
        let unproven = dwell_condition(
            &Dwell {
                toward: false,
                proven: false,
                ..joining
            },
            &underlying,
            &POLICY,
        );
        assert!(
            unproven
                .message
                .contains("transient failure, keeps reporting it until then"),
            "{}",
            unproven.message
        );
    }
}
