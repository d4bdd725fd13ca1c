//! With kubelets standing in: logs, metrics through port-forward and both
//! kinds of check.

use super::*;

/// A `kubectl` that answers, as a kubelet would, what only a kubelet can
/// (logs, exec, port-forward, here to `forward_port`) and hands everything
/// else to the real one. It refuses an exec or a port-forward other than
/// the ones the gather must make, and refuses the metrics proxy as a
/// NetworkPolicy would. A port-forward writes its pid to `pid_file`.
fn kubelet_standing_kubectl(dir: &Path, forward_port: u16, pid_file: &Path) {
    let real = binary_dir().unwrap().join("kubectl");
    let script = format!(
        r#"#!/usr/bin/env bash
set -euo pipefail
case "${{3:-}}" in
exec)
    want="-n {ns} exec {agent} -c node-agent -- node-agent check --json --host-root /host"
    [[ "$*" == "$want" ]] || {{ echo "unexpected exec: $*" >&2; exit 99; }}
    echo '{{"hostRoot":"/host","via":"exec"}}'
    exit 1 ;;
logs)
    case "$4" in
    kata-must-gather-check-*) echo '{{"hostRoot":"/host","via":"pod"}}' ;;
    *) if [[ " $* " == *" --previous "* ]]; then echo "previous run of $4/$6"; else echo "log of $4/$6"; fi ;;
    esac
    exit 0 ;;
port-forward)
    # To the test's HTTP server, as the kubelet would to the pod's port.
    [[ "$4 $5" == "pod/{coordinator} :8080" ]] || {{ echo "unexpected port-forward: $*" >&2; exit 99; }}
    echo "Forwarding from 127.0.0.1:{forward_port} -> 8080"
    echo $$ >"{pid_file}"
    exec sleep 300 ;;
esac
if [[ "${{1:-}} ${{2:-}}" == "get --raw" && "${{3:-}}" == */proxy/metrics ]]; then
    # What a NetworkPolicy admitting only Prometheus makes of the proxy.
    echo 'Error from server (ServiceUnavailable): the server is currently unable to handle the request' >&2
    exit 1
fi
exec {real} "$@"
"#,
        ns = contract::DEFAULT_NAMESPACE,
        agent = AGENT_POD,
        coordinator = COORDINATOR_POD,
        forward_port = forward_port,
        pid_file = pid_file.display(),
        real = real.display(),
    );
    let path = dir.join("kubectl");
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[kata_test]
async fn with_kubelets_the_gather_keeps_logs_metrics_and_both_kinds_of_check() {
    let plane = ControlPlane::start().await.unwrap();
    let client = populate(&plane).await;
    let bin = tempfile::tempdir().unwrap();
    // The coordinator's metrics port, reached through port-forward.
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward_port = metrics.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = metrics.accept().await.unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            request.push(byte[0]);
        }
        stream
            .write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n\
                  # TYPE kata_operator_leader gauge\nkata_operator_leader 1\n",
            )
            .await
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let pid_file = bin.path().join("port-forward.pid");
    kubelet_standing_kubectl(bin.path(), forward_port, &pid_file);
    // The check pod on worker-b ends as a kubelet would report a check that
    // found no KVM: Failed, exit status 2.
    let finish = |pod: Pod| {
        let pods = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap());
        async move {
            let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
                "name": "check", "ready": false, "restartCount": 0,
                "image": "image", "imageID": "",
                "state": {"terminated": {"exitCode": 2, "reason": "Error",
                    "startedAt": "2026-01-02T03:04:05Z", "finishedAt": "2026-01-02T03:04:06Z"}},
            }]}});
            pods.patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .unwrap();
        }
    };
    let run = run_gather(&plane, &client, bin.path(), finish).await;
    let out = &run.out;

    let errors = read(&out.join("gather-errors.log"));
    assert_eq!(errors, "", "nothing fails with kubelets");
    let mut expected = base_tree();
    for file in [
        format!("coordinator/{COORDINATOR_POD}/coordinator.log"),
        format!("coordinator/{COORDINATOR_POD}/coordinator.previous.log"),
        format!("coordinator/{COORDINATOR_POD}/metrics.txt"),
        format!("node-agent/{NODE_A}/node-agent.log"),
        format!("node-check/{NODE_A}.json"),
        format!("node-check/{NODE_B}.json"),
    ] {
        expected.insert(file);
    }
    assert_eq!(files(out), expected, "the output tree");
    assert_eq!(
        read(&out.join(format!("coordinator/{COORDINATOR_POD}/coordinator.log"))),
        format!("log of {COORDINATOR_POD}/coordinator\n")
    );
    assert_eq!(
        read(&out.join(format!(
            "coordinator/{COORDINATOR_POD}/coordinator.previous.log"
        ))),
        format!("previous run of {COORDINATOR_POD}/coordinator\n")
    );
    // The proxy refused, port-forward and bash's /dev/tcp fetched them.
    assert_eq!(
        read(&out.join(format!("coordinator/{COORDINATOR_POD}/metrics.txt"))),
        "# TYPE kata_operator_leader gauge\nkata_operator_leader 1\n"
    );
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /metrics HTTP/1.0\r\n"),
        "{request}"
    );
    assert!(run.stdout.contains(&format!(
        "metrics of pod/{COORDINATOR_POD} through port-forward"
    )));
    let forwarder: i32 = read(&pid_file).trim().parse().unwrap();
    assert!(
        !Path::new(&format!("/proc/{forwarder}")).exists(),
        "the port-forward was stopped"
    );
    for (node, via) in [(NODE_A, "exec"), (NODE_B, "pod")] {
        let report: Value =
            serde_json::from_str(&read(&out.join(format!("node-check/{node}.json")))).unwrap();
        assert_eq!(report["via"], via, "{node}");
    }
    let check_pod = run.check_pod.expect("a check pod for worker-b");
    let (check_namespace, check_pod) = (check_pod.namespace().unwrap(), check_pod.name_any());
    assert_eq!(
        read(&out.join("node-check/summary.txt")),
        format!(
            "{NODE_A} exit=1 (KVM-capable, runtime not ready) via exec pod/{AGENT_POD}\n\
             {NODE_B} exit=2 (not KVM-capable) via pod {check_namespace}/{check_pod}\n"
        )
    );
    let summary = read(&out.join("gather-summary.txt"));
    assert!(summary.contains(", 0 failed"), "{summary}");
    assert!(summary.contains("2 node(s), checked: 2"), "{summary}");
    // A finished pod is deleted at once, its namespace at the end.
    assert_checks_cleaned_up(&client).await;
}
