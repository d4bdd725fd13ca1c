#![allow(clippy::unwrap_used)]

use super::*;
use kata_proto::health::v1::{ProbeOutcome, ProbeStatus, Verdicts};

fn hello(boot: &str) -> Hello {
    Hello {
        node_name: "n".into(),
        agent_version: "1.0".into(),
        boot_id: boot.into(),
    }
}

#[test]
fn reports_are_cut_to_what_the_status_can_carry() {
    let long = "é".repeat(2000);
    let mut report = HealthReport {
        sequence: 1,
        outcomes: vec![
            outcome("kvm", ProbeStatus::Ok, "KvmUsable", "fine"),
            outcome("qemu", ProbeStatus::Fail, "not camel", &long),
            outcome("cpu", ProbeStatus::Warn, &"A".repeat(65), ""),
            outcome("bad name!", ProbeStatus::Ok, "Fine", ""),
        ],
        ..HealthReport::default()
    };
    report
        .outcomes
        .extend((0..40).map(|_| outcome("x", ProbeStatus::Ok, "Fine", "")));
    bound_report(&mut report);
    assert_eq!(report.outcomes.len(), MAX_OUTCOMES);
    assert_eq!(report.outcomes[0].reason, "KvmUsable");
    assert_eq!(report.outcomes[0].message, "fine");
    assert_eq!(report.outcomes[1].reason, INVALID_REASON);
    assert!(report.outcomes[1].message.len() <= MAX_MESSAGE_BYTES);
    assert!(report.outcomes[1].message.ends_with('…'));
    assert_eq!(report.outcomes[2].reason, INVALID_REASON);
    assert_eq!(report.outcomes[3].name, "invalid");

    // Profile names: well formed only, and at most as many as can be in force.
    let mut ready: Vec<String> = vec!["ok".into(), "Bad.Name".into(), "x".repeat(51)];
    ready.extend((0..100).map(|i| format!("p{i}")));
    report.verdicts = Some(Verdicts {
        ready_profiles: ready,
        ..Verdicts::default()
    });
    bound_report(&mut report);
    let kept = report.verdicts.unwrap().ready_profiles;
    assert!(kept.len() <= contract::MAX_RUNTIME_PROFILES);
    assert_eq!(kept[..2], ["ok", "p0"]);
}

#[test]
fn reprobe_goes_to_the_live_stream_or_waits_for_the_next_check_in() {
    let registry = HealthRegistry::new();
    assert!(!registry.request_reprobe("n", "no stream"));
    let hello = Hello {
        node_name: "n".into(),
        agent_version: "1".into(),
        boot_id: "b".into(),
    };
    let session = registry.connect("n", &hello, Instant::now());
    let mailbox = registry.attach("n", session);
    assert!(registry.request_reprobe("n", "labels changed"));
    assert!(registry.request_reprobe("n", "node updated"));
    assert_eq!(
        mailbox.take_reprobe().as_deref(),
        Some("node updated"),
        "two requests before the stream sends coalesce into the latest"
    );
    assert_eq!(mailbox.take_reprobe(), None);
    assert!(
        futures::FutureExt::now_or_never(mailbox.woken()).is_some(),
        "a request made while the stream was busy still wakes it"
    );

    // A reconnect replaces the mailbox; the old stream's end keeps the new one.
    let newer = registry.connect("n", &hello, Instant::now());
    let new_mailbox = registry.attach("n", newer);
    registry.disconnect("n", session);
    assert!(registry.request_reprobe("n", "after reconnect"));
    assert_eq!(
        new_mailbox.take_reprobe().as_deref(),
        Some("after reconnect")
    );
    assert_eq!(mailbox.take_reprobe(), None, "the old stream gets nothing");
    registry.disconnect("n", newer);
    assert!(
        registry.request_reprobe("n", "between check-ins"),
        "kept for the node's next check-in"
    );
    assert_eq!(
        new_mailbox.take_reprobe(),
        None,
        "a closed stream gets nothing"
    );
    let checked = registry.check_in("n", &hello, report(1), Instant::now());
    assert_eq!(checked.reprobe.as_deref(), Some("between check-ins"));
}

