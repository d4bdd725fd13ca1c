//! The coordinator's `/metrics`, scraped live from a running coordinator
//! after it reconciled a KataConfig, must pass Prometheus's own
//! `promtool check metrics` (text format, naming and help conventions, each
//! family once), and say what the KataConfig's status says.
#![allow(clippy::unwrap_used)]

use kata_coordinator::health::marks::MarkPolicy;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::{Coordinator, create_agent_identity, free_addr};
use kata_tests::operator::{eventually, http_get};
use kata_tests::pki::TlsFiles;
use serde_json::json;

#[tokio::test]
async fn a_live_scrape_passes_promtool() {
    if let Err(why) = kata_tests::promtool::promtool() {
        eprintln!("SKIPPED metrics_promtool: {why}");
        return;
    }
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();
    let files = TlsFiles::generate().unwrap();
    let coordinator = Coordinator::start(
        client.clone(),
        &files,
        free_addr().unwrap(),
        MarkPolicy::default(),
    )
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
        coordinator
            .metric("kata_operator_api_writes_total")
            .await
            .unwrap()
            > 0.0
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
    coordinator.stop().await.unwrap();
}
