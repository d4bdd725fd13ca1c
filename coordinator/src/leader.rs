//! Leader election on a `coordination.k8s.io` Lease, so two replicas can run
//! and only one acts. The decision is pure ([`decide`]); [`LeaderElector`]
//! performs it with optimistic concurrency (every write names the
//! resourceVersion it read), so two candidates can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// What the lease looks like, as far as the decision goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    pub renewed: Option<Timestamp>,
    pub duration: Duration,
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

/// The move for candidate `me` at `now`.
pub fn decide(lease: Option<&LeaseView>, me: &str, now: Timestamp) -> LeaseAction {
    let Some(lease) = lease else {
        return LeaseAction::Create;
    };
    match lease.holder.as_deref() {
        Some(holder) if holder == me => LeaseAction::Renew,
        None | Some("") => LeaseAction::TakeOver,
        Some(_) => {
            let expired = lease.renewed.is_none_or(|renewed| {
                let age = now.duration_since(renewed);
                age > SignedDuration::try_from(lease.duration).unwrap_or(SignedDuration::MAX)
            });
            if expired {
                LeaseAction::TakeOver
            } else {
                LeaseAction::Wait
            }
        }
    }
}

fn view(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed: spec.renew_time.or(spec.acquire_time).map(|t| t.0),
        duration: Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15),
        ),
    }
}

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease lives without renewal.
    pub duration: Duration,
    /// How often to try and to renew: well under `duration`.
    pub retry: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    options: LeaseOptions,
}

impl LeaderElector {
    pub fn new(client: Client, options: LeaseOptions) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &options.namespace),
            options,
        }
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

    /// One round: returns whether we hold the lease afterwards. Conflicts
    /// (another candidate wrote first) and API errors count as "not held".
    pub async fn try_acquire_or_renew(&self) -> bool {
        let now = Timestamp::now();
        let current = match self.api.get_opt(&self.options.name).await {
            Ok(lease) => lease,
            Err(error) => {
                warn!(%error, "cannot read the leader lease");
                return false;
            }
        };
        let action = decide(
            current.as_ref().map(view).as_ref(),
            &self.options.identity,
            now,
        );
        let result = match (action, current) {
            (LeaseAction::Wait, _) => return false,
            (LeaseAction::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.options.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, now, false)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (action, Some(mut lease)) => {
                let taking_over = action == LeaseAction::TakeOver;
                lease.spec = Some(self.spec(lease.spec.as_ref(), now, taking_over));
                // replace carries the resourceVersion we read: a conflict
                // means someone else won this round.
                self.api
                    .replace(&self.options.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, None) => return false,
        };
        match result {
            Ok(()) => {
                if action != LeaseAction::Renew {
                    info!(identity = %self.options.identity, "became the leader");
                }
                true
            }
            Err(kube::Error::Api(e)) if e.code == 409 => false,
            Err(error) => {
                warn!(%error, "cannot write the leader lease");
                false
            }
        }
    }

    /// Gives the lease up (on a clean shutdown), so another replica takes
    /// over at once instead of after the lease expires.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.options.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.options.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(identity = %self.options.identity, "released the leader lease"),
            Err(error) => warn!(%error, "cannot release the leader lease"),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        while !self.try_acquire_or_renew().await {
            tokio::time::sleep(self.options.retry).await;
        }
    }

    /// Renews until a renewal has failed for longer than the lease lives
    /// (someone else may lead by then), then returns.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.options.retry).await;
            if self.try_acquire_or_renew().await {
                last_renewed = tokio::time::Instant::now();
            } else if last_renewed.elapsed()
                >= self.options.duration.saturating_sub(self.options.retry)
            {
                warn!(identity = %self.options.identity, "lost the leader lease");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap_or_default()
    }

    fn lease(holder: &str, renewed: i64) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed: Some(at(renewed)),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", at(100)), LeaseAction::Create);
        assert_eq!(
            decide(Some(&lease("a", 90)), "a", at(100)),
            LeaseAction::Renew
        );
        assert_eq!(
            decide(Some(&lease("b", 90)), "a", at(100)),
            LeaseAction::Wait
        );
        assert_eq!(
            decide(Some(&lease("b", 80)), "a", at(100)),
            LeaseAction::TakeOver,
            "expired after 15 s"
        );
        let released = LeaseView {
            holder: None,
            renewed: None,
            duration: Duration::from_secs(15),
        };
        assert_eq!(decide(Some(&released), "a", at(100)), LeaseAction::TakeOver);
    }
}