#[test]
fn check_ins_record_the_report_and_hand_over_a_reprobe_once() {
    let registry = HealthRegistry::new();
    let mut changes = registry.subscribe();
    let start = Instant::now();
    let checked = registry.check_in("n", &hello("b1"), report(1), start);
    assert_eq!(
        checked,
        CheckedIn {
            kind: REPORT_CHANGED,
            reprobe: None
        }
    );
    assert!(changes.has_changed().unwrap());
    changes.borrow_and_update();
    let node = registry.get("n").unwrap();
    assert!(!node.connected, "a check-in leaves no stream");
    assert_eq!(
        (node.boot_id.as_str(), node.agent_version.as_str()),
        ("b1", "1.0")
    );
    // Counted as reporting while its last check-in is within the window.
    let later = start + Duration::from_secs(60);
    assert_eq!(registry.connected_count(later, Duration::from_secs(90)), 1);
    assert_eq!(registry.connected_count(later, Duration::from_secs(30)), 0);

    assert!(registry.request_reprobe("n", "the node now runs rendered-2"));
    assert!(registry.request_reprobe("n", "the node now runs rendered-3"));
    let checked = registry.check_in("n", &hello("b1"), report(2), later);
    assert_eq!(checked.kind, REPORT_HEARTBEAT, "same state as before");
    assert!(
        !changes.has_changed().unwrap(),
        "a heartbeat wakes nobody: it moves only the silence clock"
    );
    assert_eq!(
        checked.reprobe.as_deref(),
        Some("the node now runs rendered-3"),
        "requests coalesce into the latest"
    );
    assert_eq!(
        registry
            .check_in("n", &hello("b1"), report(3), later)
            .reprobe,
        None
    );
    assert_eq!(registry.get("n").unwrap().last_seen, later);

    // A new boot: what was known of the last one is dropped first.
    assert_eq!(
        registry.check_in("n", &hello("b2"), report(4), later).kind,
        REPORT_CHANGED
    );
    assert_eq!(registry.get("n").unwrap().boot_id, "b2");
}

#[test]
fn a_check_in_supersedes_a_stream_of_the_same_node() {
    let registry = HealthRegistry::new();
    let now = Instant::now();
    let stream = registry.connect("n", &hello("b1"), now);
    let mailbox = registry.attach("n", stream);
    registry.check_in("n", &hello("b1"), report(1), now);
    assert_eq!(
        registry.report("n", stream, report(2), now),
        None,
        "the stream ends"
    );
    assert!(registry.request_reprobe("n", "x"));
    assert_eq!(mailbox.take_reprobe(), None, "the old stream gets nothing");
    registry.disconnect("n", stream);
    assert_eq!(registry.get("n").unwrap().last_report, Some(report(1)));
}

fn report(sequence: u64) -> HealthReport {
    HealthReport {
        sequence,
        ..HealthReport::default()
    }
}

#[test]
fn report_is_stored_and_change_signalled() {
    let registry = HealthRegistry::new();
    let changes = registry.subscribe();
    let now = Instant::now();
    let session = registry.connect("n", &hello("b1"), now);
    assert_eq!(
        registry.report("n", session, report(1), now),
        Some(REPORT_CHANGED)
    );
    assert!(changes.has_changed().unwrap());
    let node = registry.get("n").unwrap();
    assert!(node.connected);
    assert_eq!(registry.connected_count(now, Duration::ZERO), 1);
    assert_eq!(node.last_report, Some(report(1)));
    assert_eq!(node.agent_version, "1.0");
}

#[test]
fn superseded_stream_can_neither_report_nor_disconnect_the_new_one() {
    let registry = HealthRegistry::new();
    let now = Instant::now();
    let old = registry.connect("n", &hello("b1"), now);
    let new = registry.connect("n", &hello("b1"), now);
    assert_eq!(registry.report("n", old, report(9), now), None);
    registry.disconnect("n", old);
    assert!(registry.get("n").unwrap().connected);
    registry.disconnect("n", new);
    let node = registry.get("n").unwrap();
    assert!(!node.connected);
    assert_eq!(node.last_report, None);
}

#[test]
fn reconnect_keeps_the_report_of_the_same_boot_only() {
    let registry = HealthRegistry::new();
    let now = Instant::now();
    let s = registry.connect("n", &hello("b1"), now);
    registry.report("n", s, report(1), now);
    registry.disconnect("n", s);
    registry.connect("n", &hello("b1"), now);
    assert_eq!(registry.get("n").unwrap().last_report, Some(report(1)));
    registry.connect("n", &hello("b2"), now);
    assert_eq!(registry.get("n").unwrap().last_report, None);
}

