//! `node-agent check` end to end: exit codes, table and JSON, against fake
//! host roots built by the shared fixture builder.

use kata_test_harness::kata_test;
use std::process::{Command, Output};

use kata_node_agent::fixtures::{FakeHost, SIMULATED_STATUS_FILE};
use serde_json::Value;

fn node_agent(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args(args)
        .env_remove("NODE_AGENT_HOST_ROOT")
        .output()
        .expect("run node-agent")
}

fn check(host: &FakeHost, extra: &[&str]) -> Output {
    let mut args = host.check_args();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    node_agent(&args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).expect("check --json prints JSON")
}

#[kata_test]
fn help_works_and_usage_errors_are_not_verdicts() {
    let help = node_agent(&["--help".to_owned()]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("check"), "{}", stdout(&help));
    let wrong = node_agent(&["check".to_owned(), "--no-such-flag".to_owned()]);
    assert_eq!(
        wrong.status.code(),
        Some(64),
        "a typo must not read as 'not capable'"
    );
}

#[kata_test]
fn without_kvm_the_node_is_not_capable() {
    let output = check(&FakeHost::good(), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let table = stdout(&output);
    let kvm_line = table
        .lines()
        .find(|line| line.starts_with("kvm "))
        .expect("a kvm row");
    assert!(
        kvm_line.contains("FAIL") && kvm_line.contains("KvmDeviceMissing"),
        "{kvm_line}"
    );
    assert!(
        table.contains("kvm_capable:   no\nruntime_ready: no"),
        "{table}"
    );
}

#[kata_test]
fn json_shape() {
    let host = FakeHost::good();
    let output = check(&host, &["--json"]);
    let report = json(&output);
    let outcomes = report["outcomes"].as_array().expect("outcomes is an array");
    assert_eq!(outcomes.len(), 9);
    for outcome in outcomes {
        for field in ["name", "status", "reason", "message"] {
            assert!(outcome[field].is_string(), "{field} in {outcome}");
        }
        let status = outcome["status"].as_str().unwrap_or_default();
        assert!(
            ["OK", "WARN", "FAIL", "SKIP"].contains(&status),
            "{outcome}"
        );
    }
    assert_eq!(outcomes[0]["name"], "kvm");
    assert_eq!(report["verdicts"]["kvm_capable"], false);
    assert_eq!(report["verdicts"]["runtime_ready"], false);
    assert_eq!(report["host_root"], host.path().display().to_string());
}

#[kata_test]
fn with_real_kvm_ready_and_reboot_pending() {
    let host = FakeHost::good().with_real_kvm().unwrap_or_else(|err| {
        kata_test_harness::skip(format!(
            "no usable /dev/kvm to mirror into a fake root ({err})"
        ))
    });
    let ready = check(&host, &["--json"]);
    assert_eq!(ready.status.code(), Some(0), "{}", stdout(&ready));
    assert_eq!(json(&ready)["verdicts"]["runtime_ready"], true);

    let pending = check(&host.staged_only_extension(), &[]);
    assert_eq!(pending.status.code(), Some(1), "{}", stdout(&pending));
    assert!(stdout(&pending).contains("RebootPending"));
}

#[kata_test]
fn the_host_root_can_come_from_the_environment() {
    let host = FakeHost::good().without_qemu();
    let output = Command::new(env!("CARGO_BIN_EXE_node-agent"))
        .args([
            "check",
            "--json",
            "--rpm-ostree-status-file",
            SIMULATED_STATUS_FILE,
        ])
        .env("NODE_AGENT_HOST_ROOT", host.path())
        .output()
        .expect("run node-agent");
    let report = json(&output);
    assert_eq!(report["host_root"], host.path().display().to_string());
    let qemu = &report["outcomes"][3];
    assert_eq!(
        (qemu["name"].as_str(), qemu["reason"].as_str()),
        (Some("qemu"), Some("QemuMissing"))
    );
}
