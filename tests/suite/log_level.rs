//! The coordinator's log filter changes at runtime through `PUT /log-level`
//! on its loopback admin port, a bad filter changes nothing, and the open
//! metrics port does not serve it.
#![allow(clippy::unwrap_used)]

use kata_coordinator::metrics::{Metrics, Readiness, serve, serve_admin};
use kata_test_harness::kata_test;
use kata_tests::http::http_get;
use kata_tests::http::http_request;

#[kata_test]
async fn log_filter_changes_without_a_restart() {
    let level = kata_coordinator::logging::init("info", true).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_admin(listener, level.clone()));
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let registry = Metrics::default().registry();
    let readiness = Readiness::default();
    tokio::spawn(serve(metrics_listener, registry, readiness.clone()));
    assert_eq!(
        http_request(metrics_addr, "PUT", "/log-level", "trace")
            .await
            .unwrap()
            .0,
        404,
        "the open port does not change the log level"
    );

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
    assert_eq!(http_get(metrics_addr, "/readyz").await.unwrap().0, 503);
    readiness.set(true);
    assert_eq!(http_get(metrics_addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(http_get(metrics_addr, "/healthz").await.unwrap().0, 200);
}

#[kata_test]
fn the_log_level_endpoint_listens_on_loopback_only() {
    use kata_coordinator::app::check_admin_listen;
    assert!(check_admin_listen("127.0.0.1:8081".parse().unwrap()).is_ok());
    assert!(check_admin_listen("[::1]:8081".parse().unwrap()).is_ok());
    let refused = check_admin_listen("0.0.0.0:8081".parse().unwrap()).unwrap_err();
    assert!(refused.to_string().contains("loopback only"), "{refused}");
}
