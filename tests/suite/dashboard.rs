//! The OpenShift console dashboard in deploy/monitoring/dashboard.yaml: a
//! ConfigMap the console finds (namespace, label, one JSON value), panels of
//! the kinds the console draws, every query valid PromQL by Prometheus's
//! own promtool, and every metric a query names one the binaries export
//! (tests/monitoring/exported-metrics.txt).
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The panel types the console's dashboards draw (openshift/monitoring-plugin,
/// legacy-dashboards LegacyDashboard.tsx); it shows any other as an error.
const CONSOLE_PANEL_TYPES: &[&str] = &[
    "graph",
    "singlestat",
    "gauge",
    "table",
    "grafana-piechart-panel",
];

/// What the dashboard is for: each of these must be charted.
const REQUIRED_METRICS: &[&str] = &[
    "kata_operator_kataconfig_condition",
    "kata_operator_kataconfig_nodes",
    "kata_node_agent_probe_failures_total",
    "kata_node_agent_sandboxes_running",
    "kata_operator_connected_agents",
    "kata_operator_reconcile_errors_total",
    "kata_operator_api_writes_total",
];

/// The names in tests/monitoring/exported-metrics.txt.
fn exported_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo("tests/monitoring/exported-metrics.txt")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            line.starts_with("kata_operator_") || line.starts_with("kata_node_agent_"),
            "exported-metrics.txt: {line:?} is not a kata_operator_ or kata_node_agent_ name"
        );
        assert!(
            line.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "exported-metrics.txt: {line:?} is not a metric name"
        );
        assert!(
            names.insert(line.to_owned()),
            "exported-metrics.txt lists {line} twice"
        );
    }
    names
}

/// The `kata_…` identifiers in a PromQL expression. Label values and
/// strings hold none (the repository's label values use `-`, not `_`, after
/// `kata`), so every one is a metric name.
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("kata_") && (i == 0 || !is_ident(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !is_ident(bytes[j]))
                .unwrap_or(bytes.len());
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Whether `name` is an exported family, or a histogram's series of one.
fn is_exported(name: &str, exported: &BTreeSet<String>) -> bool {
    exported.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| exported.contains(base))
        })
}

