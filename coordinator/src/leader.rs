//! Leader election on a `coordination.k8s.io` Lease, so two replicas can run
//! and only one acts. Every write names the resourceVersion it read, so two
//! candidates can never both win a round; what keeps two from *acting* at
//! once is time, measured as client-go measures it:
//!
//! - a standby takes over only once the lease record (holder, renewTime,
//!   resourceVersion) has not changed for a whole lease duration on its own
//!   monotonic clock, counted from when *it* saw the last change. No wall
//!   clock is compared with another's: `renewTime` is only a value that
//!   changes, so a standby whose clock is minutes off never takes a live
//!   lease;
//! - the leader stops acting once the renew deadline (shorter than the lease
//!   duration) has passed since the *start* of its last successful renewal,
//!   even while a renewal is still hanging. Its successful write happened
//!   after that start and a standby saw it later still, so the leader stops
//!   before any standby's lease duration runs out.
//!
//! The decisions are pure ([`observe`], [`decide`], [`leads`]);
//! [`LeaderElector`] performs them against the API server.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// What identifies one version of the lease record: any change of it means
/// the holder is alive (or another one took over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: Option<String>,
    /// The holder's wall clock when it last renewed: compared for change
    /// only, never with our clock.
    pub renewed: Option<Timestamp>,
    pub resource_version: Option<String>,
    pub duration: Duration,
}

/// A lease record and when this replica first saw it, on its monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    pub since: Instant,
}

/// The observation after reading `record` at `now`: the time of the
/// previous observation is kept while the record is unchanged, so the lease
/// ages only while nobody writes it.
pub fn observe(previous: Option<&Observed>, record: LeaseRecord, now: Instant) -> Observed {
    match previous {
        Some(previous) if previous.record == record => previous.clone(),
        _ => Observed { record, since: now },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// No lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder let it expire (or none holds it): take it.
    TakeOver,
    /// Another candidate holds a live lease.
    Wait,
}

/// The move for candidate `me` at `now`, given what it has observed of the
/// lease (`None`: there is no lease).
pub fn decide(observed: Option<&Observed>, me: &str, now: Instant) -> LeaseAction {
    let Some(observed) = observed else {
        return LeaseAction::Create;
    };
    match observed.record.holder.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            if now.saturating_duration_since(observed.since) > observed.record.duration {
                LeaseAction::TakeOver
            } else {
                LeaseAction::Wait
            }
        }
    }
}

/// Whether a leader whose last successful renewal started at
/// `last_renewal_started` may still act at `now`.
pub fn leads(last_renewal_started: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(last_renewal_started) < renew_deadline
}

/// How long renewals may fail before the leader stops acting: two thirds of
/// the lease duration, as client-go's defaults (10 s of 15 s), so a leader
/// stops well before a standby, counting the lease duration from a later
/// instant, takes over.
pub fn renew_deadline(duration: Duration) -> Duration {
    duration * 2 / 3
}

fn record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity,
        renewed: spec.renew_time.or(spec.acquire_time).map(|t| t.0),
        resource_version: lease.metadata.resource_version.clone(),
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        ),
    }
}

/// Where the wall-clock timestamps written into the lease come from. They
/// are informational (`kubectl get lease`, and a record that changes on every
/// renewal); no decision reads them.
pub trait Clock: Send + Sync + fmt::Debug {
    fn wall(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The system's clock off by a fixed amount: what a replica on a node with a
/// wrong clock writes. For tests of clock skew.
#[derive(Clone, Copy, Debug)]
pub struct OffsetClock(pub SignedDuration);

impl Clock for OffsetClock {
    fn wall(&self) -> Timestamp {
        Timestamp::now()
            .checked_add(self.0)
            .unwrap_or_else(|_| Timestamp::now())
    }
}

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lives without renewal, in whole seconds (what the
    /// Lease carries). Renewals must succeed within [`renew_deadline`] of it.
    pub duration: Duration,
    /// How often to try and to renew: well under `duration`.
    pub retry: Duration,
}

/// The three requests an election makes, behind a trait so the unit tests
/// can make them hang.
trait LeaseStore: Send + Sync {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>, kube::Error>>;
    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, kube::Error>>;
    fn replace<'a>(
        &'a self,
        name: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Lease, kube::Error>>;
}

impl LeaseStore for Api<Lease> {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>, kube::Error>> {
        Box::pin(self.get_opt(name))
    }
    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, kube::Error>> {
        Box::pin(async move { Api::create(self, &PostParams::default(), lease).await })
    }
    fn replace<'a>(
        &'a self,
        name: &'a str,
        lease: &'a Lease,
    ) -> BoxFuture<'a, Result<Lease, kube::Error>> {
        // replace carries the resourceVersion we read: a conflict means
        // someone else won this round.
        Box::pin(async move { Api::replace(self, name, &PostParams::default(), lease).await })
    }
}

/// How one round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Round {
    /// We hold the lease: created, renewed or taken over.
    Held,
    /// Another candidate holds a live lease (or won the write).
    HeldByOther,
    /// The API failed: nothing is known.
    Failed,
}

#[derive(Debug, Default)]
struct State {
    /// The lease as last read, and since when it has looked so.
    observed: Option<Observed>,
    /// When the last round that left us holding the lease started.
    last_renewal_started: Option<Instant>,
}

