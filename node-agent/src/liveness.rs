//! Whether the agent can still report: what the DaemonSet's liveness probe
//! asks (`GET /healthz` on the metrics port).
//!
//! The answer is about the agent itself, never about the coordinator: an
//! unreachable coordinator is retried with backoff, and restarting every
//! agent of the cluster would not bring it back. The agent is dead when it
//! makes no progress at all (no probe cycle and no connection attempt for the
//! stall limit: its loop is wedged), or when every thread of the small
//! blocking pool is held by probe work stuck past its deadline (a hung mount,
//! an ioctl that never returns): then no probe can run again, and only a new
//! process gets the threads back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The stall limit unless the intervals need more: three missed cycles at
/// the default 10 s interval and a few reconnect backoffs, with room for a
/// coordinator that takes its time to review a token.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(180);

/// The stall limit for these intervals: never below three probe intervals
/// or two reconnect attempts (longest backoff plus the connect timeout), so
/// an agent doing what it was told is never judged dead.
pub fn stall_limit(
    probe_interval: Duration,
    longest_backoff: Duration,
    connect: Duration,
) -> Duration {
    DEFAULT_STALL_LIMIT
        .max(probe_interval.saturating_mul(3))
        .max(longest_backoff.saturating_add(connect).saturating_mul(2))
}

/// Why the agent cannot report, or `Ok` when it can.
pub fn judge(
    since_progress: Duration,
    stall_limit: Duration,
    abandoned_work: usize,
    blocking_threads: usize,
) -> Result<(), String> {
    if abandoned_work >= blocking_threads {
        return Err(format!(
            "all {blocking_threads} probe threads are held by work stuck past its deadline"
        ));
    }
    if since_progress > stall_limit {
        return Err(format!(
            "no probe cycle and no connection attempt for {}s (limit {}s)",
            since_progress.as_secs(),
            stall_limit.as_secs()
        ));
    }
    Ok(())
}

/// The agent's last sign of progress, shared by its loop (which records) and
/// the `/healthz` endpoint (which judges). Cheap to clone: clones share it.
#[derive(Clone, Debug)]
pub struct Liveness {
    started: Instant,
    /// Milliseconds from `started` to the last progress.
    last_progress: Arc<AtomicU64>,
    stall_limit: Duration,
}

impl Liveness {
    pub fn new(stall_limit: Duration) -> Self {
        Self {
            started: Instant::now(),
            last_progress: Arc::new(AtomicU64::new(0)),
            stall_limit,
        }
    }

    /// A probe cycle finished, or a connection attempt began.
    pub fn progress(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress.store(millis, Ordering::Relaxed);
    }

    /// [`judge`] now, with the process's abandoned probe work.
    pub fn check(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.last_progress.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        judge(
            since,
            self.stall_limit,
            crate::probe::abandoned_blocking_work(),
            crate::runner::BLOCKING_THREADS,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(180);

    #[test]
    fn progress_within_the_limit_is_alive() {
        assert_eq!(judge(Duration::ZERO, LIMIT, 0, 4), Ok(()));
        assert_eq!(judge(LIMIT, LIMIT, 3, 4), Ok(()));
    }

    #[test]
    fn a_stall_or_every_thread_stuck_is_dead() {
        assert_eq!(
            judge(LIMIT + Duration::from_secs(1), LIMIT, 0, 4),
            Err("no probe cycle and no connection attempt for 181s (limit 180s)".to_owned())
        );
        assert_eq!(
            judge(Duration::ZERO, LIMIT, 4, 4),
            Err("all 4 probe threads are held by work stuck past its deadline".to_owned())
        );
    }

    #[test]
    fn the_limit_covers_slow_intervals_and_backoffs() {
        let s = Duration::from_secs;
        assert_eq!(stall_limit(s(10), s(30), s(10)), DEFAULT_STALL_LIMIT);
        assert_eq!(stall_limit(s(120), s(30), s(10)), s(360));
        assert_eq!(stall_limit(s(10), s(300), s(10)), s(620));
    }

    #[test]
    fn recorded_progress_resets_the_clock() {
        let liveness = Liveness::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(liveness.check().is_err(), "no progress within a zero limit");
        let alive = Liveness::new(LIMIT);
        alive.progress();
        assert_eq!(alive.check(), Ok(()));
    }
}
