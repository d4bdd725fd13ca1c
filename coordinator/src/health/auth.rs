//! Agent authentication: the bearer token is a projected ServiceAccount token
//! with a dedicated audience, bound to the agent's Pod. TokenReview proves it
//! is live (signature, expiry, the bound Pod still exists); the pure
//! [`identity_from_review`] then decides whether it is *our* agent and which
//! node it may speak for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, REVIEW_AUTHENTICATED, REVIEW_ERROR, REVIEW_REJECTED};

/// The key the API server puts in a pod-bound token's user.extra with the
/// name of the node the Pod is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The key with the name of the Pod the token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// Who is on the other end of a stream, as proven by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The only node this agent may report about.
    pub node_name: String,
    pub pod_name: String,
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
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(reason) => tonic::Status::unauthenticated(reason),
            AuthError::PermissionDenied(reason) => tonic::Status::permission_denied(reason),
            // The kube error may carry API server details; the agent only
            // needs to know it is worth retrying.
            AuthError::Review(_) | AuthError::ReviewTimedOut(_) => {
                tonic::Status::unavailable("cannot verify the token now")
            }
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

/// How a review ended, as `kata_operator_token_reviews_total` counts it:
/// admitted, refused (a token that is not a live agent token for a node),
/// or failed (nothing learnt about the token).
pub fn review_outcome(result: &Result<AgentIdentity, AuthError>) -> &'static str {
    match result {
        Ok(_) => REVIEW_AUTHENTICATED,
        Err(AuthError::Unauthenticated(_) | AuthError::PermissionDenied(_)) => REVIEW_REJECTED,
        Err(AuthError::Review(_) | AuthError::ReviewTimedOut(_)) => REVIEW_ERROR,
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
    timeout: Duration,
    metrics: Metrics,
}

impl AgentAuthenticator {
    pub fn new(
        client: kube::Client,
        audience: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            client,
            audience: audience.into(),
            service_account: (namespace.into(), service_account.into()),
            reviews: Arc::new(Semaphore::new(REVIEW_CONCURRENCY)),
            timeout: REVIEW_TIMEOUT,
            metrics: Metrics::default(),
        }
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
        self
    }

    /// The username the API server gives tokens of the agents' ServiceAccount.
    pub fn expected_username(&self) -> String {
        let (namespace, name) = &self.service_account;
        format!("system:serviceaccount:{namespace}:{name}")
    }

    /// Reviews the token and decides who it speaks for. A missing token is
    /// refused without a review (and not counted as one).
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<AgentIdentity, AuthError> {
        let token = match bearer.map(str::trim) {
            Some(token) if !token.is_empty() => token,
            _ => return Err(AuthError::Unauthenticated("no bearer token".into())),
        };
        // Never closed, so acquiring cannot fail; if it could, reviewing
        // without a permit would still be correct. Waiting for a permit is
        // queueing, not the API server's time: the clock starts after it.
        let _permit = self.reviews.acquire().await.ok();
        let started = Instant::now();
        let result = self.review(token).await;
        self.metrics
            .token_reviewed(review_outcome(&result), started.elapsed());
        result
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
        }),
        _ => Err(AuthError::PermissionDenied(
            "token is not bound to a pod on a node".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
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
            &[(NODE_NAME_EXTRA, "worker-1"), (POD_NAME_EXTRA, "agent-x")],
        )
    }

    #[test]
    fn pod_bound_token_of_the_agent_account_names_its_node() {
        let identity = identity_from_review(&bound(), SA, AUD).unwrap();
        assert_eq!(
            identity,
            AgentIdentity {
                node_name: "worker-1".into(),
                pod_name: "agent-x".into()
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
    }

    /// A client of an API server at `addr`, over plain HTTP.
    fn client_at(addr: std::net::SocketAddr) -> kube::Client {
        let url = format!("http://{addr}").parse().unwrap();
        kube::Client::try_from(kube::Config::new(url)).unwrap()
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
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = Metrics::default();
        let result = authenticator(client_at(addr), &metrics)
            .authenticate(Some("a-token"))
            .await;
        assert!(matches!(result, Err(AuthError::Review(_))), "{result:?}");
        assert_eq!(reviews(&metrics, REVIEW_ERROR), 1);
        assert_eq!(metrics.token_review_duration.0.count(), 1);
        assert_eq!(reviews(&metrics, REVIEW_REJECTED), 0);
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
            .authenticate(Some("a-token"))
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
