use super::*;
use kata_proto::health::v1::{ProbeOutcome, Verdicts};

fn report(capable: bool, ready: bool, outcomes: Vec<ProbeOutcome>) -> HealthReport {
    HealthReport {
        sequence: 1,
        outcomes,
        verdicts: Some(Verdicts {
            kvm_capable: capable,
            runtime_ready: ready,
            ..Default::default()
        }),
        probed_at_unix_ms: 0,
    }
}

fn outcome(name: &str, status: ProbeStatus, reason: &str) -> ProbeOutcome {
    ProbeOutcome {
        name: name.into(),
        status: status as i32,
        reason: reason.into(),
        message: format!("{name} says {reason}"),
    }
}

fn health(last_seen: Instant, report: Option<HealthReport>) -> NodeHealth {
    NodeHealth {
        agent_version: "1".into(),
        boot_id: "b".into(),
        last_report: report,
        last_seen,
        connected: true,
        session: 1,
        told: None,
        telling: None,
    }
}

const POLICY: MarkPolicy = MarkPolicy {
    grace: Duration::from_secs(30),
    hold_down: Duration::from_secs(60),
    join_dwell: Duration::from_secs(120),
    leave_dwell: Duration::from_secs(300),
    brake: brake::BrakePolicy::DEFAULT,
};

#[test]
fn ready_report_sets_both_labels() {
    let now = Instant::now();
    let h = health(now, Some(report(true, true, vec![])));
    let marks = desired_marks(Some(&h), &CurrentMarks::default(), now, now, POLICY)
        .unwrap_or_else(|| panic!("marks"));
    assert!(marks.capable && marks.runtime_ready && marks.condition.ready);
}

#[test]
fn failing_probe_names_itself_in_the_condition() {
    let now = Instant::now();
    let outcomes = vec![
        outcome("cpu", ProbeStatus::Warn, "VirtFlagHidden"),
        outcome("crio-drop-in", ProbeStatus::Fail, "HandlerMissing"),
    ];
    let h = health(now, Some(report(true, false, outcomes)));
    let marks = desired_marks(Some(&h), &CurrentMarks::default(), now, now, POLICY)
        .unwrap_or_else(|| panic!("marks"));
    assert!(marks.capable && !marks.runtime_ready);
    assert_eq!(marks.condition.reason, "HandlerMissing");
    assert!(marks.condition.message.starts_with("crio-drop-in:"));
}

#[test]
fn silence_beyond_grace_takes_the_runtime_label_only() {
    let start = Instant::now();
    let later = start + Duration::from_secs(31);
    let h = health(start, Some(report(true, true, vec![])));
    let current = CurrentMarks {
        capable: true,
        runtime_ready: true,
        profiles: Vec::new(),
        condition: None,
    };
    let marks =
        desired_marks(Some(&h), &current, later, start, POLICY).unwrap_or_else(|| panic!("marks"));
    assert!(marks.capable && !marks.runtime_ready);
    assert_eq!(marks.condition.reason, "AgentNotReporting");
    // Within the grace period nothing changes.
    let early = desired_marks(
        Some(&h),
        &current,
        start + Duration::from_secs(29),
        start,
        POLICY,
    )
    .unwrap_or_else(|| panic!("marks"));
    assert!(early.runtime_ready);
}

#[test]
fn unknown_node_is_left_alone_until_grace_after_start() {
    let start = Instant::now();
    let current = CurrentMarks {
        capable: true,
        runtime_ready: true,
        profiles: Vec::new(),
        condition: None,
    };
    assert_eq!(
        desired_marks(
            None,
            &current,
            start + Duration::from_secs(5),
            start,
            POLICY
        ),
        None
    );
    let late = desired_marks(
        None,
        &current,
        start + Duration::from_secs(31),
        start,
        POLICY,
    )
    .unwrap_or_else(|| panic!("marks"));
    assert!(
        late.capable && !late.runtime_ready,
        "capability kept, readiness taken"
    );
}

