#![warn(clippy::too_many_lines)]

// jemalloc rather than the system allocator: the coordinator holds one
// connection per node, made of many small long-lived allocations, and
// jemalloc packs them tighter than glibc does (docs/BENCHMARKS.md has the
// figures). The `system-allocator` feature leaves it out, for heap
// profilers that hook malloc.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options, read through this symbol (its `malloc_conf`,
/// C type `const char *`). One arena: the coordinator's work is I/O on a few
/// threads, and per-thread arenas each keep their own partly used pages. A
/// background thread returns freed pages to the kernel even when the process
/// is quiet, within a second of their last use (`dirty_decay_ms`, 10 s by
/// default) and at once rather than in a second stage (`muzzy_decay_ms`): a
/// burst of agents arriving together would otherwise hold its pages for
/// seconds after it passed. No thread caches (`tcache`): each thread keeps
/// freed objects of every size for itself, and objects of long life then
/// land among them; without, the same objects sit in fewer pages, for some
/// CPU (docs/BENCHMARKS.md has the figures of each).
#[cfg(not(feature = "system-allocator"))]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: the name is the one jemalloc reads, the value a pointer to a
// NUL-terminated static string, as the C declaration requires.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: Option<&'static u8> = Some(
    &b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:false\0"[0],
);

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kata_coordinator::app::{self, AgentServerOptions, RunOptions};
use kata_coordinator::health::ReviewFairness;
use kata_coordinator::health::connection::{ConnectionBounds, cgroup_memory_limit, connection_cap};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::health::marks::brake::BrakePolicy;
use kata_coordinator::health::tls;
use kata_coordinator::leader::LeaseOptions;
use kata_coordinator::operands::{self, OperandSettings};
use kata_coordinator::{logging, manifests};
use kata_proto::contract;

/// Kata Containers operator coordinator: reconciles the KataConfig into
/// MachineConfigs, a MachineConfigPool, node labels and the `kata` RuntimeClass.
#[derive(Parser)]
#[command(name = "coordinator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the KataConfig CustomResourceDefinition (YAML).
    Crd,
    /// Print the KataRuntimeProfile CustomResourceDefinition (YAML).
    ProfileCrd,
    /// Print the coordinator's ClusterRole, Role and their bindings (YAML).
    Rbac,
    /// Run the controller against the cluster of the current kubeconfig or
    /// the in-cluster service account.
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, in `tracing` EnvFilter syntax (for example `info,kata_coordinator=debug`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: std::net::SocketAddr,
    /// Loopback address for `GET`/`PUT /log-level` (reach it with
    /// `kubectl port-forward`); a non-loopback address is refused.
    #[arg(long, env = "ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    admin_listen: std::net::SocketAddr,
    /// Address of the agents' gRPC health channel. Without TLS files the
    /// channel is off and nodes get no health labels.
    #[arg(long, env = "GRPC_LISTEN", default_value = "0.0.0.0:8443")]
    grpc_listen: std::net::SocketAddr,
    /// PEM certificate of the gRPC server.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Audience the agents' projected tokens must carry.
    #[arg(long, env = "AGENT_AUDIENCE", default_value = contract::TOKEN_AUDIENCE)]
    agent_audience: String,
    /// Namespace of the node-agent ServiceAccount.
    #[arg(long, env = "POD_NAMESPACE", default_value = contract::DEFAULT_NAMESPACE)]
    agent_namespace: String,
    /// Name of the node-agent ServiceAccount.
    #[arg(long, env = "AGENT_SERVICE_ACCOUNT", default_value = contract::AGENT_SERVICE_ACCOUNT)]
    agent_service_account: String,
    /// Seconds between the agents' heartbeats; a node whose agent is
    /// silent for three of them loses the runtime label.
    #[arg(long, env = "HEARTBEAT_SECONDS", default_value_t = 30)]
    heartbeat_seconds: u64,
    /// Seconds the node-agent must report a node KVM-capable, without a
    /// break, before the node is labelled capable (with
    /// `checkNodeEligibility`: before it joins the Kata pool, a reboot).
    #[arg(long, env = "ELIGIBILITY_JOIN_SECONDS", default_value_t = MarkPolicy::default().join_dwell.as_secs())]
    eligibility_join_seconds: u64,
    /// Seconds the node-agent must report a node incapable (or stay silent
    /// after saying so) before the capable label comes off (with
    /// `checkNodeEligibility`: before it leaves the Kata pool, a reboot).
    #[arg(long, env = "ELIGIBILITY_LEAVE_SECONDS", default_value_t = MarkPolicy::default().leave_dwell.as_secs())]
    eligibility_leave_seconds: u64,
    /// The fleet-wide brake: when more than this percentage of the
    /// KVM-capable nodes would leave the Kata pool within the window, none
    /// does (KataConfig `Degraded=True/FleetBrakeEngaged`); 100 disables it.
    #[arg(long, env = "FLEET_BRAKE_PERCENT", default_value_t = BrakePolicy::DEFAULT.max_share_percent, value_parser = clap::value_parser!(u32).range(0..=100))]
    fleet_brake_percent: u32,
    /// The brake's window, in seconds.
    #[arg(long, env = "FLEET_BRAKE_WINDOW_SECONDS", default_value_t = BrakePolicy::DEFAULT.window.as_secs())]
    fleet_brake_window_seconds: u64,
    /// The brake engages only when at least this many nodes would leave:
    /// with 2, one broken node of a small cluster still leaves.
    #[arg(long, env = "FLEET_BRAKE_MIN_NODES", default_value_t = BrakePolicy::DEFAULT.min_nodes)]
    fleet_brake_min_nodes: usize,
    /// Seconds a node may stay updating (Machine Config Operator state
    /// Working) before the KataConfig and a Warning Event say it is stuck
    /// and what holds its drain.
    #[arg(long, env = "STUCK_ROLLOUT_SECONDS", default_value_t = kata_coordinator::controller::DEFAULT_STUCK_AFTER.as_secs())]
    stuck_rollout_seconds: u64,
    /// Run as one of several replicas: act only while holding the Lease
    /// `--lease-name` in the agents' namespace.
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "kata-operator-coordinator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[command(flatten)]
    agent_connections: AgentConnectionArgs,
    #[command(flatten)]
    operands: OperandArgs,
}

