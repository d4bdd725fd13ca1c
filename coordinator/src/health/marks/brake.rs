//! The fleet-wide brake on pool removals. Every node's leave is decided
//! alone ([`super::eligibility`]); a fault in the agent itself (a release
//! that misreads `/dev/kvm`, a DaemonSet change that takes its permission
//! away) would make each of them right by its own evidence and drain every
//! Kata node, one reboot after another. So when more than a share of the
//! capable nodes would lose the capable label within a window (those whose
//! label came off in it, and those waiting out a leave dwell now, due or
//! not: nodes broken by one fault start their dwells scans apart, and
//! counting only the due ones would let the first go), no more labels come
//! off: the nodes stay in the pool, the KataConfig says
//! `Degraded=True/FleetBrakeEngaged` and `kata_operator_fleet_brake_engaged`
//! is 1. The runtime-ready label still comes off at once (pods must stop
//! landing on a node that cannot run them; that costs no reboot).
//!
//! The brake releases by itself when the nodes recover, or when the window
//! has passed over earlier removals so that the nodes still due fit under
//! the share; an admin who has checked that the nodes really are broken
//! raises the share (100 disables the brake).
//!
//! Small fleets: in a 2-node cluster one broken node is half of it, so a
//! share alone would never let a genuinely broken node go. The brake
//! therefore engages only when at least [`BrakePolicy::min_nodes`] nodes
//! (default 2) would flip in the window: one node always leaves on its own
//! evidence, two or more leaving together is what a fleet-wide fault looks
//! like, whatever the fleet's size. Pure: the clock is passed in.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrakePolicy {
    /// The brake engages when more than this percentage of the capable
    /// nodes would flip within the window; 100 never engages.
    pub max_share_percent: u32,
    pub window: Duration,
    /// And only when at least this many would flip.
    pub min_nodes: usize,
}

impl BrakePolicy {
    pub const DEFAULT: BrakePolicy = BrakePolicy {
        max_share_percent: 30,
        // Two leave dwells: nodes broken by one fault reach the end of
        // their dwells within minutes of each other.
        window: Duration::from_secs(600),
        min_nodes: 2,
    };
}

impl Default for BrakePolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the brake decided at one scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrakeDecision {
    pub engaged: bool,
    /// Nodes whose label came off within the window, plus those waiting
    /// out a leave dwell now.
    pub flipping: usize,
    /// The capable nodes the share is taken of: labelled now, plus those
    /// whose label came off within the window.
    pub fleet: usize,
    pub policy: BrakePolicy,
    /// The nodes whose leave is held (empty unless engaged), sorted.
    pub held: Vec<String>,
}

impl BrakeDecision {
    /// For the KataConfig's Degraded condition.
    pub fn message(&self) -> String {
        format!(
            "{} of {} KVM-capable nodes would leave the Kata pool within {}s (more than {}%, and \
             at least {}); their leaves are held and they keep their labels until fewer would \
             leave or the share is raised: {}",
            self.flipping,
            self.fleet,
            self.policy.window.as_secs(),
            self.policy.max_share_percent,
            self.policy.min_nodes,
            held_list(&self.held),
        )
    }
}

/// The first ten held nodes by name, then how many more: the message must
/// stay small at any fleet size.
fn held_list(held: &[String]) -> String {
    const NAMED: usize = 10;
    let mut text = held
        .iter()
        .take(NAMED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if held.len() > NAMED {
        text.push_str(&format!(", … and {} more", held.len() - NAMED));
    }
    text
}

/// The capable nodes at a scan, as the brake counts them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leaving {
    /// Nodes labelled capable now.
    pub labelled: usize,
    /// Of those, the ones waiting out a leave dwell, due or not.
    pub dwelling: usize,
    /// Of those, the ones whose leave dwell is over: their label comes off
    /// this scan unless the brake holds it.
    pub due: Vec<String>,
}

/// Whether the leaves due go ahead; `removed` is when labels came off
/// before.
pub fn decide(
    leaving: Leaving,
    removed: &RecentRemovals,
    now: Instant,
    policy: BrakePolicy,
) -> BrakeDecision {
    let Leaving {
        labelled,
        dwelling,
        due,
    } = leaving;
    let recent = removed.within(now, policy.window);
    let fleet = labelled + recent;
    let flipping = recent + dwelling.max(due.len());
    let share_exceeded = u128::try_from(flipping).unwrap_or(u128::MAX) * 100
        > u128::from(policy.max_share_percent) * u128::try_from(fleet).unwrap_or(u128::MAX);
    let engaged = !due.is_empty() && flipping >= policy.min_nodes && share_exceeded;
    let mut held = if engaged { due } else { Vec::new() };
    held.sort();
    BrakeDecision {
        engaged,
        flipping,
        fleet,
        policy,
        held,
    }
}

/// When capable labels came off, for the window.
#[derive(Clone, Debug, Default)]
pub struct RecentRemovals(VecDeque<Instant>);

impl RecentRemovals {
    pub fn record(&mut self, at: Instant) {
        self.0.push_back(at);
    }

    /// Forgets removals older than `window`.
    pub fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .0
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= window)
        {
            self.0.pop_front();
        }
    }

    fn within(&self, now: Instant, window: Duration) -> usize {
        self.0
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < window)
            .count()
    }
}

