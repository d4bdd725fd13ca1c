//! The coordinator's health-channel server over a real TLS socket, with agent
//! tokens issued and reviewed by the real API server: who may check in or
//! open a stream, for which node, and what an accepted check-in or stream
//! does to the registry.
//!
//! Token expiry is not exercised: TokenRequest's shortest lifetime is ten
//! minutes, too long to wait for. An expired token fails TokenReview exactly
//! like the orphaned token below (authenticated=false), which takes the same
//! path to `Unauthenticated`, and the pure mapping is unit-tested in
//! `kata_coordinator::health::auth`.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Pod;
use kata_coordinator::health::{NodeHealth, ServerTls, TlsError};
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    AgentMessage, CheckInRequest, CheckInResponse, CoordinatorMessage, HealthReport, Hello,
    ProbeOutcome, ProbeStatus, Verdicts, agent_message, coordinator_message,
};
use kata_test_harness::kata_test;
use kata_tests::health_fixture::{
    AGENT_SA, AUDIENCE, HealthFixture as Fixture, NAMESPACE, NODE_A, NODE_B, OTHER_SA, SERVER_NAME,
};
use kata_tests::pki::TestCa;
use kube::api::{Api, DeleteParams};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

mod places;

/// Adds `authorization: Bearer <token>` to every call, as the agent does.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

type Client = NodeHealthClient<InterceptedService<Channel, Bearer>>;

/// An open agent stream: what the agent sends and what it receives.
struct AgentStream {
    outbound: mpsc::Sender<AgentMessage>,
    inbound: Streaming<CoordinatorMessage>,
}

async fn client(fixture: &Fixture, token: Option<&str>) -> Client {
    let channel = Endpoint::from_shared(fixture.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&fixture.ca_pem))
                .domain_name(SERVER_NAME),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = token.map(|t| format!("Bearer {t}").parse().unwrap());
    NodeHealthClient::with_interceptor(channel, Bearer(bearer))
}

/// Opens a stream whose first message is `first`; the error is the call's
/// status when the coordinator refuses the stream.
async fn open(
    fixture: &Fixture,
    token: Option<&str>,
    first: AgentMessage,
) -> Result<AgentStream, Status> {
    let (outbound, rx) = mpsc::channel(8);
    outbound.send(first).await.unwrap();
    let response = client(fixture, token)
        .await
        .report(ReceiverStream::new(rx))
        .await?;
    Ok(AgentStream {
        outbound,
        inbound: response.into_inner(),
    })
}

const BOOT_ID: &str = "0c5a7f3e-9b1d-4e2a-8f6c-3d2b1a0e9f8c";

fn hello_of(node: &str) -> Hello {
    Hello {
        node_name: node.into(),
        agent_version: "0.1.0-test".into(),
        boot_id: BOOT_ID.into(),
    }
}

fn hello(node: &str) -> AgentMessage {
    AgentMessage {
        message: Some(agent_message::Message::Hello(hello_of(node))),
    }
}

/// One check-in, on a connection of its own, as the agent makes it.
async fn check_in(
    fixture: &Fixture,
    token: Option<&str>,
    hello: Option<Hello>,
    report: Option<HealthReport>,
) -> Result<CheckInResponse, Status> {
    client(fixture, token)
        .await
        .check_in(CheckInRequest { hello, report })
        .await
        .map(tonic::Response::into_inner)
}

fn report(sequence: u64) -> HealthReport {
    HealthReport {
        sequence,
        outcomes: vec![ProbeOutcome {
            name: "kvm".into(),
            status: ProbeStatus::Ok.into(),
            reason: "KvmUsable".into(),
            message: "/dev/kvm answers KVM_GET_API_VERSION".into(),
        }],
        verdicts: Some(Verdicts {
            kvm_capable: true,
            runtime_ready: false,
            ..Default::default()
        }),
        probed_at_unix_ms: 1_700_000_000_000,
    }
}

