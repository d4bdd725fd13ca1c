//! At most one reconcile trigger per period. Every watched change triggers
//! a reconcile of the KataConfig, and each reconcile reads and plans every
//! node: while the labeller writes thousands of node labels, one reconcile
//! per label write is thousands of plans that only find nothing to do and
//! take the CPU the labelling needs. A change arriving after a quiet period
//! passes at once; the changes of a burst after it are folded into one at
//! the period's end, so none is lost and none waits longer than the period.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// How often a burst of changes reconciles at most.
pub const PERIOD: Duration = Duration::from_millis(500);

/// `triggers`, at most one per `period`.
pub fn throttled<S>(triggers: S, period: Duration) -> impl Stream<Item = ()> + Send + 'static
where
    S: Stream<Item = ()> + Send + Unpin + 'static,
{
    futures::stream::unfold(
        (triggers, None::<Instant>),
        move |(mut triggers, last)| async move {
            triggers.next().await?;
            if let Some(ready_at) = last.map(|last| last + period) {
                let deadline = tokio::time::sleep_until(ready_at);
                tokio::pin!(deadline);
                // Fold what comes until the period ends into this trigger.
                loop {
                    tokio::select! {
                        () = &mut deadline => break,
                        more = triggers.next() => if more.is_none() { break },
                    }
                }
            }
            Some(((), (triggers, Some(Instant::now()))))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_trigger_at_once_and_one_at_the_periods_end() {
        let (sender, receiver) = futures::channel::mpsc::unbounded::<()>();
        let throttled = throttled(receiver, PERIOD);
        tokio::pin!(throttled);
        let start = Instant::now();
        // A first change passes at once.
        sender.unbounded_send(()).ok();
        throttled.next().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A burst of a hundred right after it: one more, at the period's end.
        for _ in 0..100 {
            sender.unbounded_send(()).ok();
        }
        throttled.next().await;
        assert_eq!(start.elapsed(), PERIOD);
        // Nothing more was left over from the burst.
        let pending = tokio::time::timeout(PERIOD * 4, throttled.next()).await;
        assert!(pending.is_err(), "the burst was folded into one trigger");
        // After a quiet while, a change passes at once again.
        let quiet = Instant::now();
        sender.unbounded_send(()).ok();
        throttled.next().await;
        assert_eq!(quiet.elapsed(), Duration::ZERO);
        // And the stream ends with its source.
        drop(sender);
        assert_eq!(throttled.next().await, None);
    }
}
