use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A live scrape over HTTP, as Prometheus makes it.
async fn scrape(metrics: &Metrics) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let server = tokio::spawn(serve(listener, metrics.registry(), Readiness::default()));
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

#[tokio::test]
async fn every_metric_family_appears_once() {
    let metrics = Metrics::default();
    // A backend's kind, as the wiring names it.
    metrics.count_writes_to(&[crate::kind::Kind {
        group: "machineconfiguration.openshift.io",
        version: "v1",
        kind: "MachineConfig",
        plural: "machineconfigs",
    }]);
    metrics.api_writes.record("Node");
    metrics.api_writes.record("Event");
    metrics.api_writes.record("Event");
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
        body.contains("kata_operator_api_writes_total{kind=\"Node\"} 1")
            && body.contains("kata_operator_api_writes_total{kind=\"Event\"} 2")
            && body.contains("kata_operator_api_writes_total{kind=\"MachineConfig\"} 0"),
        "the write counter is exported by kind:\n{body}"
    );
    assert_eq!(metrics.api_writes.get(), 3, "the total spans the kinds");
    assert_eq!(metrics.api_writes.get_kind("Event"), 2);
    assert!(body.contains("kata_operator_reconcile_errors_total{category=\"apply\"} 1"));
}

/// The value of the sample `series` (name and labels, as scraped).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_health_channel_and_reconcile_families_exist_at_zero_and_move() {
    let metrics = Metrics::default();
    let before = scrape(&metrics).await;
    for series in [
        "kata_operator_reports_received_total{kind=\"report\"}",
        "kata_operator_reports_received_total{kind=\"heartbeat\"}",
        "kata_operator_token_reviews_total{outcome=\"authenticated\"}",
        "kata_operator_token_reviews_total{outcome=\"rejected\"}",
        "kata_operator_token_reviews_total{outcome=\"error\"}",
        "kata_operator_token_review_duration_seconds_count",
        "kata_operator_reconcile_duration_seconds_count",
    ] {
        assert_eq!(sample(&before, series), Some(0.0), "{series}:\n{before}");
    }
    for line in [
        "# TYPE kata_operator_token_review_duration_seconds histogram",
        "# TYPE kata_operator_reconcile_duration_seconds histogram",
        "# TYPE kata_operator_reports_received_total counter",
        "# TYPE kata_operator_token_reviews_total counter",
    ] {
        assert!(before.contains(line), "{line}:\n{before}");
    }

    metrics.report_received(REPORT_CHANGED);
    metrics.report_received(REPORT_HEARTBEAT);
    metrics.report_received(REPORT_HEARTBEAT);
    metrics.token_reviewed(REVIEW_ERROR, std::time::Duration::from_millis(20));
    metrics
        .reconcile_duration
        .0
        .observe(std::time::Duration::from_millis(30));
    let after = scrape(&metrics).await;
    let moved = |series: &str| sample(&after, series);
    assert_eq!(
        moved("kata_operator_reports_received_total{kind=\"heartbeat\"}"),
        Some(2.0)
    );
    assert_eq!(
        moved("kata_operator_reports_received_total{kind=\"report\"}"),
        Some(1.0)
    );
    assert_eq!(
        moved("kata_operator_token_reviews_total{outcome=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(
        moved("kata_operator_token_review_duration_seconds_bucket{le=\"0.032\"}"),
        Some(1.0),
        "20 ms lands in the bucket up to 32 ms:\n{after}"
    );
    assert_eq!(
        moved("kata_operator_reconcile_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(metrics.reconcile_duration.0.count(), 1);
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
    prometheus_client::encoding::text::encode(&mut body, &metrics.registry()).unwrap_or_default();
    assert!(!body.contains("phase=\"installed\""), "{body}");
}

/// The allocator's figures are read at each scrape, and the family is
/// absent where the binary's allocator keeps none.
#[tokio::test]
async fn the_heap_family_serves_the_allocators_figures_at_each_scrape() {
    static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn read() -> Option<HeapFigures> {
        let reads = READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Some(HeapFigures {
            allocated: reads * 1000,
            active: 2,
            resident: 3,
            metadata: 4,
        })
    }
    let metrics = Metrics {
        heap: Some(read),
        ..Metrics::default()
    };
    let series = |state: &str| format!("kata_operator_coordinator_heap_bytes{{state=\"{state}\"}}");
    let first = scrape(&metrics).await;
    let second = scrape(&metrics).await;
    let allocated = |body: &str| sample(body, &series("allocated")).expect("allocated bytes");
    assert!(allocated(&second) > allocated(&first), "{second}");
    for (state, bytes) in [("active", 2.0), ("resident", 3.0), ("metadata", 4.0)] {
        assert_eq!(sample(&second, &series(state)), Some(bytes), "{second}");
    }
    assert!(
        second.contains("# TYPE kata_operator_coordinator_heap_bytes gauge"),
        "{second}"
    );

    let without = scrape(&Metrics::default()).await;
    assert!(!without.contains("coordinator_heap"), "{without}");
}
