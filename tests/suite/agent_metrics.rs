//! The node-agent's `/metrics`, scraped over real HTTP from an agent that
//! runs as `node-agent run` does ([`run_agent_with_status`] with a metrics
//! address), reports to the coordinator's real health service, and probes a
//! fake host root holding fake Kata sandboxes whose shims answer on their
//! monitor sockets: the page passes `promtool check metrics`, and its
//! figures follow the host and the stream.
//!
//! Timing is never asserted: waits poll the page, with a timeout only to
//! turn a hang into a failure.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::net::SocketAddr;
use std::time::Duration;

use kata_coordinator::health::HealthOptions;
use kata_node_agent::daemon::{AgentOptions, AgentStatus, Backoff, run_agent_with_status};
use kata_tests::eventually;
use kata_tests::health_fixture::{AGENT_SA, AUDIENCE, HealthFixture, NODE_A, SERVER_NAME};
use kata_tests::host_root::{
    DROP_IN_DIR, FakeHost, HOSTILE_PAGE_OVER_CAP, hostile_shim_page, sandbox_id, shim_metrics_page,
};
use kata_tests::http::http_get;
use kata_tests::http::metric_value;
use tokio::sync::{oneshot, watch};

const PATIENCE: Duration = Duration::from_secs(30);

/// Families relayed from the fixture shims; the lint problems promtool
/// finds in their upstream names are Kata's (see `check_with_promtool`).
const RELAYED_PREFIXES: [&str; 4] = [
    "kata_shim_",
    "kata_hypervisor_",
    "kata_agent_",
    "kata_guest_",
];

/// The value of one series (its name with labels, as written) on a page.
fn value(page: &str, series: &str) -> Option<f64> {
    metric_value(page, series).ok()
}

