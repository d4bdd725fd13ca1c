//! The whole health channel on one machine: the coordinator (reconciler, gRPC
//! server, labeller) against the real API server, the MCO simulator rolling
//! the pool, and node-agents probing fake host roots and reporting over TLS
//! with pod-bound tokens.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::{
    Agent, Coordinator, create_agent_identity, free_addr, nodes_labelled, ready_condition,
    uninstalled_host,
};
use kata_tests::eventually;
use kata_tests::pki::TlsFiles;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::json;

const GRACE: Duration = Duration::from_secs(3);

fn start_coordinator(client: &Client, files: &TlsFiles, grpc: std::net::SocketAddr) -> Coordinator {
    let policy = MarkPolicy {
        grace: GRACE,
        hold_down: Duration::from_secs(5),
        // Short dwells: this test is about the labels following the agents,
        // not about how long a verdict must hold (eligibility_dwell is).
        join_dwell: Duration::from_secs(2),
        leave_dwell: Duration::from_secs(2),
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    };
    Coordinator::start(client.clone(), files, grpc, policy).unwrap()
}

async fn labelled(client: &Client, label: &str) -> Vec<String> {
    nodes_labelled(client, label).await.unwrap()
}

// Without /dev/kvm no simulated node can be KVM-capable.
#[kata_test(requires(kata_test_harness::requirement::kvm))]
async fn agents_drive_labels_through_install_failure_silence_and_restart() {
    let cluster = Cluster::start(&[
        ("w-broken", &[WORKER]),
        ("w-kvm", &[WORKER]),
        ("w-nokvm", &[WORKER]),
    ])
    .await;
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();

    let hosts = [
        ("w-broken", uninstalled_host(true).unwrap()),
        ("w-kvm", uninstalled_host(true).unwrap()),
        ("w-nokvm", uninstalled_host(false).unwrap()),
    ];
    for (node, host) in &hosts {
        cluster.simulator.register_host_root(node, host.path());
    }
    let files = TlsFiles::generate().unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let grpc = free_addr().unwrap();
    let coordinator = start_coordinator(&client, &files, grpc);
    let mut agents = Vec::new();
    for (node, host) in &hosts {
        agents.push(
            Agent::start(&client, node, host.path(), grpc, &files, tokens.path())
                .await
                .unwrap(),
        );
    }

    cluster
        .create_kataconfig("kc", json!({"checkNodeEligibility": true}))
        .await;
    let both = vec!["w-broken".to_string(), "w-kvm".to_string()];
    eventually("the capable nodes runtime-ready", CONVERGE, || async {
        let ready = labelled(&client, names::KATA_RUNTIME_LABEL).await;
        if ready == both {
            Ok(true)
        } else {
            Err(format!("runtime-ready: {ready:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        labelled(&client, names::KATA_CAPABLE_LABEL).await,
        both,
        "only the KVM nodes are capable"
    );
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let (status, _, message) = ready_condition(&client, "w-nokvm").await.unwrap().unwrap();
    assert_eq!(status, "False");
    assert!(
        message.starts_with("kvm:"),
        "the first failing probe is named: {message}"
    );
    assert_eq!(
        ready_condition(&client, "w-kvm").await.unwrap().unwrap().0,
        "True"
    );

    // The RuntimeClass selects exactly the runtime-ready nodes.
    let rc = Api::<RuntimeClass>::all(client.clone())
        .get("kata")
        .await
        .unwrap();
    let selector = rc.scheduling.unwrap().node_selector.unwrap();
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let selected: Vec<String> = nodes
        .items
        .iter()
        .filter(|n| selector.iter().all(|(k, v)| n.labels().get(k) == Some(v)))
        .map(|n| n.name_any())
        .collect();
    assert_eq!(selected, both);

    // A broken drop-in takes the runtime label away, not the capability.
    std::fs::write(
        hosts[0].1.path().join("etc/crio/crio.conf.d/50-kata"),
        "[crio.runtime.runtimes.kata\nruntime_path = ",
    )
    .unwrap();
    eventually("w-broken loses the runtime label", CONVERGE, || async {
        Ok(labelled(&client, names::KATA_RUNTIME_LABEL).await == ["w-kvm"])
    })
    .await
    .unwrap();
    // The condition is written after the labels, in the same scan.
    eventually(
        "w-broken's condition names the drop-in",
        CONVERGE,
        || async {
            let condition = ready_condition(&client, "w-broken")
                .await
                .map_err(|e| e.to_string())?;
            Ok(condition.is_some_and(|(status, _, message)| {
                status == "False" && message.starts_with("crio-drop-in:")
            }))
        },
    )
    .await
    .unwrap();
    assert!(
        labelled(&client, names::KATA_CAPABLE_LABEL)
            .await
            .contains(&"w-broken".to_string())
    );

    // The KataConfig status names the targeted node that is not healthy.
    eventually(
        "the KataConfig names w-broken as not runtime-ready",
        CONVERGE,
        || async {
            let status = cluster
                .configs()
                .get("kc")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let listed = status.kata_nodes.not_runtime_ready;
            Ok(listed.len() == 1
                && listed[0].name == "w-broken"
                && listed[0].error.contains("crio-drop-in:"))
        },
    )
    .await
    .unwrap();

    // A node that loses KVM loses its capability and leaves the target set.
    std::fs::remove_file(hosts[0].1.path().join("dev/kvm")).unwrap();
    eventually("w-broken leaves the target set", CONVERGE, || async {
        let capable = labelled(&client, names::KATA_CAPABLE_LABEL).await;
        let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
        Ok(capable == ["w-kvm"] && targeted == ["w-kvm"])
    })
    .await
    .unwrap();
    eventually(
        "w-broken's condition says KvmDeviceMissing",
        CONVERGE,
        || async {
            let condition = ready_condition(&client, "w-broken")
                .await
                .map_err(|e| e.to_string())?;
            Ok(condition.is_some_and(|(_, reason, _)| reason == "KvmDeviceMissing"))
        },
    )
    .await
    .unwrap();

    // A silent agent: after the grace period, AgentNotReporting.
    let silent = agents.remove(1);
    assert_eq!(silent.node, "w-kvm");
    silent.stop().await.unwrap();
    eventually("w-kvm reported as not reporting", CONVERGE, || async {
        let condition = ready_condition(&client, "w-kvm").await.unwrap();
        Ok(condition
            .as_ref()
            .is_some_and(|c| c.1 == "AgentNotReporting")
            && labelled(&client, names::KATA_RUNTIME_LABEL)
                .await
                .is_empty())
    })
    .await
    .unwrap();

    // Let the first coordinator finish what is under way (the MCO rolls
    // w-broken back to the worker configuration, its agent re-probes and
    // its condition changes once more) so the restart below finds nothing
    // left to write: quiet for two seconds.
    eventually("the coordinator quiet", CONVERGE, || async {
        let before = coordinator.metric("kata_operator_api_writes_total").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(coordinator.metric("kata_operator_api_writes_total").await? == before)
    })
    .await
    .unwrap();

    // Each check-in is a new connection, and all but an agent's first
    // resume TLS from the last one's session ticket.
    let handshakes = |kind: &'static str| {
        let coordinator = &coordinator;
        async move {
            coordinator
                .metric(&format!(
                    "kata_operator_tls_handshakes_total{{kind=\"{kind}\"}}"
                ))
                .await
                .unwrap()
        }
    };
    let (full, resumed) = (handshakes("full").await, handshakes("resumed").await);
    println!("TLS handshakes so far: {full} full, {resumed} resumed");
    assert!(
        full >= 1.0,
        "an agent's first check-in sends the certificate"
    );
    assert!(
        resumed > full,
        "later check-ins resume: {full} full, {resumed} resumed"
    );

    // A restarted coordinator rebuilds its view without a single write.
    coordinator.stop().await.unwrap();
    let before = labelled(&client, names::KATA_CAPABLE_LABEL).await;
    let coordinator = start_coordinator(&client, &files, grpc);
    eventually("both remaining agents reconnected", CONVERGE, || async {
        Ok(coordinator.metric("kata_operator_connected_agents").await? == 2.0)
    })
    .await
    .unwrap();
    tokio::time::sleep(GRACE + Duration::from_secs(2)).await;
    let writes = coordinator
        .metric("kata_operator_api_writes_total")
        .await
        .unwrap();
    println!("API writes by the restarted coordinator: {writes}");
    assert_eq!(writes, 0.0, "a restart rewrites nothing");
    assert_eq!(labelled(&client, names::KATA_CAPABLE_LABEL).await, before);
    assert_eq!(
        ready_condition(&client, "w-kvm").await.unwrap().unwrap().1,
        "AgentNotReporting"
    );

    for agent in agents {
        agent.stop().await.unwrap();
    }
    coordinator.stop().await.unwrap();
}