fn report_message(sequence: u64) -> AgentMessage {
    AgentMessage {
        message: Some(agent_message::Message::Report(report(sequence))),
    }
}

/// A certificate or key the server cannot use is refused when the server is
/// set up (the coordinator then exits naming it), not at the first agent.
#[kata_test]
fn unusable_certificate_or_key_is_refused_up_front() {
    let ca = TestCa::new("tls-test-ca").unwrap();
    let cert = ca.server_cert(&[SERVER_NAME]).unwrap();
    let other = ca.server_cert(&[SERVER_NAME]).unwrap();
    let refusal = |cert_pem: &str, key_pem: &str| {
        ServerTls {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        }
        .acceptor()
        .map(|_| ())
        .unwrap_err()
    };
    assert!(matches!(
        refusal("", &cert.key_pem),
        TlsError::NoCertificate
    ));
    assert!(matches!(
        refusal(&cert.cert_pem, "not a key"),
        TlsError::Key(_)
    ));
    assert!(
        matches!(refusal(&cert.cert_pem, &other.key_pem), TlsError::Config(_)),
        "a key that does not belong to the certificate"
    );
    let usable = ServerTls {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    assert!(usable.acceptor().is_ok());
}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[kata_test]
async fn agent_bound_to_its_node_gets_expected_config_and_its_reports_are_recorded() {
    let mut fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    // A client that connects and never starts its TLS handshake holds one
    // admission slot until it times out; it must not keep agents out.
    let _stalled = tokio::net::TcpStream::connect(("127.0.0.1", fixture.port))
        .await
        .unwrap();
    let mut stream = open(&fixture, Some(&token), hello(NODE_A)).await.unwrap();

    let first = stream.inbound.message().await.unwrap().unwrap();
    let Some(coordinator_message::Message::ExpectedConfig(config)) = first.message else {
        panic!("expected ExpectedConfig first, got {first:?}");
    };
    assert_eq!(config.runtime_handler, "kata");
    assert_eq!(config.extension_name, "sandboxed-containers");
    assert_eq!(config.drop_in_path, "/etc/crio/crio.conf.d/50-kata");
    assert_eq!(config.heartbeat_interval_seconds, 15);
    assert_eq!(config.extension_packages, vec!["kata-containers"]);

    stream.outbound.send(report_message(1)).await.unwrap();
    stream.outbound.send(report_message(2)).await.unwrap();
    let node: NodeHealth = fixture
        .wait_for(|registry| {
            registry
                .get(NODE_A)
                .filter(|n| n.last_report.as_ref().map(|r| r.sequence) == Some(2))
        })
        .await;
    assert!(node.connected);
    assert_eq!(node.agent_version, "0.1.0-test");
    assert_eq!(node.boot_id, BOOT_ID);
    assert_eq!(node.last_report, Some(report(2)));
    assert_eq!(
        fixture.registry.snapshot().keys().collect::<Vec<_>>(),
        vec![NODE_A]
    );

    // Shutting down ends the agent's open stream with Unavailable (so it
    // reconnects elsewhere) instead of waiting forever for it to close.
    // The server's shutdown completes (it would panic if it hung) and the
    // status it sent is still there for the agent to read.
    fixture.stop_server().await.unwrap();
    let ended = stream.inbound.message().await;
    assert_eq!(code(ended), Code::Unavailable);
    let node = fixture
        .wait_for(|registry| registry.get(NODE_A).filter(|n| !n.connected))
        .await;
    assert_eq!(node.last_report, Some(report(2)), "last report is kept");
}

#[kata_test]
async fn hello_must_come_first_and_name_the_tokens_node() {
    let fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;

    let claims_b = open(&fixture, Some(&token), hello(NODE_B)).await;
    let status = claims_b.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(NODE_A) && status.message().contains(NODE_B));
    assert!(fixture.registry.get(NODE_B).is_none());

    let report_first = open(&fixture, Some(&token), report_message(1)).await;
    assert_eq!(code(report_first), Code::InvalidArgument);
    assert!(fixture.registry.snapshot().is_empty());

    // The same token is fine for its own node: the refusals above were about
    // the claim and the order, not the token.
    let mut own = open(&fixture, Some(&token), hello(NODE_A)).await.unwrap();
    assert!(own.inbound.message().await.unwrap().is_some());
    fixture
        .wait_for(|registry| registry.get(NODE_A).filter(|n| n.connected))
        .await;
    assert!(fixture.registry.get(NODE_B).is_none());

    // Dropping the agent's side ends the stream: the node shows disconnected.
    drop(own);
    fixture
        .wait_for(|registry| registry.get(NODE_A).filter(|n| !n.connected))
        .await;
}

