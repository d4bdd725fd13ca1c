//! Runtime profile changes are planned from once the profiles have been
//! quiet for a moment. Each change of the profiles is a new MachineConfig,
//! and one the MCO starts rolling out before the next would send the nodes
//! it reached through two reboots: an admin who applies a file of three
//! profiles, or a GitOps sync, creates them one by one, milliseconds or
//! seconds apart. Until the profiles read have stayed the same for
//! [`SETTLE`], the reconcile plans from those it last settled on.

use std::time::{Duration, Instant};

use crate::profiles::KataRuntimeProfile;

/// How long the profiles must stay unchanged before they are planned from.
pub const SETTLE: Duration = Duration::from_secs(5);

/// The profiles the plan uses and the change waiting to settle.
#[derive(Debug, Default)]
pub struct ProfileSettle {
    /// The profiles last settled on; `None` before the first read, which
    /// is taken as settled (they were there before this coordinator).
    settled: Option<Vec<KataRuntimeProfile>>,
    /// A different set of profiles, and since when it has been read.
    changing: Option<(Vec<KataRuntimeProfile>, Instant)>,
}

impl ProfileSettle {
    /// The profiles to plan from, given those `read` at `now`, and when to
    /// look again while a change is settling.
    pub fn settle(
        &mut self,
        read: Vec<KataRuntimeProfile>,
        now: Instant,
    ) -> (Vec<KataRuntimeProfile>, Option<Duration>) {
        let Some(settled) = &self.settled else {
            self.settled = Some(read.clone());
            return (read, None);
        };
        if same(settled, &read) {
            self.changing = None;
            return (settled.clone(), None);
        }
        let since = match &self.changing {
            Some((changing, since)) if same(changing, &read) => *since,
            _ => now,
        };
        let quiet = now.saturating_duration_since(since);
        if quiet >= SETTLE {
            self.settled = Some(read.clone());
            self.changing = None;
            return (read, None);
        }
        self.changing = Some((read, since));
        (settled.clone(), Some(SETTLE - quiet))
    }
}

/// Whether two reads name the same profiles with the same specs (their
/// metadata otherwise, and any status, change nothing on a node).
fn same(a: &[KataRuntimeProfile], b: &[KataRuntimeProfile]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(a, b)| a.profile_name() == b.profile_name() && a.spec == b.spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(profiles: &[KataRuntimeProfile]) -> Vec<&str> {
        profiles.iter().map(|p| p.profile_name()).collect()
    }

    #[test]
    fn the_first_read_is_settled_and_changes_wait_until_quiet() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut settle = ProfileSettle::default();
        let (used, wait) = settle.settle(vec![KataRuntimeProfile::of_size("a", 1, 1024)], at(0));
        assert_eq!((names(&used), wait), (vec!["a"], None));

        // b is created, then c a second later: the plan keeps using a alone
        // until both have been there, unchanged, for SETTLE.
        let (used, wait) = settle.settle(
            vec![
                KataRuntimeProfile::of_size("a", 1, 1024),
                KataRuntimeProfile::of_size("b", 1, 1024),
            ],
            at(10),
        );
        assert_eq!((names(&used), wait), (vec!["a"], Some(SETTLE)));
        let both = vec![
            KataRuntimeProfile::of_size("a", 1, 1024),
            KataRuntimeProfile::of_size("b", 1, 1024),
            KataRuntimeProfile::of_size("c", 1, 1024),
        ];
        let (used, wait) = settle.settle(both.clone(), at(11));
        assert_eq!((names(&used), wait), (vec!["a"], Some(SETTLE)));
        let (used, wait) = settle.settle(both.clone(), at(13));
        assert_eq!(
            (names(&used), wait),
            (vec!["a"], Some(SETTLE - Duration::from_secs(2)))
        );
        let (used, wait) = settle.settle(both.clone(), at(16));
        assert_eq!((names(&used), wait), (vec!["a", "b", "c"], None));
        let (used, wait) = settle.settle(both, at(17));
        assert_eq!((names(&used), wait), (vec!["a", "b", "c"], None));
    }

    #[test]
    fn a_change_undone_before_it_settled_is_never_used() {
        let start = Instant::now();
        let mut settle = ProfileSettle::default();
        settle.settle(vec![KataRuntimeProfile::of_size("a", 1, 1024)], start);
        let (_, wait) = settle.settle(
            vec![KataRuntimeProfile::of_size("a", 1, 4096)],
            start + Duration::from_secs(1),
        );
        assert_eq!(wait, Some(SETTLE));
        let (used, wait) = settle.settle(
            vec![KataRuntimeProfile::of_size("a", 1, 1024)],
            start + Duration::from_secs(2),
        );
        assert_eq!((used[0].spec.vm.memory_mib, wait), (1024, None));
        // The same change again starts its own wait.
        let (used, wait) = settle.settle(
            vec![KataRuntimeProfile::of_size("a", 1, 4096)],
            start + Duration::from_secs(9),
        );
        assert_eq!((used[0].spec.vm.memory_mib, wait), (1024, Some(SETTLE)));
    }
}
