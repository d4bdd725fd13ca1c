//! The agent's own Prometheus metrics and its plain-HTTP `GET /metrics`,
//! beside `GET /healthz` for the DaemonSet's liveness probe.
//!
//! The page is the Prometheus text format 0.0.4: the agent's families (all
//! `kata_node_agent_*`), then Kata's per-sandbox families relayed from the
//! shims ([`crate::sandbox_metrics`]), scraped when the page is asked for.
//! No `node` label: the PodMonitor adds it from the pod's node.

use kata_proto::metrics_text::classic_text;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, warn};

use crate::liveness::Liveness;
use crate::probe::{ProbeName, ProbeOutcome, ProbeStatus};
use crate::sandbox_metrics::{DropReason, SandboxScrape, SandboxScraper};
use crate::verdict::Verdicts;

/// Where `node-agent run` serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDRESS: &str = "0.0.0.0:8090";

pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more wait in the kernel's accept queue. One
/// Prometheus (two with HA) scrapes an agent.
const MAX_CONNECTIONS: usize = 4;
/// A client must send its request headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (one request: no keep-alive) ends within this, so a
/// client that stops reading cannot hold a connection slot.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeStatusLabels {
    probe: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeReasonLabels {
    probe: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropReasonLabels {
    reason: &'static str,
}

/// The `status` label's values, in this order on the page.
pub const STATUS_VALUES: [(ProbeStatus, &str); 4] = [
    (ProbeStatus::Ok, "ok"),
    (ProbeStatus::Warn, "warn"),
    (ProbeStatus::Fail, "fail"),
    (ProbeStatus::Skip, "skip"),
];

/// Everything the agent counts. Cheap to clone: clones count together.
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics {
    probe_status: Family<ProbeStatusLabels, Gauge>,
    probe_failures: Family<ProbeReasonLabels, Counter>,
    probe_duration: Family<ProbeLabels, Gauge<f64, AtomicU64>>,
    runtime_ready: Gauge,
    kvm_capable: Gauge,
    last_report: Gauge<f64, AtomicU64>,
    reports_sent: Counter,
    reconnects: Counter,
    connected: Gauge,
    sandboxes_running: Gauge,
    sandbox_scrape_errors: Counter,
    sandbox_dropped_lines: Counter,
    sandbox_dropped_series: Family<DropReasonLabels, Counter>,
    abandoned_probe_work: Gauge,
}

impl AgentMetrics {
    /// One probe cycle: each probe's status (1 for the current one, 0 for
    /// the other three, so a change shows on both series), a failure
    /// counted per FAIL outcome, each probe's duration, the verdicts.
    pub fn observe_cycle(
        &self,
        outcomes: &[ProbeOutcome],
        verdicts: Verdicts,
        durations: &[(ProbeName, Duration)],
    ) {
        for outcome in outcomes {
            let probe = outcome.name.as_str();
            for (status, label) in STATUS_VALUES {
                self.probe_status
                    .get_or_create(&ProbeStatusLabels {
                        probe,
                        status: label,
                    })
                    .set(i64::from(outcome.status == status));
            }
            if outcome.status == ProbeStatus::Fail {
                self.probe_failures
                    .get_or_create(&ProbeReasonLabels {
                        probe,
                        reason: outcome.reason,
                    })
                    .inc();
            }
        }
        for (name, took) in durations {
            self.probe_duration
                .get_or_create(&ProbeLabels {
                    probe: name.as_str(),
                })
                .set(took.as_secs_f64());
        }
        self.runtime_ready.set(i64::from(verdicts.runtime_ready));
        self.kvm_capable.set(i64::from(verdicts.kvm_capable));
        self.abandoned_probe_work
            .set(i64::try_from(crate::probe::abandoned_blocking_work()).unwrap_or(i64::MAX));
    }

    /// A report went out at `sent_at`.
    pub fn observe_report(&self, sent_at: SystemTime) {
        self.reports_sent.inc();
        let unix = sent_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        self.last_report.set(unix);
    }

    /// A check-in tried again after a failed one: a reconnect, as the
    /// coordinator was unreachable or refused the agent.
    pub fn observe_retry(&self) {
        self.reconnects.inc();
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// One scrape of the sandboxes.
    pub fn observe_sandboxes(&self, scrape: &SandboxScrape) {
        self.sandboxes_running
            .set(i64::try_from(scrape.sandboxes).unwrap_or(i64::MAX));
        self.sandbox_scrape_errors.inc_by(scrape.errors);
        self.sandbox_dropped_lines.inc_by(scrape.dropped_lines);
        // Every reason, 0 included: each series exists from the first page,
        // so a first drop shows as an increase rather than a new series.
        for reason in DropReason::ALL {
            self.sandbox_dropped_series
                .get_or_create(&DropReasonLabels {
                    reason: reason.as_str(),
                })
                .inc_by(scrape.dropped_series.get(reason));
        }
    }

    /// A registry holding every metric, once.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let agent = registry.sub_registry_with_prefix("kata_node_agent");
        agent.register(
            "probe_status",
            "1 for the probe's current status (ok, warn, fail, skip), 0 for the others",
            self.probe_status.clone(),
        );
        agent.register(
            "probe_failures",
            "Probe cycles in which the probe's outcome was FAIL, by reason",
            self.probe_failures.clone(),
        );
        agent.register(
            "probe_duration_seconds",
            "How long the probe took in the last cycle",
            self.probe_duration.clone(),
        );
        agent.register(
            "runtime_ready",
            "1 while the last cycle found the node runtime-ready for Kata",
            self.runtime_ready.clone(),
        );
        agent.register(
            "kvm_capable",
            "1 while the last cycle found the node KVM-capable",
            self.kvm_capable.clone(),
        );
        agent.register(
            "last_report_timestamp_seconds",
            "Unix time of the last health report sent to the coordinator",
            self.last_report.clone(),
        );
        agent.register(
            "reports_sent",
            "Health reports sent to the coordinator",
            self.reports_sent.clone(),
        );
        agent.register(
            "reconnects",
            "Check-ins tried again after a failed one",
            self.reconnects.clone(),
        );
        agent.register(
            "connected",
            "1 while the coordinator accepts the agent's check-ins (the last one succeeded)",
            self.connected.clone(),
        );
        agent.register(
            "sandboxes_running",
            "Kata sandboxes found on the node at the last scrape",
            self.sandboxes_running.clone(),
        );
        agent.register(
            "sandbox_scrape_errors",
            "Sandboxes whose Kata metrics could not be relayed, over all scrapes",
            self.sandbox_scrape_errors.clone(),
        );
        agent.register(
            "sandbox_malformed_lines",
            "Lines of the Kata shims' metrics dropped as malformed or conflicting",
            self.sandbox_dropped_lines.clone(),
        );
        agent.register(
            "sandbox_series_dropped",
            "Series of the Kata shims' metrics not relayed, by reason: family \
             (not one of Kata's), labels (too many or too long), series_cap \
             (past the sandbox's cap)",
            self.sandbox_dropped_series.clone(),
        );
        agent.register(
            "abandoned_probe_work",
            "Probe work given up on at its deadline that still holds a thread \
             (a read or ioctl stuck in the kernel), at the last cycle",
            self.abandoned_probe_work.clone(),
        );
        registry
    }
}

/// What `/metrics` serves: the agent's metrics and, when given a scraper,
/// the sandboxes'.
pub struct MetricsEndpoint {
    metrics: AgentMetrics,
    registry: Registry,
    sandboxes: Option<SandboxScraper>,
    /// What `/healthz` judges; without it, `/healthz` is not served.
    liveness: Option<Liveness>,
    /// One sandbox scrape at a time: concurrent requests would multiply
    /// the memory a scrape holds.
    scraping: Mutex<()>,
}

impl MetricsEndpoint {
    pub fn new(metrics: AgentMetrics, sandboxes: Option<SandboxScraper>) -> Self {
        Self {
            registry: metrics.registry(),
            metrics,
            sandboxes,
            liveness: None,
            scraping: Mutex::new(()),
        }
    }

    /// Serves `GET /healthz` from `liveness`: 200 while the agent can
    /// report, 503 with the reason once it cannot.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// The whole page, the sandboxes scraped now.
    pub async fn page(&self) -> String {
        let _turn = self.scraping.lock().await;
        let scrape = match &self.sandboxes {
            Some(scraper) => scraper.scrape().await,
            None => SandboxScrape::default(),
        };
        self.metrics.observe_sandboxes(&scrape);
        let mut openmetrics = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut openmetrics, &self.registry)
        {
            // Only a formatter error, which writing to a String never is.
            warn!(%error, "cannot encode the agent's metrics");
        }
        let mut page = classic_text(&openmetrics);
        page.push_str(&scrape.text);
        page
    }

    async fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let liveness = match (request.uri().path(), &self.liveness) {
            ("/metrics", _) => None,
            ("/healthz", Some(liveness)) => Some(liveness),
            _ => return plain(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
        };
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        if let Some(liveness) = liveness {
            return match liveness.check() {
                Ok(()) => plain(StatusCode::OK, "ok\n"),
                Err(reason) => {
                    warn!(%reason, "liveness check failed");
                    plain(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
                }
            };
        }
        let mut response = Response::new(Full::new(Bytes::from(self.page().await)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
        response
    }
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves `GET /metrics` over plain HTTP/1.1 on `listener` until dropped.
pub async fn serve(listener: TcpListener, endpoint: Arc<MetricsEndpoint>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Waiting for a slot before accepting leaves the surplus in the
        // kernel's queue rather than in memory.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: pause rather than spin.
                warn!(%error, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.respond(&request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(%peer, %error, "metrics connection failed"),
                Err(_) => debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::probe::reason;

    fn outcomes(status: ProbeStatus, reason: &'static str) -> Vec<ProbeOutcome> {
        vec![
            ProbeOutcome::new(ProbeName::Kvm, status, reason, ""),
            ProbeOutcome::ok(ProbeName::Qemu, "QemuFound", ""),
        ]
    }

    async fn page(metrics: &AgentMetrics) -> String {
        MetricsEndpoint::new(metrics.clone(), None).page().await
    }

    fn value(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[tokio::test]
    async fn probe_work_stuck_past_its_deadline_shows_until_it_returns() {
        let metrics = AgentMetrics::default();
        let verdicts = Verdicts {
            kvm_capable: true,
            runtime_ready: true,
            kvm_failure: None,
        };
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck =
            crate::probe::run_blocking(ProbeName::Qemu, Duration::from_millis(20), move || {
                let _ = wait.recv();
                ProbeOutcome::ok(ProbeName::Qemu, "Late", "")
            })
            .await;
        assert_eq!(stuck.reason, reason::PROBE_TIMED_OUT);
        metrics.observe_cycle(&outcomes(ProbeStatus::Ok, "KvmWorks"), verdicts, &[]);
        let held = page(&metrics).await;
        let abandoned = value(&held, "kata_node_agent_abandoned_probe_work").unwrap();
        assert!(abandoned >= 1.0, "{held}");
        release.send(()).unwrap();
        drop(release);
    }

    #[tokio::test]
    async fn a_status_change_moves_both_series_and_failures_count_per_cycle() {
        let metrics = AgentMetrics::default();
        let verdicts = Verdicts {
            kvm_capable: true,
            runtime_ready: true,
            kvm_failure: None,
        };
        let durations = [(ProbeName::Kvm, Duration::from_millis(3))];
        metrics.observe_cycle(&outcomes(ProbeStatus::Ok, "KvmWorks"), verdicts, &durations);
        let first = page(&metrics).await;
        let status = |page: &str, status: &str| {
            value(
                page,
                &format!("kata_node_agent_probe_status{{probe=\"kvm\",status=\"{status}\"}}"),
            )
        };
        assert_eq!(status(&first, "ok"), Some(1.0), "{first}");
        assert_eq!(status(&first, "fail"), Some(0.0));
        assert_eq!(status(&first, "skip"), Some(0.0));
        assert_eq!(value(&first, "kata_node_agent_runtime_ready"), Some(1.0));
        assert_eq!(
            value(
                &first,
                "kata_node_agent_probe_duration_seconds{probe=\"kvm\"}"
            ),
            Some(0.003)
        );
        assert!(!first.contains("kata_node_agent_probe_failures_total{"));

        let failed = Verdicts {
            kvm_capable: false,
            runtime_ready: false,
            kvm_failure: Some(crate::probe::Evidence::Definitive),
        };
        for _ in 0..2 {
            metrics.observe_cycle(
                &outcomes(ProbeStatus::Fail, reason::KVM_DEVICE_MISSING),
                failed,
                &durations,
            );
        }
        let second = page(&metrics).await;
        assert_eq!(status(&second, "ok"), Some(0.0));
        assert_eq!(status(&second, "fail"), Some(1.0));
        assert_eq!(
            value(
                &second,
                &format!(
                    "kata_node_agent_probe_failures_total{{probe=\"kvm\",reason=\"{}\"}}",
                    reason::KVM_DEVICE_MISSING
                )
            ),
            Some(2.0)
        );
        assert_eq!(value(&second, "kata_node_agent_kvm_capable"), Some(0.0));
    }

    #[tokio::test]
    async fn sandbox_series_dropped_are_counted_by_reason_from_zero() {
        use crate::sandbox_metrics::SeriesDrops;
        let metrics = AgentMetrics::default();
        let series = |reason: &str| {
            format!("kata_node_agent_sandbox_series_dropped_total{{reason=\"{reason}\"}}")
        };
        let first = page(&metrics).await;
        for reason in DropReason::ALL {
            assert_eq!(
                value(&first, &series(reason.as_str())),
                Some(0.0),
                "{first}"
            );
        }
        metrics.observe_sandboxes(&SandboxScrape {
            dropped_series: SeriesDrops {
                family: 6,
                labels: 3,
                series_cap: 100,
            },
            ..SandboxScrape::default()
        });
        let second = page(&metrics).await;
        assert_eq!(value(&second, &series("family")), Some(6.0), "{second}");
        assert_eq!(value(&second, &series("labels")), Some(3.0));
        assert_eq!(value(&second, &series("series_cap")), Some(100.0));
    }

    #[tokio::test]
    async fn reports_and_connections_are_counted() {
        let metrics = AgentMetrics::default();
        metrics.observe_retry();
        metrics.observe_retry();
        metrics.set_connected(true);
        metrics.observe_report(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let text = page(&metrics).await;
        assert_eq!(value(&text, "kata_node_agent_reconnects_total"), Some(2.0));
        assert_eq!(value(&text, "kata_node_agent_connected"), Some(1.0));
        assert_eq!(
            value(&text, "kata_node_agent_reports_sent_total"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "kata_node_agent_last_report_timestamp_seconds"),
            Some(1.7e9)
        );
        assert_eq!(value(&text, "kata_node_agent_sandboxes_running"), Some(0.0));
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert!(
            types.contains(&"# TYPE kata_node_agent_reports_sent_total counter"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }
}
