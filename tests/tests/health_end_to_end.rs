//! The whole health channel on one machine: the coordinator (reconciler, gRPC
//! server, labeller) against the real API server, the MCO simulator rolling
//! the pool, and node-agents probing fake host roots and reporting over TLS
//! with pod-bound tokens.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::app::{AgentServerOptions, RunOptions};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::names;
use kata_node_agent::daemon::{AgentOptions, run_agent};
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::host_root::FakeHost;
use kata_tests::operator::{eventually, pod_bound_token, scrape_metric};
use kata_tests::pki::TlsFiles;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const AUDIENCE: &str = "kata-operator.openshift.io/node-agent";
const NAMESPACE: &str = "kata-operator";
const AGENT_ACCOUNT: &str = "kata-node-agent";
const GRACE: Duration = Duration::from_secs(3);

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A worker as it is before the extension: hardware and an ostree system,
/// no CRI-O drop-in, shim or QEMU (the MCO simulator installs them).
fn uninstalled_host(kvm: bool) -> FakeHost {
    let host = FakeHost::good()
        .without_drop_in()
        .without_kata_shim()
        .without_kata_config()
        .without_qemu()
        .without_extension();
    if kvm {
        host.with_real_kvm().unwrap()
    } else {
        host
    }
}

struct Coordinator {
    task: JoinHandle<()>,
    metrics: SocketAddr,
}

impl Coordinator {
    fn start(client: Client, files: &TlsFiles, grpc: SocketAddr) -> Coordinator {
        let metrics = free_addr();
        let options = RunOptions {
            leader_election: None,
            agents: Some(AgentServerOptions {
                listen: grpc,
                tls_cert_file: files.cert.clone(),
                tls_key_file: files.key.clone(),
                audience: AUDIENCE.into(),
                namespace: NAMESPACE.into(),
                service_account: AGENT_ACCOUNT.into(),
                heartbeat: Duration::from_millis(500),
            }),
            metrics_listen: metrics,
            mark_policy: MarkPolicy {
                grace: GRACE,
                hold_down: Duration::from_secs(5),
            },
        };
        let task = tokio::spawn(async move {
            kata_coordinator::app::run(client, options).await.unwrap();
        });
        Coordinator { task, metrics }
    }

    /// One metric's value from the coordinator's own `/metrics` endpoint.
    async fn metric(&self, name: &str) -> Result<f64, String> {
        scrape_metric(self.metrics, name).await
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start_agent(
    client: &Client,
    node: &str,
    host: &FakeHost,
    grpc: SocketAddr,
    files: &TlsFiles,
    tokens: &std::path::Path,
) -> Agent {
    let token = pod_bound_token(
        client,
        NAMESPACE,
        AGENT_ACCOUNT,
        &format!("node-agent-{node}"),
        node,
        AUDIENCE,
    )
    .await
    .unwrap();
    let token_file = tokens.join(node);
    std::fs::write(&token_file, token).unwrap();
    let mut options = AgentOptions::new(
        format!("https://127.0.0.1:{}", grpc.port()),
        &files.ca,
        token_file,
        node,
        host.host_root(),
    );
    options.tls_server_name = Some("localhost".into());
    options.runner = FakeHost::runner_options();
    options.probe_interval = Duration::from_millis(200);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_agent(options, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Agent { stop, task }
}

async fn labelled(client: &Client, label: &str) -> Vec<String> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    nodes
        .items
        .iter()
        .filter(|n| n.labels().get(label).is_some_and(|v| v == "true"))
        .map(|n| n.name_any())
        .collect()
}

async fn ready_condition(client: &Client, node: &str) -> Option<(String, String, String)> {
    let node = Api::<Node>::all(client.clone()).get(node).await.ok()?;
    let c = node
        .status?
        .conditions?
        .into_iter()
        .find(|c| c.type_ == names::NODE_CONDITION)?;
    Some((
        c.status,
        c.reason.unwrap_or_default(),
        c.message.unwrap_or_default(),
    ))
}

#[tokio::test]
async fn agents_drive_labels_through_install_failure_silence_and_restart() {
    if !std::path::Path::new("/dev/kvm").exists() {
        println!("SKIP: this machine has no /dev/kvm, so no simulated node can be KVM-capable");
        return;
    }
    let cluster = Cluster::start(&[
        ("w-broken", &[WORKER]),
        ("w-kvm", &[WORKER]),
        ("w-nokvm", &[WORKER]),
    ])
    .await;
    let client = cluster.client.clone();
    let apply = |body: serde_json::Value| {
        let client = client.clone();
        async move {
            let kind = body["kind"].as_str().unwrap_or_default().to_string();
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match kind.as_str() {
                "Namespace" => Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
                    .patch(&name, &PatchParams::apply("test"), &Patch::Apply(&body))
                    .await
                    .map(|_| ()),
                _ => {
                    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client, NAMESPACE)
                        .patch(&name, &PatchParams::apply("test"), &Patch::Apply(&body))
                        .await
                        .map(|_| ())
                }
            }
            .unwrap();
        }
    };
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})).await;
    apply(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_ACCOUNT}}),
    )
    .await;

    let hosts = [
        ("w-broken", uninstalled_host(true)),
        ("w-kvm", uninstalled_host(true)),
        ("w-nokvm", uninstalled_host(false)),
    ];
    for (node, host) in &hosts {
        cluster.simulator.register_host_root(node, host.path());
    }
    let files = TlsFiles::generate().unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let grpc = free_addr();
    let coordinator = Coordinator::start(client.clone(), &files, grpc);
    let mut agents = Vec::new();
    for (node, host) in &hosts {
        agents.push((
            node.to_string(),
            start_agent(&client, node, host, grpc, &files, tokens.path()).await,
        ));
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
    let (status, _, message) = ready_condition(&client, "w-nokvm").await.unwrap();
    assert_eq!(status, "False");
    assert!(
        message.starts_with("kvm:"),
        "the first failing probe is named: {message}"
    );
    assert_eq!(ready_condition(&client, "w-kvm").await.unwrap().0, "True");

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
    let (status, _, message) = ready_condition(&client, "w-broken").await.unwrap();
    assert_eq!(status, "False");
    assert!(message.starts_with("crio-drop-in:"), "{message}");
    assert!(
        labelled(&client, names::KATA_CAPABLE_LABEL)
            .await
            .contains(&"w-broken".to_string())
    );

    // A silent agent: after the grace period, AgentNotReporting.
    let (_, silent) = agents.remove(1);
    let _ = silent.stop.send(());
    silent.task.await.unwrap();
    eventually("w-kvm reported as not reporting", CONVERGE, || async {
        let condition = ready_condition(&client, "w-kvm").await;
        Ok(condition
            .as_ref()
            .is_some_and(|c| c.1 == "AgentNotReporting")
            && labelled(&client, names::KATA_RUNTIME_LABEL)
                .await
                .is_empty())
    })
    .await
    .unwrap();

    // A restarted coordinator rebuilds its view without a single write.
    coordinator.stop().await;
    let before = labelled(&client, names::KATA_CAPABLE_LABEL).await;
    let coordinator = Coordinator::start(client.clone(), &files, grpc);
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
        ready_condition(&client, "w-kvm").await.unwrap().1,
        "AgentNotReporting"
    );

    for (_, agent) in agents {
        let _ = agent.stop.send(());
        agent.task.await.unwrap();
    }
    coordinator.stop().await;
}