/// Runs `promtool check rules` on the expressions written as recording
/// rules: Prometheus's parser and its rule checks, one file for all.
fn promtool_check(exprs: &[(String, String)]) -> Result<String, String> {
    let rules: Vec<Value> = exprs
        .iter()
        .map(|(record, expr)| serde_json::json!({"record": record, "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let (ok, report) =
        kata_tests::promtool::run(&["check", "rules", path.to_str().unwrap()], "").unwrap();
    if ok { Ok(report) } else { Err(report) }
}

/// The ConfigMap, and its one dashboard parsed.
fn dashboard() -> (serde_yaml::Value, Value) {
    let path = repo("deploy/monitoring/dashboard.yaml");
    let config_map: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let data = config_map["data"]
        .as_mapping()
        .expect("the ConfigMap has data");
    // The console parses the first data value only.
    assert_eq!(data.len(), 1, "one dashboard per ConfigMap");
    let (key, json) = data.iter().next().unwrap();
    assert!(key.as_str().unwrap().ends_with(".json"), "{key:?}");
    let board: Value = serde_json::from_str(json.as_str().unwrap())
        .unwrap_or_else(|e| panic!("{key:?} is not JSON: {e}"));
    (config_map, board)
}

/// Every panel of every row, with the row's title.
fn panels(board: &Value) -> Vec<(&str, &Value)> {
    let rows = board["rows"].as_array().expect("the dashboard has rows");
    assert!(!rows.is_empty());
    rows.iter()
        .flat_map(|row| {
            let title = row["title"].as_str().expect("every row has a title");
            let panels = row["panels"].as_array().expect("every row has panels");
            assert!(!panels.is_empty(), "row {title} has no panels");
            panels.iter().map(move |p| (title, p))
        })
        .collect()
}

#[kata_test]
fn the_console_finds_the_dashboard_and_can_draw_every_panel() {
    let (config_map, board) = dashboard();
    assert_eq!(config_map["apiVersion"].as_str(), Some("v1"));
    assert_eq!(config_map["kind"].as_str(), Some("ConfigMap"));
    // The console reads dashboards from this namespace, by this label.
    assert_eq!(
        config_map["metadata"]["namespace"].as_str(),
        Some("openshift-config-managed")
    );
    assert_eq!(
        config_map["metadata"]["labels"]["console.openshift.io/dashboard"].as_str(),
        Some("true"),
        "the label's value is the string \"true\""
    );
    assert!(!board["title"].as_str().unwrap().is_empty());

    let mut ids = BTreeSet::new();
    for (row, panel) in panels(&board) {
        let title = panel["title"].as_str().expect("every panel has a title");
        let kind = panel["type"].as_str().unwrap();
        assert!(
            CONSOLE_PANEL_TYPES.contains(&kind),
            "{row}/{title}: the console cannot draw a {kind} panel"
        );
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{row}/{title}: panel ids are unique"
        );
        let span = panel["span"].as_u64().unwrap();
        assert!((1..=12).contains(&span), "{row}/{title}: span {span}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{row}/{title}: no query");
        // These kinds draw the first query only.
        if ["singlestat", "gauge", "grafana-piechart-panel"].contains(&kind) {
            assert_eq!(targets.len(), 1, "{row}/{title}: one query");
        }
        if kind == "table" {
            assert!(
                panel["styles"].as_array().is_some_and(|s| !s.is_empty()),
                "{row}/{title}: a table needs styles for its columns"
            );
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(ref_ids.insert(target["refId"].as_str().unwrap()));
            assert!(!target["expr"].as_str().unwrap().trim().is_empty());
        }
    }
}

#[kata_test]
fn every_query_is_valid_promql_on_exported_metrics() {
    let exported = exported_metrics();
    let (_, board) = dashboard();
    let mut exprs = Vec::new();
    let mut used = BTreeSet::new();
    for (row, panel) in panels(&board) {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = metric_names(expr);
            assert!(
                !names.is_empty(),
                "{row}/{title}: {expr} reads no kata metric"
            );
            for name in names {
                assert!(
                    is_exported(&name, &exported),
                    "{row}/{title}: {name} is not in tests/monitoring/exported-metrics.txt"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                    .unwrap_or(&name)
                    .to_owned();
                used.insert(family);
            }
            let record = format!(
                "dashboard:panel_{}:{}",
                panel["id"],
                target["refId"].as_str().unwrap()
            );
            exprs.push((record, expr.to_owned()));
        }
    }
    for metric in REQUIRED_METRICS {
        assert!(used.contains(*metric), "no panel charts {metric}");
    }

    if let Err(why) = kata_tests::promtool::promtool() {
        kata_test_harness::skip(format!(
            "the dashboard's PromQL check (its metric names were checked): {why}"
        ));
    }
    // The checker rejects what it must: a broken query fails it.
    let broken = [("dashboard:broken".to_owned(), "sum(rate(x[5m])".to_owned())];
    assert!(
        promtool_check(&broken).is_err(),
        "promtool accepted an unbalanced expression"
    );
    match promtool_check(&exprs) {
        Ok(report) => {
            eprintln!("promtool check rules: {}", report.trim());
            assert!(
                report.contains(&format!("{} rules found", exprs.len())),
                "promtool checked every query: {report}"
            );
        }
        Err(report) => panic!("promtool check rules refused a dashboard query:\n{report}"),
    }
}

#[kata_test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(kata_operator_x_bucket[5m]))) \
             / on() kata_node_agent_y{job=\"kata-coordinator\"}"
        ),
        ["kata_operator_x_bucket", "kata_node_agent_y"]
    );
    assert!(metric_names("up{job=\"kata-coordinator\"}").is_empty());
    let exported = BTreeSet::from(["kata_operator_d_seconds".to_owned()]);
    assert!(is_exported("kata_operator_d_seconds_bucket", &exported));
    assert!(!is_exported("kata_operator_e_bucket", &exported));
}
