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
//! admitted a token is remembered (by the token's SHA-256, never past the token's expiry) so
//! an agent reconnecting with the same token costs none.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use super::issuer_keys::{IssuerKeySource, Signature};
use super::jose::{base64url, json_segment};
use crate::metrics::{
    Metrics, REVIEW_AUTHENTICATED, REVIEW_ERROR, REVIEW_REJECTED, TOKEN_CACHED, TOKEN_QUEUE_FULL,
    TOKEN_REFUSED_UNREVIEWED,
};

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
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(reason) => tonic::Status::unauthenticated(reason),
            AuthError::PermissionDenied(reason) => tonic::Status::permission_denied(reason),
            // The kube error may carry API server details; the agent only
            // needs to know it is worth retrying.
            AuthError::Review(_) | AuthError::ReviewTimedOut(_) => tonic::Status::unavailable(
                "cannot verify the token now: the TokenReview failed; retry later",
            ),
            AuthError::Busy => tonic::Status::unavailable(
                "cannot verify the token now: too many waiting; retry later",
            ),
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
/// Pod's token at once (`super::pods`). What is left to it is the rare
/// deletion of the agents' ServiceAccount, noticed within the hour.
pub const REVIEW_CACHE_TTL: Duration = Duration::from_secs(3600);

/// How a review ended, as `kata_operator_token_reviews_total` counts it:
/// admitted, refused (a token that is not a live agent token for a node),
/// or failed (nothing learnt about the token).
pub fn review_outcome(result: &Result<AgentIdentity, AuthError>) -> &'static str {
    match result {
        Ok(_) => REVIEW_AUTHENTICATED,
        Err(AuthError::Unauthenticated(_) | AuthError::PermissionDenied(_)) => REVIEW_REJECTED,
        Err(AuthError::Review(_) | AuthError::ReviewTimedOut(_) | AuthError::Busy) => REVIEW_ERROR,
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
        }
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
        if let Some(identity) = self.cached(&key, now) {
            self.metrics.token_not_reviewed(TOKEN_CACHED);
            return Ok(Authenticated {
                identity,
                expires_at: claims.expires_at,
            });
        }
        if let Some(Signature::Forged | Signature::UnknownKey) = self.issuer.check(token).await {
            self.metrics.token_not_reviewed(TOKEN_REFUSED_UNREVIEWED);
            return Err(AuthError::Unauthenticated(
                "not an agent token: not signed by the cluster's service-account issuer".into(),
            ));
        }
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
        let remember_until = claims.expires_at.min(SystemTime::now() + REVIEW_CACHE_TTL);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, identity.clone(), remember_until, SystemTime::now());
        }
        Ok(Authenticated {
            identity,
            expires_at: claims.expires_at,
        })
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

    fn cached(&self, key: &TokenKey, now: SystemTime) -> Option<AgentIdentity> {
        self.cache.lock().ok()?.get(key, now)
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

/// Decides, from a TokenReview's status, whether the token belongs to the
/// agents' ServiceAccount, was issued for `audience`, and is bound to a Pod on
/// a node. Pure, so every refusal is unit-tested without an API server.
pub fn identity_from_review(
    status: &TokenReviewStatus,
    expected_username: &str,
    audience: &str,
) -> Result<AgentIdentity, AuthError> {
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("token not accepted");
        return Err(AuthError::Unauthenticated(reason.to_owned()));
    }
    // The API server only authenticates a token for the audiences it was
    // issued for, but check ourselves: a review without our audience in the
    // answer means it was validated against some other (default) audience.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::Unauthenticated(format!(
            "token is not for audience {audience}"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    if username != expected_username {
        return Err(AuthError::PermissionDenied(format!(
            "{username} is not the node-agent's service account"
        )));
    }
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|extra| extra.get(key))
            .and_then(|values| values.first())
            .filter(|value| !value.is_empty())
            .cloned()
    };
    // A token bound only to a Secret or to a Node (not a Pod) would let one
    // credential outlive the agent's Pod: require both.
    match (extra(NODE_NAME_EXTRA), extra(POD_NAME_EXTRA)) {
        (Some(node_name), Some(pod_name)) => Ok(AgentIdentity {
            node_name,
            pod_name,
            pod_uid: extra(POD_UID_EXTRA),
        }),
        _ => Err(AuthError::PermissionDenied(
            "token is not bound to a pod on a node".into(),
        )),
    }
}

