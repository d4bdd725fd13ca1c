//! What the agents' port turns away, counted and logged without letting a
//! flood of refusals flood the log: every refusal is counted in
//! `kata_operator_health_refused_total{reason}` and logged at debug with its
//! details, and at most one info line per [`SUMMARY_INTERVAL`] sums up the
//! refusals since the previous one. A burst followed by silence leaves its
//! tail in the counter until the next refusal writes the next line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info};

use crate::metrics::{Metrics, REFUSAL_REASONS, ReasonLabel};

/// The shortest time between two summary lines.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Counts and logs refusals; clones count together. [`Default`] counts into
/// counters nobody exports.
#[derive(Clone, Debug)]
pub struct Refusals {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// By the index of the reason in [`REFUSAL_REASONS`].
    counters: Vec<Counter>,
    /// Refusals not yet in a summary line, by the same index.
    unlogged: Vec<AtomicU64>,
    last_summary: Mutex<Option<Instant>>,
    interval: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::with_counters(
            REFUSAL_REASONS.iter().map(|_| Counter::default()).collect(),
            SUMMARY_INTERVAL,
        )
    }
}

impl Refusals {
    /// Counting into `metrics`' `health_refused` family.
    pub fn of(metrics: &Metrics) -> Self {
        let counters = REFUSAL_REASONS
            .iter()
            .map(|reason| {
                metrics.health_refused.get_or_create_owned(&ReasonLabel {
                    reason: (*reason).into(),
                })
            })
            .collect();
        Self::with_counters(counters, SUMMARY_INTERVAL)
    }

    fn with_counters(counters: Vec<Counter>, interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                unlogged: counters.iter().map(|_| AtomicU64::new(0)).collect(),
                counters,
                last_summary: Mutex::new(None),
                interval,
            }),
        }
    }

    /// Counts one refusal for `reason` (one of [`REFUSAL_REASONS`]), logs its
    /// details at debug and, if the last summary is old enough, a summary.
    pub fn refuse(&self, reason: &'static str, peer: Option<SocketAddr>, detail: &str) {
        debug!(reason, ?peer, detail, "refused on the agents' port");
        let Some(index) = REFUSAL_REASONS.iter().position(|known| *known == reason) else {
            return;
        };
        self.inner.counters[index].inc();
        self.inner.unlogged[index].fetch_add(1, Ordering::Relaxed);
        if let Some(summary) = self.summary_due(Instant::now()) {
            info!(
                refused = %summary,
                "the agents' port refused connections or calls (counts since the last such line; \
                 details at debug, totals in kata_operator_health_refused_total)"
            );
        }
    }

    /// The refusals counted for `reason` so far.
    pub fn count(&self, reason: &str) -> u64 {
        REFUSAL_REASONS
            .iter()
            .position(|known| *known == reason)
            .map_or(0, |index| self.inner.counters[index].get())
    }

    /// The summary of the refusals since the last one, if one is due at
    /// `now`: none within the interval after the last.
    fn summary_due(&self, now: Instant) -> Option<String> {
        let mut last = self.inner.last_summary.lock().ok()?;
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.inner.interval) {
            return None;
        }
        *last = Some(now);
        let counts = REFUSAL_REASONS
            .iter()
            .zip(&self.inner.unlogged)
            .map(|(reason, unlogged)| (*reason, unlogged.swap(0, Ordering::Relaxed)));
        Some(summary_line(counts))
    }
}

/// `reason=count` for every reason with refusals, space-separated.
fn summary_line(counts: impl IntoIterator<Item = (&'static str, u64)>) -> String {
    let mut line = String::new();
    for (reason, count) in counts.into_iter().filter(|(_, count)| *count > 0) {
        if !line.is_empty() {
            line.push(' ');
        }
        let _ = write!(line, "{reason}={count}");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{REFUSED_IDLE, REFUSED_UNAUTHENTICATED};

    #[test]
    fn one_summary_per_interval_with_the_counts_since_the_last() {
        let refusals = Refusals::with_counters(
            REFUSAL_REASONS.iter().map(|_| Counter::default()).collect(),
            Duration::from_secs(10),
        );
        let start = Instant::now();
        // The first refusal is summed up at once (refuse() took that line).
        refusals.refuse(REFUSED_UNAUTHENTICATED, None, "no bearer");
        for _ in 0..3 {
            refusals.refuse(REFUSED_UNAUTHENTICATED, None, "no bearer");
        }
        refusals.refuse(REFUSED_IDLE, None, "idle");
        assert_eq!(refusals.summary_due(start + Duration::from_secs(5)), None);
        assert_eq!(
            refusals
                .summary_due(start + Duration::from_secs(11))
                .as_deref(),
            Some("idle=1 unauthenticated=3")
        );
        assert_eq!(refusals.summary_due(start + Duration::from_secs(12)), None);
        assert_eq!(refusals.count(REFUSED_UNAUTHENTICATED), 4);
        assert_eq!(refusals.count(REFUSED_IDLE), 1);
    }

    #[test]
    fn counts_land_in_the_exported_family() {
        let metrics = Metrics::default();
        let refusals = Refusals::of(&metrics);
        refusals.refuse(REFUSED_UNAUTHENTICATED, None, "junk");
        let exported = metrics
            .health_refused
            .get(&ReasonLabel {
                reason: REFUSED_UNAUTHENTICATED.into(),
            })
            .map(|counter| counter.get());
        assert_eq!(exported, Some(1));
    }
}
