use super::*;
use crate::names;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

fn entry(manager: &str, operation: &str, labels: &[&str]) -> ManagedFieldsEntry {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|l| (format!("f:{l}"), json!({})))
        .collect();
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some(operation.into()),
        fields_v1: Some(FieldsV1(json!({ "f:metadata": { "f:labels": labels } }))),
        ..Default::default()
    }
}

fn node(entries: Vec<ManagedFieldsEntry>) -> CachedNode {
    let mut node = CachedNode::default();
    node.metadata.managed_fields = Some(entries);
    node
}

fn owner(manager: &str, operation: &str) -> CoOwner {
    CoOwner {
        manager: manager.into(),
        operation: operation.into(),
    }
}

#[test]
fn co_owners_are_the_other_managers_of_that_label_only() {
    let n = node(vec![
        entry(names::MANAGER_HEALTH, "Apply", &[names::KATA_RUNTIME_LABEL]),
        entry("kubectl-label", "Update", &[names::KATA_RUNTIME_LABEL]),
        entry("gitops", "Apply", &[names::KATA_CAPABLE_LABEL]),
        entry("kubelet", "Update", &["kubernetes.io/hostname"]),
    ]);
    assert_eq!(
        co_owners(&n, names::KATA_RUNTIME_LABEL),
        [owner("kubectl-label", "Update")]
    );
    assert_eq!(
        co_owners(&n, names::KATA_CAPABLE_LABEL),
        [owner("gitops", "Apply")]
    );
    assert!(co_owners(&CachedNode::default(), names::KATA_RUNTIME_LABEL).is_empty());
    let ours_only = node(vec![
        entry(names::MANAGER_HEALTH, "Apply", &[names::KATA_RUNTIME_LABEL]),
        entry(
            names::MANAGER_TARGETING,
            "Apply",
            &[names::KATA_RUNTIME_LABEL],
        ),
    ]);
    assert!(co_owners(&ours_only, names::KATA_RUNTIME_LABEL).is_empty());
}

const POLICY: ContestPolicy = ContestPolicy::DEFAULT;

#[test]
fn a_label_only_we_own_comes_off_by_apply_and_nothing_is_said() {
    let mut contest = Contest::default();
    let (removal, notice) = contest.step(&[], Instant::now(), POLICY);
    assert_eq!((removal, notice), (Removal::Apply, None));
    assert!(!contest.live(Instant::now(), POLICY));
}

#[test]
fn a_co_owned_label_is_patched_away_announced_once_then_held_after_the_bound() {
    let owners = [owner("admin", "Update")];
    let start = Instant::now();
    let mut contest = Contest::default();
    let mut steps = Vec::new();
    for minute in 0..5u64 {
        let now = start + Duration::from_secs(60 * minute);
        steps.push(contest.step(&owners, now, POLICY));
    }
    assert_eq!(
        steps,
        [
            (Removal::Patch, Some(Notice::CoOwned)),
            (Removal::Patch, None),
            (Removal::Patch, None),
            (Removal::Hold, Some(Notice::Held)),
            (Removal::Hold, None),
        ]
    );
    // Held for as long as the same owners hold it, whatever the time.
    let later = start + Duration::from_secs(3600);
    assert_eq!(contest.step(&owners, later, POLICY), (Removal::Hold, None));
    assert!(contest.live(later, POLICY));
}

#[test]
fn removals_spread_wider_than_the_window_never_hold() {
    let owners = [owner("gitops", "Apply")];
    let start = Instant::now();
    let mut contest = Contest::default();
    for step in 0..10u32 {
        let now = start + POLICY.window / 2 * step;
        let (removal, _) = contest.step(&owners, now, POLICY);
        assert_eq!(removal, Removal::Patch, "removal {step}");
    }
}

#[test]
fn a_hold_ends_when_the_owners_change_or_the_label_was_gone() {
    let admin = [owner("admin", "Update")];
    let start = Instant::now();
    let mut contest = Contest::default();
    for second in 0..4u64 {
        contest.step(&admin, start + Duration::from_secs(second), POLICY);
    }
    let now = start + Duration::from_secs(10);
    assert_eq!(contest.step(&admin, now, POLICY).0, Removal::Hold);
    let gitops = [owner("gitops", "Apply")];
    assert_eq!(
        contest.step(&gitops, now, POLICY),
        (Removal::Patch, Some(Notice::CoOwned)),
        "other owners: tried again, and announced"
    );
    for second in 11..13u64 {
        contest.step(&gitops, start + Duration::from_secs(second), POLICY);
    }
    let then = start + Duration::from_secs(13);
    assert_eq!(contest.step(&gitops, then, POLICY).0, Removal::Hold);
    contest.label_gone();
    assert_eq!(contest.step(&gitops, then, POLICY), (Removal::Patch, None));
}

#[test]
fn a_contest_is_forgotten_once_its_removals_leave_the_window() {
    let mut contest = Contest::default();
    let start = Instant::now();
    contest.step(&[owner("admin", "Update")], start, POLICY);
    assert!(contest.live(start + POLICY.window / 2, POLICY));
    assert!(!contest.live(start + POLICY.window, POLICY));
}

#[test]
fn the_held_condition_names_label_manager_and_why_not_ready() {
    let not_ready = ReadyCondition {
        ready: false,
        reason: "AgentNotReporting".into(),
        message: "silent".into(),
    };
    let held = held_condition(
        names::KATA_RUNTIME_LABEL,
        &[owner("admin", "Update")],
        POLICY,
        &not_ready,
    );
    assert!(!held.ready);
    assert_eq!(held.reason, "LabelHeldByOtherManager");
    for part in [
        names::KATA_RUNTIME_LABEL,
        "\"admin\" (Update)",
        "3 removals within 600s",
        "AgentNotReporting: silent",
    ] {
        assert!(held.message.contains(part), "{part} in {}", held.message);
    }
    let note = notice_note(
        Notice::CoOwned,
        names::KATA_RUNTIME_LABEL,
        &[owner("admin", "Update")],
        POLICY,
    );
    assert!(note.contains("\"admin\" (Update)") && note.contains("JSON patch"));
}
