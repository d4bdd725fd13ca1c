//! Prometheus metrics and the `/metrics`, `/healthz` and `/readyz` endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A failed reconcile's category: observe, apply, status or stopped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Counts every mutating API request the coordinator makes; exported as
/// the `kata_operator_api_writes` metric. Clones count together.
#[derive(Clone, Debug, Default)]
pub struct WriteCounter {
    count: Counter,
}

impl WriteCounter {
    pub fn get(&self) -> u64 {
        self.count.get()
    }

    pub fn record(&self) {
        self.count.inc();
    }
}

/// Everything the coordinator counts. Cheap to clone: clones count together.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<CategoryLabel, Counter>,
    /// Every write, the reconciler's and the labeller's.
    pub api_writes: WriteCounter,
    pub label_writes: Counter,
    pub connected_agents: Gauge,
    pub nodes: Family<StateLabel, Gauge>,
}

impl Metrics {
    /// A registry holding every metric, once.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.register(&mut registry);
        registry
    }

    fn register(&self, registry: &mut Registry) {
        let prefix = registry.sub_registry_with_prefix("kata_operator");
        prefix.register(
            "reconciles",
            "KataConfig reconciles",
            self.reconciles.clone(),
        );
        prefix.register(
            "reconcile_errors",
            "Failed reconciles, by category",
            self.reconcile_errors.clone(),
        );
        prefix.register(
            "api_writes",
            "Mutating Kubernetes API requests",
            self.api_writes.count.clone(),
        );
        prefix.register(
            "node_label_writes",
            "Writes of the Kata node labels and condition",
            self.label_writes.clone(),
        );
        prefix.register(
            "connected_agents",
            "node-agents with an open stream",
            self.connected_agents.clone(),
        );
        prefix.register("nodes", "Worker nodes by Kata state", self.nodes.clone());
    }
}

/// Readiness: the coordinator is ready once its parts are running and (with
/// leader election) it leads.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    readiness: Readiness,
    log_filter: Option<crate::logging::LogFilter>,
}

async fn metrics(State(state): State<HttpState>) -> (StatusCode, String) {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (StatusCode::OK, body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.readiness.get() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn get_log_level(State(state): State<HttpState>) -> (StatusCode, String) {
    match &state.log_filter {
        Some(level) => (StatusCode::OK, level.current()),
        None => (
            StatusCode::NOT_FOUND,
            "log level is not adjustable here".into(),
        ),
    }
}

async fn put_log_level(State(state): State<HttpState>, body: String) -> (StatusCode, String) {
    match &state.log_filter {
        Some(level) => match level.set(&body) {
            Ok(()) => {
                tracing::info!(filter = %level.current(), "log filter changed");
                (StatusCode::OK, level.current())
            }
            Err(e) => (StatusCode::BAD_REQUEST, e),
        },
        None => (
            StatusCode::NOT_FOUND,
            "log level is not adjustable here".into(),
        ),
    }
}

/// Serves `/metrics`, `/healthz` (the process answers), `/readyz`, and
/// `GET`/`PUT /log-level` (the live log filter, e.g. `debug` or
/// `info,kata_coordinator::reconciler=trace`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    log_filter: Option<crate::logging::LogFilter>,
) -> std::io::Result<()> {
    let state = HttpState {
        registry: Arc::new(registry),
        readiness,
        log_filter,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(state);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A live scrape over HTTP, as Prometheus makes it.
    async fn scrape(metrics: &Metrics) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let server = tokio::spawn(serve(
            listener,
            metrics.registry(),
            Readiness::default(),
            None,
        ));
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to /metrics");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("read the response");
        server.abort();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    #[tokio::test]
    async fn every_metric_family_appears_once() {
        let metrics = Metrics::default();
        metrics.api_writes.record();
        metrics
            .reconcile_errors
            .get_or_create(&CategoryLabel {
                category: "apply".into(),
            })
            .inc();
        let body = scrape(&metrics).await;
        let types: Vec<&str> = body.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "a # TYPE line repeats:\n{body}");
        assert!(
            body.contains("kata_operator_api_writes_total 1"),
            "the write counter is exported:\n{body}"
        );
        assert!(body.contains("kata_operator_reconcile_errors_total{category=\"apply\"} 1"));
    }
}