/// The operands the coordinator creates (the node-agent DaemonSet, the
/// admission policies), from its own Deployment's settings.
#[derive(Args)]
struct OperandArgs {
    /// Create and keep the node-agent DaemonSet and the admission policies.
    #[arg(long, env = "MANAGE_OPERANDS", default_value_t = true, action = clap::ArgAction::Set)]
    manage_operands: bool,
    /// The node-agent's image; OLM sets it from the CSV's relatedImages.
    #[arg(long, env = operands::NODE_AGENT_IMAGE_ENV)]
    node_agent_image: Option<String>,
    /// Where the agents reach the health channel; default: the Service
    /// `kata-coordinator` in the operator's namespace, port 8443.
    #[arg(long, env = "AGENT_COORDINATOR_URL")]
    agent_coordinator_url: Option<String>,
    /// The host directory the agents mount read-only as the host's root.
    #[arg(long, env = "AGENT_HOST_ROOT", default_value = "/")]
    agent_host_root: String,
    /// The coordinator's Deployment, owner of the DaemonSet (so removing
    /// the operator removes it).
    #[arg(long, env = "OWNER_DEPLOYMENT", default_value = operands::OWNER_DEPLOYMENT)]
    owner_deployment: String,
}

impl OperandArgs {
    fn settings(self, namespace: &str) -> Option<OperandSettings> {
        self.manage_operands.then(|| OperandSettings {
            namespace: namespace.to_owned(),
            node_agent_image: self.node_agent_image.filter(|image| !image.is_empty()),
            coordinator_url: self
                .agent_coordinator_url
                .unwrap_or_else(|| format!("https://kata-coordinator.{namespace}.svc:8443")),
            host_root: self.agent_host_root,
            owner_deployment: Some(self.owner_deployment),
            resync: Duration::from_secs(30),
        })
    }
}