/// What [`precheck`] read from a bearer. Unverified: it only serves to
/// refuse early and to end the stream at the token's expiry; the review
/// decides whether the token is genuine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub expires_at: SystemTime,
}

/// Refuses a bearer that cannot be a live projected token for `audience`
/// without asking anyone: not three base64url JWT segments, a header
/// without a signing algorithm (or `none`), no `exp` or an `exp` already
/// past, no `aud` naming `audience`, or longer than [`MAX_TOKEN_BYTES`].
/// Pure.
pub fn precheck(token: &str, audience: &str, now: SystemTime) -> Result<TokenClaims, AuthError> {
    let refuse = |why: &str| {
        Err(AuthError::Unauthenticated(format!(
            "not an agent token: {why}"
        )))
    };
    if token.len() > MAX_TOKEN_BYTES {
        return refuse("too long");
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return refuse("not a JWT");
    };
    if signature.is_empty() || base64url(signature).is_none() {
        return refuse("no signature");
    }
    let (Some(header), Some(payload)) = (json_segment(header), json_segment(payload)) else {
        return refuse("not a JWT");
    };
    match header.get("alg").and_then(serde_json::Value::as_str) {
        Some(alg) if !alg.eq_ignore_ascii_case("none") => {}
        _ => return refuse("unsigned"),
    }
    let names_audience = match payload.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if !names_audience {
        return refuse("not for this audience");
    }
    let Some(exp) = payload.get("exp").and_then(serde_json::Value::as_u64) else {
        return refuse("no expiry");
    };
    let expires_at = UNIX_EPOCH + Duration::from_secs(exp);
    if expires_at <= now {
        return refuse("expired");
    }
    Ok(TokenClaims { expires_at })
}

type TokenKey = [u8; 32];

