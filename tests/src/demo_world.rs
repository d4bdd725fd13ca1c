//! The whole system on one machine, shared by `make demo` (the `demo` binary)
//! and the end-to-end health test: the coordinator (reconciler, gRPC health
//! server, labeller) in this process against a real API server, and
//! node-agents probing host roots and reporting over TLS with pod-bound
//! ServiceAccount tokens, as the DaemonSet's projected tokens would be.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kata_coordinator::app::{AgentServerOptions, AppError, RunOptions};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_node_agent::RunnerOptions;
use kata_node_agent::daemon::{AgentOptions, run_agent};
use kata_proto::contract;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::Error;
use crate::api_objects::pod_bound_token;
use crate::host_root::FakeHost;
use crate::http::scrape_metric;
use crate::pki::TlsFiles;

/// The audience the agents' tokens are bound to.
pub const AUDIENCE: &str = contract::TOKEN_AUDIENCE;
pub const NAMESPACE: &str = contract::DEFAULT_NAMESPACE;
/// The ServiceAccount the agents run as.
pub const AGENT_ACCOUNT: &str = contract::AGENT_SERVICE_ACCOUNT;
/// The name in the coordinator's certificate that agents verify.
const SERVER_NAME: &str = "localhost";
const FIELD_MANAGER: &str = "kata-tests";

/// A loopback address that was free a moment ago.
pub fn free_addr() -> Result<SocketAddr, Error> {
    crate::control_plane::free_port().map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// A worker as it is before the extension: hardware and an ostree system,
/// no CRI-O drop-in, shim or QEMU (the MCO simulator installs them). With
/// `kvm`, its `/dev/kvm` is the machine's real one (needs `/dev/kvm` and the
/// right to `mknod`).
pub fn uninstalled_host(kvm: bool) -> Result<FakeHost, Error> {
    let host = FakeHost::good()
        .without_drop_in()
        .without_kata_shim()
        .without_kata_config()
        .without_qemu()
        .without_extension();
    if kvm {
        host.with_real_kvm()
            .map_err(|e| Error::Setup(format!("a fake root with the real /dev/kvm: {e}")))
    } else {
        Ok(host)
    }
}

/// Copies a directory tree (files with their modes, directories, symlinks
/// verbatim, device nodes and FIFOs by their numbers) to `to`, which must not
/// exist yet: a [`FakeHost`] lives in a temporary directory, and the demo
/// keeps its hosts where they survive it.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::symlink_metadata(from).map_err(|e| Error::io(from, e))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
        for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
            let entry = entry.map_err(|e| Error::io(from, e))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions()).map_err(|e| Error::io(to, e))
    } else if kind.is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| Error::io(from, e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| Error::io(to, e))
    } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
        let flag = if kind.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else if kind.is_block_device() {
            nix::sys::stat::SFlag::S_IFBLK
        } else {
            nix::sys::stat::SFlag::S_IFIFO
        };
        nix::sys::stat::mknod(
            to,
            flag,
            nix::sys::stat::Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )
        .map_err(|e| Error::io(to, e.into()))
    } else {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| Error::io(to, e))
    }
}

/// The namespace and ServiceAccount the agents' tokens are issued for.
pub async fn create_agent_identity(client: &Client) -> Result<(), Error> {
    let apply = PatchParams::apply(FIELD_MANAGER);
    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
            })),
        )
        .await
        .map_err(Error::Kube)?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .patch(
            AGENT_ACCOUNT,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": AGENT_ACCOUNT, "namespace": NAMESPACE}
            })),
        )
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// The coordinator's health server on `grpc`, with the certificate in `tls`,
/// for agents with tokens from [`Agent::start`], and a 500 ms heartbeat.
pub fn agent_server_options(grpc: SocketAddr, tls: &TlsFiles) -> AgentServerOptions {
    AgentServerOptions {
        listen: grpc,
        tls_cert_file: tls.cert.clone(),
        tls_key_file: tls.key.clone(),
        audience: AUDIENCE.into(),
        namespace: NAMESPACE.into(),
        service_account: AGENT_ACCOUNT.into(),
        heartbeat: Duration::from_millis(500),
        // Every agent of a test connects from 127.0.0.1.
        limits: kata_coordinator::health::tls::Limits {
            max_connections_per_peer: kata_coordinator::health::tls::MAX_CONNECTIONS,
            ..Default::default()
        },
        review_fairness: kata_coordinator::health::ReviewFairness::default(),
    }
}

/// `kata_coordinator::app::run` in this process, serving agents on `grpc`.
pub struct Coordinator {
    task: JoinHandle<Result<(), AppError>>,
    pub metrics: SocketAddr,
}

impl Coordinator {
    pub fn start(
        client: Client,
        tls: &TlsFiles,
        grpc: SocketAddr,
        mark_policy: MarkPolicy,
    ) -> Result<Coordinator, Error> {
        let metrics = free_addr()?;
        let options = RunOptions {
            leader_election: None,
            agents: Some(agent_server_options(grpc, tls)),
            metrics_listen: metrics,
            operands: None,
            mark_policy,
            log_filter: None,
            heap: None,
        };
        let task = tokio::spawn(kata_coordinator::app::run(client, options));
        Ok(Coordinator { task, metrics })
    }

