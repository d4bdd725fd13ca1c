#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::tests::{
    authenticator, client_at, nothing_listens, reviews, silent_api_server, unsigned_jwt,
};
use super::super::{TokenClaims, token_key};
use super::*;
use crate::metrics::{Metrics, REVIEW_ERROR, TOKEN_LIMITED};

#[test]
fn a_node_gets_its_burst_then_its_rate_and_other_nodes_theirs() {
    let mut buckets = NodeBuckets::new(ReviewFairness {
        per_node_rate: 1.0,
        per_node_burst: 5,
    });
    let start = Instant::now();
    let at = |millis: u64| start + Duration::from_millis(millis);
    for _ in 0..5 {
        assert!(buckets.try_take("node/a", at(0)));
    }
    assert!(!buckets.try_take("node/a", at(0)), "burst spent");
    assert!(
        !buckets.try_take("node/a", at(900)),
        "not a whole review yet"
    );
    assert!(buckets.try_take("node/a", at(1_000)));
    assert!(!buckets.try_take("node/a", at(1_500)));
    assert!(
        buckets.try_take("node/b", at(1_500)),
        "another node is not held"
    );
    // A long quiet spell refills no more than the burst.
    for _ in 0..5 {
        assert!(buckets.try_take("node/a", at(60_000)));
    }
    assert!(!buckets.try_take("node/a", at(60_000)));
}

#[test]
fn full_buckets_go_when_there_are_too_many() {
    let mut buckets = NodeBuckets::new(ReviewFairness::default());
    let start = Instant::now();
    for n in 0..MAX_BUCKETS {
        assert!(buckets.try_take(&format!("node/{n}"), start));
    }
    assert_eq!(buckets.len(), MAX_BUCKETS);
    // Ten seconds on every bucket is full again: forgetting them is free.
    assert!(buckets.try_take("node/new", start + Duration::from_secs(10)));
    assert_eq!(buckets.len(), 1);
}

#[test]
fn one_review_per_pod_shared_by_the_same_token_refused_to_another() {
    let mut flights = InFlight::default();
    let (a, b) = (token_key("a"), token_key("b"));
    let Flight::Lead(answer) = flights.join("uid-1", &a) else {
        panic!("the first token of a pod leads");
    };
    assert!(matches!(flights.join("uid-1", &a), Flight::Follow(_)));
    assert!(matches!(flights.join("uid-1", &b), Flight::Refuse));
    assert!(matches!(flights.join("uid-2", &b), Flight::Lead(_)));
    // Ending another token's review leaves this one.
    flights.end("uid-1", &b);
    assert!(matches!(flights.join("uid-1", &b), Flight::Refuse));
    flights.end("uid-1", &a);
    assert!(matches!(flights.join("uid-1", &b), Flight::Lead(_)));
    drop(answer);
}

#[test]
fn a_review_whose_leader_is_gone_no_longer_holds_its_pod() {
    let mut flights = InFlight::default();
    let Flight::Lead(answer) = flights.join("uid-1", &token_key("a")) else {
        panic!("leads");
    };
    drop(answer);
    assert!(matches!(
        flights.join("uid-1", &token_key("b")),
        Flight::Lead(_)
    ));
}

#[test]
fn bound_claims_are_read_from_the_kubernetes_io_claim() {
    let token = unsigned_jwt(&serde_json::json!({
        "kubernetes.io": {
            "namespace": "kata",
            "node": {"name": "worker-1", "uid": "n1"},
            "pod": {"name": "agent-x", "uid": "uid-x"}
        }
    }));
    let claims = bound_claims(&token).unwrap();
    assert_eq!(claims.pod_uid, "uid-x");
    assert_eq!(claims.rate_key(), "node/worker-1");
    // Before 1.30 the node is not named: the pod stands for it.
    let older = unsigned_jwt(&serde_json::json!({
        "kubernetes.io": {"pod": {"name": "agent-x", "uid": "uid-x"}}
    }));
    assert_eq!(bound_claims(&older).unwrap().rate_key(), "pod/uid-x");
    let unbound = unsigned_jwt(&serde_json::json!({"kubernetes.io": {"namespace": "kata"}}));
    assert_eq!(bound_claims(&unbound), None);
}