#[kata_test]
async fn missing_wrong_audience_foreign_and_orphaned_tokens_are_refused() {
    let fixture = Fixture::start().await;

    let none = open(&fixture, None, hello(NODE_A)).await;
    assert_eq!(code(none), Code::Unauthenticated);

    let forged = open(&fixture, Some("not-a-token"), hello(NODE_A)).await;
    assert_eq!(code(forged), Code::Unauthenticated);

    let other_audience = fixture
        .pod_bound_token(AGENT_SA, "agent-aud", NODE_A, "someone-else")
        .await;
    let wrong_audience = open(&fixture, Some(&other_audience), hello(NODE_A)).await;
    assert_eq!(code(wrong_audience), Code::Unauthenticated);

    let intruder = fixture
        .pod_bound_token(OTHER_SA, "intruder-a", NODE_A, AUDIENCE)
        .await;
    let foreign = open(&fixture, Some(&intruder), hello(NODE_A)).await;
    assert_eq!(code(foreign), Code::PermissionDenied);
    assert!(fixture.registry.snapshot().is_empty());

    // A token whose Pod is gone: the API server stops accepting it. Its
    // token getter reads an informer cache first, so the deletion may take a
    // moment to be seen; retry a bounded number of times.
    let orphan = fixture
        .pod_bound_token(AGENT_SA, "agent-gone", NODE_A, AUDIENCE)
        .await;
    Api::<Pod>::namespaced(fixture.admin.clone(), NAMESPACE)
        .delete(
            "agent-gone",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    let mut last = Code::Ok;
    for _ in 0..60 {
        last = code(open(&fixture, Some(&orphan), hello(NODE_A)).await);
        if last != Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last, Code::Unauthenticated);
}

/// A whole check-in of `node`'s agent with `token`, report `sequence`.
async fn check_in_as(
    fixture: &Fixture,
    token: &str,
    node: &str,
    sequence: u64,
) -> Result<CheckInResponse, Status> {
    check_in(
        fixture,
        Some(token),
        Some(hello_of(node)),
        Some(report(sequence)),
    )
    .await
}

#[kata_test]
async fn a_check_in_is_recorded_and_answered_with_the_expected_config() {
    let fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    let reply = check_in_as(&fixture, &token, NODE_A, 1).await.unwrap();
    let config = reply.expected_config.unwrap();
    assert_eq!(config.runtime_handler, "kata");
    assert_eq!(config.heartbeat_interval_seconds, 15);
    assert_eq!(reply.reprobe, None, "nothing was asked");
    let node = fixture.registry.get(NODE_A).unwrap();
    assert!(!node.connected, "no stream is left open");
    assert_eq!(node.last_report, Some(report(1)));
    assert_eq!(node.boot_id, BOOT_ID);

    // A re-probe asked for between check-ins rides on the next reply, once.
    assert!(
        fixture
            .registry
            .request_reprobe(NODE_A, "the node now runs rendered-kata-oc-2")
    );
    let reply = check_in_as(&fixture, &token, NODE_A, 2).await.unwrap();
    assert_eq!(
        reply.reprobe.map(|r| r.reason).as_deref(),
        Some("the node now runs rendered-kata-oc-2")
    );
    let reply = check_in_as(&fixture, &token, NODE_A, 3).await.unwrap();
    assert_eq!(reply.reprobe, None, "handed over once");
    assert_eq!(
        fixture.registry.get(NODE_A).unwrap().last_report,
        Some(report(3))
    );
}

#[kata_test]
async fn a_check_in_must_carry_both_parts_and_name_the_tokens_node() {
    let fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    let claims_b = check_in_as(&fixture, &token, NODE_B, 1).await.unwrap_err();
    assert_eq!(claims_b.code(), Code::PermissionDenied, "{claims_b:?}");
    assert!(claims_b.message().contains(NODE_A) && claims_b.message().contains(NODE_B));
    for (hello, report) in [(None, Some(report(1))), (Some(hello_of(NODE_A)), None)] {
        let partial = check_in(&fixture, Some(&token), hello, report).await;
        assert_eq!(code(partial), Code::InvalidArgument);
    }
    for bad in [None, Some("not-a-token")] {
        let refused = check_in(&fixture, bad, Some(hello_of(NODE_A)), Some(report(1))).await;
        assert_eq!(code(refused), Code::Unauthenticated);
    }
    let intruder = fixture
        .pod_bound_token(OTHER_SA, "intruder-a", NODE_A, AUDIENCE)
        .await;
    let foreign = check_in_as(&fixture, &intruder, NODE_A, 1).await;
    assert_eq!(code(foreign), Code::PermissionDenied);
    assert!(
        fixture.registry.snapshot().is_empty(),
        "nothing refused was recorded"
    );

    // The refusals were about the claims, not the token.
    check_in_as(&fixture, &token, NODE_A, 1).await.unwrap();
    assert!(fixture.registry.get(NODE_B).is_none());
}

/// A node's kubelet may mint any number of valid tokens for its agent's
/// Pod: each costs a review, so the node is held to its review rate (a
/// burst of 5 by default) while another node's agent still gets in, and
/// the Pod's tokens keep one admission between them.
#[kata_test]
async fn a_node_minting_tokens_is_held_to_its_review_rate_and_others_get_in() {
    let fixture = Fixture::start().await;
    let first = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    let pod = Api::<Pod>::namespaced(fixture.admin.clone(), NAMESPACE)
        .get("agent-a")
        .await
        .unwrap();
    let mut minted = vec![first];
    for _ in 0..9 {
        minted.push(
            kata_tests::api_objects::bound_token(
                &fixture.admin,
                NAMESPACE,
                AGENT_SA,
                &pod.metadata,
                AUDIENCE,
            )
            .await
            .unwrap(),
        );
    }
    let mut refused = Vec::new();
    for (sequence, token) in (1..).zip(&minted) {
        match check_in(
            &fixture,
            Some(token),
            Some(hello_of(NODE_A)),
            Some(report(sequence)),
        )
        .await
        {
            Ok(_) => {}
            Err(status) => refused.push(status),
        }
    }
    // Ten reviews asked within far less than the five seconds the rate
    // would need to refill: at least four turned away, each told to retry.
    assert!(refused.len() >= 4, "refused: {refused:?}");
    for status in &refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("too often"), "{status:?}");
    }
    let other = fixture
        .pod_bound_token(AGENT_SA, "agent-b", NODE_B, AUDIENCE)
        .await;
    check_in(
        &fixture,
        Some(&other),
        Some(hello_of(NODE_B)),
        Some(report(1)),
    )
    .await
    .expect("another node's agent is not held by the first node's rate");
    // The first tokens admitted were replaced by later ones of the same
    // Pod: the first costs a review again, refused while the rate is spent.
    let again = check_in(
        &fixture,
        Some(&minted[0]),
        Some(hello_of(NODE_A)),
        Some(report(20)),
    )
    .await;
    assert_eq!(code(again), Code::Unavailable);
}
