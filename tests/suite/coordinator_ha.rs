//! Two coordinator replicas with leader election on a real Lease: only the
//! leader is ready, reconciles and serves agents; when it stops, the other
//! takes over and the agent reconnects to it through the "Service".
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::net::{SocketAddr, TcpListener};

use kata_tests::demo_world::{self, AGENT_ACCOUNT, AUDIENCE, NAMESPACE};
use std::time::Duration;

use kata_coordinator::app::RunOptions;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::leader::LeaseOptions;
use kata_coordinator::mco::names as mco;
use kata_node_agent::daemon::{AgentOptions, run_agent};
use kata_tests::api_objects::create_node;
use kata_tests::api_objects::pod_bound_token;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::eventually;
use kata_tests::host_root::FakeHost;
use kata_tests::http::http_get;
use kata_tests::http::scrape_metric;
use kata_tests::pki::TlsFiles;
use kube::api::Api;
use serde_json::json;
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_secs(3);

fn free_addr() -> SocketAddr {
    demo_world::free_addr().unwrap()
}

struct Replica {
    task: JoinHandle<()>,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

fn start_replica(client: kube::Client, identity: &str, tls: &TlsFiles) -> Replica {
    let (grpc, metrics) = (free_addr(), free_addr());
    let options = RunOptions {
        log_filter: None,
        heap: None,
        agents: Some(demo_world::agent_server_options(grpc, tls)),
        metrics_listen: metrics,
        operands: None,
        mark_policy: MarkPolicy::default(),
        leader_election: Some(LeaseOptions {
            namespace: NAMESPACE.into(),
            name: "kata-operator-coordinator".into(),
            identity: identity.into(),
            duration: LEASE,
            retry: Duration::from_millis(300),
        }),
    };
    let task = tokio::spawn(async move {
        let _ = kata_coordinator::app::run(client, options).await;
    });
    Replica {
        task,
        grpc,
        metrics,
    }
}

async fn is_ready(replica: &Replica) -> bool {
    matches!(http_get(replica.metrics, "/readyz").await, Ok((200, _)))
}

/// The Kubernetes Service in front of the replicas: each new connection goes
/// to a replica whose /readyz answers 200.
fn service(replicas: Vec<(SocketAddr, SocketAddr)>) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let replicas = replicas.clone();
            tokio::spawn(async move {
                for (grpc, metrics) in replicas {
                    if matches!(http_get(metrics, "/readyz").await, Ok((200, _)))
                        && let Ok(mut outbound) = tokio::net::TcpStream::connect(grpc).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[kata_test]
async fn standby_takes_over_when_the_leader_stops() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    let client = cluster.client.clone();
    demo_world::create_agent_identity(&client).await.unwrap();
    let tls = TlsFiles::generate().unwrap();
    let first = start_replica(client.clone(), "replica-a", &tls);
    eventually("replica-a leads and is ready", CONVERGE, || async {
        Ok(is_ready(&first).await)
    })
    .await
    .unwrap();
    let second = start_replica(client.clone(), "replica-b", &tls);
    let (service_addr, _service) = service(vec![
        (first.grpc, first.metrics),
        (second.grpc, second.metrics),
    ]);

    // The agent only knows the Service.
    let host = FakeHost::good();
    let token = pod_bound_token(
        &client,
        NAMESPACE,
        AGENT_ACCOUNT,
        "node-agent-w0",
        "w0",
        AUDIENCE,
    )
    .await
    .unwrap();
    let tokens = tempfile::tempdir().unwrap();
    std::fs::write(tokens.path().join("w0"), token).unwrap();
    let mut options = AgentOptions::new(
        format!("https://127.0.0.1:{}", service_addr.port()),
        &tls.ca,
        tokens.path().join("w0"),
        "w0",
        host.host_root(),
    );
    options.tls_server_name = Some("localhost".into());
    options.runner = FakeHost::runner_options();
    options.probe_interval = Duration::from_millis(200);
    let agent = tokio::spawn(run_agent(options, std::future::pending()));

    cluster.create_kataconfig("kc", json!({})).await;
    eventually(
        "the leader labels w0 and serves its agent",
        CONVERGE,
        || async {
            let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await == ["w0"];
            Ok(targeted
                && scrape_metric(first.metrics, "kata_operator_connected_agents").await? == 1.0)
        },
    )
    .await
    .unwrap();
    // The standby neither reports ready nor serves agents.
    assert!(
        !is_ready(&second).await,
        "the standby must report not ready"
    );
    assert!(
        tokio::net::TcpStream::connect(second.grpc).await.is_err(),
        "the standby must not serve agents"
    );

    // The leader dies without releasing the lease.
    first.task.abort();
    let _ = first.task.await;
    eventually("replica-b takes over", CONVERGE, || async {
        Ok(is_ready(&second).await)
    })
    .await
    .unwrap();
    eventually("the agent reconnects to replica-b", CONVERGE, || async {
        Ok(scrape_metric(second.metrics, "kata_operator_connected_agents").await? == 1.0)
    })
    .await
    .unwrap();
    // And the new leader reconciles: a worker added now is targeted.
    create_node(&client, "w1", &[WORKER]).await.unwrap();
    eventually("replica-b targets the new worker", CONVERGE, || async {
        Ok(cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await == ["w0", "w1"])
    })
    .await
    .unwrap();
    let lease =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), NAMESPACE)
            .get("kata-operator-coordinator")
            .await
            .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(
        spec.lease_transitions,
        Some(1),
        "one hand-over: from a to b"
    );
    agent.abort();
    second.task.abort();
}

/// The coordinator binary, leading, stops on SIGTERM within seconds with
/// status 0 and releases the Lease on its way out, so a standby takes over
/// at once instead of after the Lease expires.
#[kata_test]
async fn sigterm_releases_the_lease_and_exits_cleanly() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Namespace;
    use kata_tests::coordinator::CoordinatorProcess;
    use kata_tests::manifests::control_plane_with_operator_api;

    let plane = control_plane_with_operator_api().await.unwrap();
    let client = plane.client().await.unwrap();
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&Default::default(), &namespace)
        .await
        .unwrap();
    let mut coordinator =
        CoordinatorProcess::start(&plane, &["--leader-elect", "--identity", "replica-a"]).unwrap();
    let leases = Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    let holder = || async {
        leases
            .get_opt("kata-operator-coordinator")
            .await
            .map_err(|e| e.to_string())
            .map(|lease| lease.and_then(|l| l.spec?.holder_identity))
    };
    eventually("replica-a leads and is ready", CONVERGE, || async {
        let ready = matches!(coordinator.readyz().await, Ok((200, _)));
        Ok(ready && holder().await?.as_deref() == Some("replica-a"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", coordinator.log()));

    let (status, took) = coordinator
        .terminate(Duration::from_secs(20))
        .await
        .unwrap();
    println!("SIGTERM while holding the Lease: exited {status} after {took:?}");
    assert!(status.success(), "{status}\n{}", coordinator.log());
    assert_eq!(
        holder().await.unwrap(),
        None,
        "the Lease is released:\n{}",
        coordinator.log()
    );
}
