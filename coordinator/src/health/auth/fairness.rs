//! Fairness between nodes in TokenReviews. The review queue is shared by
//! every agent, and a kubelet may mint any number of valid tokens for the
//! Pods bound to its node: without a limit per node, one node could keep
//! the queue full and the others' agents out.
//!
//! A token whose signature one of the issuer's keys verified carries claims
//! the API server wrote (`kubernetes.io`: the bound Pod and its node), so
//! they may key limits: one review in flight per Pod ([`InFlight`]) and a
//! rate per node ([`NodeBuckets`]). A token whose signature could not be
//! verified (no keys read, an algorithm this cannot verify) is not limited
//! here: its claims could name someone else's node and spend that node's
//! budget; the shared queue still bounds it, as before these limits.
//! Decisions are pure, on times passed in.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

use super::review_cache::TokenKey;
use super::{AgentIdentity, AuthError};
use crate::metrics::{REFUSED_REVIEW_IN_FLIGHT, REFUSED_REVIEW_RATE};

/// How many reviews one node's tokens may cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReviewFairness {
    /// Reviews a second, sustained. An agent needs one per token (about
    /// one an hour) plus one per restart; a second each is far above that
    /// and keeps 5,000 nodes below what [`super::REVIEW_CONCURRENCY`]
    /// reviews drain.
    pub per_node_rate: f64,
    /// Reviews at once after a quiet spell: an agent restarting with a new
    /// Pod and its first check-in and stream, with room to spare.
    pub per_node_burst: u32,
}

impl Default for ReviewFairness {
    fn default() -> Self {
        Self {
            per_node_rate: 1.0,
            per_node_burst: 5,
        }
    }
}

/// Which limit turned a token away before its review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Another token of the same Pod is being reviewed.
    PodInFlight,
    /// The node's tokens used up its review rate.
    NodeRate,
}

impl Limit {
    /// The reason `kata_operator_health_refused_total` counts it under.
    pub fn reason(self) -> &'static str {
        match self {
            Self::PodInFlight => REFUSED_REVIEW_IN_FLIGHT,
            Self::NodeRate => REFUSED_REVIEW_RATE,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PodInFlight => "another token of this pod is being reviewed",
            Self::NodeRate => "this node's tokens are being reviewed too often",
        })
    }
}

/// The Pod and node a token is bound to, as the issuer signed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundClaims {
    pub pod_uid: String,
    /// The node's name; `None` from API servers older than 1.30, which do
    /// not write it: the Pod then stands for its node.
    pub node_name: Option<String>,
}

impl BoundClaims {
    /// The key of the rate this token spends.
    pub fn rate_key(&self) -> String {
        match &self.node_name {
            Some(node) => format!("node/{node}"),
            None => format!("pod/{}", self.pod_uid),
        }
    }
}

/// The `kubernetes.io` claims of a JWT's payload. Only meaningful for a
/// token whose signature was verified. Pure.
pub fn bound_claims(token: &str) -> Option<BoundClaims> {
    let claims: KubernetesClaims = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    let bound = claims.bound?;
    let text = |object: Option<NamedObject>, field: fn(NamedObject) -> Option<String>| {
        object.and_then(field).filter(|value| !value.is_empty())
    };
    Some(BoundClaims {
        pod_uid: text(bound.pod, |pod| pod.uid)?,
        node_name: text(bound.node, |node| node.name),
    })
}

/// The claims the API server writes of what a token is bound to.
#[derive(serde::Deserialize)]
struct KubernetesClaims {
    #[serde(rename = "kubernetes.io")]
    bound: Option<BoundObjects>,
}

#[derive(serde::Deserialize)]
struct BoundObjects {
    pod: Option<NamedObject>,
    node: Option<NamedObject>,
}

#[derive(serde::Deserialize)]
struct NamedObject {
    name: Option<String>,
    uid: Option<String>,
}

/// Node buckets kept at most; past this, full ones (the same as none) go.
const MAX_BUCKETS: usize = 16_384;

/// A token bucket per rate key: `burst` reviews at once, refilled at
/// `rate` a second.
pub struct NodeBuckets {
    fairness: ReviewFairness,
    /// Tokens left and when they were counted.
    buckets: HashMap<String, (f64, Instant)>,
}

impl NodeBuckets {
    pub fn new(fairness: ReviewFairness) -> Self {
        Self {
            fairness,
            buckets: HashMap::new(),
        }
    }

    fn level(&self, tokens: f64, counted: Instant, now: Instant) -> f64 {
        let refill =
            now.saturating_duration_since(counted).as_secs_f64() * self.fairness.per_node_rate;
        (tokens + refill).min(f64::from(self.fairness.per_node_burst))
    }

