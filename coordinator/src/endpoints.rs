//! The coordinator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`
//! on the metrics port, and `/log-level` on a loopback port of its own.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kata_proto::metrics_text::classic_text;
use prometheus_client::registry::Registry;

/// Readiness: the coordinator is ready once its parts are running and (with
/// leader election) it leads. While it is not, it says why: `/readyz`
/// answers 503 with that reason as its body.
#[derive(Clone)]
pub struct Readiness(Arc<RwLock<ReadinessState>>);

/// Whether the coordinator is ready, or why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadinessState {
    Ready,
    NotReady(String),
}

/// What `/readyz` says before the coordinator has said anything else.
const STARTING: &str = "starting";

impl Default for Readiness {
    fn default() -> Self {
        Readiness(Arc::new(RwLock::new(ReadinessState::NotReady(
            STARTING.into(),
        ))))
    }
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        if ready {
            self.store(ReadinessState::Ready);
        } else {
            self.not_ready("not ready");
        }
    }

    /// Not ready, for the reason `/readyz` will answer with.
    pub fn not_ready(&self, reason: impl Into<String>) {
        self.store(ReadinessState::NotReady(reason.into()));
    }

    pub fn get(&self) -> bool {
        self.state() == ReadinessState::Ready
    }

    /// Ready, or the reason why not.
    pub fn state(&self) -> ReadinessState {
        self.0.read().map_or_else(
            |poisoned| poisoned.into_inner().clone(),
            |state| state.clone(),
        )
    }

    fn store(&self, state: ReadinessState) {
        match self.0.write() {
            Ok(mut guard) => *guard = state,
            Err(poisoned) => *poisoned.into_inner() = state,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The scrape, in the format the scraper asks for: OpenMetrics when its
/// `Accept` names it (Prometheus does), else the classic text format, which
/// every other tool reads (promtool among them). Each body declares its own
/// content type, so no parser reads one format as the other.
async fn metrics(
    State(state): State<HttpState>,
    headers: axum::http::HeaderMap,
) -> (
    StatusCode,
    [(axum::http::header::HeaderName, &'static str); 1],
    String,
) {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(axum::http::header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        );
    }
    let wants_openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, OPENMETRICS)],
            body,
        )
    } else {
        (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            classic_text(&body),
        )
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.readiness.state() {
        ReadinessState::Ready => (StatusCode::OK, "ok".into()),
        ReadinessState::NotReady(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn get_log_level(State(level): State<crate::logging::LogFilter>) -> (StatusCode, String) {
    (StatusCode::OK, level.current())
}

async fn put_log_level(
    State(level): State<crate::logging::LogFilter>,
    body: String,
) -> (StatusCode, String) {
    match level.set(&body) {
        Ok(()) => {
            tracing::info!(filter = %level.current(), "log filter changed");
            (StatusCode::OK, level.current())
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// Serves `/metrics`, `/healthz` (the process answers) and `/readyz`: the
/// port Prometheus and the kubelet reach, so it serves nothing that
/// changes the coordinator.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
) -> std::io::Result<()> {
    let state = HttpState {
        registry: Arc::new(registry),
        readiness,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).await
}

/// Serves `GET`/`PUT /log-level` (the live log filter, e.g. `debug` or
/// `info,kata_coordinator::controller=trace`) on `listener`, which the
/// coordinator binds to loopback only: reached with `kubectl port-forward`
/// by someone allowed to, never by whoever reaches the pod's network.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    log_filter: crate::logging::LogFilter,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(log_filter);
    axum::serve(listener, app).await
}
