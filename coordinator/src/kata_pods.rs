//! When the uninstall (or the guard of a RuntimeClass being deleted) has to
//! list the cluster's pods. Finding the pods that
//! use our RuntimeClass means listing every pod (no field selector matches
//! `spec.runtimeClassName`), so the reconciler lists only when the answer
//! can change what it does, and otherwise reuses its last answer:
//!
//! - The gate opens on a fresh list: when no pod used the RuntimeClass at
//!   the last look but it still exists, the uninstall is about to delete it
//!   on this answer, so it asks again.
//! - Once no pod uses it and it is gone, the answer stands: the API server
//!   refuses a pod that names a RuntimeClass that does not exist, and a
//!   pod's `runtimeClassName` never changes. The rest of the uninstall (the
//!   nodes rolling back) lists no pod at all.
//! - While pods block the uninstall, it looks again at most every
//!   [`BLOCKED_RECHECK`], however many node or pool changes wake it.

use std::time::{Duration, Instant};

/// How often a blocked uninstall lists the pods again.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(15);

/// The pods found using our RuntimeClass by one list, for one KataConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The uid of the KataConfig being deleted.
    pub uid: String,
    pub listed_at: Instant,
    /// `namespace/name` of each pod found.
    pub pods: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCheck {
    /// List the pods now.
    List,
    /// The last answer still holds.
    Reuse,
}

/// Whether the uninstall of the KataConfig `uid` must list the pods now,
/// given the last answer and whether our RuntimeClass exists.
pub fn check(
    last: Option<&Answer>,
    uid: &str,
    runtime_class_exists: bool,
    now: Instant,
) -> PodCheck {
    let Some(last) = last.filter(|answer| answer.uid == uid) else {
        return PodCheck::List;
    };
    let stands = if last.pods.is_empty() {
        !runtime_class_exists
    } else {
        now.saturating_duration_since(last.listed_at) < BLOCKED_RECHECK
    };
    if stands {
        PodCheck::Reuse
    } else {
        PodCheck::List
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(pods: &[&str], listed_at: Instant) -> Answer {
        Answer {
            uid: "uid-1".into(),
            listed_at,
            pods: pods.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_first_look_and_another_kataconfig_always_list() {
        let now = Instant::now();
        assert_eq!(check(None, "uid-1", true, now), PodCheck::List);
        let other = answer(&[], now);
        assert_eq!(check(Some(&other), "uid-2", false, now), PodCheck::List);
    }

    #[test]
    fn the_runtime_class_is_deleted_only_on_a_fresh_answer() {
        let now = Instant::now();
        let none_found = answer(&[], now);
        assert_eq!(check(Some(&none_found), "uid-1", true, now), PodCheck::List);
    }

    #[test]
    fn once_no_pod_uses_it_and_it_is_gone_nothing_is_listed_again() {
        let then = Instant::now();
        let none_found = answer(&[], then);
        let much_later = then + Duration::from_secs(3600);
        assert_eq!(
            check(Some(&none_found), "uid-1", false, much_later),
            PodCheck::Reuse
        );
    }

    #[test]
    fn a_blocked_uninstall_looks_again_at_most_every_recheck_period() {
        let then = Instant::now();
        let blocked = answer(&["apps/sandboxed"], then);
        for exists in [true, false] {
            assert_eq!(
                check(
                    Some(&blocked),
                    "uid-1",
                    exists,
                    then + Duration::from_secs(1)
                ),
                PodCheck::Reuse
            );
            assert_eq!(
                check(Some(&blocked), "uid-1", exists, then + BLOCKED_RECHECK),
                PodCheck::List
            );
        }
    }
}
