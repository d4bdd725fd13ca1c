//! Pool membership with `checkNodeEligibility` follows a sustained verdict
//! only, on the real control plane with the MCO simulator: a node whose
//! agent flaps is never labelled capable nor rolled; a node reported capable
//! for the join dwell joins once (one rollout), survives a flapping loss, and
//! leaves once after a sustained one; a loss of every node at once is held
//! by the fleet-wide brake. And a pool selector naming the
//! operator's own node labels is refused at admission.
//!
//! The agents are scripted streams on the real health channel, so each
//! verdict and its timing are the test's choice.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kata_coordinator::api::{KataConfig, OPERATOR_NODE_LABELS};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::health::marks::eligibility::ELIGIBILITY_DWELL;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    AgentMessage, HealthReport, Hello, ProbeOutcome, ProbeStatus, Verdicts, agent_message,
};
use kata_tests::api_objects::pod_bound_token;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::{
    AGENT_ACCOUNT, AUDIENCE, Coordinator, NAMESPACE, create_agent_identity, free_addr, node_states,
    ready_condition,
};
use kata_tests::eventually;
use kata_tests::pki::TlsFiles;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const JOIN: Duration = Duration::from_secs(6);
const LEAVE: Duration = Duration::from_secs(6);
/// How long a flapping agent holds each verdict: well inside either dwell,
/// and several of the labeller's scans, so every flip is seen.
const FLAP: Duration = Duration::from_millis(1500);
/// How often a scripted agent reports while its verdict stands.
const REPORT_EVERY: Duration = Duration::from_millis(300);

fn policy() -> MarkPolicy {
    MarkPolicy {
        // Long: the scripted agents never go quiet, and silence is not what
        // this test is about.
        grace: Duration::from_secs(60),
        hold_down: Duration::from_secs(5),
        join_dwell: JOIN,
        leave_dwell: LEAVE,
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    }
}

/// What a node without the Kata runtime installed reports: KVM usable or not.
fn report(sequence: u64, capable: bool) -> AgentMessage {
    let probes: &[(&str, ProbeStatus, &str, &str)] = if capable {
        &[
            ("kvm", ProbeStatus::Ok, "KvmUsable", "/dev/kvm usable"),
            (
                "extension",
                ProbeStatus::Fail,
                "ExtensionNotInstalled",
                "the sandboxed-containers extension is not installed",
            ),
        ]
    } else {
        &[(
            "kvm",
            ProbeStatus::Fail,
            "KvmDeviceMissing",
            "/dev/kvm is missing",
        )]
    };
    let outcomes = probes
        .iter()
        .map(|&(name, status, reason, message)| ProbeOutcome {
            status: status as i32,
            reason: reason.into(),
            message: message.into(),
            name: name.into(),
        })
        .collect();
    AgentMessage {
        message: Some(agent_message::Message::Report(HealthReport {
            sequence,
            outcomes,
            verdicts: Some(Verdicts {
                kvm_capable: capable,
                runtime_ready: false,
                ..Default::default()
            }),
            probed_at_unix_ms: 0,
        })),
    }
}

/// An agent stream whose verdict the test sets: it reports the verdict at
/// once when it changes, and every [`REPORT_EVERY`] while it stands.
struct ScriptedAgent {
    verdict: watch::Sender<bool>,
    tasks: [JoinHandle<()>; 2],
}

/// What `check` found once it found something (`eventually` itself only
/// says whether it did).
async fn found<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let slot = std::cell::RefCell::new(None);
    eventually(what, CONVERGE, || {
        let attempt = check();
        let slot = &slot;
        async move {
            let value = attempt.await?;
            *slot.borrow_mut() = Some(value);
            Ok(true)
        }
    })
    .await
    .unwrap();
    slot.into_inner().unwrap()
}