/// How many connections the agents' port holds, and for how long.
#[derive(Args)]
struct AgentConnectionArgs {
    /// Connections held at once on the agents' port; 0: sized from the
    /// cgroup memory limit (/sys/fs/cgroup/memory.max) at 256 KiB a
    /// connection after 128 MiB for the rest, 12,000 without a limit.
    #[arg(long, env = "AGENT_MAX_CONNECTIONS", default_value_t = 0)]
    agent_max_connections: usize,
    /// Connections held at once from one address.
    #[arg(long, env = "AGENT_MAX_CONNECTIONS_PER_PEER", default_value_t = tls::MAX_CONNECTIONS_PER_PEER)]
    agent_max_connections_per_peer: usize,
    /// Seconds a connection may carry no call before it is closed.
    #[arg(long, env = "AGENT_IDLE_TIMEOUT_SECONDS", default_value_t = ConnectionBounds::default().idle_timeout.as_secs())]
    agent_idle_timeout_seconds: u64,
    /// Seconds after which a connection is asked to go (GOAWAY).
    #[arg(long, env = "AGENT_MAX_CONNECTION_AGE_SECONDS", default_value_t = ConnectionBounds::default().max_age.as_secs())]
    agent_max_connection_age_seconds: u64,
    /// Seconds a connection asked to go may stay before it is closed.
    #[arg(long, env = "AGENT_MAX_CONNECTION_AGE_GRACE_SECONDS", default_value_t = ConnectionBounds::default().max_age_grace.as_secs())]
    agent_max_connection_age_grace_seconds: u64,
    /// Seconds a call has, from its headers to its answer, authentication
    /// included.
    #[arg(long, env = "AGENT_REQUEST_DEADLINE_SECONDS", default_value_t = ConnectionBounds::default().request_deadline.as_secs())]
    agent_request_deadline_seconds: u64,
    /// TokenReviews a second one node's agent tokens may cost, sustained.
    #[arg(long, env = "AGENT_REVIEW_RATE", default_value_t = ReviewFairness::default().per_node_rate)]
    agent_review_rate: f64,
    /// TokenReviews one node's agent tokens may cost at once.
    #[arg(long, env = "AGENT_REVIEW_BURST", default_value_t = ReviewFairness::default().per_node_burst)]
    agent_review_burst: u32,
}

impl AgentConnectionArgs {
    fn review_fairness(&self) -> ReviewFairness {
        ReviewFairness {
            // A rate of 0 (or junk) would lock a node out for good.
            per_node_rate: if self.agent_review_rate.is_finite() && self.agent_review_rate > 0.0 {
                self.agent_review_rate
            } else {
                ReviewFairness::default().per_node_rate
            },
            per_node_burst: self.agent_review_burst.max(1),
        }
    }

    fn limits(&self) -> tls::Limits {
        let max_connections = match self.agent_max_connections {
            0 => connection_cap(cgroup_memory_limit(), tls::MAX_CONNECTIONS),
            cap => cap,
        };
        tls::Limits {
            max_connections,
            max_connections_per_peer: self.agent_max_connections_per_peer.max(1),
            bounds: ConnectionBounds {
                idle_timeout: Duration::from_secs(self.agent_idle_timeout_seconds.max(1)),
                max_age: Duration::from_secs(self.agent_max_connection_age_seconds.max(1)),
                max_age_grace: Duration::from_secs(self.agent_max_connection_age_grace_seconds),
                request_deadline: Duration::from_secs(self.agent_request_deadline_seconds.max(1)),
            },
            ..tls::Limits::default()
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", manifests::crd_yaml());
            ExitCode::SUCCESS
        }
        Command::ProfileCrd => {
            print!("{}", manifests::profile_crd_yaml());
            ExitCode::SUCCESS
        }
        Command::Rbac => {
            print!("{}", kata_coordinator::app::rbac_yaml());
            ExitCode::SUCCESS
        }
        Command::Run(args) => run(*args),
    }
}

/// `coordinator run`: the logger, the options from the flags, then the
/// coordinator until SIGTERM.
fn run(args: RunArgs) -> ExitCode {
    let log_control =
        match logging::init(&args.log_level, matches!(args.log_format, LogFormat::Json)) {
            Ok(control) => control,
            Err(e) => {
                eprintln!("coordinator: --log-level: {e}");
                return ExitCode::from(2);
            }
        };
    let rollout = app::RolloutWatch {
        stuck_after: Duration::from_secs(args.stuck_rollout_seconds),
    };
    serve(run_options(args, log_control), rollout)
}

