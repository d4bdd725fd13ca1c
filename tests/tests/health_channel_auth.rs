//! The coordinator's health-channel server over a real TLS socket, with agent
//! tokens issued and reviewed by the real API server: who may open a stream,
//! for which node, and what an accepted stream does to the registry.
//!
//! Token expiry is not exercised: TokenRequest's shortest lifetime is ten
//! minutes, too long to wait for. An expired token fails TokenReview exactly
//! like the orphaned token below (authenticated=false), which takes the same
//! path to `Unauthenticated`, and the pure mapping is unit-tested in
//! `kata_coordinator::health::auth`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kata_coordinator::health::{
    AgentAuthenticator, HealthOptions, HealthRegistry, HealthService, NodeHealth, ServerTls, serve,
};
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    AgentMessage, CoordinatorMessage, HealthReport, Hello, ProbeOutcome, ProbeStatus, Verdicts,
    agent_message, coordinator_message,
};
use kata_tests::ControlPlane;
use kata_tests::pki::TestCa;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};

const AUDIENCE: &str = "kata-operator.test/health";
const NAMESPACE: &str = "kata-system";
const AGENT_SA: &str = "node-agent";
const OTHER_SA: &str = "intruder";
const NODE_A: &str = "worker-a";
const NODE_B: &str = "worker-b";

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