    /// Takes one review for `key` at `now`: false when its bucket is empty.
    pub fn try_take(&mut self, key: &str, now: Instant) -> bool {
        let burst = f64::from(self.fairness.per_node_burst);
        let tokens = match self.buckets.get(key) {
            Some(&(tokens, counted)) => self.level(tokens, counted, now),
            None => burst,
        };
        if tokens < 1.0 {
            return false;
        }
        if self.buckets.len() >= MAX_BUCKETS && !self.buckets.contains_key(key) {
            let full =
                |(tokens, counted): &(f64, Instant)| self.level(*tokens, *counted, now) >= burst;
            let drop: Vec<String> = self
                .buckets
                .iter()
                .filter(|(_, bucket)| full(bucket))
                .map(|(key, _)| key.clone())
                .collect();
            for key in drop {
                self.buckets.remove(&key);
            }
        }
        self.buckets.insert(key.to_owned(), (tokens - 1.0, now));
        true
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// What a review's waiters learn of it: `None` until it ends.
pub type Shared = Option<Result<AgentIdentity, AuthError>>;

/// The reviews in flight, one per Pod uid: the token under review and
/// where its answer will be.
#[derive(Default)]
pub struct InFlight {
    reviews: HashMap<String, (TokenKey, watch::Receiver<Shared>)>,
}

/// What a token of a Pod does about the reviews in flight.
#[derive(Debug)]
pub enum Flight {
    /// None for its Pod: it reviews, and answers the others through this.
    Lead(watch::Sender<Shared>),
    /// The same token is being reviewed: it waits for that answer. One
    /// answer serves every call of an agent that opens its check-in and its
    /// stream together, for one review.
    Follow(watch::Receiver<Shared>),
    /// Another token of the same Pod is being reviewed: refused rather
    /// than queued behind it, since that answer says nothing of this token,
    /// and queueing would let one Pod's mints hold connections in line. A
    /// genuine agent presents one token at a time (a new one only at
    /// rotation, long after the last review) and retries with backoff.
    Refuse,
}

impl InFlight {
    /// Joins the review of `pod_uid`'s token `key`, or starts it.
    pub fn join(&mut self, pod_uid: &str, key: &TokenKey) -> Flight {
        // A review whose leader went away without ending it is over.
        if let Some((reviewed, answer)) = self.reviews.get(pod_uid)
            && answer.has_changed().is_ok()
        {
            return if reviewed == key {
                Flight::Follow(answer.clone())
            } else {
                Flight::Refuse
            };
        }
        let (sender, answer) = watch::channel(None);
        self.reviews.insert(pod_uid.to_owned(), (*key, answer));
        Flight::Lead(sender)
    }

    /// Ends the review of `pod_uid`'s token `key`.
    pub fn end(&mut self, pod_uid: &str, key: &TokenKey) {
        if self
            .reviews
            .get(pod_uid)
            .is_some_and(|(reviewed, _)| reviewed == key)
        {
            self.reviews.remove(pod_uid);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.reviews.len()
    }
}

/// Ends a Pod's review when its leader is done or gone (its call's
/// deadline dropped it): the next token of the Pod may then lead.
pub struct FlightEnd {
    in_flight: Arc<Mutex<InFlight>>,
    pod_uid: String,
    key: TokenKey,
}

impl FlightEnd {
    pub fn new(in_flight: &Arc<Mutex<InFlight>>, pod_uid: &str, key: TokenKey) -> Self {
        Self {
            in_flight: Arc::clone(in_flight),
            pod_uid: pod_uid.to_owned(),
            key,
        }
    }
}

impl Drop for FlightEnd {
    fn drop(&mut self) {
        super::lock(&self.in_flight).end(&self.pod_uid, &self.key);
    }
}

/// A review's result as its waiters get it: the kube error of a failed
/// review cannot be copied, and they only need to know to retry.
pub fn shared(result: &Result<AgentIdentity, AuthError>) -> Result<AgentIdentity, AuthError> {
    match result {
        Ok(identity) => Ok(identity.clone()),
        Err(AuthError::Unauthenticated(why)) => Err(AuthError::Unauthenticated(why.clone())),
        Err(AuthError::PermissionDenied(why)) => Err(AuthError::PermissionDenied(why.clone())),
        Err(AuthError::Limited(limit)) => Err(AuthError::Limited(*limit)),
        Err(_) => Err(AuthError::SharedReviewFailed),
    }
}

#[cfg(test)]
mod tests;
