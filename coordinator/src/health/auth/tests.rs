#![allow(clippy::unwrap_used)]

use super::*;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

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
pub(super) fn unsigned_jwt(payload: &serde_json::Value) -> String {
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
            expires_at: unix(2_000),
            issued_at: None,
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
    assert!(refused(&token(serde_json::json!({"aud": [AUD], "exp": 900}))).ends_with("expired"));
    assert!(
        refused(&token(
            serde_json::json!({"aud": [AUD], "exp": 2_000, "iat": 1_600})
        ))
        .ends_with("issued in the future")
    );
    // A clock half a minute behind the issuer's admits its fresh token.
    assert!(
        precheck(
            &token(serde_json::json!({"aud": [AUD], "exp": 2_000, "iat": 1_030})),
            AUD,
            now
        )
        .is_ok()
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
    let start = Instant::now();
    let at = |seconds: u64| start + Duration::from_secs(seconds);
    let mut cache = ReviewCache::new(2);
    cache.insert(token_key("a"), identity("w0"), at(100), at(0));
    cache.insert(token_key("b"), identity("w1"), at(50), at(0));
    assert_eq!(cache.get(&token_key("a"), at(99)), Some(identity("w0")));
    assert_eq!(
        cache.get(&token_key("a"), at(100)),
        None,
        "not past its expiry"
    );
    assert_eq!(cache.get(&token_key("c"), at(0)), None);
    // Full: a new entry only fits once an old one has expired.
    cache.insert(token_key("c"), identity("w2"), at(200), at(10));
    assert_eq!(cache.get(&token_key("c"), at(11)), None);
    cache.insert(token_key("c"), identity("w2"), at(200), at(60));
    assert_eq!(cache.get(&token_key("c"), at(61)), Some(identity("w2")));
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
pub(super) fn client_at(addr: std::net::SocketAddr) -> kube::Client {
    let url = format!("http://{addr}").parse().unwrap();
    kube::Client::try_from(kube::Config::new(url)).unwrap()
}

/// A port that was just free: nothing listens there.
pub(super) fn nothing_listens() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub(super) fn authenticator(client: kube::Client, metrics: &Metrics) -> AgentAuthenticator {
    AgentAuthenticator::new(client, AUD, "kata", "node-agent").with_metrics(metrics.clone())
}

pub(super) fn reviews(metrics: &Metrics, outcome: &str) -> u64 {
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
    let now = Instant::now();
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

/// An API server that accepts connections and holds them, never
/// answering; it stops when the handle is aborted.
pub(super) async fn silent_api_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, silent)
}

#[tokio::test]
async fn an_api_server_that_never_answers_times_out_as_an_error() {
    let (addr, silent) = silent_api_server().await;
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

#[test]
fn a_new_token_of_a_pod_replaces_its_last_one() {
    let identity = AgentIdentity {
        node_name: "worker-1".into(),
        pod_name: "agent-x".into(),
        pod_uid: Some("uid-x".into()),
    };
    let now = Instant::now();
    let until = now + REVIEW_CACHE_TTL;
    let mut cache = ReviewCache::new(16);
    for n in 0..10 {
        cache.insert(
            token_key(&format!("minted-{n}")),
            identity.clone(),
            until,
            now,
        );
    }
    assert_eq!(cache.entries.len(), 1, "minting cannot grow the cache");
    assert_eq!(
        cache.get(&token_key("minted-9"), now),
        Some(identity.clone())
    );
    assert_eq!(cache.get(&token_key("minted-8"), now), None);
    let other = AgentIdentity {
        pod_uid: Some("uid-y".into()),
        ..identity
    };
    cache.insert(token_key("y"), other.clone(), until, now);
    assert_eq!(cache.get(&token_key("y"), now), Some(other));
    assert_eq!(cache.entries.len(), 2);
}
