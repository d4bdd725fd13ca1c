//! A rollout that does not move: nodes the host-config rollout has kept
//! updating longer than a threshold, and what holds their drain. Pure: time
//! and the objects read are passed in.
//!
//! When a node started updating is remembered in memory ([`WorkingClock`]):
//! the Machine Config Operator writes no timestamp with its `state`
//! annotation, and the KataConfig's status has no field for it. A restarted
//! coordinator starts the clock again, which delays the warning by at most
//! one threshold and never raises a false one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;

use crate::api::PoolSelector;

/// Event reason of a node whose update is stuck.
pub const REASON_NODE_ROLLOUT_STUCK: &str = "NodeRolloutStuck";

/// A pod the drain cannot evict, and the budget that refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainBlocker {
    /// `namespace/name`.
    pub pod: String,
    /// `namespace/name` of the PodDisruptionBudget.
    pub budget: String,
}

/// A node updating for longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckNode {
    pub name: String,
    pub working_for: Duration,
    pub threshold: Duration,
    /// What holds its drain, as far as it can be read (None: not read).
    pub blockers: Option<Vec<DrainBlocker>>,
}

/// `1h5m`, `17m`, `42s`: minutes once past a minute, so a message naming
/// the duration changes once a minute at most (each change is a status
/// write), not on every reconcile.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 3600, seconds / 60 % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, minutes) => format!("{minutes}m"),
        (hours, 0) => format!("{hours}h"),
        (hours, minutes) => format!("{hours}h{minutes}m"),
    }
}

impl StuckNode {
    /// For the KataConfig's conditions and the Event: the node, how long,
    /// and what holds its drain.
    pub fn message(&self) -> String {
        let head = format!(
            "node {} has been updating (Machine Config Operator state Working) for {}, longer than {}",
            self.name,
            format_duration(self.working_for),
            format_duration(self.threshold)
        );
        match self.blockers.as_deref() {
            None => head,
            Some([]) => format!(
                "{head}; no pod on it is covered by a PodDisruptionBudget that allows no disruption"
            ),
            Some(blockers) => {
                let list = blockers
                    .iter()
                    .map(|b| format!("pod {} (PodDisruptionBudget {})", b.pod, b.budget))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{head}; its drain cannot evict {list}: the budget allows no disruption")
            }
        }
    }
}

/// One node's time in `Working`.
#[derive(Clone, Debug)]
struct Episode {
    /// The config it is updating to: a new one starts a new episode.
    desired: Option<String>,
    since: Instant,
    announced: bool,
    /// What holds its drain, and when that was read.
    blockers: Option<(Instant, Vec<DrainBlocker>)>,
}

/// When each node was first seen updating, in this process.
#[derive(Clone, Debug, Default)]
pub struct WorkingClock {
    episodes: BTreeMap<String, Episode>,
}

impl WorkingClock {
    /// Starts the clock of nodes newly `working` (name, the config they
    /// update to) and forgets the others.
    pub fn track<'a>(
        &mut self,
        working: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        now: Instant,
    ) {
        let working: BTreeMap<&str, Option<&str>> = working.into_iter().collect();
        self.episodes.retain(|node, episode| {
            working
                .get(node.as_str())
                .is_some_and(|desired| *desired == episode.desired.as_deref())
        });
        for (node, desired) in working {
            self.episodes
                .entry(node.to_string())
                .or_insert_with(|| Episode {
                    desired: desired.map(str::to_string),
                    since: now,
                    announced: false,
                    blockers: None,
                });
        }
    }

    /// Nodes working for longer than `threshold` at `now`, by name.
    pub fn stuck(&self, now: Instant, threshold: Duration) -> Vec<StuckNode> {
        self.episodes
            .iter()
            .filter_map(|(name, episode)| {
                let working_for = now.saturating_duration_since(episode.since);
                (working_for > threshold).then(|| StuckNode {
                    name: name.clone(),
                    working_for,
                    threshold,
                    blockers: episode.blockers.as_ref().map(|(_, b)| b.clone()),
                })
            })
            .collect()
    }

    /// Whether what holds the node's drain should be read (again): never
    /// read this episode, or read longer than `refresh` ago.
    pub fn needs_lookup(&self, node: &str, now: Instant, refresh: Duration) -> bool {
        self.episodes.get(node).is_some_and(|e| {
            e.blockers
                .as_ref()
                .is_none_or(|(read, _)| now.saturating_duration_since(*read) >= refresh)
        })
    }

    pub fn record_blockers(&mut self, node: &str, blockers: Vec<DrainBlocker>, now: Instant) {
        if let Some(episode) = self.episodes.get_mut(node) {
            episode.blockers = Some((now, blockers));
        }
    }

    /// Marks the node's episode announced; true the first time only, so
    /// each stuck episode is one Event, not one per reconcile.
    pub fn announce(&mut self, node: &str) -> bool {
        self.episodes
            .get_mut(node)
            .is_some_and(|e| !std::mem::replace(&mut e.announced, true))
    }
}

/// A pod the drain evicts: not finished, not a DaemonSet's (the MCO's
/// drain skips those) and not a static pod's mirror.
fn evicted_by_drain(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let finished = matches!(phase, Some("Succeeded" | "Failed"));
    let daemon_set = pod.owner_references().iter().any(|o| o.kind == "DaemonSet");
    let mirror = pod
        .annotations()
        .contains_key("kubernetes.io/config.mirror");
    !finished && !daemon_set && !mirror
}

