//! A coordinator of the release, as far as its agents meet it: the
//! `CheckIn` call on TLS, each request decoded with the release's schema
//! (a request it cannot decode is answered with an error, as the release's
//! generated server would), each answered with a reply of the release's
//! shape. Tokens are not reviewed: what is checked is what the agent sends.

use std::convert::Infallible;
use std::task::{Context, Poll};

use kata_node_agent::daemon::{AgentOptions, run_agent};
use kata_tests::host_root::FakeHost;
use tokio::sync::{mpsc, oneshot};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::*;

/// One check-in as the release coordinator received it: the bearer and
/// the request.
pub type Received = (Option<String>, DynamicMessage);

#[derive(Clone)]
struct ReleaseCoordinator {
    pool: DescriptorPool,
    received: mpsc::UnboundedSender<Received>,
}

impl NamedService for ReleaseCoordinator {
    const NAME: &'static str = "kata.health.v1.NodeHealth";
}

/// The release's reply: the expected configuration, a one-second
/// heartbeat so check-ins come often, and a re-probe request.
fn release_reply(pool: &DescriptorPool) -> DynamicMessage {
    let text = |value: &str| Value::String(value.into());
    let expected = build(
        pool,
        "ExpectedConfig",
        vec![
            ("runtime_handler", text("kata")),
            ("extension_name", text("sandboxed-containers")),
            ("drop_in_path", text("/etc/crio/crio.conf.d/50-kata")),
            ("heartbeat_interval_seconds", Value::U32(1)),
            ("minimum_qemu_version", text("6.2.0")),
            (
                "extension_packages",
                Value::List(vec![text("kata-containers")]),
            ),
        ],
    );
    let reprobe = build(
        pool,
        "ReprobeRequest",
        vec![("reason", text("release test"))],
    );
    build(
        pool,
        "CheckInResponse",
        vec![
            ("expected_config", Value::Message(expected)),
            ("reprobe", Value::Message(reprobe)),
        ],
    )
}

struct CheckInHandler(ReleaseCoordinator);

impl tonic::server::UnaryService<DynamicMessage> for CheckInHandler {
    type Response = DynamicMessage;
    type Future = BoxFuture<tonic::Response<DynamicMessage>, Status>;

    fn call(&mut self, request: tonic::Request<DynamicMessage>) -> Self::Future {
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let _ = self.0.received.send((bearer, request.into_inner()));
        let reply = release_reply(&self.0.pool);
        Box::pin(async move { Ok(tonic::Response::new(reply)) })
    }
}

impl Service<http::Request<tonic::body::Body>> for ReleaseCoordinator {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let coordinator = self.clone();
        Box::pin(async move {
            if request.uri().path() != CHECK_IN {
                let path = request.uri().path().to_owned();
                return Ok(Status::unimplemented(path).into_http());
            }
            let codec = DynamicCodec {
                decode_as: message(&coordinator.pool, "CheckInRequest"),
            };
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(CheckInHandler(coordinator), request).await)
        })
    }
}

/// The release coordinator serving on `listener` with `tls`'s certificate
/// until `stop`; what it receives goes to the returned channel.
pub async fn serve(
    tls: &TlsFiles,
    stop: oneshot::Receiver<()>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let identity = Identity::from_pem(
        std::fs::read(&tls.cert).unwrap(),
        std::fs::read(&tls.key).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (received, receiver) = mpsc::unbounded_channel();
    let coordinator = ReleaseCoordinator {
        pool: release_pool(),
        received,
    };
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .unwrap()
        .add_service(coordinator)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stop.await;
            },
        );
    tokio::spawn(server);
    (address, receiver)
}

/// Today's agent, in this process, on a fake host without KVM, checking in
/// with the coordinator at `address`.
pub fn todays_agent(
    address: SocketAddr,
    tls: &TlsFiles,
    host: &FakeHost,
    token_file: &Path,
    stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), String>> {
    let mut options = AgentOptions::new(
        format!("https://{address}"),
        &tls.ca,
        token_file,
        NODE,
        host.host_root(),
    );
    options.tls_server_name = Some(SERVER_NAME.into());
    options.runner = FakeHost::runner_options();
    options.probe_interval = Duration::from_millis(200);
    tokio::spawn(async move {
        run_agent(options, async {
            let _ = stop.await;
        })
        .await
        .map_err(|e| e.to_string())
    })
}