fn claims() -> TokenClaims {
    TokenClaims {
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        issued_at: Some(UNIX_EPOCH),
    }
}

fn bound(node: &str, pod_uid: &str) -> BoundClaims {
    BoundClaims {
        pod_uid: pod_uid.into(),
        node_name: Some(node.into()),
    }
}

#[tokio::test]
async fn concurrent_calls_with_one_token_cost_one_review_and_another_token_waits_none() {
    let (addr, silent) = silent_api_server().await;
    let metrics = Metrics::default();
    let auth = authenticator(client_at(addr), &metrics).with_timeout(Duration::from_millis(300));
    let pod = bound("worker-1", "uid-x");
    let claims = claims();
    let (key, other) = (token_key("a"), token_key("b"));
    let lead = auth.review_fairly("a", key, &pod, &claims);
    let follow = async {
        tokio::task::yield_now().await;
        let other_token = auth.review_fairly("b", other, &pod, &claims).await;
        (
            auth.review_fairly("a", key, &pod, &claims).await,
            other_token,
        )
    };
    let (led, (followed, other_token)) = tokio::join!(lead, follow);
    silent.abort();
    assert!(matches!(led, Err(AuthError::ReviewTimedOut(_))), "{led:?}");
    assert!(
        matches!(other_token, Err(AuthError::Limited(Limit::PodInFlight))),
        "{other_token:?}"
    );
    assert!(
        matches!(followed, Err(AuthError::SharedReviewFailed)),
        "{followed:?}"
    );
    assert_eq!(reviews(&metrics, REVIEW_ERROR), 1, "one review for both");
    assert_eq!(super::super::lock(&auth.in_flight).len(), 0);
}

#[tokio::test]
async fn a_node_minting_tokens_is_held_to_its_rate_and_others_are_not() {
    let metrics = Metrics::default();
    let auth =
        authenticator(client_at(nothing_listens()), &metrics).with_fairness(ReviewFairness {
            per_node_rate: 0.001,
            per_node_burst: 3,
        });
    let claims = claims();
    for n in 0..4 {
        let token = format!("minted-{n}");
        let result = auth
            .review_fairly(
                &token,
                token_key(&token),
                &bound("greedy", &format!("uid-{n}")),
                &claims,
            )
            .await;
        if n < 3 {
            assert!(matches!(result, Err(AuthError::Review(_))), "{result:?}");
        } else {
            assert!(
                matches!(result, Err(AuthError::Limited(Limit::NodeRate))),
                "{result:?}"
            );
        }
    }
    let result = auth
        .review_fairly("fair", token_key("fair"), &bound("quiet", "uid-q"), &claims)
        .await;
    assert!(matches!(result, Err(AuthError::Review(_))), "{result:?}");
    assert_eq!(reviews(&metrics, REVIEW_ERROR), 4);
    let limited = metrics
        .tokens_not_reviewed
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: TOKEN_LIMITED.into(),
        })
        .get();
    assert_eq!(limited, 1);
}

#[tokio::test]
async fn relisted_pods_keep_their_admissions_and_gone_ones_lose_them() {
    let auth = authenticator(client_at(nothing_listens()), &Metrics::default());
    let now = Instant::now();
    let identity = |uid: Option<&str>| AgentIdentity {
        node_name: "worker-1".into(),
        pod_name: "agent".into(),
        pod_uid: uid.map(str::to_owned),
    };
    {
        let mut cache = super::super::lock(&auth.cache);
        let until = now + Duration::from_secs(3600);
        cache.insert(token_key("live"), identity(Some("live")), until, now);
        cache.insert(token_key("gone"), identity(Some("gone")), until, now);
        cache.insert(token_key("no-uid"), identity(None), until, now);
    }
    auth.forget_pods_except(&HashSet::from(["live".to_owned()]));
    assert!(auth.cached(&token_key("live"), now).is_some());
    assert!(auth.cached(&token_key("gone"), now).is_none());
    assert!(
        auth.cached(&token_key("no-uid"), now).is_some(),
        "nothing says it is gone"
    );
}
