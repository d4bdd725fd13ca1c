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

/// A KataConfig condition type: InProgress, Ready, Degraded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    pub condition: String,
}

/// A node phase of the KataConfig status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

/// The node phases exported, in the status's words.
pub const NODE_PHASES: [&str; 7] = [
    "installed",
    "installing",
    "waiting_to_install",
    "failed_to_install",
    "uninstalling",
    "failed_to_uninstall",
    "not_runtime_ready",
];

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
    /// 1 while the active KataConfig's condition is True.
    pub kataconfig_condition: Family<ConditionLabel, Gauge>,
    /// The active KataConfig's nodes, by phase.
    pub kataconfig_nodes: Family<PhaseLabel, Gauge>,
    /// 1 while this replica acts (holds the lease, or runs alone).
    pub leader: Gauge,
}

impl Metrics {
    /// Exports the active KataConfig's conditions and node counts.
    pub fn observe_kataconfig(
        &self,
        conditions: &[(&str, bool)],
        nodes: &crate::api::KataNodesStatus,
    ) {
        for (condition, status) in conditions {
            self.kataconfig_condition
                .get_or_create(&ConditionLabel {
                    condition: (*condition).into(),
                })
                .set(i64::from(*status));
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let counts = [
            count(nodes.installed.len()),
            count(nodes.installing.len()),
            count(nodes.waiting_to_install.len()),
            count(nodes.failed_to_install.len()),
            count(nodes.uninstalling.len() + nodes.waiting_to_uninstall.len()),
            count(nodes.failed_to_uninstall.len()),
            count(nodes.not_runtime_ready.len()),
        ];
        for (phase, value) in NODE_PHASES.iter().zip(counts) {
            self.kataconfig_nodes
                .get_or_create(&PhaseLabel {
                    phase: (*phase).into(),
                })
                .set(value);
        }
    }

    /// No KataConfig is in force any more.
    pub fn clear_kataconfig(&self) {
        self.kataconfig_condition.clear();
        self.kataconfig_nodes.clear();
    }
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
        prefix.register(
            "kataconfig_condition",
            "1 while the active KataConfig's condition (InProgress, Ready, Degraded) is True",
            self.kataconfig_condition.clone(),
        );
        prefix.register(
            "kataconfig_nodes",
            "The active KataConfig's nodes, by phase of the install or uninstall",
            self.kataconfig_nodes.clone(),
        );
        prefix.register(
            "leader",
            "1 while this coordinator replica acts (holds the leader lease or runs alone)",
            self.leader.clone(),
        );
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

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a
/// counter family is named with its `_total` suffix, as its samples are, and
/// the OpenMetrics-only `# UNIT` and `# EOF` lines go. Enough for the kinds
/// this crate exports (counters, gauges, histograms).
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
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
        assert!(
            response.contains("content-type: text/plain; version=0.0.4"),
            "{response}"
        );
        response
    }

    #[test]
    fn the_classic_format_names_counters_with_their_suffix() {
        let openmetrics = "# HELP a_writes Writes.\n# TYPE a_writes counter\na_writes_total 3\n\
            # HELP b Things.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP a_writes_total Writes.\n# TYPE a_writes_total counter\na_writes_total 3\n\
             # HELP b Things.\n# TYPE b gauge\nb 1\n"
        );
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

    #[test]
    fn the_kataconfig_gauges_follow_the_plan_and_clear() {
        let metrics = Metrics::default();
        let nodes = crate::api::KataNodesStatus {
            installed: vec!["a".into(), "b".into()],
            uninstalling: vec!["c".into()],
            waiting_to_uninstall: vec!["d".into()],
            ..Default::default()
        };
        metrics.observe_kataconfig(&[("Ready", true), ("Degraded", false)], &nodes);
        let phase = |p: &str| {
            metrics
                .kataconfig_nodes
                .get_or_create(&PhaseLabel { phase: p.into() })
                .get()
        };
        assert_eq!((phase("installed"), phase("uninstalling")), (2, 2));
        let ready = |c: &str| {
            metrics
                .kataconfig_condition
                .get_or_create(&ConditionLabel {
                    condition: c.into(),
                })
                .get()
        };
        assert_eq!((ready("Ready"), ready("Degraded")), (1, 0));
        metrics.clear_kataconfig();
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &metrics.registry())
            .unwrap_or_default();
        assert!(!body.contains("phase=\"installed\""), "{body}");
    }
}
