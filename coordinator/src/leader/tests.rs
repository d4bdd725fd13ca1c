#![allow(clippy::unwrap_used)]

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const LEASE: Duration = Duration::from_secs(15);
const RETRY: Duration = Duration::from_secs(2);

fn record(holder: &str, renewed: Timestamp, version: u64) -> LeaseRecord {
    LeaseRecord {
        holder: Some(holder.into()),
        renewed: Some(renewed),
        resource_version: Some(version.to_string()),
        duration: LEASE,
    }
}

#[test]
fn no_lease_is_created_our_own_is_renewed_a_released_one_is_taken() {
    let t0 = Instant::now();
    assert_eq!(decide(None, "a", t0), LeaseAction::Create);
    let ours = observe(None, record("a", Timestamp::now(), 1), t0);
    assert_eq!(
        decide(Some(&ours), "a", t0 + LEASE * 10),
        LeaseAction::Renew
    );
    let released = observe(
        None,
        LeaseRecord {
            holder: None,
            renewed: None,
            resource_version: Some("2".into()),
            duration: LEASE,
        },
        t0,
    );
    assert_eq!(decide(Some(&released), "a", t0), LeaseAction::TakeOver);
}

#[test]
fn a_lease_expires_after_its_duration_without_change_on_our_clock() {
    let t0 = Instant::now();
    // renewTime a day old on our clock: irrelevant, we count from now.
    let stale = record("b", Timestamp::now() - SignedDuration::from_hours(24), 7);
    let mut seen = observe(None, stale.clone(), t0);
    assert_eq!(
        decide(Some(&seen), "a", t0),
        LeaseAction::Wait,
        "a lease seen for the first time lives a whole duration"
    );
    // Read again and again, unchanged: it ages from the first sight.
    for step in 1..=7 {
        let now = t0 + RETRY * step;
        seen = observe(Some(&seen), stale.clone(), now);
        assert_eq!(seen.since, t0);
        assert_eq!(decide(Some(&seen), "a", now), LeaseAction::Wait);
    }
    let after = t0 + LEASE + Duration::from_millis(1);
    seen = observe(Some(&seen), stale, after);
    assert_eq!(decide(Some(&seen), "a", after), LeaseAction::TakeOver);
}

#[test]
fn a_skewed_standby_never_takes_a_lease_that_keeps_changing() {
    let t0 = Instant::now();
    // The holder's renewTime is minutes away from the standby's clock,
    // either way: a comparison of the two would call the lease expired
    // (or never expiring). Only its changes count.
    for skew in [SignedDuration::from_mins(5), SignedDuration::from_mins(-5)] {
        let mut seen: Option<Observed> = None;
        for step in 0..100u32 {
            let now = t0 + RETRY * step;
            let renewed = Timestamp::now() + skew;
            let next = observe(seen.as_ref(), record("b", renewed, u64::from(step)), now);
            assert_eq!(next.since, now, "every renewal is a change");
            assert_eq!(decide(Some(&next), "a", now), LeaseAction::Wait, "{skew}");
            seen = Some(next);
        }
    }
}

#[test]
fn a_change_of_the_resource_version_alone_renews_the_lease() {
    let t0 = Instant::now();
    let renewed = Timestamp::now();
    let seen = observe(None, record("b", renewed, 1), t0);
    let later = t0 + LEASE;
    let seen = observe(Some(&seen), record("b", renewed, 2), later);
    assert_eq!(seen.since, later);
    assert_eq!(
        decide(Some(&seen), "a", later + LEASE / 2),
        LeaseAction::Wait
    );
}

#[test]
fn the_leader_stops_at_the_renew_deadline_from_the_start_of_its_last_renewal() {
    let deadline = renew_deadline(LEASE);
    assert!(deadline < LEASE);
    let started = Instant::now();
    assert!(leads(started, started, deadline));
    assert!(leads(
        started,
        started + deadline - Duration::from_millis(1),
        deadline
    ));
    assert!(!leads(started, started + deadline, deadline));
    // However long the renewal after it hangs.
    assert!(!leads(started, started + LEASE, deadline));
}

