//! The daemon's decisions, as pure functions of their inputs (time and
//! randomness are passed in), so they are tested without a network or clock:
//! when to send a report, how long to wait before reconnecting, what a
//! coordinator message asks for, and what a report contains.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kata_proto::health::v1 as proto;
use tokio::time::Instant;

use crate::config::ExpectedConfig;
use crate::error::AgentError;
use crate::probe::{ProbeName, ProbeOutcome, ProbeStatus};
use crate::verdict::{Verdicts, verdicts};

/// The shortest probe or heartbeat interval honoured: zero would make the
/// agent probe or report in a busy loop.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Reconnect delays: doubling from `initial` up to `max`, each spread by
/// ±`jitter` (a fraction) so agents that lost the same coordinator do not
/// all come back in the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures (the first failure is
    /// 1; 0 is treated as 1). `unit` is a random number in `[0, 1)`: 0 gives
    /// the shortest delay, 0.5 the nominal one. Out-of-range or NaN inputs
    /// are clamped rather than trusted.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let nominal = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let unit = if unit.is_nan() {
            0.5
        } else {
            unit.clamp(0.0, 1.0)
        };
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let factor = 1.0 + jitter * (2.0 * unit - 1.0);
        Duration::try_from_secs_f64(nominal.as_secs_f64() * factor).unwrap_or(nominal)
    }
}

/// One probe cycle's result, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Cycle {
    pub outcomes: Vec<ProbeOutcome>,
    pub verdicts: Verdicts,
    /// The runtime profiles served as rendered; only of a runtime-ready node.
    pub ready_profiles: Vec<String>,
    pub probed_at: SystemTime,
}

impl Cycle {
    pub fn new(outcomes: Vec<ProbeOutcome>, probed_at: SystemTime) -> Self {
        Self {
            verdicts: verdicts(&outcomes),
            outcomes,
            ready_profiles: Vec::new(),
            probed_at,
        }
    }

    /// With the runtime profiles served, kept only if the node is
    /// runtime-ready.
    pub fn with_ready_profiles(mut self, ready: Vec<String>) -> Self {
        if self.verdicts.runtime_ready {
            self.ready_profiles = ready;
        }
        self
    }
}

/// Why a report goes out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendReason {
    /// The agent's first report.
    First,
    /// The coordinator asked for a re-probe.
    Requested,
    /// A probe's status or reason, or a verdict, changed.
    Changed,
    /// Nothing changed for a heartbeat interval.
    Heartbeat,
    /// The last check-in failed; this one tries again.
    Retry,
}

/// What identifies a cycle's state. Messages are left out on purpose: some
/// carry live figures (available memory) that move every cycle, and a report
/// per cycle for them would defeat reporting on change. A new message still
/// goes out with the next heartbeat.
type StateKey = (
    Vec<(ProbeName, ProbeStatus, &'static str)>,
    Verdicts,
    Vec<String>,
);

fn state_key(cycle: &Cycle) -> StateKey {
    let outcomes = cycle
        .outcomes
        .iter()
        .map(|outcome| (outcome.name, outcome.status, outcome.reason))
        .collect();
    (outcomes, cycle.verdicts, cycle.ready_profiles.clone())
}

/// What the agent has reported: its sequence numbers and the state and time
/// of its last accepted report.
#[derive(Debug, Default)]
pub struct ReportTracker {
    sequence: u64,
    last: Option<(StateKey, Instant)>,
}

impl ReportTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence number of the last report sent, 0 before the first.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether `cycle` should be reported at `now`, and why.
    pub fn decide(
        &self,
        cycle: &Cycle,
        requested: bool,
        now: Instant,
        heartbeat: Duration,
    ) -> Option<SendReason> {
        let Some((last_state, last_at)) = &self.last else {
            return Some(SendReason::First);
        };
        if requested {
            Some(SendReason::Requested)
        } else if *last_state != state_key(cycle) {
            Some(SendReason::Changed)
        } else if now >= *last_at + heartbeat {
            Some(SendReason::Heartbeat)
        } else {
            None
        }
    }

    /// When a heartbeat falls due, or `None` before the first report (which
    /// goes out after the first cycle, not on a timer).
    pub fn heartbeat_due(&self, heartbeat: Duration) -> Option<Instant> {
        self.last.as_ref().map(|(_, at)| *at + heartbeat)
    }

    /// Records that `cycle` was reported at `now`; returns its sequence
    /// number (1 for the first report).
    pub fn record(&mut self, cycle: &Cycle, now: Instant) -> u64 {
        self.sequence += 1;
        self.last = Some((state_key(cycle), now));
        self.sequence
    }
}