/// The pods (of one node) whose eviction a budget refuses: a budget of
/// their namespace whose selector matches them and whose status allows no
/// disruption. A budget without a selector selects nothing, an empty one
/// every pod of its namespace (`policy/v1`).
pub fn drain_blockers(pods: &[Pod], budgets: &[PodDisruptionBudget]) -> Vec<DrainBlocker> {
    let mut found = Vec::new();
    for pod in pods.iter().filter(|p| evicted_by_drain(p)) {
        let namespace = pod.namespace().unwrap_or_default();
        for budget in budgets {
            let refuses = budget
                .status
                .as_ref()
                .is_some_and(|s| s.disruptions_allowed == 0);
            let selector: Option<PoolSelector> = budget
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|s| serde_json::from_value(s).ok());
            let selects =
                selector.is_some_and(|s| crate::selector::matches(Some(&s), pod.labels()));
            if refuses && selects && budget.namespace().unwrap_or_default() == namespace {
                found.push(DrainBlocker {
                    pod: format!("{namespace}/{}", pod.name_any()),
                    budget: format!("{namespace}/{}", budget.name_any()),
                });
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, extra: serde_json::Value) -> Pod {
        let mut object = json!({"metadata": {"name": name, "namespace": "app", "labels": labels}});
        if let (Some(o), Some(e)) = (object.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::from_value(object).unwrap_or_default()
    }

    fn budget(name: &str, selector: serde_json::Value, allowed: i32) -> PodDisruptionBudget {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"selector": selector, "minAvailable": 1},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1}
        }))
        .unwrap_or_default()
    }

    #[test]
    fn the_clock_starts_when_a_node_is_first_seen_working_and_stops_when_it_is_not() {
        let t0 = Instant::now();
        let threshold = Duration::from_secs(60);
        let mut clock = WorkingClock::default();
        clock.track([("w0", Some("r2"))], t0);
        clock.track([("w0", Some("r2")), ("w1", Some("r2"))], t0 + threshold);
        let stuck = clock.stuck(t0 + threshold + Duration::from_secs(1), threshold);
        assert_eq!(stuck.len(), 1, "w1 started later: {stuck:?}");
        assert_eq!(
            (stuck[0].name.as_str(), stuck[0].working_for),
            ("w0", Duration::from_secs(61))
        );
        assert!(
            clock.announce("w0") && !clock.announce("w0"),
            "announced once"
        );

        // Done, then Working again: a new episode, announced again.
        clock.track([], t0 + 2 * threshold);
        assert!(clock.stuck(t0 + 10 * threshold, threshold).is_empty());
        clock.track([("w0", Some("r3"))], t0 + 3 * threshold);
        clock.track([("w0", Some("r4"))], t0 + 5 * threshold);
        assert!(
            clock.stuck(t0 + 5 * threshold, threshold).is_empty(),
            "a new target config restarts the clock"
        );
        assert!(clock.announce("w0"));
    }

    #[test]
    fn blockers_are_read_once_per_refresh_and_named_in_the_message() {
        let t0 = Instant::now();
        let refresh = Duration::from_secs(30);
        let mut clock = WorkingClock::default();
        assert!(!clock.needs_lookup("w0", t0, refresh), "not working");
        clock.track([("w0", None)], t0);
        assert!(clock.needs_lookup("w0", t0, refresh));
        let blocker = DrainBlocker {
            pod: "app/db-0".into(),
            budget: "app/db".into(),
        };
        clock.record_blockers("w0", vec![blocker], t0);
        assert!(!clock.needs_lookup("w0", t0 + Duration::from_secs(29), refresh));
        assert!(clock.needs_lookup("w0", t0 + refresh, refresh));
        let stuck = clock.stuck(
            t0 + Duration::from_secs(17 * 60 + 5),
            Duration::from_secs(900),
        );
        let message = stuck[0].message();
        assert!(
            message.contains("node w0")
                && message.contains("for 17m, longer than 15m")
                && message.contains("pod app/db-0 (PodDisruptionBudget app/db)"),
            "{message}"
        );
        let unread = StuckNode {
            blockers: Some(vec![]),
            ..stuck[0].clone()
        };
        assert!(unread.message().contains("no pod on it"));
    }

    #[test]
    fn a_budget_allowing_no_disruption_blocks_the_pods_it_selects() {
        let pods = [
            pod("db-0", json!({"app": "db"}), json!({})),
            pod("web-0", json!({"app": "web"}), json!({})),
            pod(
                "done",
                json!({"app": "db"}),
                json!({"status": {"phase": "Succeeded"}}),
            ),
            pod(
                "agent",
                json!({"app": "db"}),
                json!({"metadata": {"name": "agent", "namespace": "app", "labels": {"app": "db"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "a", "uid": "u"}]}}),
            ),
        ];
        let budgets = [
            budget("db", json!({"matchLabels": {"app": "db"}}), 0),
            budget("web", json!({"matchLabels": {"app": "web"}}), 1),
        ];
        assert_eq!(
            drain_blockers(&pods, &budgets),
            [DrainBlocker {
                pod: "app/db-0".into(),
                budget: "app/db".into()
            }]
        );
        let everything = budget("all", json!({}), 0);
        assert_eq!(
            drain_blockers(&pods[1..2], &[everything]).len(),
            1,
            "an empty selector selects the namespace"
        );
        let mut unselected = budget("none", json!({}), 0);
        if let Some(spec) = unselected.spec.as_mut() {
            spec.selector = None;
        }
        assert!(drain_blockers(&pods, &[unselected]).is_empty());
    }

    #[test]
    fn durations_are_coarse_past_a_minute() {
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(17 * 60 + 59)), "17m");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h5m");
    }
}