impl ScriptedAgent {
    async fn start(
        client: &Client,
        node: &str,
        grpc: SocketAddr,
        tls: &TlsFiles,
        capable: bool,
    ) -> Self {
        let pod = format!("node-agent-{node}");
        let token = pod_bound_token(client, NAMESPACE, AGENT_ACCOUNT, &pod, node, AUDIENCE)
            .await
            .unwrap();
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        let ca = std::fs::read_to_string(&tls.ca).unwrap();
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", grpc.port()))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name("localhost"),
            )
            .unwrap();
        let channel = found("the health channel accepts", || async {
            endpoint.connect().await.map_err(|e| e.to_string())
        })
        .await;
        let mut health =
            NodeHealthClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                Ok(request)
            });
        let (verdict, mut changes) = watch::channel(capable);
        let (outbound, queued) = mpsc::channel(8);
        let hello = AgentMessage {
            message: Some(agent_message::Message::Hello(Hello {
                node_name: node.into(),
                agent_version: "scripted".into(),
                boot_id: "5e0c2a9b-7d14-4c3f-a8e6-1b9d0f2c4a7e".into(),
            })),
        };
        outbound.send(hello).await.unwrap();
        // Every verdict change at once, and the standing verdict as a
        // heartbeat.
        let feeder = tokio::spawn(async move {
            for sequence in 1u64.. {
                let capable = *changes.borrow_and_update();
                if outbound.send(report(sequence, capable)).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(REPORT_EVERY) => {}
                }
            }
        });
        let stream = tokio::spawn(async move {
            let mut inbound = health
                .report(ReceiverStream::new(queued))
                .await
                .unwrap()
                .into_inner();
            // Re-probe requests and the expected configuration: read, not
            // acted on; the script decides what is reported.
            while let Ok(Some(_)) = inbound.message().await {}
        });
        ScriptedAgent {
            verdict,
            tasks: [feeder, stream],
        }
    }

    fn say(&self, capable: bool) {
        self.verdict.send_replace(capable);
    }

    /// Alternates the verdict every [`FLAP`] for `total`, starting with
    /// capable, and ends on `end`.
    async fn flap(&self, total: Duration, end: bool) {
        let mut capable = true;
        let mut spent = Duration::ZERO;
        while spent < total {
            self.say(capable);
            capable = !capable;
            tokio::time::sleep(FLAP).await;
            spent += FLAP;
        }
        self.say(end);
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Every value each node's capable label took, in order, as a watch saw
/// them (absent counts as `false`): label flips are the changes in it.
#[derive(Clone, Default)]
struct CapableHistory(Arc<Mutex<BTreeMap<String, Vec<bool>>>>);

impl CapableHistory {
    fn record(client: &Client) -> (Self, JoinHandle<()>) {
        let history = CapableHistory::default();
        let seen = history.clone();
        let nodes = Api::<Node>::all(client.clone());
        let task = tokio::spawn(async move {
            // With a backoff the watch resumes after an error, re-listing:
            // a change missed while it was down still shows in the values.
            let events = watcher(nodes, watcher::Config::default()).default_backoff();
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = event
                else {
                    continue;
                };
                let capable = node
                    .labels()
                    .get(names::KATA_CAPABLE_LABEL)
                    .is_some_and(|v| v == "true");
                let mut all = seen.0.lock().unwrap();
                let values = all.entry(node.name_any()).or_default();
                if values.last() != Some(&capable) {
                    values.push(capable);
                }
            }
        });
        (history, task)
    }

    fn flips(&self, node: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .get(node)
            .map_or(0, |values| values.len().saturating_sub(1))
    }
}

async fn has_label(client: &Client, node: &str, label: &str) -> bool {
    let node = Api::<Node>::all(client.clone()).get(node).await.unwrap();
    node.labels().contains_key(label)
}

async fn dwell_message(client: &Client, node: &str) -> Option<String> {
    ready_condition(client, node)
        .await
        .unwrap()
        .filter(|(_, reason, _)| reason == ELIGIBILITY_DWELL)
        .map(|(_, _, message)| message)
}

/// A coordinator with the agents' identity, and KataConfig `kc` checking
/// node eligibility: the health channel's address and TLS files with it.
async fn start_checking_eligibility(cluster: &Cluster) -> (Coordinator, SocketAddr, TlsFiles) {
    let client = cluster.client.clone();
    create_agent_identity(&client).await.unwrap();
    let tls = TlsFiles::generate().unwrap();
    let grpc = free_addr().unwrap();
    let coordinator = Coordinator::start(client, &tls, grpc, policy()).unwrap();
    cluster
        .create_kataconfig("kc", json!({"checkNodeEligibility": true}))
        .await;
    (coordinator, grpc, tls)
}

