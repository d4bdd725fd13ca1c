//! The coordinator's `/metrics`, scraped live from a running coordinator
//! after it reconciled a KataConfig, must pass Prometheus's own
//! `promtool check metrics` (text format, naming and help conventions, each
//! family once), say what the KataConfig's status says, and export every
//! coordinator name the dashboard may use (tests/monitoring/exported-metrics.txt).
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::path::Path;

use kata_coordinator::health::marks::MarkPolicy;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::{
    Agent, Coordinator, create_agent_identity, free_addr, uninstalled_host,
};
use kata_tests::eventually;
use kata_tests::http::http_get;
use kata_tests::pki::TlsFiles;
use serde_json::json;

/// The sum of every sample of `name` (whatever its labels) in the
/// coordinator's live scrape; an error when there is none.
async fn total(coordinator: &Coordinator, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(coordinator.metrics, "/metrics").await?;
    let values: Vec<f64> = body
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse().ok()
        })
        .collect();
    if values.is_empty() {
        return Err(format!("{name} not in /metrics"));
    }
    Ok(values.iter().sum())
}

/// The coordinator's names in tests/monitoring/exported-metrics.txt (the
/// node-agent's are checked by its own tests).
fn listed_coordinator_metrics() -> Vec<String> {
    let list = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/exported-metrics.txt");
    std::fs::read_to_string(&list)
        .unwrap_or_else(|e| panic!("{}: {e}", list.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| l.starts_with("kata_operator_"))
        .map(str::to_owned)
        .collect()
}

#[kata_test(requires(kata_tests::promtool::unavailable))]
async fn a_live_scrape_passes_promtool() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();
    // A host without KVM is enough: the agent reports, the node just is
    // not capable.
    let host = uninstalled_host(false).unwrap();
    cluster.simulator.register_host_root("w0", host.path());
    let files = TlsFiles::generate().unwrap();
    let grpc = free_addr().unwrap();
    let coordinator =
        Coordinator::start(client.clone(), &files, grpc, MarkPolicy::default()).unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let agent = Agent::start(&client, "w0", host.path(), grpc, &files, tokens.path())
        .await
        .unwrap();
    cluster.create_kataconfig("kc", json!({})).await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    // The KataConfig's state, as an admin's dashboard and alerts read it.
    eventually(
        "the KataConfig metrics follow the status",
        CONVERGE,
        || async {
            let installed = coordinator
                .metric("kata_operator_kataconfig_nodes{phase=\"installed\"}")
                .await?;
            let ready = coordinator
                .metric("kata_operator_kataconfig_condition{condition=\"Ready\"}")
                .await?;
            let in_progress = coordinator
                .metric("kata_operator_kataconfig_condition{condition=\"InProgress\"}")
                .await?;
            Ok(installed == 1.0 && ready == 1.0 && in_progress == 0.0)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        coordinator.metric("kata_operator_leader").await.unwrap(),
        1.0
    );
    assert!(
        total(&coordinator, "kata_operator_api_writes_total")
            .await
            .unwrap()
            > 0.0
    );
    for kind in [
        "KataConfig",
        "MachineConfigPool",
        "MachineConfig",
        "Node",
        "Event",
    ] {
        let series = format!("kata_operator_api_writes_total{{kind=\"{kind}\"}}");
        assert!(
            coordinator.metric(&series).await.unwrap() > 0.0,
            "an install writes {kind}"
        );
    }
    assert!(
        total(
            &coordinator,
            "kata_operator_reconcile_duration_seconds_count"
        )
        .await
        .unwrap()
            > 0.0,
        "every reconcile is timed"
    );
    // The agent was admitted, reported, then (nothing changing on its
    // host) sent heartbeats, 500 ms apart.
    eventually("the agent's reports counted by kind", CONVERGE, || async {
        let admitted = coordinator
            .metric("kata_operator_token_reviews_total{outcome=\"authenticated\"}")
            .await?;
        let timed = total(
            &coordinator,
            "kata_operator_token_review_duration_seconds_count",
        )
        .await?;
        let reports = coordinator
            .metric("kata_operator_reports_received_total{kind=\"report\"}")
            .await?;
        let heartbeats = coordinator
            .metric("kata_operator_reports_received_total{kind=\"heartbeat\"}")
            .await?;
        Ok(admitted >= 1.0 && timed >= 1.0 && reports >= 1.0 && heartbeats >= 1.0)
    })
    .await
    .unwrap();
    assert_eq!(
        coordinator
            .metric("kata_operator_token_reviews_total{outcome=\"error\"}")
            .await
            .unwrap(),
        0.0,
        "the API server answered every review"
    );

    let (status, body) = http_get(coordinator.metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let (ok, report) = kata_tests::promtool::run(&["check", "metrics"], &body).unwrap();
    eprintln!(
        "promtool check metrics: {}",
        if report.trim().is_empty() {
            "no problem"
        } else {
            report.trim()
        }
    );
    assert!(
        ok,
        "promtool rejects the scrape:\n{report}\n--- scrape ---\n{body}"
    );
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );

    // Every coordinator name the dashboard may use is a family here.
    let listed = listed_coordinator_metrics();
    assert!(
        !listed.is_empty(),
        "exported-metrics.txt lists no coordinator metric"
    );
    let missing: Vec<&String> = listed
        .iter()
        .filter(|name| !body.contains(&format!("# TYPE {name} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "listed in exported-metrics.txt but not exported: {missing:?}\n--- scrape ---\n{body}"
    );

    agent.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}
