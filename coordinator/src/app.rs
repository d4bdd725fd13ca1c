//! The running coordinator: the KataConfig controller, the agents' gRPC
//! server, the node labeller and the metrics endpoint, wired together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use tracing::info;

use crate::controller::{self, KataConfigController};
use crate::endpoints::Readiness;
use crate::health::marks::MarkPolicy;
use crate::health::{AgentAuthenticator, HealthOptions, HealthRegistry, HealthService, ServerTls};
use crate::leader::{LeaderElector, LeaseOptions};
use crate::metrics::Metrics;

/// Where and how the agents' gRPC server listens.
#[derive(Clone, Debug)]
pub struct AgentServerOptions {
    pub listen: SocketAddr,
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
    /// The audience of the agents' projected tokens.
    pub audience: String,
    pub namespace: String,
    pub service_account: String,
    pub heartbeat: Duration,
    /// How many connections the server holds, and for how long.
    pub limits: crate::health::tls::Limits,
    /// How many TokenReviews one node's agent tokens may cost.
    pub review_fairness: crate::health::ReviewFairness,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// `None`: no agents (the KataConfig lifecycle alone).
    pub agents: Option<AgentServerOptions>,
    /// `None`: the node-agent DaemonSet and the admission policies are
    /// left to whoever installs them.
    pub operands: Option<crate::operands::OperandSettings>,
    pub metrics_listen: SocketAddr,
    pub mark_policy: MarkPolicy,
    /// With several replicas: the lease that decides which one acts. The
    /// others serve only `/healthz` (and report not ready) until they lead.
    pub leader_election: Option<LeaseOptions>,
    /// The live log filter, changeable through `PUT /log-level` on a
    /// loopback address of its own.
    pub log_filter: Option<AdminEndpoint>,
    /// Reads the allocator's figures for `/metrics`, when the binary's
    /// allocator keeps them.
    pub heap: Option<crate::metrics::HeapReader>,
}

/// Where `PUT /log-level` is served, and the filter it changes.
#[derive(Clone, Debug)]
pub struct AdminEndpoint {
    /// Must be a loopback address: the endpoint has no authentication.
    pub listen: SocketAddr,
    pub filter: crate::logging::LogFilter,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--admin-listen {0}: /log-level has no authentication, so it listens on loopback only")]
    AdminNotLoopback(SocketAddr),
    #[error("the agents' TLS certificate: {0}")]
    Tls(#[from] crate::health::TlsError),
    #[error("lost the leader lease; exiting so a fresh process can compete again")]
    LostLeadership,
}

/// `/log-level` has no authentication: it may only listen on loopback.
pub fn check_admin_listen(listen: SocketAddr) -> Result<(), AppError> {
    if listen.ip().is_loopback() {
        Ok(())
    } else {
        Err(AppError::AdminNotLoopback(listen))
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AppError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Listen { addr, source })
}

/// [`run_until`] with the rollout watched as in production, until the
/// future is dropped: how the integration tests start a whole coordinator.
pub async fn run(client: Client, options: RunOptions) -> Result<(), AppError> {
    run_until(
        client,
        options,
        RolloutWatch::default(),
        std::future::pending(),
    )
    .await
}

/// Completes on the first SIGTERM or SIGINT. Created before anything else
/// runs, so a signal that arrives while the coordinator starts stops it
/// cleanly too instead of killing it.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()> + Send + Sync + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "stopping");
    })
}

/// How the KataConfig controller watches the rollout (`--stuck-rollout-seconds`).
#[derive(Clone, Copy, Debug)]
pub struct RolloutWatch {
    /// See [`controller::Options::stuck_after`].
    pub stuck_after: Duration,
}