#[test]
fn hold_down_delays_regaining_but_never_losing() {
    let now = Instant::now();
    let ready = NodeMarks {
        capable: true,
        runtime_ready: true,
        profiles: Vec::new(),
        condition: ReadyCondition {
            ready: true,
            reason: "RuntimeReady".into(),
            message: String::new(),
        },
    };
    let unlabelled = CurrentMarks {
        capable: true,
        runtime_ready: false,
        profiles: Vec::new(),
        condition: None,
    };
    let held = damped(
        ready.clone(),
        &unlabelled,
        Some(now - Duration::from_secs(10)),
        now,
        POLICY,
    );
    assert!(!held.runtime_ready);
    assert_eq!(held.condition.reason, "Stabilizing");
    let released = damped(
        ready.clone(),
        &unlabelled,
        Some(now - Duration::from_secs(61)),
        now,
        POLICY,
    );
    assert!(released.runtime_ready);
    let failing = NodeMarks {
        runtime_ready: false,
        profiles: Vec::new(),
        ..ready
    };
    let labelled = CurrentMarks {
        capable: true,
        runtime_ready: true,
        profiles: Vec::new(),
        condition: None,
    };
    assert!(!damped(failing, &labelled, Some(now), now, POLICY).runtime_ready);
}

#[test]
fn a_dwell_is_explained_only_where_the_label_decides_membership() {
    let start = Instant::now();
    let wall = std::time::SystemTime::now();
    let outcomes = vec![outcome(
        "extension",
        ProbeStatus::Fail,
        "ExtensionNotInstalled",
    )];
    let h = health(start, Some(report(true, false, outcomes)));
    let current = CurrentMarks::default();
    let desired =
        desired_marks(Some(&h), &current, start, start, POLICY).unwrap_or_else(|| panic!("marks"));
    let evidence = capability_evidence(Some(&h), start, POLICY);
    assert_eq!(evidence, Some(eligibility::Evidence::Capable));
    let waiting = eligibility::settle(false, evidence, None, start, wall, &POLICY);
    let explained = settled(desired.clone(), &current, waiting, POLICY, true);
    assert!(!explained.capable, "the label waits for the dwell");
    assert_eq!(explained.condition.reason, eligibility::ELIGIBILITY_DWELL);
    let dwell = waiting.dwell;
    assert!(dwell.is_some_and(|d| d.toward && d.since == start));
    let quiet = settled(desired, &current, waiting, POLICY, false);
    assert!(!quiet.capable);
    assert_eq!(
        quiet.condition.reason, "ExtensionNotInstalled",
        "without checkNodeEligibility the runtime's own reason stays"
    );
    // The dwell over, the label follows and the condition is the
    // runtime's again.
    let later = start + POLICY.join_dwell;
    let h = health(later, h.last_report.clone());
    let desired =
        desired_marks(Some(&h), &current, later, start, POLICY).unwrap_or_else(|| panic!("marks"));
    let evidence = capability_evidence(Some(&h), later, POLICY);
    let due = eligibility::settle(false, evidence, dwell, later, wall, &POLICY);
    let joined = settled(desired, &current, due, POLICY, true);
    assert!(joined.capable && due.dwell.is_some(), "kept until written");
    assert_eq!(joined.condition.reason, "ExtensionNotInstalled");
}

#[test]
fn a_silent_agent_is_no_evidence() {
    let start = Instant::now();
    let h = health(start, Some(report(true, true, vec![])));
    assert_eq!(
        capability_evidence(Some(&h), start + POLICY.grace, POLICY),
        Some(eligibility::Evidence::Capable)
    );
    assert_eq!(
        capability_evidence(
            Some(&h),
            start + POLICY.grace + Duration::from_secs(1),
            POLICY
        ),
        None
    );
    assert_eq!(capability_evidence(None, start, POLICY), None);
}

#[test]
fn the_removal_note_says_why_with_the_new_condition() {
    let start = Instant::now();
    let h = health(start, Some(report(true, true, vec![])));
    let labelled = CurrentMarks {
        capable: true,
        runtime_ready: true,
        profiles: Vec::new(),
        condition: None,
    };
    let marks = desired_marks(
        Some(&h),
        &labelled,
        start + Duration::from_secs(31),
        start,
        POLICY,
    )
    .unwrap_or_else(|| panic!("marks"));
    let note = runtime_label_removed_note(&marks);
    assert!(
        note.starts_with(names::KATA_RUNTIME_LABEL)
            && note.contains("AgentNotReporting: the node-agent has not reported"),
        "{note}"
    );
}

#[test]
fn a_report_says_how_much_its_failure_proves() {
    use eligibility::Evidence;
    let with = |capable: bool, class: FailureClass| Verdicts {
        kvm_capable: capable,
        runtime_ready: false,
        kvm_failure: class.into(),
        ..Verdicts::default()
    };
    assert_eq!(
        evidence_of(&with(false, FailureClass::Transient)),
        Evidence::Unproven
    );
    assert_eq!(
        evidence_of(&with(false, FailureClass::Definitive)),
        Evidence::Incapable
    );
    assert_eq!(
        evidence_of(&with(false, FailureClass::Unspecified)),
        Evidence::Incapable,
        "an agent that does not classify is read as before"
    );
    assert_eq!(
        evidence_of(&with(true, FailureClass::Transient)),
        Evidence::Capable
    );
}