async fn scrape(address: SocketAddr) -> String {
    let (status, body) = http_get(address, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the page until `check` finds what it wants in it.
async fn page_where(address: SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    eventually(what, PATIENCE, || async {
        let page = http_get(address, "/metrics").await?.1;
        Ok(check(&page))
    })
    .await
    .unwrap();
    scrape(address).await
}

/// promtool on the page. The agent's own families must pass every check.
/// The whole page must parse and hold each family and series once; the
/// only lint problems allowed are on the relayed Kata families, whose names
/// are upstream's (`kata_agent_scrape_count` is a counter without `_total`,
/// `*_histogram_milliseconds`) and relayed as `kata-monitor` serves them,
/// so Kata's own dashboards keep working. Returns false when promtool is
/// not available.
fn check_with_promtool(page: &str) -> bool {
    if let Err(why) = kata_tests::promtool::promtool() {
        eprintln!("SKIPPED the promtool checks of agent_metrics: {why}");
        return false;
    }
    let own: String = page
        .lines()
        .filter(|line| {
            let name = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
                .unwrap_or(line);
            name.starts_with("kata_node_agent_")
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let (ok, report) = kata_tests::promtool::run(&["check", "metrics"], &own).unwrap();
    assert!(
        ok,
        "promtool on the agent's own families:\n{report}\n--- page ---\n{own}"
    );

    let (ok, report) = kata_tests::promtool::run(&["check", "metrics"], page).unwrap();
    for problem in report.lines().filter(|line| !line.trim().is_empty()) {
        let upstream_name = RELAYED_PREFIXES
            .iter()
            .any(|prefix| problem.starts_with(prefix))
            && !problem.contains("not unique")
            && !problem.contains("error");
        assert!(upstream_name, "promtool: {problem}\n--- page ---\n{page}");
    }
    eprintln!(
        "promtool check metrics: the agent's families pass; the whole page {}",
        if ok {
            "passes".to_owned()
        } else {
            format!(
                "parses, with lint problems only in Kata's names:\n{}",
                report.trim()
            )
        }
    );
    true
}

/// The `kata_node_agent_*` names the dashboard may use, from the list the
/// monitoring files are checked against.
fn exported_agent_names() -> Option<Vec<String>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/monitoring/exported-metrics.txt"
    );
    let text = std::fs::read_to_string(path)
        .map_err(|err| eprintln!("NOTE: {path}: {err}; no name list to check against"))
        .ok()?;
    Some(
        text.lines()
            .map(str::trim)
            .filter(|line| line.starts_with("kata_node_agent_"))
            .map(str::to_owned)
            .collect(),
    )
}

#[kata_test]
async fn the_agents_metrics_follow_the_host_and_relay_the_sandboxes() {
    let fixture = HealthFixture::start_with(HealthOptions {
        heartbeat_interval: Duration::from_secs(3600),
        ..HealthOptions::default()
    })
    .await;
    // Two live sandboxes, one whose shim is gone, and one whose guest is
    // hostile.
    let host = FakeHost::good().dead_kata_sandbox(&sandbox_id(3));
    let shims = [
        host.kata_sandbox(&sandbox_id(1), shim_metrics_page(11)),
        host.kata_sandbox(&sandbox_id(2), shim_metrics_page(12)),
        host.kata_sandbox(&sandbox_id(4), hostile_shim_page(14)),
    ];
    let files = tempfile::tempdir().unwrap();
    let ca = files.path().join("ca.crt");
    let token = files.path().join("token");
    std::fs::write(&ca, &fixture.ca_pem).unwrap();
    let agent_token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    std::fs::write(&token, agent_token).unwrap();

    let mut options = AgentOptions::new(fixture.url(), &ca, &token, NODE_A, host.host_root());
    options.tls_server_name = Some(SERVER_NAME.to_owned());
    options.runner = FakeHost::runner_options();
    options.probe_interval = Duration::from_millis(200);
    options.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        ..Backoff::default()
    };
    options.metrics_address = Some("127.0.0.1:0".parse().unwrap());
    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent_with_status(options, status_tx, async {
        let _ = stopped.await;
    }));
    let address = tokio::time::timeout(
        PATIENCE,
        status.wait_for(|s| s.metrics_address.is_some() && s.reports_sent >= 1),
    )
    .await
    .expect("the agent never listened and reported")
    .unwrap()
    .metrics_address
    .unwrap();

    let drop_in_ok = "kata_node_agent_probe_status{probe=\"crio-drop-in\",status=\"ok\"}";
    let drop_in_fail = "kata_node_agent_probe_status{probe=\"crio-drop-in\",status=\"fail\"}";
    let first = page_where(address, "a first report on the page", |page| {
        value(page, "kata_node_agent_reports_sent_total").is_some_and(|sent| sent >= 1.0)
    })
    .await;
    assert_eq!(value(&first, drop_in_ok), Some(1.0), "{first}");
    assert_eq!(value(&first, drop_in_fail), Some(0.0));
    assert_eq!(value(&first, "kata_node_agent_connected"), Some(1.0));
    assert_eq!(
        http_get(address, "/healthz").await.unwrap(),
        (200, "ok\n".to_owned()),
        "a reporting agent is alive"
    );
    assert!(value(&first, "kata_node_agent_last_report_timestamp_seconds").unwrap() > 1.0e9);
    assert!(
        value(
            &first,
            "kata_node_agent_probe_duration_seconds{probe=\"kvm\"}"
        )
        .is_some()
    );
    assert_eq!(
        value(&first, "kata_node_agent_sandboxes_running"),
        Some(4.0),
        "every sandbox directory, the dead and the hostile one included"
    );
    assert!(value(&first, "kata_node_agent_sandbox_scrape_errors_total").unwrap() >= 1.0);
    for (n, threads) in [(1, 11), (2, 12), (4, 14)] {
        let series = format!("kata_shim_threads{{sandbox_id=\"{}\"}}", sandbox_id(n));
        assert_eq!(value(&first, &series), Some(f64::from(threads)), "{first}");
    }
    // The hostile page is the same at every scrape, and each scrape drops
    // from it 6 series as family, 3 as labels and the flood past the cap
    // (see `hostile_shim_page`); the fixture shims' pages lose none.
    let dropped = |reason: &str| {
        let series = format!("kata_node_agent_sandbox_series_dropped_total{{reason=\"{reason}\"}}");
        value(&first, &series).unwrap()
    };
    let scrapes = dropped("family") / 6.0;
    assert!(scrapes >= 1.0 && scrapes.fract() == 0.0, "{first}");
    assert_eq!(dropped("labels"), 3.0 * scrapes);
    assert_eq!(
        dropped("series_cap"),
        HOSTILE_PAGE_OVER_CAP as f64 * scrapes
    );
    for line in first.lines().filter(|l| l.starts_with("kata_node_agent_")) {
        assert!(!line.contains("sandbox_id="), "forged by a shim: {line}");
    }
    let relayed: Vec<&str> = first
        .lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with("kata_node_agent_"))
        .collect();
    assert!(!relayed.is_empty());
    for line in &relayed {
        assert!(line.contains("sandbox_id=\""), "without sandbox_id: {line}");
    }
    assert!(
        !first.contains("node=\""),
        "the PodMonitor adds node, not the agent"
    );
    let promtool_ran = check_with_promtool(&first);
    match exported_agent_names() {
        Some(names) => {
            for name in names {
                assert!(
                    first
                        .lines()
                        .any(|line| line.starts_with(&format!("# TYPE {name} "))),
                    "{name} is in tests/monitoring/exported-metrics.txt but not on the page:\n{first}"
                );
            }
        }
        None => eprintln!("NOTE: the exported names were not checked"),
    }

    // A broken drop-in: the status moves from ok to fail, the failure is
    // counted, and the change is reported.
    let sent_before = value(&first, "kata_node_agent_reports_sent_total").unwrap();
    let host = host.broken_drop_in();
    let broken = page_where(address, "the drop-in's failure on the page", |page| {
        value(page, drop_in_fail) == Some(1.0)
    })
    .await;
    assert_eq!(value(&broken, drop_in_ok), Some(0.0));
    assert_eq!(value(&broken, "kata_node_agent_runtime_ready"), Some(0.0));
    let failures_prefix = "kata_node_agent_probe_failures_total{probe=\"crio-drop-in\",reason=\"";
    let failures = |page: &str| -> f64 {
        page.lines()
            .filter(|line| line.starts_with(failures_prefix))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let failed_once = failures(&broken);
    assert!(failed_once >= 1.0, "{broken}");
    let later = page_where(address, "the failure counted again next cycle", |page| {
        failures(page) > failed_once
            && value(page, "kata_node_agent_reports_sent_total").is_some_and(|s| s > sent_before)
    })
    .await;
    if promtool_ran {
        check_with_promtool(&later);
    }

    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, agent)
        .await
        .expect("the agent did not stop")
        .unwrap()
        .unwrap();
    eventually(
        "the metrics port to close with the agent",
        PATIENCE,
        || async { Ok(http_get(address, "/metrics").await.is_err()) },
    )
    .await
    .unwrap();
    drop(shims);
    let _host = host.remove(&format!("{DROP_IN_DIR}/60-broken"));
    if let Err(why) = kata_tests::promtool::promtool() {
        kata_test_harness::skip(format!(
            "the promtool checks of the agent's page (everything else passed): {why}"
        ));
    }
}

