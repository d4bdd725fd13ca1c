//! The coordinator's health service on a real TLS socket (127.0.0.1), with
//! agent tokens issued and reviewed by a real API server. Shared by the
//! health-channel tests (hand-driven streams) and the agent daemon's tests.
//!
//! The cluster holds a namespace, nodes [`NODE_A`] and [`NODE_B`], the
//! agents' ServiceAccount [`AGENT_SA`] and another one, [`OTHER_SA`]. The
//! server can be stopped and started again on the same port, with a fresh
//! registry, as a coordinator restart would be. Set-up failures are a broken
//! test machine, so they panic with what failed.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kata_coordinator::health::{
    AgentAuthenticator, HealthOptions, HealthRegistry, HealthService, ServerTls, serve,
};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ControlPlane;
use crate::pki::TestCa;

pub const AUDIENCE: &str = "kata-operator.test/health";
pub const NAMESPACE: &str = "kata-system";
pub const AGENT_SA: &str = "node-agent";
pub const OTHER_SA: &str = "intruder";
pub const NODE_A: &str = "worker-a";
pub const NODE_B: &str = "worker-b";
/// The name in the server certificate that clients verify.
pub const SERVER_NAME: &str = "localhost";

/// How long [`HealthFixture::wait_for`] and a server shutdown may take: only
/// there to turn a hang into a failure, never a measurement.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct HealthFixture {
    // Kept alive for the test's duration; dropping it stops the API server.
    _plane: ControlPlane,
    pub admin: kube::Client,
    /// The running server's registry; a new one after each start.
    pub registry: HealthRegistry,
    pub port: u16,
    pub ca_pem: String,
    tls: ServerTls,
    options: HealthOptions,
    server: Option<RunningServer>,
}

struct RunningServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl HealthFixture {
    /// With a 15 s heartbeat, so tests can tell it from the default, and
    /// the extension the MCO backend installs, as the coordinator tells it.
    pub async fn start() -> Self {
        Self::start_with(HealthOptions {
            heartbeat_interval: Duration::from_secs(15),
            extension_name: kata_coordinator::mco::names::EXTENSION.into(),
            ..HealthOptions::default()
        })
        .await
    }

    pub async fn start_with(options: HealthOptions) -> Self {
        let plane = ControlPlane::start()
            .await
            .expect("start the control plane");
        let admin = plane.client().await.expect("admin client");
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
        let ca = TestCa::new("kata-health-test-ca").expect("test CA");
        let cert = ca
            .server_cert(&[SERVER_NAME, "127.0.0.1"])
            .expect("server certificate");
        let mut fixture = Self {
            _plane: plane,
            admin,
            registry: HealthRegistry::new(),
            port: 0,
            ca_pem: ca.cert_pem(),
            tls: ServerTls {
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            },
            options,
            server: None,
        };
        fixture.start_server().await;
        fixture
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts the server, on the same port as before if it ran already, with
    /// an empty registry: what a restarted coordinator knows.
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|err| panic!("bind 127.0.0.1:{}: {err}", self.port));
        self.port = listener.local_addr().expect("listener address").port();
        self.registry = HealthRegistry::new();
        let service = HealthService::new(
            AgentAuthenticator::new(self.admin.clone(), AUDIENCE, NAMESPACE, AGENT_SA),
            self.registry.clone(),
            self.options.clone(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let acceptor = self
            .tls
            .acceptor()
            .expect("the test certificate serves TLS");
        let task = tokio::spawn(async move {
            serve(listener, acceptor, service, async {
                let _ = stopped.await;
            })
            .await
        });
        self.server = Some(RunningServer { stop, task });
    }

    /// Stops the server and returns how it ended; panics if its shutdown
    /// hangs (an open agent stream must not hold it up).
    pub async fn stop_server(&mut self) -> Result<(), tonic::transport::Error> {
        let server = self.server.take().expect("the server is not running");
        let _ = server.stop.send(());
        tokio::time::timeout(PATIENCE, server.task)
            .await
            .expect("server shutdown hung with an agent stream open")
            .expect("the server task panicked")
    }

    pub async fn pod_bound_token(
        &self,
        account: &str,
        pod: &str,
        node: &str,
        audience: &str,
    ) -> String {
        crate::api_objects::pod_bound_token(&self.admin, NAMESPACE, account, pod, node, audience)
            .await
            .expect("issue a pod-bound token")
    }

    /// Waits for the registry to satisfy `check`, woken by its change signal
    /// or, for heartbeats (which do not signal), every 50 ms.
    pub async fn wait_for<T>(&self, check: impl Fn(&HealthRegistry) -> Option<T>) -> T {
        let mut changes = self.registry.subscribe();
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(found) = check(&self.registry) {
                    return found;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
            }
        })
        .await
        .expect("the registry never reached the expected state")
    }
}

pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

pub async fn create<K>(api: &Api<K>, object: K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("create {object:?}: {err}"));
}
