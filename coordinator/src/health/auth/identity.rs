//! Who a TokenReview says a token speaks for.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;

use super::{AgentIdentity, AuthError, NODE_NAME_EXTRA, POD_NAME_EXTRA, POD_UID_EXTRA};

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