/// The liveness probe's `/healthz` fails when the agent makes no progress:
/// here its connection attempt hangs on a peer that accepts TCP and never
/// answers the TLS handshake, longer than a 1 s stall limit. (The default
/// limit is never below two full reconnect attempts, so a coordinator that
/// is merely down does not restart the agents.)
#[kata_test]
async fn healthz_fails_with_the_reason_when_the_agent_makes_no_progress() {
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let coordinator = format!("https://{}", tarpit.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = tarpit.accept().await {
            held.push(socket);
        }
    });
    let host = FakeHost::good();
    let files = tempfile::tempdir().unwrap();
    let (ca, token) = (files.path().join("ca.crt"), files.path().join("token"));
    std::fs::write(
        &ca,
        kata_tests::pki::TestCa::new("tarpit").unwrap().cert_pem(),
    )
    .unwrap();
    std::fs::write(&token, "header.payload.signature").unwrap();
    let mut options = AgentOptions::new(coordinator, &ca, &token, NODE_A, host.host_root());
    options.runner = FakeHost::runner_options();
    options.connect_timeout = Duration::from_secs(600);
    options.liveness_stall_limit = Some(Duration::from_secs(1));
    options.metrics_address = Some("127.0.0.1:0".parse().unwrap());
    let (status_tx, mut status) = watch::channel(AgentStatus::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(run_agent_with_status(options, status_tx, async {
        let _ = stopped.await;
    }));
    let address = tokio::time::timeout(PATIENCE, status.wait_for(|s| s.metrics_address.is_some()))
        .await
        .unwrap()
        .unwrap()
        .metrics_address
        .unwrap();
    eventually("/healthz to fail", PATIENCE, || async {
        Ok(http_get(address, "/healthz").await?.0 == 503)
    })
    .await
    .unwrap();
    let (_, reason) = http_get(address, "/healthz").await.unwrap();
    assert!(
        reason.starts_with("no probe cycle and no connection attempt for "),
        "{reason}"
    );
    assert_eq!(
        status.borrow().connect_attempts,
        1,
        "still on its first attempt"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(PATIENCE, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    held.abort();
}
