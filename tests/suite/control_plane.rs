//! Proves the local control plane is a real one: server-side apply, the
//! TokenRequest and TokenReview APIs with pod-bound tokens, and a teardown that
//! leaves no process behind whether the test passes, panics or is killed.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kata_tests::ControlPlane;
use kata_tests::child_process::is_alive;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

const AUDIENCE: &str = "kata-operator.test/agent";

#[kata_test]
async fn node_label_round_trips_through_server_side_apply() {
    let plane = ControlPlane::start().await.unwrap();
    let nodes: Api<Node> = Api::all(plane.client().await.unwrap());
    nodes
        .create(
            &PostParams::default(),
            &Node {
                metadata: ObjectMeta {
                    name: Some("worker-0".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "worker-0", "labels": { "example.com/role": "kata" } }
    });
    nodes
        .patch(
            "worker-0",
            &PatchParams::apply("harness-test"),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();

    let node = nodes.get("worker-0").await.unwrap();
    assert_eq!(
        node.metadata
            .labels
            .unwrap()
            .get("example.com/role")
            .map(String::as_str),
        Some("kata")
    );
    let managers: Vec<_> = node
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|f| f.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "harness-test"),
        "field manager recorded: {managers:?}"
    );

    // Applying without the label removes it: the field manager owned it.
    let without = serde_json::json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "worker-0" } });
    nodes
        .patch(
            "worker-0",
            &PatchParams::apply("harness-test"),
            &Patch::Apply(&without),
        )
        .await
        .unwrap();
    let node = nodes.get("worker-0").await.unwrap();
    assert!(
        !node
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("example.com/role")
    );
}

#[kata_test]
async fn pod_bound_token_is_verified_by_token_review_with_node_name() {
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    let ns = "agents";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<Node>::all(client.clone())
        .create(
            &PostParams::default(),
            &Node {
                metadata: ObjectMeta {
                    name: Some("worker-1".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("node-agent".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = kata_tests::api_objects::pod_bound_token(
        &client,
        ns,
        "node-agent",
        "node-agent-x",
        "worker-1",
        AUDIENCE,
    )
    .await
    .unwrap();

    let review = |audience: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.clone()),
            audiences: Some(vec![audience.into()]),
        },
        ..Default::default()
    };
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let status = reviews
        .create(&PostParams::default(), &review(AUDIENCE))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:agents:node-agent")
    );
    let extra: BTreeMap<String, Vec<String>> = user.extra.unwrap();
    assert_eq!(
        extra.get("authentication.kubernetes.io/node-name"),
        Some(&vec!["worker-1".to_string()])
    );
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["node-agent-x".to_string()])
    );

    let wrong = reviews
        .create(&PostParams::default(), &review("someone-else"))
        .await
        .unwrap()
        .status
        .unwrap();
    assert_ne!(
        wrong.authenticated,
        Some(true),
        "a token for another audience must not authenticate"
    );
}

#[kata_test]
async fn panicking_test_leaves_no_control_plane_process() {
    let (pids_tx, pids_rx) = std::sync::mpsc::channel();
    let outcome = tokio::spawn(async move {
        let plane = ControlPlane::start().await.unwrap();
        pids_tx.send(plane.pids()).unwrap();
        panic!("deliberate panic with a running control plane");
    })
    .await;
    assert!(outcome.unwrap_err().is_panic());
    let pids = pids_rx.recv().unwrap();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!is_alive(pid), "process {pid} outlived the panicking test");
    }
}

/// Run only as a child of `killed_test_binary_leaves_no_control_plane_process`:
/// starts a control plane, prints the pids, and waits to be killed.
#[kata_test(helper)]
async fn hold_control_plane_until_killed() {
    let plane = ControlPlane::start().await.unwrap();
    let pids: Vec<String> = plane.pids().iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[kata_test]
fn killed_test_binary_leaves_no_control_plane_process() {
    let mut child =
        kata_test_harness::child_command("control_plane::hold_control_plane_until_killed")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let pids: Vec<u32> = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("PIDS ")
                .map(|p| p.split(' ').map(|x| x.parse().unwrap()).collect())
        })
        .expect("the child printed its control plane's pids");
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| is_alive(p)));

    child.kill().unwrap(); // SIGKILL: no destructor runs in the child.
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in pids {
        assert!(
            !is_alive(pid),
            "process {pid} outlived the killed test binary"
        );
    }
}