/// The wire report for `cycle`.
pub fn build_report(sequence: u64, cycle: &Cycle) -> proto::HealthReport {
    proto::HealthReport {
        sequence,
        outcomes: cycle
            .outcomes
            .iter()
            .map(proto::ProbeOutcome::from)
            .collect(),
        verdicts: Some(proto::Verdicts {
            ready_profiles: cycle.ready_profiles.clone(),
            ..cycle.verdicts.into()
        }),
        probed_at_unix_ms: unix_millis(cycle.probed_at),
    }
}

/// Milliseconds since the epoch; 0 for a clock set before 1970, saturating
/// far in the future, so a wrong clock cannot make the agent fail.
pub fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    })
}

/// What a coordinator message asks of the agent.
#[derive(Debug)]
pub enum Directive {
    /// Expect this configuration (an invalid one is reported, and the
    /// current one kept) and use this heartbeat (`None`: keep the current).
    Configure {
        config: Result<ExpectedConfig, AgentError>,
        heartbeat: Option<Duration>,
    },
    /// Probe and report now, even without a change.
    Reprobe { reason: String },
    /// A message kind from a newer coordinator: ignored, for compatibility.
    Ignore,
}

pub fn interpret(message: proto::CoordinatorMessage) -> Directive {
    use proto::coordinator_message::Message;
    match message.message {
        Some(Message::ExpectedConfig(wire)) => Directive::Configure {
            config: ExpectedConfig::try_from(&wire),
            heartbeat: (wire.heartbeat_interval_seconds > 0)
                .then(|| Duration::from_secs(u64::from(wire.heartbeat_interval_seconds))),
        },
        Some(Message::Reprobe(request)) => Directive::Reprobe {
            reason: request.reason,
        },
        None => Directive::Ignore,
    }
}

