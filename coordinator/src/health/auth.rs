//! Agent authentication: the bearer token is a projected ServiceAccount token
//! with a dedicated audience, bound to the agent's Pod. TokenReview proves it
//! is live (signature, expiry, the bound Pod still exists); the pure
//! [`identity_from_review`] then decides whether it is *our* agent and which
//! node it may speak for.
//!
//! Anyone who reaches the port can present a bearer, so nothing a stranger
//! sends may cost an API request or unbounded memory: [`precheck`] refuses
//! what cannot be a live token for our audience (shape, audience, expiry,
//! read from the unverified JWT) before any review, and so does a signature
//! none of the cluster's issuer keys made ([`super::issuer_keys`]); reviews
//! run a bounded number at a time with a bounded queue; and a review that
//! admitted a token is remembered (by the token's SHA-256, never past the token's expiry,
//! one token per Pod) so an agent reconnecting with the same token costs
//! none. A node's tokens cannot crowd out the others' ([`fairness`]): one
//! review in flight per Pod, a review rate per node.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use super::clock::{remember_for, skew_seconds};
use super::issuer_keys::{IssuerKeySource, Signature};
use crate::metrics::{
    Metrics, REVIEW_AUTHENTICATED, REVIEW_ERROR, REVIEW_REJECTED, TOKEN_CACHED, TOKEN_LIMITED,
    TOKEN_QUEUE_FULL, TOKEN_REFUSED_UNREVIEWED,
};
use fairness::{BoundClaims, Flight, FlightEnd, InFlight, NodeBuckets, bound_claims, shared};
pub use fairness::{Limit, ReviewFairness};
pub use identity::identity_from_review;
pub use precheck::{TokenClaims, precheck};
use review_cache::{ReviewCache, TokenKey, token_key};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves these whole: a panic elsewhere cannot break them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The key the API server puts in a pod-bound token's user.extra with the
/// name of the node the Pod is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The key with the name of the Pod the token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// The key with the uid of the Pod the token is bound to: a Pod of the same
/// name created later is another Pod.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// An agent admitted, and until when its token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub identity: AgentIdentity,
    /// The token's `exp`: the stream must end by then.
    pub expires_at: SystemTime,
}

/// Who is on the other end of a stream, as proven by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The only node this agent may report about.
    pub node_name: String,
    pub pod_name: String,
    /// The bound Pod's uid, when the API server says (every supported
    /// version does): the stream ends when that Pod is deleted.
    pub pod_uid: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, or one the API server does not accept for our audience
    /// (forged, expired, wrong audience, bound Pod gone).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A valid token, but not one that may speak for a node here.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The TokenReview itself failed: says nothing about the agent, so the
    /// agent should retry rather than conclude its token is bad.
    #[error("token review failed: {0}")]
    Review(#[source] kube::Error),
    /// The API server did not answer the TokenReview in time.
    #[error("token review timed out after {0:?}")]
    ReviewTimedOut(Duration),
    /// Too many reviews are waiting: the agent should come back later.
    #[error("too many token reviews waiting")]
    Busy,
    /// Turned away before any review by a limit of its Pod or node
    /// ([`fairness`]): the agent should come back later.
    #[error("token review refused: {0}")]
    Limited(Limit),
    /// The review of the same token this call waited for failed.
    #[error("the token review this call waited for failed")]
    SharedReviewFailed,
}

impl AuthError {
    /// Whether the credentials themselves were refused, for good: the
    /// caller has nothing more to do on this connection. A check that
    /// could not be made now, or was limited, says nothing about them.
    pub fn refuses_credentials(&self) -> bool {
        matches!(self, Self::Unauthenticated(_) | Self::PermissionDenied(_))
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(reason) => tonic::Status::unauthenticated(reason),
            AuthError::PermissionDenied(reason) => tonic::Status::permission_denied(reason),
            // The kube error may carry API server details; the agent only
            // needs to know it is worth retrying.
            AuthError::Review(_) | AuthError::ReviewTimedOut(_) | AuthError::SharedReviewFailed => {
                tonic::Status::unavailable(
                    "cannot verify the token now: the TokenReview failed; retry later",
                )
            }
            AuthError::Busy => tonic::Status::unavailable(
                "cannot verify the token now: too many waiting; retry later",
            ),
            AuthError::Limited(limit) => tonic::Status::unavailable(format!(
                "cannot verify the token now: {limit}; retry later"
            )),
        }
    }
}