struct Fixture {
    // Kept alive for the test's duration; dropping it stops the API server.
    _plane: ControlPlane,
    admin: kube::Client,
    registry: HealthRegistry,
    port: u16,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Fixture {
    async fn start() -> Self {
        let plane = ControlPlane::start().await.unwrap();
        let admin = plane.client().await.unwrap();
        create(
            &Api::<Namespace>::all(admin.clone()),
            Namespace {
                metadata: meta(NAMESPACE),
                ..Namespace::default()
            },
        )
        .await;
        for node in [NODE_A, NODE_B] {
            create(
                &Api::<Node>::all(admin.clone()),
                Node {
                    metadata: meta(node),
                    ..Node::default()
                },
            )
            .await;
        }
        for account in [AGENT_SA, OTHER_SA] {
            create(
                &Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE),
                ServiceAccount {
                    metadata: meta(account),
                    ..ServiceAccount::default()
                },
            )
            .await;
        }

        let ca = TestCa::new("kata-health-test-ca").unwrap();
        let cert = ca.server_cert(&["localhost", "127.0.0.1"]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let registry = HealthRegistry::new();
        let service = HealthService::new(
            AgentAuthenticator::new(admin.clone(), AUDIENCE, NAMESPACE, AGENT_SA),
            registry.clone(),
            HealthOptions {
                heartbeat_interval: Duration::from_secs(15),
                ..HealthOptions::default()
            },
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let tls = ServerTls {
            cert_pem: cert.cert_pem,
            key_pem: cert.key_pem,
        };
        let server = tokio::spawn(async move {
            serve(listener, &tls, service, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            _plane: plane,
            admin,
            registry,
            port,
            ca_pem: ca.cert_pem(),
            stop: Some(stop),
            server,
        }
    }

    async fn pod_bound_token(
        &self,
        account: &str,
        pod: &str,
        node: &str,
        audience: &str,
    ) -> String {
        kata_tests::operator::pod_bound_token(&self.admin, NAMESPACE, account, pod, node, audience)
            .await
            .unwrap()
    }

    async fn client(&self, token: Option<&str>) -> Client {
        let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(&self.ca_pem))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer = token.map(|t| format!("Bearer {t}").parse().unwrap());
        NodeHealthClient::with_interceptor(channel, Bearer(bearer))
    }

    /// Opens a stream whose first message is `first`; the error is the
    /// call's status when the coordinator refuses the stream.
    async fn open(&self, token: Option<&str>, first: AgentMessage) -> Result<AgentStream, Status> {
        let (outbound, rx) = mpsc::channel(8);
        outbound.send(first).await.unwrap();
        let response = self
            .client(token)
            .await
            .report(ReceiverStream::new(rx))
            .await?;
        Ok(AgentStream {
            outbound,
            inbound: response.into_inner(),
        })
    }

    /// Waits for the registry to satisfy `check`, woken by its change signal.
    /// The timeout only keeps a broken server from hanging the test.
    async fn wait_for<T>(&self, check: impl Fn(&HealthRegistry) -> Option<T>) -> T {
        let mut changes = self.registry.subscribe();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(found) = check(&self.registry) {
                    return found;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .expect("the registry never reached the expected state")
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

async fn create<K>(api: &Api<K>, object: K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object).await.unwrap();
}

fn hello(node: &str) -> AgentMessage {
    AgentMessage {
        message: Some(agent_message::Message::Hello(Hello {
            node_name: node.into(),
            agent_version: "0.1.0-test".into(),
            boot_id: "boot-1".into(),
        })),
    }
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
        }),
        probed_at_unix_ms: 1_700_000_000_000,
    }
}

fn report_message(sequence: u64) -> AgentMessage {
    AgentMessage {
        message: Some(agent_message::Message::Report(report(sequence))),
    }
}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn agent_bound_to_its_node_gets_expected_config_and_its_reports_are_recorded() {
    let mut fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;
    let mut stream = fixture.open(Some(&token), hello(NODE_A)).await.unwrap();

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
    assert_eq!(node.boot_id, "boot-1");
    assert_eq!(node.last_report, Some(report(2)));
    assert_eq!(
        fixture.registry.snapshot().keys().collect::<Vec<_>>(),
        vec![NODE_A]
    );

    // Shutting down ends the agent's open stream with Unavailable (so it
    // reconnects elsewhere) instead of waiting forever for it to close.
    fixture.stop.take().unwrap().send(()).unwrap();
    let ended = stream.inbound.message().await;
    assert_eq!(code(ended), Code::Unavailable);
    let server = tokio::time::timeout(Duration::from_secs(30), &mut fixture.server)
        .await
        .expect("server shutdown hung with an agent stream open");
    server.unwrap().unwrap();
    let node = fixture
        .wait_for(|registry| registry.get(NODE_A).filter(|n| !n.connected))
        .await;
    assert_eq!(node.last_report, Some(report(2)), "last report is kept");
}

#[tokio::test]
async fn hello_must_come_first_and_name_the_tokens_node() {
    let fixture = Fixture::start().await;
    let token = fixture
        .pod_bound_token(AGENT_SA, "agent-a", NODE_A, AUDIENCE)
        .await;

    let claims_b = fixture.open(Some(&token), hello(NODE_B)).await;
    let status = claims_b.err().unwrap();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(NODE_A) && status.message().contains(NODE_B));
    assert!(fixture.registry.get(NODE_B).is_none());

    let report_first = fixture.open(Some(&token), report_message(1)).await;
    assert_eq!(code(report_first), Code::InvalidArgument);
    assert!(fixture.registry.snapshot().is_empty());

    // The same token is fine for its own node: the refusals above were about
    // the claim and the order, not the token.
    let mut own = fixture.open(Some(&token), hello(NODE_A)).await.unwrap();
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

#[tokio::test]
async fn missing_wrong_audience_foreign_and_orphaned_tokens_are_refused() {
    let fixture = Fixture::start().await;

    let none = fixture.open(None, hello(NODE_A)).await;
    assert_eq!(code(none), Code::Unauthenticated);

    let forged = fixture.open(Some("not-a-token"), hello(NODE_A)).await;
    assert_eq!(code(forged), Code::Unauthenticated);

    let other_audience = fixture
        .pod_bound_token(AGENT_SA, "agent-aud", NODE_A, "someone-else")
        .await;
    let wrong_audience = fixture.open(Some(&other_audience), hello(NODE_A)).await;
    assert_eq!(code(wrong_audience), Code::Unauthenticated);

    let intruder = fixture
        .pod_bound_token(OTHER_SA, "intruder-a", NODE_A, AUDIENCE)
        .await;
    let foreign = fixture.open(Some(&intruder), hello(NODE_A)).await;
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
        last = code(fixture.open(Some(&orphan), hello(NODE_A)).await);
        if last != Code::Ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last, Code::Unauthenticated);
}