/// The brake as published: the gauges, and the decision the KataConfig
/// controller's Degraded condition reads. Cheap to clone: clones share.
#[derive(Clone, Debug, Default)]
pub struct FleetBrake {
    /// 1 while the brake holds leaves.
    pub engaged: Gauge,
    /// The nodes whose leave it holds.
    pub held_nodes: Gauge,
    current: Arc<Mutex<Option<BrakeDecision>>>,
}

impl FleetBrake {
    pub fn publish(&self, decision: &BrakeDecision) {
        self.engaged.set(i64::from(decision.engaged));
        self.held_nodes
            .set(i64::try_from(decision.held.len()).unwrap_or(i64::MAX));
        let engaged = decision.engaged.then(|| decision.clone());
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = engaged;
    }

    /// The decision while the brake is engaged.
    pub fn engaged(&self) -> Option<BrakeDecision> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("w{i}")).collect()
    }

    fn decide_now(labelled: usize, due: usize, removed_before: &[u64]) -> BrakeDecision {
        decide_dwelling(labelled, due, due, removed_before)
    }

    fn decide_dwelling(
        labelled: usize,
        dwelling: usize,
        due: usize,
        removed_before: &[u64],
    ) -> BrakeDecision {
        let now = Instant::now() + Duration::from_secs(3600);
        let mut removed = RecentRemovals::default();
        for ago in removed_before {
            removed.record(now - Duration::from_secs(*ago));
        }
        let leaving = Leaving {
            labelled,
            dwelling,
            due: names(due),
        };
        decide(leaving, &removed, now, BrakePolicy::default())
    }

    #[test]
    fn nodes_still_dwelling_count_so_the_first_due_does_not_slip_through() {
        // 10 nodes started leaving within a few scans; one is due first.
        let first = decide_dwelling(10, 10, 1, &[]);
        assert!(first.engaged && first.held == names(1));
        assert_eq!(first.flipping, 10);
        // Two of ten dwelling: the due one goes.
        assert!(!decide_dwelling(10, 2, 1, &[]).engaged);
    }

    #[test]
    fn more_than_the_share_at_once_is_held() {
        // 10 capable nodes: 3 leaving is 30%, not more; 4 is.
        assert!(!decide_now(10, 3, &[]).engaged);
        let held = decide_now(10, 4, &[]);
        assert!(held.engaged);
        assert_eq!(held.held, names(4));
        assert_eq!((held.flipping, held.fleet), (4, 10));
        // Every node at once, as an agent regression would have it.
        assert_eq!(decide_now(50, 50, &[]).held.len(), 50);
    }

    #[test]
    fn removals_within_the_window_count_and_older_ones_do_not() {
        // 3 came off in the last 10 minutes; 7 remain labelled. One more
        // due makes 4 of 10.
        let held = decide_now(7, 1, &[60, 120, 500]);
        assert!(held.engaged);
        assert_eq!((held.flipping, held.fleet), (4, 10));
        // The same removals 11 minutes ago: one node alone goes.
        assert!(!decide_now(7, 1, &[660, 700, 800]).engaged);
    }

    #[test]
    fn nothing_due_is_never_held() {
        let decision = decide_now(10, 0, &[10, 20, 30, 40, 50]);
        assert!(!decision.engaged && decision.held.is_empty());
    }

    #[test]
    fn small_fleets_let_one_broken_node_go() {
        assert!(!decide_now(1, 1, &[]).engaged, "a single node leaves");
        assert!(!decide_now(2, 1, &[]).engaged, "one of two leaves");
        assert!(decide_now(2, 2, &[]).engaged, "both of two at once hold");
        assert!(!decide_now(3, 1, &[]).engaged);
        // One left a minute ago; the second within the window is held.
        assert!(decide_now(1, 1, &[60]).engaged);
    }

    #[test]
    fn a_share_of_100_never_engages() {
        let now = Instant::now();
        let policy = BrakePolicy {
            max_share_percent: 100,
            ..BrakePolicy::default()
        };
        let leaving = Leaving {
            labelled: 5,
            dwelling: 5,
            due: names(5),
        };
        let decision = decide(leaving, &RecentRemovals::default(), now, policy);
        assert!(!decision.engaged);
    }

    #[test]
    fn old_removals_are_pruned() {
        let start = Instant::now();
        let mut removed = RecentRemovals::default();
        removed.record(start);
        removed.record(start + Duration::from_secs(300));
        let window = Duration::from_secs(600);
        removed.prune(start + Duration::from_secs(650), window);
        assert_eq!(removed.within(start + Duration::from_secs(650), window), 1);
        assert_eq!(removed.0.len(), 1);
    }

    #[test]
    fn the_published_state_follows_the_decision() {
        let brake = FleetBrake::default();
        let engaged = decide_now(4, 4, &[]);
        brake.publish(&engaged);
        assert_eq!(brake.engaged.get(), 1);
        assert_eq!(brake.held_nodes.get(), 4);
        let message = brake.engaged().map(|d| d.message()).unwrap_or_default();
        assert!(
            message.starts_with("4 of 4 KVM-capable nodes would leave the Kata pool within 600s (more than 30%, and at least 2)")
                && message.contains("w0, w1, w2, w3"),
            "{message}"
        );
        brake.publish(&decide_now(4, 1, &[]));
        assert_eq!((brake.engaged.get(), brake.held_nodes.get()), (0, 0));
        assert!(brake.engaged().is_none());
    }
}