fn token_key(token: &str) -> TokenKey {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Admitted tokens by SHA-256 (the tokens themselves are never kept),
/// each until its token's expiry or [`REVIEW_CACHE_TTL`], whichever is
/// first; bounded in size.
struct ReviewCache {
    entries: HashMap<TokenKey, (AgentIdentity, SystemTime)>,
    capacity: usize,
}

impl ReviewCache {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    fn get(&self, key: &TokenKey, now: SystemTime) -> Option<AgentIdentity> {
        self.entries
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(identity, _)| identity.clone())
    }

    fn insert(
        &mut self,
        key: TokenKey,
        identity: AgentIdentity,
        until: SystemTime,
        now: SystemTime,
    ) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, until)| *until > now);
        }
        if self.entries.len() < self.capacity {
            self.entries.insert(key, (identity, until));
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use base64::Engine as _;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    const SA: &str = "system:serviceaccount:kata:node-agent";
    const AUD: &str = "kata-operator/agent";

    fn status(username: &str, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec![AUD.into()]),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    fn bound() -> TokenReviewStatus {
        status(
            SA,
            &[
                (NODE_NAME_EXTRA, "worker-1"),
                (POD_NAME_EXTRA, "agent-x"),
                (POD_UID_EXTRA, "uid-x"),
            ],
        )
    }

    #[test]
    fn pod_bound_token_of_the_agent_account_names_its_node() {
        let identity = identity_from_review(&bound(), SA, AUD).unwrap();
        assert_eq!(
            identity,
            AgentIdentity {
                node_name: "worker-1".into(),
                pod_name: "agent-x".into(),
                pod_uid: Some("uid-x".into()),
            }
        );
    }

    #[test]
    fn rejected_token_is_unauthenticated_with_the_servers_reason() {
        let mut s = bound();
        s.authenticated = Some(false);
        s.error = Some("token has expired".into());
        match identity_from_review(&s, SA, AUD) {
            Err(AuthError::Unauthenticated(reason)) => assert_eq!(reason, "token has expired"),
            other => panic!("{other:?}"),
        }
        s.authenticated = None;
        assert!(matches!(
            identity_from_review(&s, SA, AUD),
            Err(AuthError::Unauthenticated(_))
        ));
    }

    #[test]
    fn audience_missing_from_the_answer_is_unauthenticated() {
        let mut s = bound();
        s.audiences = Some(vec!["https://kubernetes.default.svc".into()]);
        assert!(matches!(
            identity_from_review(&s, SA, AUD),
            Err(AuthError::Unauthenticated(_))
        ));
        s.audiences = None;
        assert!(matches!(
            identity_from_review(&s, SA, AUD),
            Err(AuthError::Unauthenticated(_))
        ));
    }

    #[test]
    fn another_service_account_is_permission_denied() {
        let s = status(
            "system:serviceaccount:kata:intruder",
            &[(NODE_NAME_EXTRA, "worker-1"), (POD_NAME_EXTRA, "x")],
        );
        match identity_from_review(&s, SA, AUD) {
            Err(AuthError::PermissionDenied(reason)) => assert!(reason.contains("intruder")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn token_not_bound_to_a_pod_on_a_node_is_permission_denied() {
        for extra in [
            &[][..],
            &[(NODE_NAME_EXTRA, "worker-1")][..],
            &[(POD_NAME_EXTRA, "agent-x")][..],
            &[(NODE_NAME_EXTRA, ""), (POD_NAME_EXTRA, "agent-x")][..],
        ] {
            match identity_from_review(&status(SA, extra), SA, AUD) {
                Err(AuthError::PermissionDenied(reason)) => {
                    assert_eq!(reason, "token is not bound to a pod on a node")
                }
                other => panic!("{extra:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        let code = |e| tonic::Status::from(e).code();
        assert_eq!(
            code(AuthError::Unauthenticated("x".into())),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(AuthError::PermissionDenied("x".into())),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(AuthError::ReviewTimedOut(REVIEW_TIMEOUT)),
            tonic::Code::Unavailable
        );
        // An agent turned away while reviews fail is told why, and that its
        // token may be fine.
        let failed = tonic::Status::from(AuthError::ReviewTimedOut(REVIEW_TIMEOUT));
        assert!(failed.message().contains("TokenReview failed"), "{failed}");
        let busy = tonic::Status::from(AuthError::Busy);
        assert!(busy.message().contains("too many"), "{busy}");
    }

    /// A JWT with `payload`, shaped like a projected token but signed by
    /// nobody: what a client can send without any credential.
    fn unsigned_jwt(payload: &serde_json::Value) -> String {
        let encode = |value: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            encode(&serde_json::json!({"alg": "RS256", "kid": "k"})),
            encode(payload)
        )
    }

    fn unix(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// Shaped right for [`AUD`], expiring an hour from now.
    fn well_shaped_token() -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        unsigned_jwt(&serde_json::json!({"aud": [AUD], "exp": exp, "sub": "x"}))
    }

    #[test]
    fn precheck_refuses_what_cannot_be_a_live_token_for_the_audience() {
        let now = unix(1_000);
        let token = |payload: serde_json::Value| unsigned_jwt(&payload);
        assert_eq!(
            precheck(
                &token(serde_json::json!({"aud": [AUD], "exp": 2_000})),
                AUD,
                now
            )
            .unwrap(),
            TokenClaims {
                expires_at: unix(2_000)
            }
        );
        assert!(
            precheck(
                &token(serde_json::json!({"aud": AUD, "exp": 2_000})),
                AUD,
                now
            )
            .is_ok()
        );
        let refused = |bearer: &str| match precheck(bearer, AUD, now) {
            Err(AuthError::Unauthenticated(why)) => why,
            other => panic!("{bearer:?} was not refused: {other:?}"),
        };
        assert!(
            refused(&token(serde_json::json!({"aud": [AUD], "exp": 999}))).ends_with("expired")
        );
        assert!(refused(&token(serde_json::json!({"aud": [AUD]}))).ends_with("no expiry"));
        assert!(
            refused(&token(serde_json::json!({"aud": ["other"], "exp": 2_000})))
                .ends_with("not for this audience")
        );
        assert!(refused("Bearer-junk").ends_with("not a JWT"));
        assert!(refused("a.b.c.d").ends_with("not a JWT"));
        assert!(refused("e30.e30.").ends_with("no signature"));
        assert!(refused("!!.e30.c2ln").ends_with("not a JWT"));
        let unsigned = format!(
            "{}.{}.c2ln",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(format!(r#"{{"aud":["{AUD}"],"exp":2000}}"#))
        );
        assert!(refused(&unsigned).ends_with("unsigned"));
        assert!(refused(&"x".repeat(MAX_TOKEN_BYTES + 1)).ends_with("too long"));
    }

    #[test]
    fn the_cache_forgets_at_expiry_and_stays_bounded() {
        let identity = |node: &str| AgentIdentity {
            node_name: node.into(),
            pod_name: format!("agent-{node}"),
            pod_uid: None,
        };
        let mut cache = ReviewCache::new(2);
        cache.insert(token_key("a"), identity("w0"), unix(100), unix(0));
        cache.insert(token_key("b"), identity("w1"), unix(50), unix(0));
        assert_eq!(cache.get(&token_key("a"), unix(99)), Some(identity("w0")));
        assert_eq!(
            cache.get(&token_key("a"), unix(100)),
            None,
            "not past its expiry"
        );
        assert_eq!(cache.get(&token_key("c"), unix(0)), None);
        // Full: a new entry only fits once an old one has expired.
        cache.insert(token_key("c"), identity("w2"), unix(200), unix(10));
        assert_eq!(cache.get(&token_key("c"), unix(11)), None);
        cache.insert(token_key("c"), identity("w2"), unix(200), unix(60));
        assert_eq!(cache.get(&token_key("c"), unix(61)), Some(identity("w2")));
        assert_eq!(cache.entries.len(), 2);
    }

    #[test]
    fn the_queue_gives_its_places_back() {
        let queued = Arc::new(AtomicUsize::new(0));
        let first = QueueSlot::take(&queued, 2).unwrap();
        let second = QueueSlot::take(&queued, 2).unwrap();
        assert!(QueueSlot::take(&queued, 2).is_none());
        drop(first);
        assert!(QueueSlot::take(&queued, 2).is_some());
        drop(second);
        assert_eq!(queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn junk_bearers_cost_no_review() {
        let metrics = Metrics::default();
        // Nothing listens there: a review would be an error, not a refusal.
        let unreachable = client_at("127.0.0.1:9".parse().unwrap());
        let authenticator = authenticator(unreachable, &metrics);
        for junk in ["junk", "a.b.c", &"x".repeat(100_000)] {
            let result = authenticator.authenticate(Some(junk)).await;
            assert!(
                matches!(result, Err(AuthError::Unauthenticated(_))),
                "{result:?}"
            );
        }
        assert_eq!(metrics.token_review_duration.0.count(), 0);
        assert_eq!(
            metrics
                .tokens_not_reviewed
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: TOKEN_REFUSED_UNREVIEWED.into()
                })
                .get(),
            3
        );
    }

    #[tokio::test]
    async fn a_full_queue_turns_reviews_away_at_once() {
        let metrics = Metrics::default();
        let unreachable = client_at("127.0.0.1:9".parse().unwrap());
        let result = authenticator(unreachable, &metrics)
            .with_queue_limit(0)
            .authenticate(Some(&well_shaped_token()))
            .await;
        assert!(matches!(result, Err(AuthError::Busy)), "{result:?}");
        assert_eq!(metrics.token_review_duration.0.count(), 0);
    }

    /// A client of an API server at `addr`, over plain HTTP.
    fn client_at(addr: std::net::SocketAddr) -> kube::Client {
        let url = format!("http://{addr}").parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
    }

    /// A port that was just free: nothing listens there.
    fn nothing_listens() -> std::net::SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn authenticator(client: kube::Client, metrics: &Metrics) -> AgentAuthenticator {
        AgentAuthenticator::new(client, AUD, "kata", "node-agent").with_metrics(metrics.clone())
    }

    fn reviews(metrics: &Metrics, outcome: &str) -> u64 {
        metrics
            .token_reviews
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    }

    #[tokio::test]
    async fn an_api_server_that_refuses_the_connection_is_a_review_error() {
        let metrics = Metrics::default();
        let result = authenticator(client_at(nothing_listens()), &metrics)
            .authenticate(Some(&well_shaped_token()))
            .await;
        assert!(matches!(result, Err(AuthError::Review(_))), "{result:?}");
        assert_eq!(reviews(&metrics, REVIEW_ERROR), 1);
        assert_eq!(metrics.token_review_duration.0.count(), 1);
        assert_eq!(reviews(&metrics, REVIEW_REJECTED), 0);
    }

    #[tokio::test]
    async fn while_reviews_fail_an_admitted_token_still_gets_in_and_a_new_one_waits() {
        let metrics = Metrics::default();
        let auth = authenticator(client_at(nothing_listens()), &metrics);
        // Admitted by a review before the API server went away.
        let admitted = well_shaped_token();
        let identity = AgentIdentity {
            node_name: "worker-1".into(),
            pod_name: "agent-x".into(),
            pod_uid: Some("uid-x".into()),
        };
        let now = SystemTime::now();
        auth.cache.lock().unwrap().insert(
            token_key(&admitted),
            identity.clone(),
            now + REVIEW_CACHE_TTL,
            now,
        );
        let reconnect = auth.authenticate(Some(&admitted)).await.unwrap();
        assert_eq!(reconnect.identity, identity);
        assert_eq!(reviews(&metrics, REVIEW_ERROR), 0, "no review was needed");
        // Another token (another agent) needs a review, which fails: told to
        // come back, and the failure is counted.
        let fresh = unsigned_jwt(&serde_json::json!({
            "aud": [AUD], "exp": 4_000_000_000u64, "sub": "y"
        }));
        let refused = auth.authenticate(Some(&fresh)).await.unwrap_err();
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(reviews(&metrics, REVIEW_ERROR), 1);
        assert!(auth.reviews_failing.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn an_api_server_that_never_answers_times_out_as_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts and holds the connection, never answering.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let metrics = Metrics::default();
        let result = authenticator(client_at(addr), &metrics)
            .with_timeout(Duration::from_millis(200))
            .authenticate(Some(&well_shaped_token()))
            .await;
        silent.abort();
        assert!(
            matches!(result, Err(AuthError::ReviewTimedOut(_))),
            "{result:?}"
        );
        assert_eq!(reviews(&metrics, REVIEW_ERROR), 1);
    }

    #[tokio::test]
    async fn a_missing_token_is_refused_without_a_review() {
        let metrics = Metrics::default();
        let unreachable = client_at("127.0.0.1:9".parse().unwrap());
        let result = authenticator(unreachable, &metrics)
            .authenticate(None)
            .await;
        assert!(matches!(result, Err(AuthError::Unauthenticated(_))));
        assert_eq!(metrics.token_review_duration.0.count(), 0);
    }

    #[test]
    fn outcomes_split_refused_tokens_from_failed_reviews() {
        let admitted = identity_from_review(&bound(), SA, AUD);
        assert_eq!(review_outcome(&admitted), REVIEW_AUTHENTICATED);
        let mut expired = bound();
        expired.authenticated = Some(false);
        assert_eq!(
            review_outcome(&identity_from_review(&expired, SA, AUD)),
            REVIEW_REJECTED
        );
        let intruder = status("system:serviceaccount:kata:intruder", &[]);
        assert_eq!(
            review_outcome(&identity_from_review(&intruder, SA, AUD)),
            REVIEW_REJECTED,
            "a live token of another account is refused, not an error"
        );
        assert_eq!(
            review_outcome(&Err(AuthError::ReviewTimedOut(REVIEW_TIMEOUT))),
            REVIEW_ERROR
        );
    }
}
