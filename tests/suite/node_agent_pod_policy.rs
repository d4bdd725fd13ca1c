//! deploy/base/node-agent-pod-policy.yaml on a real API server: the
//! node-agent's own pod (the DaemonSet's template, as written) is admitted,
//! and each way of widening what a pod in kata-operator gets from the host
//! is refused with the policy's message. Pods are created with dry-run,
//! which runs admission in full and stores nothing.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kata_tests::control_plane::ControlPlane;
use kata_tests::eventually;
use kata_tests::manifests::apply_objects;
use kata_tests::manifests::deploy_dir;
use kata_tests::manifests::read_manifests;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const NAMESPACE: &str = "kata-operator";

/// The DaemonSet's pod, as the DaemonSet controller would create it.
fn agent_pod() -> Value {
    let manifests = read_manifests(&deploy_dir().join("base/node-agent.yaml")).unwrap();
    let daemon_set = manifests
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "DaemonSet"))
        .unwrap();
    let template = &daemon_set.data["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kata-node-agent-x", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    })
}

/// Why the API server refused `pod` in the namespace, or `None` if it
/// admitted it.
async fn refusal(pods: &Api<Pod>, pod: &Value) -> Option<String> {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match pods.create(&dry_run, &pod).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(other) => panic!("{other}"),
    }
}

#[kata_test]
async fn only_the_agents_own_pod_shape_is_admitted() {
    let plane = ControlPlane::start().await.unwrap();
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "node-agent-pod-policy.yaml",
    ] {
        apply_objects(
            &plane,
            &read_manifests(&deploy_dir().join("base").join(file)).unwrap(),
        )
        .await
        .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(plane.client().await.unwrap(), NAMESPACE);

    let mut writable = agent_pod();
    writable["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = json!(false);
    // The policy takes effect once the API server has loaded it.
    eventually(
        "the policy to take effect",
        Duration::from_secs(30),
        || async { Ok(refusal(&pods, &writable).await.is_some()) },
    )
    .await
    .unwrap();

    let admitted = refusal(&pods, &agent_pod()).await;
    assert_eq!(admitted, None, "the DaemonSet's own pod is admitted");

    let mut elsewhere = agent_pod();
    elsewhere["spec"]["volumes"][0]["hostPath"]["path"] = json!("/etc");
    let mut second_host_path = agent_pod();
    second_host_path["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "var", "hostPath": {"path": "/var"}}));
    let mut implicit_write = agent_pod();
    implicit_write["spec"]["containers"][0]["volumeMounts"][0]
        .as_object_mut()
        .unwrap()
        .remove("readOnly");
    let mut sidecar = agent_pod();
    sidecar["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "name": "shell",
            "image": "registry.example/shell",
            "volumeMounts": [{"name": "host-root", "mountPath": "/host"}],
        }));
    let mut propagating = agent_pod();
    propagating["spec"]["containers"][0]["volumeMounts"][0]["mountPropagation"] =
        json!("Bidirectional");
    let mut host_network = agent_pod();
    host_network["spec"]["hostNetwork"] = json!(true);
    let mut host_pid = agent_pod();
    host_pid["spec"]["hostPID"] = json!(true);
    let mut other_account = agent_pod();
    other_account["spec"]["serviceAccountName"] = json!("kata-coordinator");
    let mut privileged_other = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "serviceAccountName": "kata-coordinator",
            "containers": [{
                "name": "c",
                "image": "registry.example/c",
                "securityContext": {"privileged": true},
            }],
        },
    });
    let only_the_agent = "only the kata-node-agent ServiceAccount may run privileged";
    let read_only = "every mount of a hostPath volume in kata-operator must be readOnly: true";
    for (what, pod, message) in [
        ("a mount made writable", &writable, read_only),
        ("readOnly left out", &implicit_write, read_only),
        ("a sidecar mounting the host", &sidecar, read_only),
        ("Bidirectional propagation", &propagating, read_only),
        (
            "another host path",
            &elsewhere,
            "the only hostPath volume allowed in kata-operator is the host root",
        ),
        (
            "a second hostPath volume",
            &second_host_path,
            "the only hostPath volume allowed in kata-operator is the host root",
        ),
        (
            "the host network",
            &host_network,
            "may not use the host's network, PID or IPC namespace",
        ),
        (
            "the host PID namespace",
            &host_pid,
            "may not use the host's network, PID or IPC namespace",
        ),
        (
            "the agent's pod under another account",
            &other_account,
            only_the_agent,
        ),
        (
            "privileged under another account",
            &privileged_other,
            only_the_agent,
        ),
    ] {
        let refused = refusal(&pods, pod).await;
        println!("{what}: {refused:?}");
        assert!(
            refused.as_deref().is_some_and(|m| m.contains(message)),
            "{what}: expected a refusal saying {message:?}, got {refused:?}"
        );
    }

    // An ordinary pod elsewhere in the namespace is not this policy's concern.
    privileged_other["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    assert_eq!(refusal(&pods, &privileged_other).await, None);
}