impl Default for RolloutWatch {
    fn default() -> Self {
        Self {
            stuck_after: controller::DEFAULT_STUCK_AFTER,
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz`, and `/log-level` when asked.
async fn serve_endpoints(
    parts: &mut tokio::task::JoinSet<()>,
    options: &RunOptions,
    registry: prometheus_client::registry::Registry,
    readiness: &Readiness,
) -> Result<(), AppError> {
    let metrics_listener = bind(options.metrics_listen).await?;
    info!(addr = %options.metrics_listen, "serving /metrics, /healthz and /readyz");
    let http_readiness = readiness.clone();
    parts.spawn(async move {
        if let Err(error) =
            crate::endpoints::serve(metrics_listener, registry, http_readiness).await
        {
            tracing::error!(%error, "the metrics server stopped");
        }
    });
    if let Some(admin) = options.log_filter.clone() {
        check_admin_listen(admin.listen)?;
        let admin_listener = bind(admin.listen).await?;
        info!(addr = %admin.listen, "serving PUT /log-level");
        parts.spawn(async move {
            if let Err(error) = crate::endpoints::serve_admin(admin_listener, admin.filter).await {
                tracing::error!(%error, "the log-level server stopped");
            }
        });
    }
    Ok(())
}

/// What the node labeller reads: the controller's caches, and its policy.
struct LabellerInputs {
    nodes: kube::runtime::reflector::Store<crate::node::CachedNode>,
    configs: kube::runtime::reflector::Store<crate::api::KataConfig>,
    policy: MarkPolicy,
    profiles: crate::profiles::InForce,
}

/// Starts the agents' gRPC server and the node labeller. The server runs
/// until the returned sender is dropped.
async fn start_agents(
    parts: &mut tokio::task::JoinSet<()>,
    client: &Client,
    agents: AgentServerOptions,
    metrics: &Metrics,
    labeller: LabellerInputs,
) -> Result<tokio::sync::oneshot::Sender<()>, AppError> {
    // Re-read when service-ca rotates the Secret under a running pod.
    let acceptor = ServerTls::reloading(&agents.tls_cert_file, &agents.tls_key_file)?;
    let listener = bind(agents.listen).await?;
    let health = HealthRegistry::with_profiles(labeller.profiles.clone());
    let authenticator = AgentAuthenticator::new(
        client.clone(),
        agents.audience,
        agents.namespace,
        agents.service_account,
    )
    .with_metrics(metrics.clone())
    .with_fairness(agents.review_fairness);
    let health_options = HealthOptions {
        heartbeat_interval: agents.heartbeat,
        extension_name: crate::mco::names::EXTENSION.into(),
        limits: agents.limits,
        ..HealthOptions::default()
    };
    let service =
        HealthService::new(authenticator, health.clone(), health_options).with_metrics(metrics);
    info!(addr = %agents.listen, "serving the agents' health channel");
    // Not aborted with the other parts but shut down: the server then
    // ends every open agent stream, so agents reconnect at once (to this
    // process's successor) instead of talking to a server that is gone.
    let (shutdown_guard, grpc_stop) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async {
            let _ = grpc_stop.await;
        };
        if let Err(error) = crate::health::serve(listener, acceptor, service, stop).await {
            tracing::error!(%error, "the agents' gRPC server stopped");
        }
    });
    parts.spawn(crate::health::labeller::run(
        client.clone(),
        health,
        labeller.nodes,
        labeller.configs,
        labeller.policy,
        metrics.clone(),
        crate::mco::observe::current_config,
    ));
    Ok(shutdown_guard)
}

/// Runs every part, the rollout watched as `rollout` says, until `shutdown`
/// completes: then every part stops within seconds whatever it is doing
/// (waiting for the APIs, waiting for the lease, reconciling), a held lease
/// is released, and it returns `Ok`. Fails at once, naming what is wrong,
/// when a certificate cannot be read or a port cannot be bound.
pub async fn run_until(
    client: Client,
    options: RunOptions,
    rollout: RolloutWatch,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), AppError> {
    let shutdown = shutdown.boxed().shared();
    let metrics = Metrics {
        heap: options.heap,
        ..Metrics::default()
    };
    metrics.count_writes_to(&crate::mco::SERVED_KINDS);
    let registry = metrics.registry();
    let leader_gauge = metrics.leader.clone();
    let readiness = Readiness::default();
    // Every part lives in this set: when `run` is dropped they all stop, so
    // none outlives the coordinator.
    let mut parts = tokio::task::JoinSet::new();
    serve_endpoints(&mut parts, &options, registry, &readiness).await?;

    let required = crate::prerequisites::required_kinds(&crate::mco::SERVED_KINDS);
    readiness.not_ready("checking that the API server serves the required APIs");
    tokio::select! {
        () = crate::prerequisites::wait_until_served(&client, &readiness, &required) => {}
        () = shutdown.clone() => return Ok(()),
    }

    let elector = options
        .leader_election
        .map(|lease| LeaderElector::new(client.clone(), lease));
    if let Some(elector) = &elector {
        info!("waiting to become the leader");
        readiness.not_ready("standby: another replica holds the leader lease");
        tokio::select! {
            () = elector.acquire() => {}
            () = shutdown.clone() => {
                // A write of ours may have won the lease as the signal came.
                elector.release().await;
                return Ok(());
            }
        }
    }

    // Kept by the controller's watches, read by the labeller as well.
    let node_writer = kube::runtime::reflector::store::Writer::<crate::node::CachedNode>::default();
    let nodes = node_writer.as_reader();
    let controller = KataConfigController::new(
        client.clone(),
        controller::Options {
            metrics: metrics.clone(),
            stuck_after: rollout.stuck_after,
            ..Default::default()
        },
        node_writer,
        crate::mco::cluster::backend(&client),
    );
    // Dropped with `run`, which shuts the gRPC server down.
    let mut grpc_shutdown = None;
    if let Some(agents) = options.agents {
        let labeller = LabellerInputs {
            nodes,
            configs: controller.configs(),
            policy: options.mark_policy,
            profiles: controller.profiles_in_force(),
        };
        grpc_shutdown = Some(start_agents(&mut parts, &client, agents, &metrics, labeller).await?);
    }

    if let Some(settings) = options.operands {
        let applier =
            crate::applier::Applier::unbudgeted(client.clone(), metrics.api_writes.clone());
        parts.spawn(crate::operands::run(client.clone(), applier, settings));
    }
    readiness.set(true);
    leader_gauge.set(1);
    let outcome = match &elector {
        Some(elector) => tokio::select! {
            () = controller.run_until(shutdown) => Ok(()),
            () = elector.hold() => Err(AppError::LostLeadership),
        },
        None => {
            controller.run_until(shutdown).await;
            Ok(())
        }
    };
    readiness.not_ready("stopping");
    leader_gauge.set(0);
    parts.shutdown().await;
    drop(grpc_shutdown);
    // After the parts stopped, so no write of ours follows the hand-over.
    if let (Ok(()), Some(elector)) = (&outcome, &elector) {
        elector.release().await;
    }
    outcome
}

/// The KataConfig controller alone, with its own caches and the Machine
/// Config Operator backend, without the health channel; runs until the
/// process ends or its write budget is spent.
pub async fn run_controller(
    client: Client,
    options: controller::Options,
    node_writer: kube::runtime::reflector::store::Writer<crate::node::CachedNode>,
) {
    let backend = crate::mco::cluster::backend(&client);
    KataConfigController::new(client, options, node_writer, backend)
        .run_until(std::future::pending())
        .await
}

/// The coordinator's ClusterRole rules with the MCO backend: its own and
/// the backend's (what `coordinator rbac` prints and the bundle carries).
pub fn cluster_permissions() -> Vec<crate::rbac::Permission> {
    crate::rbac::cluster_permissions(crate::mco::rbac::PERMISSIONS)
}

/// The coordinator's ClusterRole with the MCO backend.
pub fn cluster_role() -> k8s_openapi::api::rbac::v1::ClusterRole {
    crate::rbac::cluster_role(crate::mco::rbac::PERMISSIONS)
}

/// The RBAC documents `coordinator rbac` prints.
pub fn rbac_yaml() -> String {
    crate::rbac::rbac_yaml(crate::mco::rbac::PERMISSIONS)
}