#[kata_test]
async fn membership_follows_only_a_sustained_verdict() {
    let cluster = Cluster::start(&[("w-flap", &[WORKER]), ("w-steady", &[WORKER])]).await;
    let client = cluster.client.clone();
    let (history, recorder) = CapableHistory::record(&client);
    let (coordinator, grpc, tls) = start_checking_eligibility(&cluster).await;

    let flapper = ScriptedAgent::start(&client, "w-flap", grpc, &tls, false).await;
    let steady = ScriptedAgent::start(&client, "w-steady", grpc, &tls, true).await;
    let flapping = tokio::spawn(async move {
        flapper.flap(JOIN * 4, false).await;
        flapper
    });

    // While the dwell runs the node says why it waits, and until when.
    let message = found("w-steady explains its join dwell", || async {
        let message = dwell_message(&client, "w-steady").await;
        let labelled = has_label(&client, "w-steady", names::KATA_CAPABLE_LABEL).await;
        match message {
            Some(message) if !labelled => Ok(message),
            other => Err(format!("condition {other:?}, capable label: {labelled}")),
        }
    })
    .await;
    assert!(
        message.contains("join dwell") && message.contains(names::KATA_CAPABLE_LABEL),
        "{message}"
    );

    eventually("w-steady joins the pool, rolled once", CONVERGE, || async {
        let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
        let done = node_states(&client)
            .await
            .unwrap()
            .iter()
            .any(|node| node.name == "w-steady" && node.mco_state == "Done");
        let rollouts = cluster.simulator.rollouts("w-steady");
        if targeted == ["w-steady"] && rollouts == 1 && done {
            Ok(true)
        } else {
            Err(format!(
                "targeted {targeted:?}, rollouts {rollouts}, done {done}"
            ))
        }
    })
    .await
    .unwrap();

    let flapper = flapping.await.unwrap();
    assert_eq!(
        history.flips("w-flap"),
        0,
        "a flapping node is never labelled"
    );
    assert_eq!(cluster.simulator.rollouts("w-flap"), 0);
    assert!(!has_label(&client, "w-flap", mco::KATA_POOL_ROLE_LABEL).await);
    assert_eq!(history.flips("w-steady"), 1);

    // A loss that does not last keeps the node in the pool.
    steady.flap(LEAVE * 4, true).await;
    assert_eq!(
        history.flips("w-steady"),
        1,
        "a flapping loss changes no label"
    );
    assert_eq!(cluster.simulator.rollouts("w-steady"), 1);
    assert!(has_label(&client, "w-steady", mco::KATA_POOL_ROLE_LABEL).await);

    // A sustained one takes it out, once, saying so while it waits.
    steady.say(false);
    let message = found("w-steady explains its leave dwell", || async {
        let message = dwell_message(&client, "w-steady").await;
        let labelled = has_label(&client, "w-steady", names::KATA_CAPABLE_LABEL).await;
        match message {
            Some(message) if labelled => Ok(message),
            other => Err(format!("condition {other:?}, capable label: {labelled}")),
        }
    })
    .await;
    assert!(
        message.starts_with("KvmDeviceMissing: kvm: /dev/kvm is missing;")
            && message.contains("leave dwell"),
        "{message}"
    );
    eventually("w-steady leaves the pool", CONVERGE, || async {
        let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
        let rollouts = cluster.simulator.rollouts("w-steady");
        if targeted.is_empty() && rollouts == 2 {
            Ok(true)
        } else {
            Err(format!("targeted {targeted:?}, rollouts {rollouts}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(history.flips("w-steady"), 2);
    assert_eq!(history.flips("w-flap"), 0);

    flapper.stop();
    steady.stop();
    recorder.abort();
    coordinator.stop().await.unwrap();
}

/// A dry-run create of a KataConfig with `selector`: admission's verdict.
async fn admit(configs: &Api<KataConfig>, selector: serde_json::Value) -> Result<(), String> {
    let config: KataConfig = serde_json::from_value(json!({
        "apiVersion": "kataconfiguration.openshift.io/v1",
        "kind": "KataConfig",
        "metadata": {"name": "cel"},
        "spec": {"kataConfigPoolSelector": selector},
    }))
    .unwrap();
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    match configs.create(&params, &config).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(other) => panic!("the API server did not answer: {other}"),
    }
}

#[kata_test]
async fn selectors_naming_the_operators_own_labels_are_refused() {
    let cluster = Cluster::start(&[]).await;
    let configs = cluster.configs();
    for label in OPERATOR_NODE_LABELS {
        for (field, selector) in [
            ("matchLabels", json!({"matchLabels": {label: "true"}})),
            (
                "matchExpressions",
                json!({"matchExpressions": [{"key": label, "operator": "Exists"}]}),
            ),
            (
                "matchExpressions",
                json!({"matchLabels": {"zone": "a"}, "matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]},
                    {"key": label, "operator": "DoesNotExist"},
                ]}),
            ),
        ] {
            let refusal = admit(&configs, selector.clone())
                .await
                .expect_err(&format!("{selector} was admitted"));
            assert!(
                refusal.contains(&format!(
                    "kataConfigPoolSelector.{field} must not use the labels the operator sets on nodes"
                )) && refusal.contains(label),
                "{selector}: {refusal}"
            );
        }
    }
    for selector in [
        json!({}),
        json!({"matchLabels": {"zone": "a", "node-role.kubernetes.io/worker": ""}}),
        json!({"matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a", "b"]},
            {"key": "katacontainers.io/kata-runtime-other", "operator": "Exists"},
        ]}),
    ] {
        admit(&configs, selector.clone())
            .await
            .unwrap_or_else(|refusal| panic!("{selector} refused: {refusal}"));
    }
}

