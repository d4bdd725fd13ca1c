//! The health protocol between releases at run time, both ways, where
//! `protocol_compat` compares descriptors only. The release's `.proto`
//! (tests/fixtures/releases/<release>/proto) is compiled with protox and
//! its messages built and read as dynamic messages, so each side speaks
//! exactly the release's schema over today's transport (TLS, gRPC, a
//! bearer token):
//! - a release agent checks in with today's coordinator: admitted on its
//!   pod-bound token, its reports heard (the node labelled capable), the
//!   reply readable with its own schema, and refused once its pod is gone
//!   (replaced by the DaemonSet's roll);
//! - today's agent checks in with a release coordinator: every message it
//!   sends decodes with the release's schema, and it keeps working on the
//!   release's replies. proto/'s compatibility rule (each side ignores what
//!   it does not know) promises that it works, not a clear failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod release_coordinator;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::names;
use kata_test_harness::kata_test;
use kata_tests::api_objects::pod_bound_token;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::demo_world::{
    AGENT_ACCOUNT, AUDIENCE, Coordinator, NAMESPACE, create_agent_identity, free_addr,
    nodes_labelled,
};
use kata_tests::pki::TlsFiles;
use kube::api::{Api, DeleteParams};
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

/// The release whose schema is played.
const RELEASE: &str = "v0.1.0";
const HEALTH_PROTO: &str = "kata/health/v1/health.proto";
const PACKAGE: &str = "kata.health.v1";
const CHECK_IN: &str = "/kata.health.v1.NodeHealth/CheckIn";
const NODE: &str = "w0";
/// The name in the test certificates.
const SERVER_NAME: &str = "localhost";

/// The release's health schema.
fn release_pool() -> DescriptorPool {
    let include =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/releases/{RELEASE}/proto"));
    let set = protox::compile([HEALTH_PROTO], [&include])
        .unwrap_or_else(|e| panic!("{}: {e}", include.display()));
    DescriptorPool::from_file_descriptor_set(set).unwrap()
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("{PACKAGE}.{name}"))
        .unwrap_or_else(|| panic!("{RELEASE} has no message {name}"))
}

/// A message of the release's `name` with `fields` set.
fn build(pool: &DescriptorPool, name: &str, fields: Vec<(&str, Value)>) -> DynamicMessage {
    let mut built = DynamicMessage::new(message(pool, name));
    for (field, value) in fields {
        built
            .try_set_field_by_name(field, value)
            .unwrap_or_else(|e| panic!("{name}.{field}: {e}"));
    }
    built
}

/// Field `path` (names joined by `.`) of `message`, as the release reads it.
fn field(message: &DynamicMessage, path: &str) -> Value {
    let mut value = Value::Message(message.clone());
    for name in path.split('.') {
        let Value::Message(inner) = value else {
            panic!("{path}: {name} is not in a message");
        };
        value = inner
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("{path}: no field {name}"))
            .into_owned();
    }
    value
}

/// The protobuf codec on dynamic messages: encodes any, decodes as the
/// release's `decode_as`.
#[derive(Clone)]
struct DynamicCodec {
    decode_as: MessageDescriptor,
}

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("not a {RELEASE} {}: {e}", self.0.name())))
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder(self.decode_as.clone())
    }
}

/// What a release agent sends: its hello and a report of a KVM-capable
/// node without the runtime.
fn release_check_in(pool: &DescriptorPool, sequence: u64) -> DynamicMessage {
    let hello = build(
        pool,
        "Hello",
        vec![
            ("node_name", Value::String(NODE.into())),
            ("agent_version", Value::String(RELEASE.into())),
            (
                "boot_id",
                Value::String("3f1c9a2e-6b7d-4e8f-9a0b-1c2d3e4f5a6b".into()),
            ),
        ],
    );
    let kvm = build(
        pool,
        "ProbeOutcome",
        vec![
            ("name", Value::String("kvm".into())),
            // PROBE_STATUS_OK in the release's enum.
            ("status", Value::EnumNumber(1)),
            ("reason", Value::String("KvmUsable".into())),
            ("message", Value::String("/dev/kvm usable".into())),
        ],
    );
    let verdicts = build(
        pool,
        "Verdicts",
        vec![
            ("kvm_capable", Value::Bool(true)),
            ("runtime_ready", Value::Bool(false)),
        ],
    );
    let report = build(
        pool,
        "HealthReport",
        vec![
            ("sequence", Value::U64(sequence)),
            ("outcomes", Value::List(vec![Value::Message(kvm)])),
            ("verdicts", Value::Message(verdicts)),
        ],
    );
    build(
        pool,
        "CheckInRequest",
        vec![
            ("hello", Value::Message(hello)),
            ("report", Value::Message(report)),
        ],
    )
}