/// TokenReviews in flight at once. When every agent of a large cluster
/// reconnects together (a coordinator restart), the rest wait their turn
/// instead of opening a connection to the API server each.
pub const REVIEW_CONCURRENCY: usize = 32;

/// How long a TokenReview may take. An API server that does not answer
/// would otherwise hold the agent's connection (and a review permit) for as
/// long as the client's own timeout, minutes; the agent retries sooner.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Reviews that may wait for a permit; more are turned away at once (the
/// agent retries with backoff). Each waiting check-in holds its connection
/// (about 30 KiB of TLS and HTTP/2 state), so this bounds what a storm of
/// new agents (5,000 started at once: 170 MiB with room for all of them)
/// can make the coordinator hold. 512 drain in well under a second at a
/// review's usual tens of milliseconds, 32 at a time, and in 8 s even at
/// 500 ms a review.
pub const REVIEW_QUEUE: usize = 512;

/// How long a review may wait for a permit before the agent is told to
/// come back later: less than the agent waits for its check-in's answer.
pub const REVIEW_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// The longest bearer looked at. A projected token is about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Admitted tokens remembered; past this, new admissions are not cached
/// (the reviews stay correct, they just cost a request).
pub const REVIEW_CACHE_ENTRIES: usize = 16_384;

/// How long an admission is remembered, at most (and never past the
/// token's expiry). Agents check in every heartbeat, each time with their
/// token: a review per check-in would be 170 TokenReviews a second at 5,000
/// nodes, and even this hour is one every 0.7 s. The bound Pod's deletion
/// does not wait for it: the watch of the agents' Pods refuses a deleted
/// Pod's token at once, and its relists forget the admissions of Pods gone
/// meanwhile (`super::pods`). What is left to it is the rare
/// deletion of the agents' ServiceAccount, noticed within the hour.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(3600);

/// How a review ended, as `kata_operator_token_reviews_total` counts it:
/// admitted, refused (a token that is not a live agent token for a node),
/// or failed (nothing learnt about the token).
pub fn review_outcome(result: &Result<AgentIdentity, AuthError>) -> &'static str {
    match result {
        Ok(_) => REVIEW_AUTHENTICATED,
        Err(AuthError::Unauthenticated(_) | AuthError::PermissionDenied(_)) => REVIEW_REJECTED,
        Err(
            AuthError::Review(_)
            | AuthError::ReviewTimedOut(_)
            | AuthError::Busy
            | AuthError::Limited(_)
            | AuthError::SharedReviewFailed,
        ) => REVIEW_ERROR,
    }
}

/// Checks agents' tokens with the API server's TokenReview.
#[derive(Clone)]
pub struct AgentAuthenticator {
    client: kube::Client,
    audience: String,
    /// (namespace, name) of the node-agent's ServiceAccount.
    service_account: (String, String),
    reviews: Arc<Semaphore>,
    /// Reviews waiting for or holding a permit.
    queued: Arc<AtomicUsize>,
    queue_limit: usize,
    timeout: Duration,
    metrics: Metrics,
    cache: Arc<Mutex<ReviewCache>>,
    issuer: IssuerKeySource,
    /// Whether the last review failed (API error or timeout): logged once
    /// when reviews start failing and once when they work again, not for
    /// every agent turned away meanwhile.
    reviews_failing: Arc<AtomicBool>,
    /// The review rate left to each node ([`fairness`]).
    buckets: Arc<Mutex<NodeBuckets>>,
    /// The review in flight for each Pod ([`fairness`]).
    in_flight: Arc<Mutex<InFlight>>,
}