pub struct LeaderElector {
    store: Arc<dyn LeaseStore>,
    options: LeaseOptions,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl LeaderElector {
    pub fn new(client: Client, options: LeaseOptions) -> Self {
        let api: Api<Lease> = Api::namespaced(client, &options.namespace);
        Self::with_store(Arc::new(api), options)
    }

    fn with_store(store: Arc<dyn LeaseStore>, options: LeaseOptions) -> Self {
        LeaderElector {
            store,
            options,
            clock: Arc::new(SystemClock),
            state: Mutex::new(State::default()),
        }
    }

    /// The same elector taking the timestamps it writes from `clock` (a
    /// skewed one, in tests): the decisions do not depend on it.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn renew_deadline(&self) -> Duration {
        renew_deadline(self.options.duration)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock: a panic elsewhere
        // cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records what a read or our own write of the lease showed.
    fn note(&self, lease: Option<&Lease>) -> Option<Observed> {
        let now = Instant::now();
        let mut state = self.state();
        state.observed = lease.map(|lease| observe(state.observed.as_ref(), record(lease), now));
        state.observed.clone()
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp, taking_over: bool) -> LeaseSpec {
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.options.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.options.duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if taking_over || previous.is_none() {
                Some(MicroTime(now))
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if taking_over {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        }
    }

    /// One round, without a deadline (callers put one on it).
    async fn round(&self) -> Round {
        let current = match self.store.get(&self.options.name).await {
            Ok(lease) => lease,
            Err(error) => {
                warn!(%error, "cannot read the leader lease");
                return Round::Failed;
            }
        };
        let observed = self.note(current.as_ref());
        let action = decide(observed.as_ref(), &self.options.identity, Instant::now());
        let now = self.clock.wall();
        let result = match (action, current) {
            (LeaseAction::Wait, _) => return Round::HeldByOther,
            (LeaseAction::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.options.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, now, false)),
                };
                self.store.create(&lease).await
            }
            (action, Some(mut lease)) => {
                let taking_over = action == LeaseAction::TakeOver;
                lease.spec = Some(self.spec(lease.spec.as_ref(), now, taking_over));
                self.store.replace(&self.options.name, &lease).await
            }
            (_, None) => return Round::Failed,
        };
        match result {
            Ok(written) => {
                self.note(Some(&written));
                if action != LeaseAction::Renew {
                    info!(identity = %self.options.identity, "became the leader");
                }
                Round::Held
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Round::HeldByOther,
            Err(error) => {
                warn!(%error, "cannot write the leader lease");
                Round::Failed
            }
        }
    }

    /// One round under the renew deadline, remembering when a round that
    /// left us holding the lease started.
    async fn timed_round(&self) -> Round {
        let started = Instant::now();
        match tokio::time::timeout(self.renew_deadline(), self.round()).await {
            Ok(Round::Held) => {
                self.state().last_renewal_started = Some(started);
                Round::Held
            }
            Ok(round) => round,
            Err(_) => {
                warn!(
                    deadline = ?self.renew_deadline(),
                    "a leader-lease request did not finish within the renew deadline"
                );
                Round::Failed
            }
        }
    }

    /// One round: returns whether we hold the lease afterwards. Conflicts
    /// (another candidate wrote first), API errors and requests slower than
    /// the renew deadline count as "not held".
    pub async fn try_acquire_or_renew(&self) -> bool {
        self.timed_round().await == Round::Held
    }

    /// Gives the lease up (on a clean shutdown), so another replica takes
    /// over at once instead of after the lease expires.
    pub async fn release(&self) {
        let release = async {
            let Ok(Some(mut lease)) = self.store.get(&self.options.name).await else {
                return;
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            match self.store.replace(&self.options.name, &lease).await {
                Ok(_) => info!(identity = %self.options.identity, "released the leader lease"),
                Err(error) => warn!(%error, "cannot release the leader lease"),
            }
        };
        // A hung API server must not hold the shutdown up: the lease then
        // expires by itself.
        if tokio::time::timeout(self.renew_deadline(), release)
            .await
            .is_err()
        {
            warn!("releasing the leader lease did not finish within the renew deadline");
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        while self.timed_round().await != Round::Held {
            tokio::time::sleep(self.options.retry).await;
        }
    }

    /// Renews until this replica may no longer act, then returns: when
    /// another holder shows up, or when the renew deadline has passed since
    /// the start of the last successful renewal, whether the renewals since
    /// failed or still hang.
    pub async fn hold(&self) {
        let deadline = self.renew_deadline();
        let mut last = self
            .state()
            .last_renewal_started
            .unwrap_or_else(Instant::now);
        loop {
            let fence = last + deadline;
            tokio::time::sleep_until((Instant::now() + self.options.retry).min(fence)).await;
            let started = Instant::now();
            if !leads(last, started, deadline) {
                break;
            }
            // Not a fresh deadline per request: whatever is in flight when
            // the fence comes is abandoned.
            match tokio::time::timeout_at(fence, self.round()).await {
                Ok(Round::Held) => {
                    last = started;
                    self.state().last_renewal_started = Some(started);
                }
                Ok(Round::HeldByOther) => {
                    warn!(identity = %self.options.identity, "another replica holds the leader lease");
                    return;
                }
                Ok(Round::Failed) => {}
                Err(_) => break,
            }
        }
        warn!(
            identity = %self.options.identity,
            renew_deadline = ?deadline,
            "lost the leader lease: no renewal succeeded within the renew deadline"
        );
    }
}

#[cfg(test)]
mod tests;