fn outcome(name: &str, status: ProbeStatus, reason: &str, message: &str) -> ProbeOutcome {
    ProbeOutcome {
        name: name.into(),
        status: status as i32,
        reason: reason.into(),
        message: message.into(),
    }
}

fn full_report(sequence: u64, outcomes: Vec<ProbeOutcome>, ready: bool) -> HealthReport {
    HealthReport {
        sequence,
        outcomes,
        verdicts: Some(Verdicts {
            kvm_capable: true,
            runtime_ready: ready,
            ..Default::default()
        }),
        probed_at_unix_ms: i64::try_from(sequence).unwrap(),
    }
}

#[test]
fn a_repeated_state_is_a_heartbeat_and_a_change_or_a_first_report_is_not() {
    let ok = |message: &str| vec![outcome("memory", ProbeStatus::Ok, "Enough", message)];
    let first = full_report(1, ok("8 GiB free"), true);
    assert_eq!(report_kind(None, &first), REPORT_CHANGED);
    // A new stream's first report is news even when it says the same.
    assert_eq!(report_kind(Some(&first), &first), REPORT_CHANGED);
    // Only the message (a live figure) and the time moved.
    let same = full_report(2, ok("7 GiB free"), true);
    assert_eq!(report_kind(Some(&first), &same), REPORT_HEARTBEAT);
    let failing = full_report(
        3,
        vec![outcome(
            "memory",
            ProbeStatus::Fail,
            "InsufficientMemory",
            "",
        )],
        false,
    );
    assert_eq!(report_kind(Some(&same), &failing), REPORT_CHANGED);
    let verdict_only = full_report(4, ok("7 GiB free"), false);
    assert_eq!(report_kind(Some(&same), &verdict_only), REPORT_CHANGED);

    let registry = HealthRegistry::new();
    let now = Instant::now();
    let session = registry.connect("n", &hello("b1"), now);
    assert_eq!(
        registry.report("n", session, first, now),
        Some(REPORT_CHANGED)
    );
    assert_eq!(
        registry.report("n", session, same, now),
        Some(REPORT_HEARTBEAT)
    );
}

#[test]
fn unknown_node_report_is_ignored() {
    let registry = HealthRegistry::new();
    assert_eq!(registry.report("ghost", 1, report(1), Instant::now()), None);
    assert!(registry.snapshot().is_empty());
}

#[test]
fn a_deleted_node_is_forgotten() {
    let registry = HealthRegistry::new();
    let now = Instant::now();
    let report = HealthReport {
        sequence: 1,
        ..HealthReport::default()
    };
    registry.check_in("gone", &hello("b"), report.clone(), now);
    registry.check_in("kept", &hello("b"), report, now);
    assert!(registry.request_reprobe("gone", "node updated"));
    let session = registry.connect("gone", &hello("b"), now);
    let before = *registry.subscribe().borrow();

    registry.forget(["gone"]);
    assert_eq!(registry.get("gone"), None);
    assert!(registry.get("kept").is_some());
    assert_eq!(registry.connected_count(now, Duration::from_secs(60)), 1);
    assert!(!registry.request_reprobe("gone", "no agent left to ask"));
    assert_eq!(
        registry.report("gone", session, HealthReport::default(), now),
        None,
        "the deleted node's open stream ends at its next report"
    );
    assert_ne!(*registry.subscribe().borrow(), before, "readers are woken");
    assert_eq!(registry.snapshot().len(), 1);
}

#[test]
fn a_report_is_judged_against_what_the_reply_before_it_told() {
    let registry = HealthRegistry::new();
    let report = HealthReport::default();
    let told = |registry: &HealthRegistry| registry.get("n").and_then(|h| h.told);
    registry.check_in("n", &hello("b"), report.clone(), Instant::now());
    assert_eq!(told(&registry), None, "a first check-in: not known");
    let large = crate::profiles::KataRuntimeProfile::of_size("kata-large", 4, 8192);
    registry.profiles().set(std::slice::from_ref(&large));
    registry.check_in("n", &hello("b"), report.clone(), Instant::now());
    assert_eq!(
        told(&registry),
        None,
        "the reply before told nothing published"
    );
    registry.check_in("n", &hello("b"), report, Instant::now());
    let names: Vec<String> = told(&registry)
        .map(|t| t.iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["kata-large"]);
}