impl AgentAuthenticator {
    pub fn new(
        client: kube::Client,
        audience: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            issuer: IssuerKeySource::new(client.clone(), REVIEW_TIMEOUT),
            client,
            audience: audience.into(),
            service_account: (namespace.into(), service_account.into()),
            reviews: Arc::new(Semaphore::new(REVIEW_CONCURRENCY)),
            queued: Arc::new(AtomicUsize::new(0)),
            queue_limit: REVIEW_QUEUE,
            timeout: REVIEW_TIMEOUT,
            metrics: Metrics::default(),
            cache: Arc::new(Mutex::new(ReviewCache::new(REVIEW_CACHE_ENTRIES))),
            reviews_failing: Arc::new(AtomicBool::new(false)),
            buckets: Arc::new(Mutex::new(NodeBuckets::new(ReviewFairness::default()))),
            in_flight: Arc::default(),
        }
    }

    /// Limits each node's reviews as `fairness` says instead of
    /// [`ReviewFairness::default`].
    #[must_use]
    pub fn with_fairness(mut self, fairness: ReviewFairness) -> Self {
        self.buckets = Arc::new(Mutex::new(NodeBuckets::new(fairness)));
        self
    }

    /// At most `limit` reviews waiting or running; more are turned away.
    #[must_use]
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Counts and times the reviews in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Gives up on a review after `timeout` instead of [`REVIEW_TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.issuer = self.issuer.with_timeout(timeout);
        self
    }

    /// The username the API server gives tokens of the agents' ServiceAccount.
    pub fn expected_username(&self) -> String {
        let (namespace, name) = &self.service_account;
        format!("system:serviceaccount:{namespace}:{name}")
    }

    /// Decides who the token speaks for: refused without a review when
    /// [`precheck`] says it cannot be a live token for our audience (or
    /// there is none), admitted from the cache when the same token was
    /// admitted before, refused without a review when none of the issuer's
    /// keys signed it, else reviewed by the API server.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Authenticated, AuthError> {
        let token = match bearer.map(str::trim) {
            Some(token) if !token.is_empty() => token,
            _ => return Err(AuthError::Unauthenticated("no bearer token".into())),
        };
        let now = SystemTime::now();
        let claims = precheck(token, &self.audience, now).inspect_err(|_| {
            self.metrics.token_not_reviewed(TOKEN_REFUSED_UNREVIEWED);
        })?;
        let key = token_key(token);
        if let Some(identity) = self.cached(&key, Instant::now()) {
            self.metrics.token_not_reviewed(TOKEN_CACHED);
            return Ok(Authenticated {
                identity,
                expires_at: claims.expires_at,
            });
        }
        let signature = self.issuer.check(token, &self.audience).await;
        if let Some(why) = signature.and_then(Signature::refusal) {
            self.metrics.token_not_reviewed(TOKEN_REFUSED_UNREVIEWED);
            return Err(AuthError::Unauthenticated(format!(
                "not an agent token: {why}"
            )));
        }
        // The claims are the issuer's only when its key verified them.
        let bound = match signature {
            Some(Signature::Verified) => bound_claims(token),
            _ => None,
        };
        let identity = match bound {
            Some(bound) => self.review_fairly(token, key, &bound, &claims).await?,
            None => self.review_queued(token, key, &claims).await?,
        };
        Ok(Authenticated {
            identity,
            expires_at: claims.expires_at,
        })
    }

    /// Reviews a token of the Pod `bound` names within its Pod's and node's
    /// limits ([`fairness`]), or shares the review of the same token in
    /// flight.
    async fn review_fairly(
        &self,
        token: &str,
        key: TokenKey,
        bound: &BoundClaims,
        claims: &TokenClaims,
    ) -> Result<AgentIdentity, AuthError> {
        let flight = lock(&self.in_flight).join(&bound.pod_uid, &key);
        let answer = match flight {
            Flight::Lead(answer) => answer,
            Flight::Follow(mut answer) => {
                return match answer.wait_for(Option::is_some).await {
                    Ok(result) => result
                        .as_ref()
                        .map_or(Err(AuthError::SharedReviewFailed), shared),
                    // The leader's call ended (its deadline) before the review.
                    Err(_) => Err(AuthError::SharedReviewFailed),
                };
            }
            Flight::Refuse => return Err(self.limited(Limit::PodInFlight)),
        };
        let _end = FlightEnd::new(&self.in_flight, &bound.pod_uid, key);
        let result = if lock(&self.buckets).try_take(&bound.rate_key(), Instant::now()) {
            self.review_queued(token, key, claims).await
        } else {
            Err(self.limited(Limit::NodeRate))
        };
        answer.send_replace(Some(shared(&result)));
        result
    }

    fn limited(&self, limit: Limit) -> AuthError {
        self.metrics.token_not_reviewed(TOKEN_LIMITED);
        AuthError::Limited(limit)
    }

    /// Reviews a token in the shared queue, and remembers it if admitted.
    async fn review_queued(
        &self,
        token: &str,
        key: TokenKey,
        claims: &TokenClaims,
    ) -> Result<AgentIdentity, AuthError> {
        let _queued = QueueSlot::take(&self.queued, self.queue_limit).ok_or_else(|| {
            self.metrics.token_not_reviewed(TOKEN_QUEUE_FULL);
            AuthError::Busy
        })?;
        // Never closed, so acquiring cannot fail; if it could, reviewing
        // without a permit would still be correct. Waiting for a permit is
        // queueing, not the API server's time: the clock starts after it.
        let _permit = tokio::time::timeout(REVIEW_QUEUE_WAIT, self.reviews.acquire())
            .await
            .map_err(|_| {
                self.metrics.token_not_reviewed(TOKEN_QUEUE_FULL);
                AuthError::Busy
            })?
            .ok();
        let started = Instant::now();
        let result = self.review(token).await;
        self.metrics
            .token_reviewed(review_outcome(&result), started.elapsed());
        self.note_review_health(&result);
        let identity = result?;
        // The review vouched for the token's times: they tell the API
        // server's clock.
        let (times, now) = (claims.times(), SystemTime::now());
        self.metrics.clock_skew.set(skew_seconds(times, now));
        let remember_until = Instant::now() + remember_for(times, now, REVIEW_CACHE_TTL);
        lock(&self.cache).insert(key, identity.clone(), remember_until, Instant::now());
        Ok(identity)
    }

    /// Forgets the admissions of Pods not in `live` (the agents' Pods just
    /// listed): a Pod deleted while its deletion could not be watched must
    /// not stay admitted by its cached review.
    pub(crate) fn forget_pods_except(&self, live: &HashSet<String>) {
        lock(&self.cache).retain_pods(live);
    }

    /// Logs the moment TokenReviews start failing and the moment they work
    /// again: while they fail, agents already connected keep their streams
    /// (and reconnecting ones are admitted from the cache), so their nodes
    /// keep their labels; only agents never admitted wait.
    fn note_review_health(&self, result: &Result<AgentIdentity, AuthError>) {
        match result {
            Err(error @ (AuthError::Review(_) | AuthError::ReviewTimedOut(_))) => {
                if !self.reviews_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        %error,
                        "TokenReviews are failing: agents not admitted before are refused \
                         (told to retry) until they work again; connected agents keep their \
                         streams, see kata_operator_token_reviews_total{{outcome=\"error\"}}"
                    );
                }
            }
            _ => {
                if self.reviews_failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("TokenReviews work again: agents are admitted");
                }
            }
        }
    }

    /// The agents' namespace and ServiceAccount, and the client that reviews
    /// their tokens: what the watch of their Pods needs.
    pub(crate) fn agents(&self) -> (&kube::Client, &str, &str) {
        let (namespace, name) = &self.service_account;
        (&self.client, namespace, name)
    }

    fn cached(&self, key: &TokenKey, now: Instant) -> Option<AgentIdentity> {
        lock(&self.cache).get(key, now)
    }

    async fn review(&self, token: &str) -> Result<AgentIdentity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviews = Api::<TokenReview>::all(self.client.clone());
        let reviewed = tokio::time::timeout(
            self.timeout,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthError::ReviewTimedOut(self.timeout))?
        .map_err(AuthError::Review)?;
        let status = reviewed.status.unwrap_or_default();
        identity_from_review(&status, &self.expected_username(), &self.audience)
    }
}

/// One place in the review queue, given back when dropped.
struct QueueSlot(Arc<AtomicUsize>);

impl QueueSlot {
    fn take(queued: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(queued)))
    }
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

mod fairness;
mod identity;
mod precheck;
mod review_cache;
#[cfg(test)]
mod tests;