    /// One metric's value from the coordinator's own `/metrics` endpoint.
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        scrape_metric(self.metrics, name).await
    }

    /// Whether it stopped by itself (it runs until stopped otherwise).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it and waits until it has, so no write of its lands afterwards.
    pub async fn stop(self) -> Result<(), String> {
        self.task.abort();
        match self.task.await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// How an [`Agent`] probes its host root.
pub struct Probing {
    runner: RunnerOptions,
    interval: Duration,
}

impl Probing {
    /// For a real node on this machine (host root `/`): the agent's own
    /// defaults (the running CRI-O found from its command line), every 2 s.
    pub fn this_machine() -> Self {
        Probing {
            runner: RunnerOptions::default(),
            interval: Duration::from_secs(2),
        }
    }
}

/// A node-agent daemon in this process, for one node and its host root.
pub struct Agent {
    pub node: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), String>>,
}

impl Agent {
    /// Issues the agent a token bound to a Pod on `node` (written under
    /// `token_dir`) and starts it against the coordinator at `grpc`.
    pub async fn start(
        client: &Client,
        node: &str,
        host_root: &Path,
        grpc: SocketAddr,
        tls: &TlsFiles,
        token_dir: &Path,
    ) -> Result<Agent, Error> {
        let probing = Probing {
            runner: FakeHost::runner_options(),
            interval: Duration::from_millis(200),
        };
        Agent::start_probing(client, node, host_root, probing, grpc, tls, token_dir).await
    }

    /// [`Agent::start`] probing as `probing` says.
    pub async fn start_probing(
        client: &Client,
        node: &str,
        host_root: &Path,
        probing: Probing,
        grpc: SocketAddr,
        tls: &TlsFiles,
        token_dir: &Path,
    ) -> Result<Agent, Error> {
        let token = pod_bound_token(
            client,
            NAMESPACE,
            AGENT_ACCOUNT,
            &format!("node-agent-{node}"),
            node,
            AUDIENCE,
        )
        .await?;
        let token_file = token_dir.join(node);
        std::fs::write(&token_file, token).map_err(|e| Error::io(&token_file, e))?;
        let mut options = AgentOptions::new(
            format!("https://127.0.0.1:{}", grpc.port()),
            &tls.ca,
            token_file,
            node,
            kata_node_agent::HostRoot::new(host_root),
        );
        options.tls_server_name = Some(SERVER_NAME.into());
        options.runner = probing.runner;
        options.probe_interval = probing.interval;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run_agent(options, async {
                let _ = stopped.await;
            })
            .await
            .map_err(|e| e.to_string())
        });
        Ok(Agent {
            node: node.to_string(),
            stop,
            task,
        })
    }

    /// Asks it to stop and waits until it has; its error if it failed.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| e.to_string())?
    }
}

/// What the operator shows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    /// The machine-config daemon's state annotation (Done, Working, ...).
    pub mco_state: String,
    pub labels: BTreeMap<String, String>,
    /// The `KataRuntimeReady` condition: status, reason, message.
    pub ready: Option<(String, String, String)>,
}

impl NodeState {
    fn has(&self, label: &str) -> bool {
        self.labels.get(label).is_some_and(|v| v == "true")
    }

    /// The agent proved the hardware can run Kata.
    pub fn capable(&self) -> bool {
        self.has(names::KATA_CAPABLE_LABEL)
    }

    /// In the `kata-oc` pool.
    pub fn targeted(&self) -> bool {
        self.labels.contains_key(mco::KATA_POOL_ROLE_LABEL)
    }

    /// The runtime is installed and healthy.
    pub fn runtime_ready(&self) -> bool {
        self.has(names::KATA_RUNTIME_LABEL)
    }
}

/// Every node's state, by name.
pub async fn node_states(client: &Client) -> Result<Vec<NodeState>, Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .map_err(Error::Kube)?;
    Ok(nodes
        .items
        .into_iter()
        .map(|node| {
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == names::NODE_CONDITION))
                .map(|c| {
                    (
                        c.status.clone(),
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                });
            NodeState {
                name: node.name_any(),
                mco_state: node
                    .annotations()
                    .get(mco::STATE)
                    .cloned()
                    .unwrap_or_default(),
                labels: node.labels().clone(),
                ready,
            }
        })
        .collect())
}

/// The names of the nodes where `label` is `"true"`, sorted.
pub async fn nodes_labelled(client: &Client, label: &str) -> Result<Vec<String>, Error> {
    Ok(node_states(client)
        .await?
        .into_iter()
        .filter(|n| n.has(label))
        .map(|n| n.name)
        .collect())
}

/// One node's `KataRuntimeReady` condition: status, reason, message.
pub async fn ready_condition(
    client: &Client,
    node: &str,
) -> Result<Option<(String, String, String)>, Error> {
    Ok(node_states(client)
        .await?
        .into_iter()
        .find(|n| n.name == node)
        .and_then(|n| n.ready))
}

/// Waits until the MCO simulator has adopted every node (each carries a
/// current config): nodes join already on their pool's configuration, as
/// installed machines do, and a node labelled before that would be adopted
/// straight into the kata pool.
pub async fn wait_until_adopted(client: &Client, timeout: Duration) -> Result<(), Error> {
    let nodes = Api::<Node>::all(client.clone());
    crate::eventually("the MCO simulator to adopt every node", timeout, || async {
        let list = nodes
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(list
            .items
            .iter()
            .all(|n| n.annotations().contains_key(mco::CURRENT_CONFIG)))
    })
    .await
}

/// Where a demo keeps a node's host root: `STATE_DIR/hosts/NODE`.
pub fn host_dir(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("hosts").join(node)
}
