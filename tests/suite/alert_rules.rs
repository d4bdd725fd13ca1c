//! The alerting rules in deploy/monitoring/prometheus-rule.yaml, judged by
//! Prometheus's own promtool: `check rules` (valid PromQL, valid rule file)
//! and `test rules` (series in, alerts out: tests/monitoring/alerts-test.yaml).
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::path::Path;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Gives every expected alert without `exp_annotations` its rule's
/// annotations, which must then be free of templates.
fn with_rule_annotations(tests: &mut serde_yaml::Value, spec: &serde_yaml::Value) {
    let annotations_of = |alert: &str| {
        spec["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .find(|r| r["alert"].as_str() == Some(alert))
            .map(|r| r["annotations"].clone())
            .unwrap_or_else(|| panic!("no rule for alert {alert}"))
    };
    for test in tests["tests"].as_sequence_mut().unwrap() {
        for case in test["alert_rule_test"].as_sequence_mut().unwrap() {
            let alert = case["alertname"].as_str().unwrap().to_owned();
            for expected in case["exp_alerts"].as_sequence_mut().unwrap() {
                if expected.get("exp_annotations").is_none() {
                    let annotations = annotations_of(&alert);
                    assert!(
                        !serde_yaml::to_string(&annotations).unwrap().contains("{{"),
                        "{alert}: templated annotations must be spelled out in alerts-test.yaml"
                    );
                    expected["exp_annotations"] = annotations;
                }
            }
        }
    }
}

#[kata_test(requires(kata_tests::promtool::unavailable))]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rule: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/prometheus-rule.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["kind"].as_str(), Some("PrometheusRule"));
    // A PrometheusRule's spec is a Prometheus rule file.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    let tests_text = std::fs::read_to_string(repo("tests/monitoring/alerts-test.yaml")).unwrap();
    let mut tests: serde_yaml::Value = serde_yaml::from_str(&tests_text).unwrap();
    with_rule_annotations(&mut tests, &rule["spec"]);
    std::fs::write(
        dir.path().join("alerts-test.yaml"),
        serde_yaml::to_string(&tests).unwrap(),
    )
    .unwrap();

    let (ok, report) =
        kata_tests::promtool::run(&["check", "rules", rules.to_str().unwrap()], "").unwrap();
    eprintln!("promtool check rules: {}", report.trim());
    assert!(ok, "promtool check rules:\n{report}");

    let test_file = dir.path().join("alerts-test.yaml");
    let (ok, report) =
        kata_tests::promtool::run(&["test", "rules", test_file.to_str().unwrap()], "").unwrap();
    eprintln!("promtool test rules: {}", report.trim());
    assert!(ok, "promtool test rules:\n{report}");

    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in alerts {
        assert!(
            tests_text.matches(&format!("alertname: {alert}")).count() >= 2,
            "{alert} needs a firing and a quiet case in alerts-test.yaml"
        );
    }
}