fn run_options(args: RunArgs, log_control: logging::LogFilter) -> RunOptions {
    let RunArgs {
        log_format: _,
        log_level: _,
        metrics_listen,
        admin_listen,
        grpc_listen,
        tls_cert_file,
        tls_key_file,
        agent_audience,
        agent_namespace,
        agent_service_account,
        heartbeat_seconds,
        eligibility_join_seconds,
        eligibility_leave_seconds,
        fleet_brake_percent,
        fleet_brake_window_seconds,
        fleet_brake_min_nodes,
        stuck_rollout_seconds: _,
        leader_elect,
        lease_name,
        identity,
        agent_connections,
        operands,
    } = args;
    let operands = operands.settings(&agent_namespace);
    let heartbeat = Duration::from_secs(heartbeat_seconds.max(1));
    let agents = tls_cert_file
        .zip(tls_key_file)
        .map(|(tls_cert_file, tls_key_file)| AgentServerOptions {
            listen: grpc_listen,
            tls_cert_file,
            tls_key_file,
            audience: agent_audience,
            namespace: agent_namespace.clone(),
            service_account: agent_service_account,
            heartbeat,
            limits: agent_connections.limits(),
            review_fairness: agent_connections.review_fairness(),
        });
    let leader_election = leader_elect.then(|| LeaseOptions {
        namespace: agent_namespace.clone(),
        name: lease_name,
        identity: identity.unwrap_or_else(|| format!("coordinator-{}", std::process::id())),
        duration: Duration::from_secs(15),
        retry: Duration::from_secs(2),
    });
    RunOptions {
        heap: heap_reader(),
        log_filter: Some(kata_coordinator::app::AdminEndpoint {
            listen: admin_listen,
            filter: log_control,
        }),
        leader_election,
        agents,
        operands,
        metrics_listen,
        mark_policy: MarkPolicy {
            grace: heartbeat * 3,
            join_dwell: Duration::from_secs(eligibility_join_seconds),
            leave_dwell: Duration::from_secs(eligibility_leave_seconds),
            brake: BrakePolicy {
                max_share_percent: fleet_brake_percent,
                window: Duration::from_secs(fleet_brake_window_seconds),
                min_nodes: fleet_brake_min_nodes,
            },
            ..MarkPolicy::default()
        },
    }
}

/// Runs the coordinator on a runtime of its own until SIGTERM.
fn serve(options: RunOptions, rollout: app::RolloutWatch) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("coordinator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let shutdown = match app::termination_signal() {
            Ok(shutdown) => shutdown,
            Err(e) => {
                eprintln!("coordinator: cannot handle SIGTERM: {e}");
                return ExitCode::FAILURE;
            }
        };
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(e) => {
                eprintln!(
                    "coordinator: cannot build a Kubernetes client (kubeconfig or in-cluster config): {e}"
                );
                return ExitCode::FAILURE;
            }
        };
        match app::run_until(client, options, rollout, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("coordinator: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Whatever still runs (the gRPC server closing its streams, a
    // request in flight) gets a moment, not the pod's whole grace.
    runtime.shutdown_timeout(Duration::from_secs(2));
    outcome
}

/// jemalloc's figures of the heap, for `/metrics`: what the program holds
/// against what the process keeps resident tells live objects from room
/// between them.
#[cfg(not(feature = "system-allocator"))]
fn heap_reader() -> Option<kata_coordinator::metrics::HeapReader> {
    fn read() -> Option<kata_coordinator::metrics::HeapFigures> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tikv_jemalloc_ctl::{epoch, stats};
        static WARNED: AtomicBool = AtomicBool::new(false);
        let figures = || -> tikv_jemalloc_ctl::Result<_> {
            // The figures are a snapshot, taken anew when the epoch advances.
            epoch::advance()?;
            Ok(kata_coordinator::metrics::HeapFigures {
                allocated: stats::allocated::read()? as u64,
                active: stats::active::read()? as u64,
                resident: stats::resident::read()? as u64,
                metadata: stats::metadata::read()? as u64,
            })
        };
        match figures() {
            Ok(figures) => Some(figures),
            Err(e) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "jemalloc's heap figures cannot be read; \
                         kata_operator_coordinator_heap_bytes is left out of /metrics"
                    );
                }
                None
            }
        }
    }
    Some(read)
}

/// The system allocator keeps no figures of its own.
#[cfg(feature = "system-allocator")]
fn heap_reader() -> Option<kata_coordinator::metrics::HeapReader> {
    None
}