async fn channel(grpc: SocketAddr, tls: &TlsFiles) -> Channel {
    let ca = std::fs::read_to_string(&tls.ca).unwrap();
    let endpoint = Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(SERVER_NAME),
        )
        .unwrap();
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if std::time::Instant::now() > deadline => panic!("{grpc}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One check-in as the release agent makes it, its reply read with the
/// release's schema.
async fn check_in(
    channel: &Channel,
    pool: &DescriptorPool,
    token: &str,
    sequence: u64,
) -> Result<DynamicMessage, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(release_check_in(pool, sequence));
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let codec = DynamicCodec {
        decode_as: message(pool, "CheckInResponse"),
    };
    let path = http::uri::PathAndQuery::from_static(CHECK_IN);
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// Short dwells: the test is about the protocol, not about timing.
fn policy() -> MarkPolicy {
    MarkPolicy {
        grace: Duration::from_secs(30),
        hold_down: Duration::from_secs(5),
        join_dwell: Duration::from_secs(1),
        leave_dwell: Duration::from_secs(60),
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    }
}

/// A release agent, its messages built from the release's schema, checks
/// in with today's coordinator: admitted on its pod-bound token until its
/// pod is gone, its node labelled capable on its reports, and the reply
/// read with the release's schema carries what it acts on.
#[kata_test]
async fn a_release_agent_is_admitted_by_todays_coordinator_and_its_node_labelled() {
    let cluster = Cluster::start(&[(NODE, &[WORKER])]).await;
    create_agent_identity(&cluster.client).await.unwrap();
    let tls = TlsFiles::generate().unwrap();
    let grpc = free_addr().unwrap();
    let coordinator = Coordinator::start(cluster.client.clone(), &tls, grpc, policy()).unwrap();
    let pod = format!("node-agent-{NODE}");
    let token = pod_bound_token(
        &cluster.client,
        NAMESPACE,
        AGENT_ACCOUNT,
        &pod,
        NODE,
        AUDIENCE,
    )
    .await
    .unwrap();
    // Nodes are labelled only while a KataConfig is in force.
    cluster
        .create_kataconfig("kc", serde_json::json!({"checkNodeEligibility": true}))
        .await;
    let pool = release_pool();
    let channel = channel(grpc, &tls).await;

    // Checks in every 300 ms, as often as a probe cycle may, until the
    // node is labelled: the reports held for the join dwell.
    let deadline = std::time::Instant::now() + CONVERGE;
    let mut sequence = 0;
    let reply = loop {
        sequence += 1;
        let reply = check_in(&channel, &pool, &token, sequence)
            .await
            .unwrap_or_else(|status| panic!("check-in {sequence} refused: {status:?}"));
        let capable = nodes_labelled(&cluster.client, names::KATA_CAPABLE_LABEL)
            .await
            .unwrap();
        if capable == [NODE] {
            break reply;
        }
        assert!(std::time::Instant::now() < deadline, "never labelled");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let handler = field(&reply, "expected_config.runtime_handler");
    let heartbeat = field(&reply, "expected_config.heartbeat_interval_seconds");
    println!(
        "labelled capable after {sequence} check-ins; runtime handler {handler:?}, heartbeat {heartbeat:?}"
    );
    assert_eq!(handler.as_str(), Some("kata"), "{reply:?}");
    assert!(heartbeat.as_u32().is_some_and(|s| s > 0), "{reply:?}");

    // The DaemonSet's roll deletes its pod: its token dies with it.
    Api::<Pod>::namespaced(cluster.client.clone(), NAMESPACE)
        .delete(&pod, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + CONVERGE;
    let refused = loop {
        sequence += 1;
        match check_in(&channel, &pool, &token, sequence).await {
            Err(status) => break status,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "still admitted"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    coordinator.stop().await.unwrap();
}

/// Today's agent checks in with a release coordinator: each request decodes
/// with the release's schema and carries its node, its token and reports
/// in order; the release's replies (its expected configuration and a
/// re-probe request) keep it checking in, and it stops cleanly.
#[kata_test]
async fn todays_agent_works_with_a_release_coordinator() {
    let tls = TlsFiles::generate().unwrap();
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel();
    let (address, mut received) = release_coordinator::serve(&tls, server_stopped).await;
    let host = kata_tests::demo_world::uninstalled_host(false).unwrap();
    let files = tempfile::tempdir().unwrap();
    let token_file = files.path().join("token");
    std::fs::write(&token_file, "a-projected-token").unwrap();
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel();
    let agent = release_coordinator::todays_agent(address, &tls, &host, &token_file, agent_stopped);

    // Three check-ins: the first, and two the release's one-second
    // heartbeat asks for.
    let mut sequences = Vec::new();
    while sequences.len() < 3 {
        let (bearer, request) = tokio::time::timeout(CONVERGE, received.recv())
            .await
            .expect("today's agent checks in")
            .unwrap();
        assert_eq!(bearer.as_deref(), Some("Bearer a-projected-token"));
        let node = field(&request, "hello.node_name");
        assert_eq!(node.as_str(), Some(NODE), "{request:?}");
        let version = field(&request, "hello.agent_version");
        assert!(version.as_str().is_some_and(|v| !v.is_empty()));
        let outcomes = field(&request, "report.outcomes");
        assert!(outcomes.as_list().is_some_and(|list| !list.is_empty()));
        // A host without KVM: the release reads the verdict.
        assert_eq!(
            field(&request, "report.verdicts.kvm_capable").as_bool(),
            Some(false)
        );
        sequences.push(field(&request, "report.sequence").as_u64().unwrap());
    }
    println!("check-in report sequences: {sequences:?}");
    assert!(sequences.is_sorted(), "reports in order: {sequences:?}");
    assert!(!agent.is_finished(), "the agent still runs");
    let _ = stop_agent.send(());
    agent.await.unwrap().unwrap();
    let _ = stop_server.send(());
}
