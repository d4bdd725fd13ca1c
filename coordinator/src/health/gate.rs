//! The gate every call on the agents' port passes before the NodeHealth
//! service sees it: a tower layer in front of tonic's routes, so it runs on
//! the request's headers alone, before tonic reads or decodes any of the
//! body (for a unary call tonic decodes the message before the handler
//! runs; for a stream, before the first `message()`).
//!
//! - The bearer is authenticated here, entirely ([`AgentAuthenticator`]:
//!   the shape, audience and expiry checks, the issuer's signature, the
//!   review cache, the TokenReview). A refusal answers the call with its
//!   status at once; the body is dropped unread, so what a peer without a
//!   token sends is never buffered past HTTP/2's flow-control window, nor
//!   decoded. An admitted call carries its [`Authenticated`] in the
//!   request's extensions, where the handlers take it: one authentication
//!   per call.
//! - The whole of it, authentication included, must answer within the
//!   request deadline, else DEADLINE_EXCEEDED.
//! - The call counts as an open stream of its connection
//!   ([`ConnectionState`]) until its response body is done, so the
//!   connection's idle timer runs only while it carries nothing. An
//!   authenticated call marks its connection an agent's, which keeps its
//!   place when places run out; a call whose credentials are refused ends
//!   its connection shortly after the answer
//!   ([`super::connection::CREDENTIALS_REFUSED_GRACE`]): what a stranger
//!   holds open, it holds for a round trip at most.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http::HeaderMap;
use tonic::Status;
use tonic::body::Body;

use super::auth::{AgentAuthenticator, AuthError, Authenticated};
use super::connection::{AgentConnectInfo, CREDENTIALS_REFUSED_GRACE};
use super::connection_state::{ConnectionState, OpenStream};
use super::refusals::Refusals;
use crate::metrics::{
    REFUSED_DEADLINE, REFUSED_PERMISSION_DENIED, REFUSED_UNAUTHENTICATED, REFUSED_UNAVAILABLE,
};

/// The token from an `authorization: Bearer <token>` header, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    // RFC 7235: the scheme is case-insensitive.
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The refusal reason counted for an authentication error.
pub fn refusal_reason(error: &AuthError) -> &'static str {
    match error {
        AuthError::Unauthenticated(_) => REFUSED_UNAUTHENTICATED,
        AuthError::PermissionDenied(_) => REFUSED_PERMISSION_DENIED,
        AuthError::Review(_)
        | AuthError::ReviewTimedOut(_)
        | AuthError::Busy
        | AuthError::SharedReviewFailed => REFUSED_UNAVAILABLE,
        AuthError::Limited(limit) => limit.reason(),
    }
}

/// What the gate needs; shared by every connection's copy of it.
struct Settings {
    authenticator: AgentAuthenticator,
    refusals: Refusals,
    deadline: Duration,
}

/// Puts the [`Gate`] in front of a service.
#[derive(Clone)]
pub struct GateLayer {
    settings: Arc<Settings>,
}

impl GateLayer {
    pub fn new(authenticator: AgentAuthenticator, refusals: Refusals, deadline: Duration) -> Self {
        Self {
            settings: Arc::new(Settings {
                authenticator,
                refusals,
                deadline,
            }),
        }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = Arc::clone(&self.settings);
        Box::pin(async move {
            let connection = request.extensions().get::<AgentConnectInfo>().cloned();
            let state = connection.map(|info| info.state);
            let stream = state.as_ref().map(ConnectionState::stream_opened);
            let peer = state.as_ref().and_then(|state| state.peer());
            let answer = tokio::time::timeout(settings.deadline, async {
                let bearer = bearer_token(request.headers());
                let authenticated = settings.authenticator.authenticate(bearer).await?;
                if let Some(state) = &state {
                    state.authenticated();
                }
                request
                    .extensions_mut()
                    .insert::<Authenticated>(authenticated);
                Ok(inner.call(request).await)
            })
            .await;
            let refused = match answer {
                Ok(Ok(Ok(response))) => {
                    return Ok(response.map(|body| Body::new(CountedBody { body, stream })));
                }
                Ok(Ok(Err(error))) => return Err(error),
                Ok(Err(error)) => {
                    let error: AuthError = error;
                    if let Some(state) = state.as_ref().filter(|_| error.refuses_credentials()) {
                        state.end_after(CREDENTIALS_REFUSED_GRACE);
                    }
                    settings
                        .refusals
                        .refuse(refusal_reason(&error), peer, &error.to_string());
                    Status::from(error)
                }
                Err(_) => {
                    settings.refusals.refuse(
                        REFUSED_DEADLINE,
                        peer,
                        "no answer within the request deadline",
                    );
                    Status::deadline_exceeded("no answer within the request deadline")
                }
            };
            // The request, body unread, is gone: the answer is the status.
            Ok(refused.into_http())
        })
    }
}

/// A response body that keeps its stream counted open until it is done.
struct CountedBody {
    body: Body,
    stream: Option<OpenStream>,
}

impl http_body::Body for CountedBody {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.stream = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::health::auth::Limit;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("authorization", value.parse().unwrap());
        map
    }

    #[test]
    fn bearer_token_is_taken_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(&headers("Basic abc")), None);
        assert_eq!(bearer_token(&headers("Bearer ")), None);
        assert_eq!(bearer_token(&headers("abc")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn refusals_are_counted_by_what_the_agent_is_told() {
        let reason = |error| refusal_reason(&error);
        assert_eq!(
            reason(AuthError::Unauthenticated("x".into())),
            REFUSED_UNAUTHENTICATED
        );
        assert_eq!(
            reason(AuthError::PermissionDenied("x".into())),
            REFUSED_PERMISSION_DENIED
        );
        assert_eq!(reason(AuthError::Busy), REFUSED_UNAVAILABLE);
        assert_eq!(
            reason(AuthError::Limited(Limit::NodeRate)),
            crate::metrics::REFUSED_REVIEW_RATE
        );
        assert_eq!(
            reason(AuthError::Limited(Limit::PodInFlight)),
            crate::metrics::REFUSED_REVIEW_IN_FLIGHT
        );
        assert_eq!(
            reason(AuthError::ReviewTimedOut(Duration::from_secs(1))),
            REFUSED_UNAVAILABLE
        );
    }
}
