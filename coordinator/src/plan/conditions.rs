//! The KataConfig's conditions, from the node lists: pure. Types and
//! reasons are the constants in [`crate::api::condition`] and
//! [`crate::api::reason`].

use super::ConditionState;
use super::nodes;
use super::ownership::Conflict;
use super::rollout::Assessment;
use crate::api::condition::{DEGRADED, IN_PROGRESS, READY};
use crate::api::{FailedNode, KataNodesStatus, reason};
use crate::names;

pub fn condition(
    type_: &'static str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> ConditionState {
    ConditionState {
        type_,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

/// The most entries (nodes, failures, what the rollout waits on) a
/// condition message names; the rest are counted. A message is for a person
/// reading `kubectl describe`, up to three conditions repeat it, and the
/// status must stay small at any cluster size: ten failures of the longest
/// (about 1.4 KB each) keep a message near 14 KB.
pub const NAMED_IN_MESSAGE: usize = 10;

/// The first `shown` of `items` joined by `separator`, then how many more
/// there are: `w1, w2, … and 4950 more`. Entries past `shown` are counted,
/// never formatted.
fn named<T: AsRef<str>>(
    items: impl IntoIterator<Item = T>,
    shown: usize,
    separator: &str,
) -> String {
    let mut items = items.into_iter();
    let listed: Vec<T> = items.by_ref().take(shown).collect();
    let mut text = listed
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(separator);
    let more = items.count();
    if more > 0 {
        text.push_str(&format!("{separator}… and {more} more"));
    }
    text
}

/// `node: error` of each failed node, the first [`NAMED_IN_MESSAGE`].
fn failed_list(failed: &[FailedNode]) -> String {
    named(
        failed.iter().map(|f| format!("{}: {}", f.name, f.error)),
        NAMED_IN_MESSAGE,
        "; ",
    )
}

/// Node names, the first [`NAMED_IN_MESSAGE`].
fn node_list<'a>(nodes: impl IntoIterator<Item = &'a String>) -> String {
    named(nodes, NAMED_IN_MESSAGE, ", ")
}

/// `message`, then what else holds the rollout (`waiting_on`), the first
/// [`NAMED_IN_MESSAGE`] of it (one entry a stuck node, which may be many).
fn with_waiting_on(mut message: String, waiting_on: &[String]) -> String {
    if !waiting_on.is_empty() {
        message.push_str("; ");
        message.push_str(&named(waiting_on, NAMED_IN_MESSAGE, "; "));
    }
    message
}

/// Reasons of this module's own (beside [`crate::api::reason`]).
pub mod own_reason {
    /// Another field manager holds fields the operator sets: it holds its
    /// writes to that object.
    pub const CONFLICTING_MANAGER: &str = "ConflictingManager";
    /// Someone deleted our RuntimeClass while pods use it: its finalizer
    /// holds the deletion until they are gone.
    pub const RUNTIME_CLASS_DELETION_HELD: &str = "RuntimeClassDeletionHeld";
    /// More of the KVM-capable nodes would leave the Kata pool at once than
    /// the fleet-wide brake allows: their capable labels are kept.
    pub const FLEET_BRAKE_ENGAGED: &str = "FleetBrakeEngaged";
    /// AdoptedConfiguration=True: the nodes run a MachineConfig an earlier
    /// operator wrote, kept as it is.
    pub const KEPT_AS_WRITTEN: &str = "KeptAsWritten";
}

/// The condition type that says the nodes run configuration an earlier
/// operator wrote (present only while they do).
pub const ADOPTED_CONFIGURATION: &str = "AdoptedConfiguration";

/// `AdoptedConfiguration=True` naming what is kept, when anything is.
pub fn adopted(kept: &[String]) -> Option<ConditionState> {
    (!kept.is_empty()).then(|| {
        condition(
            ADOPTED_CONFIGURATION,
            true,
            own_reason::KEPT_AS_WRITTEN,
            kept.join("; "),
        )
    })
}

/// Degraded while the deletion of our RuntimeClass is held for the pods
/// that use it, the first of them named.
pub fn runtime_class_deletion_held(pods: &[String]) -> ConditionState {
    let message = format!(
        "RuntimeClass {} is being deleted and is held while {} pod(s) use it: {}; it goes once \
         they are gone, and is created again while this KataConfig installs Kata",
        names::RUNTIME_CLASS_NAME,
        pods.len(),
        named(pods, NAMED_IN_MESSAGE, ", "),
    );
    condition(
        DEGRADED,
        true,
        own_reason::RUNTIME_CLASS_DELETION_HELD,
        message,
    )
}

/// Degraded while the fleet-wide brake holds pool removals; `message`
/// names how many nodes would leave, the threshold and the nodes held.
pub fn fleet_brake_engaged(message: &str) -> ConditionState {
    condition(DEGRADED, true, own_reason::FLEET_BRAKE_ENGAGED, message)
}

/// Degraded while the operator holds its writes because other managers
/// own fields it sets: each named, with its object.
pub fn conflicting_manager(conflicts: &[Conflict]) -> ConditionState {
    let message = conflicts
        .iter()
        .map(Conflict::message)
        .collect::<Vec<_>>()
        .join("; ");
    condition(DEGRADED, true, own_reason::CONFLICTING_MANAGER, message)
}

/// Degraded, the same rule for install and uninstall: the rollout's own
/// failures (`failures`, in the words of whatever failed), or any node whose
/// configuration change failed.
pub fn degraded(nodes: &KataNodesStatus, failures: &[String]) -> ConditionState {
    let failed = nodes::failed(nodes);
    if !failures.is_empty() {
        condition(
            DEGRADED,
            true,
            reason::CONTAINER_RUNTIME_CONFIG_FAILED,
            failures.join("; "),
        )
    } else if failed.is_empty() {
        condition(
            DEGRADED,
            false,
            reason::AS_EXPECTED,
            "no node reports a failure",
        )
    } else {
        condition(DEGRADED, true, reason::NODE_DEGRADED, failed_list(&failed))
    }
}

/// A spec the operator cannot act on: nothing in progress, not ready, degraded.
pub fn invalid_spec(message: &str) -> Vec<ConditionState> {
    held_by_invalid_input(reason::INVALID_SPEC, message)
}

/// A runtime profile the operator cannot apply: nothing is applied until it
/// is mended or deleted, so no node gets part of what the profiles ask.
pub fn invalid_runtime_profile(message: &str) -> Vec<ConditionState> {
    held_by_invalid_input(reason::INVALID_RUNTIME_PROFILE, message)
}

/// Nothing in progress, not ready, degraded, for `reason`.
fn held_by_invalid_input(reason: &'static str, message: &str) -> Vec<ConditionState> {
    [IN_PROGRESS, READY]
        .into_iter()
        .map(|type_| condition(type_, false, reason, message))
        .chain(std::iter::once(condition(DEGRADED, true, reason, message)))
        .collect()
}

/// Another KataConfig is the one that acts.
pub fn superseded(active: &str) -> Vec<ConditionState> {
    let message = format!(
        "only one KataConfig acts per cluster and {active} is the active one; delete this one"
    );
    vec![
        condition(
            READY,
            false,
            reason::ANOTHER_KATA_CONFIG_EXISTS,
            message.clone(),
        ),
        condition(DEGRADED, true, reason::ANOTHER_KATA_CONFIG_EXISTS, message),
    ]
}

/// InProgress and Ready while installed or installing. `targets` is the
/// number of selected nodes; `rolled_out_before` whether the RuntimeClass
/// exists (after the first complete rollout, changes are updates);
/// `assessment` what else the rollout reports.
pub fn install(
    nodes: &KataNodesStatus,
    targets: usize,
    rolled_out_before: bool,
    assessment: &Assessment,
) -> [ConditionState; 2] {
    let settled = nodes::settled(nodes);
    let failed = nodes::failed(nodes);
    let all_installed = targets > 0 && nodes.installed.len() == targets;
    let moving = !settled || !nodes.installing.is_empty() || !nodes.waiting_to_install.is_empty();
    if targets == 0 {
        let message = "no worker node matches kataConfigPoolSelector (and, with checkNodeEligibility, is labelled runtime.kata=true)";
        let in_progress_reason = if settled {
            reason::NO_TARGET_NODES
        } else {
            reason::UPDATING
        };
        [
            condition(IN_PROGRESS, !settled, in_progress_reason, message),
            condition(READY, false, reason::NO_TARGET_NODES, message),
        ]
    } else if !assessment.failures.is_empty() {
        let message = assessment.failures.join("; ");
        [
            condition(
                IN_PROGRESS,
                true,
                reason::CONTAINER_RUNTIME_CONFIG_FAILED,
                message.clone(),
            ),
            condition(
                READY,
                false,
                reason::CONTAINER_RUNTIME_CONFIG_FAILED,
                message,
            ),
        ]
    } else if !assessment.refusals.is_empty() {
        let message = format!(
            "{}; {}",
            named(&assessment.refusals, NAMED_IN_MESSAGE, "; "),
            progress(nodes, targets, &assessment.waiting_on)
        );
        [
            condition(
                IN_PROGRESS,
                moving,
                reason::SELECTION_REFUSED,
                message.clone(),
            ),
            condition(READY, false, reason::SELECTION_REFUSED, message),
        ]
    } else if !failed.is_empty() {
        let message = format!(
            "the Machine Config Operator failed to update: {}",
            failed_list(&failed)
        );
        [
            condition(IN_PROGRESS, true, reason::FAILED, message.clone()),
            condition(READY, false, reason::FAILED, message),
        ]
    } else if all_installed && settled {
        let message = format!("Kata is installed on all {targets} selected nodes");
        [
            condition(IN_PROGRESS, false, reason::INSTALLED, message.clone()),
            condition(READY, true, reason::INSTALLED, message),
        ]
    } else {
        let reason = if rolled_out_before {
            reason::UPDATING
        } else {
            reason::INSTALLING
        };
        let message = progress(nodes, targets, &assessment.waiting_on);
        [
            condition(IN_PROGRESS, true, reason, message.clone()),
            condition(READY, false, reason, message),
        ]
    }
}

/// Where the nodes are, and what the rollout waits on.
fn progress(nodes: &KataNodesStatus, targets: usize, waiting_on: &[String]) -> String {
    let message = format!(
        "{} of {targets} nodes installed; installing: [{}]; waiting: [{}]; uninstalling: [{}]",
        nodes.installed.len(),
        node_list(&nodes.installing),
        node_list(&nodes.waiting_to_install),
        node_list(nodes.uninstalling.iter().chain(&nodes.waiting_to_uninstall)),
    );
    with_waiting_on(message, waiting_on)
}

/// The uninstall waits for pods that use the RuntimeClass.
pub fn uninstall_blocked(pods: &[String]) -> [ConditionState; 2] {
    const SHOWN: usize = 5;
    let message = format!(
        "uninstall waits for {} pod(s) using the kata RuntimeClass to be deleted: {}",
        pods.len(),
        named(pods, SHOWN, ", "),
    );
    [
        condition(
            IN_PROGRESS,
            true,
            reason::BLOCKED_BY_EXISTING_KATA_PODS,
            message.clone(),
        ),
        condition(READY, false, reason::BLOCKED_BY_EXISTING_KATA_PODS, message),
    ]
}

/// The uninstall is taking the configuration back.
/// `waiting_on`: what else holds it (a node stuck in its update).
pub fn uninstalling(nodes: &KataNodesStatus, waiting_on: &[String]) -> [ConditionState; 2] {
    let message = format!(
        "removing Kata: uninstalling [{}]; waiting [{}]",
        node_list(&nodes.uninstalling),
        node_list(&nodes.waiting_to_uninstall)
    );
    let message = with_waiting_on(message, waiting_on);
    [
        condition(IN_PROGRESS, true, reason::UNINSTALLING, message.clone()),
        condition(READY, false, reason::UNINSTALLING, message),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(installed: &[&str], waiting: &[&str]) -> KataNodesStatus {
        KataNodesStatus {
            installed: installed.iter().map(|s| s.to_string()).collect(),
            waiting_to_install: waiting.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn install_conditions_follow_the_nodes() {
        let [in_progress, ready] =
            install(&status(&["a"], &["b"]), 2, false, &Assessment::default());
        assert_eq!(
            (in_progress.status, in_progress.reason.as_str()),
            (true, reason::INSTALLING)
        );
        assert!(
            in_progress.message.contains("1 of 2") && in_progress.message.contains("waiting: [b]")
        );
        assert!(!ready.status);
        let [_, ready] = install(&status(&["a"], &["b"]), 2, true, &Assessment::default());
        assert_eq!(ready.reason, reason::UPDATING);
        let [in_progress, ready] =
            install(&status(&["a", "b"], &[]), 2, true, &Assessment::default());
        assert_eq!((in_progress.status, ready.status), (false, true));
        assert_eq!(ready.reason, reason::INSTALLED);
        let [in_progress, ready] = install(
            &KataNodesStatus::default(),
            0,
            false,
            &Assessment::default(),
        );
        assert_eq!(
            (in_progress.status, ready.reason.as_str()),
            (false, reason::NO_TARGET_NODES)
        );
        let leaving = KataNodesStatus {
            uninstalling: vec!["c".into()],
            ..Default::default()
        };
        let [in_progress, _] = install(&leaving, 0, true, &Assessment::default());
        assert_eq!(
            (in_progress.status, in_progress.reason.as_str()),
            (true, reason::UPDATING)
        );
    }

    #[test]
    fn degraded_names_every_failed_node_in_install_and_uninstall() {
        assert!(!degraded(&KataNodesStatus::default(), &[]).status);
        let nodes = KataNodesStatus {
            failed_to_install: vec!["a".into()],
            failed_to_uninstall: vec!["b".into()],
            failure_reasons: vec![
                FailedNode {
                    name: "a".into(),
                    error: "disk full".into(),
                },
                FailedNode {
                    name: "b".into(),
                    error: "stuck".into(),
                },
            ],
            ..Default::default()
        };
        let degraded = degraded(&nodes, &[]);
        assert!(degraded.status);
        assert_eq!(degraded.message, "a: disk full; b: stuck");
        let [in_progress, _] = install(&nodes, 1, false, &Assessment::default());
        assert_eq!(in_progress.reason, reason::FAILED);
    }

    #[test]
    fn refusals_and_runtime_config_failures_say_so() {
        let refused = Assessment {
            refusals: vec!["MachineConfigPool master also holds m2".into()],
            ..Default::default()
        };
        let [in_progress, ready] = install(&status(&[], &[]), 2, false, &refused);
        assert_eq!(
            (ready.status, ready.reason.as_str()),
            (false, reason::SELECTION_REFUSED)
        );
        assert!(ready.message.contains("also holds m2"), "{}", ready.message);
        assert!(!in_progress.status, "nothing moves until the admin acts");

        let failures = vec!["ContainerRuntimeConfig kata-crio-config failed: Error: x".to_string()];
        let failing = Assessment {
            failures: failures.clone(),
            ..Default::default()
        };
        let [_, ready] = install(&status(&[], &["a"]), 1, false, &failing);
        assert_eq!(ready.reason, reason::CONTAINER_RUNTIME_CONFIG_FAILED);
        let degraded = degraded(&KataNodesStatus::default(), &failures);
        assert!(degraded.status && degraded.message.contains("Error: x"));

        let waiting = Assessment {
            waiting_on: vec!["pool kata-oc waits for ContainerRuntimeConfig".into()],
            ..Default::default()
        };
        let [in_progress, _] = install(&status(&[], &["a"]), 1, false, &waiting);
        assert!(
            in_progress
                .message
                .ends_with("pool kata-oc waits for ContainerRuntimeConfig")
        );
    }

    #[test]
    fn blocked_uninstall_names_a_few_pods_and_counts_the_rest() {
        let pods: Vec<String> = (0..7).map(|i| format!("ns/pod-{i}")).collect();
        let [in_progress, ready] = uninstall_blocked(&pods);
        assert!(
            in_progress.message.contains("7 pod(s)") && in_progress.message.contains("and 2 more")
        );
        assert_eq!(ready.reason, reason::BLOCKED_BY_EXISTING_KATA_PODS);
        assert_eq!(invalid_spec("m").len(), 3);
        assert_eq!(
            superseded("first")[0].reason,
            reason::ANOTHER_KATA_CONFIG_EXISTS
        );
    }

    #[test]
    fn messages_name_a_few_nodes_and_count_the_rest() {
        let many = 5_000;
        let names = |prefix: &str| -> Vec<String> {
            (0..many).map(|i| format!("{prefix}{i:04}")).collect()
        };
        let nodes = KataNodesStatus {
            installing: names("i"),
            waiting_to_install: names("w"),
            ..Default::default()
        };
        let [in_progress, _] = install(&nodes, 3 * many, false, &Assessment::default());
        assert!(
            in_progress.message.contains(&format!(
                "installing: [i0000, i0001, i0002, i0003, i0004, i0005, i0006, i0007, i0008, i0009, … and {} more]",
                many - NAMED_IN_MESSAGE
            )),
            "{}",
            in_progress.message
        );
        assert!(!in_progress.message.contains("i0010"));
        assert!(in_progress.message.len() < 1_000, "{}", in_progress.message);

        let failing = KataNodesStatus {
            failed_to_install: names("f"),
            failure_reasons: names("f")
                .into_iter()
                .map(|name| FailedNode {
                    name,
                    error: "x".repeat(1_100),
                })
                .collect(),
            ..Default::default()
        };
        let degraded = degraded(&failing, &[]);
        assert_eq!(degraded.message.matches(": xxx").count(), NAMED_IN_MESSAGE);
        assert!(
            degraded
                .message
                .ends_with(&format!("; … and {} more", many - NAMED_IN_MESSAGE))
        );
        let [_, ready] = install(&failing, many, false, &Assessment::default());
        assert!(ready.message.len() < 12 * 1_200, "{}", ready.message.len());

        let stuck: Vec<String> = (0..40).map(|i| format!("node s{i} stuck")).collect();
        let leaving = KataNodesStatus {
            uninstalling: names("u"),
            ..Default::default()
        };
        let [in_progress, _] = uninstalling(&leaving, &stuck);
        assert!(in_progress.message.contains("u0009, … and 4990 more]"));
        assert!(
            in_progress
                .message
                .ends_with("node s9 stuck; … and 30 more")
        );
    }
}