/// The marks of a runtime-ready node whose agent reports `small`, `gone`,
/// `large` and `small` again served.
fn reporting_profiles() -> NodeMarks {
    let mut reported = report(true, true, Vec::new());
    if let Some(verdicts) = &mut reported.verdicts {
        verdicts.ready_profiles = vec![
            "small".into(),
            "gone".into(),
            "large".into(),
            "small".into(),
        ];
    }
    let health = health(Instant::now(), Some(reported));
    let now = Instant::now();
    let Some(desired) = desired_marks(
        Some(&health),
        &CurrentMarks::default(),
        now,
        now,
        MarkPolicy::default(),
    ) else {
        panic!("a report gives marks");
    };
    desired
}

#[test]
fn a_report_gives_its_served_profiles_sorted_once() {
    assert_eq!(reporting_profiles().profiles, ["gone", "large", "small"]);
}

#[test]
fn profile_labels_follow_the_report_the_profiles_in_force_and_the_runtime_label() {
    use kata_proto::health::v1::RuntimeProfile;
    let desired = reporting_profiles();
    let in_force: Vec<RuntimeProfile> = ["large", "small", "unserved"]
        .into_iter()
        .map(|name| RuntimeProfile {
            name: name.into(),
            config_sha256: String::new(),
        })
        .collect();
    let labelled_large = CurrentMarks {
        runtime_ready: true,
        profiles: vec!["large".into()],
        ..CurrentMarks::default()
    };
    let told = |names: &[&str]| -> Vec<RuntimeProfile> {
        in_force
            .iter()
            .filter(|p| names.contains(&p.name.as_str()))
            .cloned()
            .collect()
    };
    // Told of them all: the report decides, for the profiles in force only.
    let kept = profiles_in_force(
        desired.clone(),
        &labelled_large,
        Some(&in_force),
        Some(&in_force),
    );
    assert_eq!(kept.profiles, ["large", "small"], "only profiles in force");
    // Told of `small` only (a profile added since, or a coordinator just
    // started): `large` and `unserved` keep the labels they have.
    let unjudged = profiles_in_force(
        desired.clone(),
        &CurrentMarks::default(),
        Some(&in_force),
        Some(&told(&["small"])),
    );
    assert_eq!(unjudged.profiles, ["small"]);
    let kept = profiles_in_force(desired.clone(), &labelled_large, Some(&in_force), None);
    assert_eq!(
        kept.profiles,
        ["large"],
        "told nothing known: the labels it has"
    );
    // A profile whose file changed since the agent was told of it is not
    // judged by the report either.
    let mut changed = in_force.clone();
    changed[0].config_sha256 = "other".into();
    let kept = profiles_in_force(
        desired.clone(),
        &CurrentMarks::default(),
        Some(&changed),
        Some(&in_force),
    );
    assert_eq!(
        kept.profiles,
        ["small"],
        "large changed since: not judged, and it had no label"
    );
    // Before the profiles in force are known: the labels it has.
    let kept = profiles_in_force(desired.clone(), &labelled_large, None, Some(&in_force));
    assert_eq!(kept.profiles, ["large"]);
    let unready = NodeMarks {
        runtime_ready: false,
        ..desired
    };
    assert!(
        profiles_in_force(unready, &labelled_large, Some(&in_force), Some(&in_force))
            .profiles
            .is_empty(),
        "no profile label without the runtime label"
    );
    // What is compared: labels of profiles in force only.
    let with_foreign = CurrentMarks {
        profiles: vec!["admins".into(), "large".into()],
        ..CurrentMarks::default()
    };
    assert_eq!(current_profiles(&with_foreign, Some(&in_force)), ["large"]);
    assert_eq!(current_profiles(&with_foreign, None), ["admins", "large"]);
}

#[test]
fn profile_labels_are_read_back_from_the_node() {
    let labels: BTreeMap<String, String> = [
        ("katacontainers.io/kata-runtime", "true"),
        ("katacontainers.io/kata-runtime.small", "true"),
        ("katacontainers.io/kata-runtime.large", "false"),
        ("example.com/kata-runtime.other", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let current = CurrentMarks::from_labels(&labels, None);
    assert!(current.runtime_ready);
    assert_eq!(current.profiles, ["small"]);
}