/// A lease store in memory, whose requests can be made to hang.
#[derive(Default)]
struct MemoryStore {
    lease: Mutex<Option<Lease>>,
    version: AtomicU64,
    hang_get: AtomicBool,
    hang_replace: AtomicBool,
    replaces_started: AtomicU64,
}

impl MemoryStore {
    fn write(&self, mut lease: Lease) -> Lease {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        lease.metadata.resource_version = Some(version.to_string());
        *self.lease.lock().unwrap() = Some(lease.clone());
        lease
    }
}

impl LeaseStore for MemoryStore {
    fn get<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Option<Lease>, kube::Error>> {
        Box::pin(async move {
            if self.hang_get.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(self.lease.lock().unwrap().clone())
        })
    }
    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, kube::Error>> {
        Box::pin(async move { Ok(self.write(lease.clone())) })
    }
    fn replace<'a>(
        &'a self,
        _: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Lease, kube::Error>> {
        Box::pin(async move {
            self.replaces_started.fetch_add(1, Ordering::SeqCst);
            if self.hang_replace.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            Ok(self.write(lease.clone()))
        })
    }
}

fn elector(store: Arc<MemoryStore>, identity: &str) -> LeaderElector {
    LeaderElector::with_store(
        store,
        LeaseOptions {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: identity.into(),
            // The Lease carries whole seconds.
            duration: Duration::from_secs(1),
            retry: Duration::from_millis(50),
        },
    )
}

/// Makes the leader's renewals hang with `hang` and waits for `hold` to
/// give the leadership up.
async fn hung_renewal_ends_leadership(hang: impl FnOnce(&MemoryStore)) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::default());
    let leader = elector(store.clone(), "a");
    leader.acquire().await;
    hang(&store);
    // Generous: without a deadline on the requests this never returns.
    tokio::time::timeout(Duration::from_secs(30), leader.hold())
        .await
        .expect("a hung renewal must end the leadership");
    // Not before the fence either: measured on the monotonic clock from
    // the start of the last good renewal.
    let last = leader.state().last_renewal_started.unwrap();
    assert!(
        !leads(last, Instant::now(), leader.renew_deadline()),
        "hold returned while the leader could still act"
    );
    store
}

#[tokio::test]
async fn a_hung_put_ends_the_leadership_at_the_renew_deadline() {
    let store =
        hung_renewal_ends_leadership(|store| store.hang_replace.store(true, Ordering::SeqCst))
            .await;
    assert!(
        store.replaces_started.load(Ordering::SeqCst) >= 1,
        "the renewal that hung was a PUT"
    );
}

#[tokio::test]
async fn a_hung_get_ends_the_leadership_too() {
    hung_renewal_ends_leadership(|store| store.hang_get.store(true, Ordering::SeqCst)).await;
}

#[tokio::test]
async fn the_leader_holds_while_renewals_succeed_and_a_standby_waits() {
    let store = Arc::new(MemoryStore::default());
    let leader = elector(store.clone(), "a");
    leader.acquire().await;
    let standby = elector(store.clone(), "b")
        .with_clock(Arc::new(OffsetClock(SignedDuration::from_mins(10))));
    // Several lease durations of renewals: the leader keeps holding, the
    // standby (its clock ten minutes ahead) never wins a round.
    let watch = async {
        for _ in 0..30 {
            assert!(!standby.try_acquire_or_renew().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        () = leader.hold() => panic!("the leader lost a lease it renews"),
        () = watch => {}
    }
    // The leader gone, the lease stops changing and the standby takes it
    // after a lease duration on its clock.
    tokio::time::timeout(Duration::from_secs(30), standby.acquire())
        .await
        .expect("the standby takes an expired lease");
    let holder = store.lease.lock().unwrap().clone().unwrap().spec.unwrap();
    assert_eq!(holder.holder_identity.as_deref(), Some("b"));
    assert_eq!(holder.lease_transitions, Some(1));
}