/// Every node of a 2-node pool reported incapable at once looks like a
/// fault of the agents, not of the nodes: the fleet-wide brake keeps both in
/// the pool and says so on the KataConfig. One node recovering leaves the
/// other alone in its loss, and it leaves.
#[kata_test]
async fn the_fleet_brake_holds_a_pool_wide_loss() {
    let cluster = Cluster::start(&[("w-a", &[WORKER]), ("w-b", &[WORKER])]).await;
    let client = cluster.client.clone();
    let (coordinator, grpc, tls) = start_checking_eligibility(&cluster).await;
    let a = ScriptedAgent::start(&client, "w-a", grpc, &tls, true).await;
    let b = ScriptedAgent::start(&client, "w-b", grpc, &tls, true).await;
    eventually("both join the pool", CONVERGE, || async {
        let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
        Ok::<_, String>(targeted == ["w-a", "w-b"])
    })
    .await
    .unwrap();

    a.say(false);
    b.say(false);
    let (_, _, message) = found("the brake engages", || async {
        match cluster.condition("kc", "Degraded").await {
            Some((status, reason, message))
                if status == "True" && reason == "FleetBrakeEngaged" =>
            {
                Ok((status, reason, message))
            }
            other => Err(format!("Degraded {other:?}")),
        }
    })
    .await;
    assert!(
        message.starts_with("2 of 2 KVM-capable nodes would leave the Kata pool")
            && message.contains("w-a, w-b"),
        "{message}"
    );
    // Held well past the leave dwell: no label comes off, no node rolls.
    tokio::time::sleep(LEAVE * 2).await;
    assert!(has_label(&client, "w-a", names::KATA_CAPABLE_LABEL).await);
    assert!(has_label(&client, "w-b", names::KATA_CAPABLE_LABEL).await);
    assert_eq!(
        cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
        ["w-a", "w-b"]
    );
    assert_eq!(cluster.simulator.rollouts("w-a"), 1);

    // w-a recovers: one node alone leaves, and the brake lets go.
    a.say(true);
    eventually("w-b leaves and the brake releases", CONVERGE, || async {
        let targeted = cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await;
        let degraded = cluster.condition("kc", "Degraded").await;
        let released = degraded
            .as_ref()
            .is_some_and(|(_, reason, _)| reason != "FleetBrakeEngaged");
        if targeted == ["w-a"] && released {
            Ok(true)
        } else {
            Err(format!("targeted {targeted:?}, Degraded {degraded:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        cluster.simulator.rollouts("w-a"),
        1,
        "w-a never rolled again"
    );

    a.stop();
    b.stop();
    coordinator.stop().await.unwrap();
}
