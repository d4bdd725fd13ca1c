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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Everything the coordinator counts. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabel, Counter>,
    pub api_writes: Counter,
    pub label_writes: Counter,
    pub connected_agents: Gauge,
    pub nodes: Family<StateLabel, Gauge>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let prefix = registry.sub_registry_with_prefix("kata_operator");
        prefix.register(
            "reconciles",
            "KataConfig reconciles",
            self.reconciles.clone(),
        );
        prefix.register(
            "reconcile_errors",
            "Failed reconciles, by reason",
            self.reconcile_errors.clone(),
        );
        prefix.register(
            "api_writes",
            "Mutating Kubernetes API requests",
            self.api_writes.clone(),
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

/// Readiness: the coordinator is ready once its caches synced and (with
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
    log_level: Option<crate::logging::LogLevel>,
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
    match &state.log_level {
        Some(level) => (StatusCode::OK, level.current()),
        None => (
            StatusCode::NOT_FOUND,
            "log level is not adjustable here".into(),
        ),
    }
}

async fn put_log_level(State(state): State<HttpState>, body: String) -> (StatusCode, String) {
    match &state.log_level {
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
    log_level: Option<crate::logging::LogLevel>,
) -> std::io::Result<()> {
    let state = HttpState {
        registry: Arc::new(registry),
        readiness,
        log_level,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(state);
    axum::serve(listener, app).await
}