/// What a check-in's reply asks of the agent: its configuration first, so
/// a re-probe it asks for runs with it.
pub fn interpret_reply(reply: proto::CheckInResponse) -> Vec<Directive> {
    use proto::coordinator_message::Message;
    let messages = [
        reply.expected_config.map(Message::ExpectedConfig),
        reply.reprobe.map(Message::Reprobe),
    ];
    messages
        .into_iter()
        .flatten()
        .map(|message| {
            interpret(proto::CoordinatorMessage {
                message: Some(message),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Version;

    fn all_ok() -> Vec<ProbeOutcome> {
        ProbeName::ALL
            .into_iter()
            .map(|name| ProbeOutcome::ok(name, "Fine", "all good"))
            .collect()
    }

    fn cycle(outcomes: Vec<ProbeOutcome>) -> Cycle {
        Cycle::new(
            outcomes,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        )
    }

    const HEARTBEAT: Duration = Duration::from_secs(30);

    #[test]
    fn first_report_goes_out_at_once_then_only_on_change_or_heartbeat() {
        let start = Instant::now();
        let good = cycle(all_ok());
        let mut tracker = ReportTracker::new();
        assert_eq!(tracker.heartbeat_due(HEARTBEAT), None);
        assert_eq!(
            tracker.decide(&good, false, start, HEARTBEAT),
            Some(SendReason::First)
        );
        assert_eq!(tracker.record(&good, start), 1);
        assert_eq!(tracker.heartbeat_due(HEARTBEAT), Some(start + HEARTBEAT));

        let later = start + Duration::from_secs(10);
        assert_eq!(tracker.decide(&good, false, later, HEARTBEAT), None);

        let mut broken = all_ok();
        broken[6] = ProbeOutcome::fail(ProbeName::CrioDropIn, "DropInSyntaxError", "line 3");
        let broken = cycle(broken);
        assert_eq!(
            tracker.decide(&broken, false, later, HEARTBEAT),
            Some(SendReason::Changed)
        );
        assert_eq!(tracker.record(&broken, later), 2);

        // The heartbeat counts from the last report, whatever its reason.
        assert_eq!(
            tracker.decide(&broken, false, start + HEARTBEAT, HEARTBEAT),
            None
        );
        assert_eq!(
            tracker.decide(&broken, false, later + HEARTBEAT, HEARTBEAT),
            Some(SendReason::Heartbeat)
        );
        assert_eq!(
            tracker.decide(&broken, true, later, HEARTBEAT),
            Some(SendReason::Requested)
        );
        assert_eq!(tracker.sequence(), 2);
    }

    #[test]
    fn a_new_message_alone_is_not_a_change() {
        let start = Instant::now();
        let mut tracker = ReportTracker::new();
        tracker.record(&cycle(all_ok()), start);
        let mut reworded = all_ok();
        reworded[8].message = "7912 MiB available".to_owned();
        assert_eq!(
            tracker.decide(&cycle(reworded), false, start, HEARTBEAT),
            None
        );
        let mut warned = all_ok();
        warned[8] = ProbeOutcome::warn(ProbeName::Capacity, "Fine", "all good");
        assert_eq!(
            tracker.decide(&cycle(warned), false, start, HEARTBEAT),
            Some(SendReason::Changed),
            "a status change is a change even with the same reason"
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let backoff = Backoff::default();
        let nominal: Vec<Duration> = (1..=9).map(|n| backoff.delay(n, 0.5)).collect();
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            nominal,
            vec![
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000),
                ms(30000),
                ms(30000)
            ]
        );
        assert_eq!(backoff.delay(0, 0.5), ms(500), "0 failures counts as 1");
        assert_eq!(backoff.delay(1, 0.0), ms(400));
        assert_eq!(backoff.delay(7, 0.0), ms(24000));
        assert!(backoff.delay(7, 0.999_999) <= ms(36000));
        assert_eq!(backoff.delay(u32::MAX, 0.5), ms(30000), "no overflow");
        // Bad randomness or settings are clamped, never a panic.
        assert_eq!(backoff.delay(1, f64::NAN), ms(500));
        assert_eq!(backoff.delay(1, 7.0), ms(600));
        assert_eq!(backoff.delay(1, -3.0), ms(400));
        let wild = Backoff {
            jitter: f64::INFINITY,
            max: Duration::MAX,
            ..Backoff::default()
        };
        assert_eq!(wild.delay(1, 0.0), Duration::ZERO);
        assert!(wild.delay(40, 1.0) >= Duration::from_secs(1 << 30));
    }

    #[test]
    fn a_reply_configures_before_it_asks_for_a_probe() {
        let reply = proto::CheckInResponse {
            expected_config: Some(proto::ExpectedConfig {
                heartbeat_interval_seconds: 45,
                ..proto::ExpectedConfig::default()
            }),
            reprobe: Some(proto::ReprobeRequest {
                reason: "the node now runs rendered-kata-oc-2".into(),
            }),
        };
        let directives = interpret_reply(reply);
        assert!(matches!(
            directives.as_slice(),
            [
                Directive::Configure { heartbeat: Some(h), .. },
                Directive::Reprobe { reason },
            ] if *h == Duration::from_secs(45) && reason.contains("rendered-kata-oc-2")
        ));
        assert!(interpret_reply(proto::CheckInResponse::default()).is_empty());
    }

    #[test]
    fn report_carries_every_outcome_the_verdicts_and_the_probe_time() {
        let served = cycle(all_ok()).with_ready_profiles(vec!["small".into()]);
        let report = build_report(7, &served);
        assert_eq!(report.sequence, 7);
        assert_eq!(report.outcomes.len(), ProbeName::ALL.len());
        assert_eq!(report.outcomes[0].name, "kvm");
        assert_eq!(report.outcomes[0].status, proto::ProbeStatus::Ok as i32);
        assert_eq!(
            report.verdicts,
            Some(proto::Verdicts {
                kvm_capable: true,
                runtime_ready: true,
                kvm_failure: proto::FailureClass::Unspecified.into(),
                ready_profiles: vec!["small".into()],
            })
        );
        // A node that is not runtime-ready serves no profile, whatever it says.
        let mut failing = all_ok();
        failing[0].status = ProbeStatus::Fail;
        let unready = cycle(failing).with_ready_profiles(vec!["small".into()]);
        assert!(unready.ready_profiles.is_empty());
        assert_eq!(report.probed_at_unix_ms, 1_700_000_000_123);
        assert_eq!(unix_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn coordinator_messages_are_interpreted_leniently() {
        use proto::coordinator_message::Message;
        let config = |wire: proto::ExpectedConfig| proto::CoordinatorMessage {
            message: Some(Message::ExpectedConfig(wire)),
        };
        let Directive::Configure {
            config: c,
            heartbeat,
        } = interpret(config(proto::ExpectedConfig {
            heartbeat_interval_seconds: 15,
            minimum_qemu_version: "7.1".into(),
            ..Default::default()
        }))
        else {
            panic!("not a configuration");
        };
        assert_eq!(c.unwrap().minimum_qemu_version, Version::new(7, 1, 0));
        assert_eq!(heartbeat, Some(Duration::from_secs(15)));

        let Directive::Configure {
            config: c,
            heartbeat,
        } = interpret(config(proto::ExpectedConfig {
            minimum_qemu_version: "seven".into(),
            ..Default::default()
        }))
        else {
            panic!("not a configuration");
        };
        assert!(c.is_err(), "an invalid version is an error to log");
        assert_eq!(heartbeat, None, "0 keeps the current heartbeat");

        let reprobe = interpret(proto::CoordinatorMessage {
            message: Some(Message::Reprobe(proto::ReprobeRequest {
                reason: "label drift".into(),
            })),
        });
        assert!(matches!(reprobe, Directive::Reprobe { reason } if reason == "label drift"));
        assert!(matches!(
            interpret(proto::CoordinatorMessage { message: None }),
            Directive::Ignore
        ));
    }
}
