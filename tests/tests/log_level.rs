//! The coordinator's log filter changes at runtime through `PUT /log-level`
//! on its metrics port, and a bad filter changes nothing.
#![allow(clippy::unwrap_used)]

use kata_coordinator::metrics::{Metrics, Readiness, serve};
use kata_tests::operator::{http_get, http_request};

#[tokio::test]
async fn log_filter_changes_without_a_restart() {
    let level = kata_coordinator::logging::init("info", true).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Metrics::default().registry();
    let readiness = Readiness::default();
    tokio::spawn(serve(
        listener,
        registry,
        readiness.clone(),
        Some(level.clone()),
    ));

    assert_eq!(
        http_get(addr, "/log-level").await.unwrap(),
        (200, "info".into())
    );
    assert!(
        !tracing::enabled!(tracing::Level::DEBUG),
        "debug is off at info"
    );

    let (status, body) = http_request(addr, "PUT", "/log-level", "debug,kube=warn")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(level.current(), "kube=warn,debug");
    assert!(
        tracing::enabled!(tracing::Level::DEBUG),
        "debug is on without a restart"
    );

    let (status, body) = http_request(addr, "PUT", "/log-level", "kube=loud")
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("invalid log filter"), "{body}");
    assert_eq!(
        level.current(),
        "kube=warn,debug",
        "a bad filter changes nothing"
    );

    // Readiness follows the coordinator, not the HTTP server.
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 503);
    readiness.set(true);
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
}
