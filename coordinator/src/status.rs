//! Turning a plan's conditions into API conditions: pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{KataConfigStatus, KataNodesStatus};
use crate::plan::ConditionState;

/// A condition's status, as the Kubernetes API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The status of a condition read from the API; anything but `True` or
    /// `False` is `Unknown`.
    pub fn parse(status: &str) -> Self {
        match status {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

/// A condition's lastTransitionTime: kept while its status stays the same
/// (Kubernetes API conventions), `now` when it is new or its status changed.
/// For the KataConfig's conditions and the nodes' `KataRuntimeReady` alike.
pub fn transition_time(
    previous: Option<(ConditionStatus, Option<&Time>)>,
    status: ConditionStatus,
    now: &Time,
) -> Time {
    match previous {
        Some((previous_status, Some(time))) if previous_status == status => time.clone(),
        _ => now.clone(),
    }
}

/// API conditions for `new`, keeping each condition's lastTransitionTime
/// while its status stays the same.
pub fn merge_conditions(
    old: &[Condition],
    new: &[ConditionState],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = ConditionStatus::from(c.status);
            let previous = old.iter().find(|o| o.type_ == c.type_).map(|p| {
                (
                    ConditionStatus::parse(&p.status),
                    Some(&p.last_transition_time),
                )
            });
            let last_transition_time = transition_time(previous, status, now);
            Condition {
                type_: c.type_.to_string(),
                status: status.as_str().to_owned(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The status to write: `nodes` (the planner's full lists) capped as
/// [`crate::plan::nodes::written`] does, so that the status stays small at
/// any cluster size.
pub fn status(
    old: Option<&KataConfigStatus>,
    nodes: &KataNodesStatus,
    runtime_classes: Vec<String>,
    conditions: &[ConditionState],
    generation: Option<i64>,
    now: &Time,
) -> KataConfigStatus {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    KataConfigStatus {
        runtime_classes,
        kata_nodes: crate::plan::nodes::written(nodes),
        conditions: merge_conditions(old_conditions, conditions, generation, now),
    }
}

/// Conditions whose reason or status changed: each becomes an Event.
pub fn changed<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter()
        .filter(|c| {
            !old.iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap_or_default())
    }

    fn state(status: bool, reason: &str) -> ConditionState {
        ConditionState {
            type_: "Ready",
            status,
            reason: reason.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = merge_conditions(&[], &[state(false, "Installing")], Some(1), &at(100));
        assert_eq!(first[0].last_transition_time, at(100));
        let same = merge_conditions(&first, &[state(false, "Failed")], Some(2), &at(200));
        assert_eq!(
            same[0].last_transition_time,
            at(100),
            "status unchanged: time kept"
        );
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge_conditions(&same, &[state(true, "Installed")], Some(2), &at(300));
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(changed(&same, &flipped).len(), 1);
        assert!(changed(&flipped, &flipped).is_empty());
    }
}
