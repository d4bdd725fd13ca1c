//! `make demo` in its non-interactive mode: the demo binary brings up the
//! whole system in a temporary state directory, waits for the expected end
//! state, prints the `kubectl` tables and stops everything.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::process::Command;

#[kata_test]
fn demo_converges_and_prints_the_kubectl_tables() {
    let state = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--ci")
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    let kvm = !stdout.contains("NOTE:");
    for expected in [
        "==> converged",
        "$ kubectl get kataconfig,runtimeclass",
        "kataconfig.kataconfiguration.openshift.io/example-kataconfig",
        "$ kubectl get nodes -L feature.node.kubernetes.io/runtime.kata,node-role.kubernetes.io/kata-oc,katacontainers.io/kata-runtime",
        "RUNTIME.KATA",
        "export KUBECONFIG=",
        "check --host-root",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let table = stdout
        .split("$ kubectl get nodes")
        .nth(1)
        .unwrap_or_default();
    let row = |node: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no row for {node} in:\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // NAME STATUS ROLES AGE [labels...]: the node has no kubelet, so no
    // VERSION; each "true" is one of the kata labels.
    let trues = |node: &str| row(node).iter().filter(|c| *c == "true").count();
    assert_eq!(trues("worker-nokvm"), 0, "worker-nokvm is not capable");
    if kvm {
        assert!(stdout.contains("runtimeclass.node.k8s.io/kata"), "{stdout}");
        assert_eq!(trues("worker-kvm"), 2, "capable and runtime-ready");
        assert_eq!(trues("worker-broken"), 1, "capable, not runtime-ready");
        assert!(row("worker-broken").iter().any(|c| c.contains("kata-oc")));
        assert!(stdout.contains("crio-drop-in:"), "{stdout}");
    } else {
        println!("this machine gives no fake root a usable /dev/kvm: no node is capable");
        assert_eq!(trues("worker-kvm"), 0);
        assert_eq!(trues("worker-broken"), 0);
    }
    // Everything stopped: nothing left claims the state directory.
    assert!(!state.path().join("pid").exists());
}
