//! Agent authentication: the bearer token is a projected ServiceAccount token
//! with a dedicated audience, bound to the agent's Pod. TokenReview proves it
//! is live (signature, expiry, the bound Pod still exists); the pure
//! [`identity_from_review`] then decides whether it is *our* agent and which
//! node it may speak for.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

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
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(reason) => tonic::Status::unauthenticated(reason),
            AuthError::PermissionDenied(reason) => tonic::Status::permission_denied(reason),
            // The kube error may carry API server details; the agent only
            // needs to know it is worth retrying.
            AuthError::Review(_) => tonic::Status::unavailable("cannot verify the token now"),
        }
    }
}

/// TokenReviews in flight at once. When every agent of a large cluster
/// reconnects together (a coordinator restart), the rest wait their turn
/// instead of opening a connection to the API server each.
pub const REVIEW_CONCURRENCY: usize = 32;

/// Checks agents' tokens with the API server's TokenReview.
#[derive(Clone)]
pub struct AgentAuthenticator {
    client: kube::Client,
    audience: String,
    /// (namespace, name) of the node-agent's ServiceAccount.
    service_account: (String, String),
    reviews: Arc<Semaphore>,
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
        }
    }

    /// The username the API server gives tokens of the agents' ServiceAccount.
    pub fn expected_username(&self) -> String {
        let (namespace, name) = &self.service_account;
        format!("system:serviceaccount:{namespace}:{name}")
    }

    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<AgentIdentity, AuthError> {
        let token = match bearer.map(str::trim) {
            Some(token) if !token.is_empty() => token,
            _ => return Err(AuthError::Unauthenticated("no bearer token".into())),
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = {
            // Never closed, so acquiring cannot fail; if it could, reviewing
            // without a permit would still be correct.
            let _permit = self.reviews.acquire().await.ok();
            Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(AuthError::Review)?
        };
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
    }
}
