//! A real Kubernetes node for the tests: a control plane fit for a kubelet
//! ([`crate::control_plane::Options::for_node`]), kube-controller-manager,
//! kube-scheduler, a CRI-O set up for a kubelet and the kubelet itself, all
//! built by `tests/scripts/build-node.sh` (its directory in
//! `KATA_NODE_BIN_DIR`) and the other build scripts.
//!
//! What it covers: scheduling (RuntimeClass nodeSelector, overhead set by
//! admission), the kubelet creating sandboxes through CRI-O's runtime
//! handlers, pod cgroups, volumes and tokens as a kubelet mounts them. What it
//! does not: Kata's shim (it cannot be built here; the `kata` handler's
//! `runtime_path` is a stand-in that refuses, see [`stand_ins`]), kube-proxy,
//! cluster DNS, any registry (images are built locally with buildah).
//!
//! CRI-O starts without the `kata` handler. It comes as the MCO delivers it:
//! [`RealNode::apply_rendered_config`] plays the machine-config daemon on
//! the node, writing a rendered config's files under the node's root
//! directory (its `/etc/crio/crio.conf.d` is CRI-O's `--config-dir`), and
//! reloads CRI-O.
//!
//! The node is machine-global (the kubelet's `/kubepods` cgroups, its
//! device-plugin socket, CRI-O's fixed socket), so one runs at a time: a test
//! holds `exclusive(crio_socket)` and keeps its checks in one function.
//! Dropping a [`RealNode`], also while unwinding from a panic, tears it down
//! leaving no process, mount, bridge or cgroup ([`cleanup`]); the same
//! clean-up runs before a start, for what a killed run left behind.

mod cleanup;
mod components;
pub mod images;
mod runtime;
mod stand_ins;

pub use cleanup::left_behind;
pub use components::STATUS_REPORT_FREQUENCY;
pub use runtime::HOST_ON_BRIDGE;
pub use stand_ins::{SHIM_STAND_IN_ERROR, StandIn};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ServiceAccount};
use kube::Client;
use kube::api::{Api, ObjectMeta};

use kata_proto::contract;

use crate::child_process::{spawn_tied_to_process, stop};
use crate::control_plane::{ControlPlane, Options};
use crate::crio::Crio;
use crate::mco_simulator::host::{in_root, write_config_files};
use crate::mco_simulator::model::MachineConfigSpec;
use crate::mco_simulator::render::files_of;
use crate::{Error, eventually};

/// The node's name: neither the machine's hostname nor a name the other
/// tests give their Node objects.
pub const NODE_NAME: &str = "kata-tests-real-node";
/// The image every sandbox's storage is prepared from (and which test pods
/// may run): the static `pause`, built into CRI-O's storage at start.
pub const PAUSE_IMAGE: &str = "localhost/kata-tests/pause:v1";
/// Node Ready is seen about 7 s after the kubelet starts here; a loaded CI
/// machine gets more.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopped kubelet is given to exit before it is killed; it
/// exits at once on SIGTERM when nothing holds it.
const KUBELET_STOP_GRACE: Duration = Duration::from_secs(10);

/// Why a real node cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(reason) = crate::crio::unavailable() {
        return Some(reason);
    }
    let Some(dir) = std::env::var_os("KATA_NODE_BIN_DIR") else {
        return Some(
            "KATA_NODE_BIN_DIR is not set (make test sets it from tests/scripts/build-node.sh)"
                .into(),
        );
    };
    let dir = PathBuf::from(dir);
    let binaries = [
        "kubelet",
        "kube-scheduler",
        "kube-controller-manager",
        "pause",
    ];
    let system = ["/usr/bin/buildah", "/usr/bin/jq", "/usr/lib/cni/bridge"];
    binaries
        .iter()
        .map(|name| dir.join(name))
        .chain(system.iter().map(PathBuf::from))
        .find(|path| !path.is_file())
        .map(|path| {
            format!(
                "{} is missing (tests/scripts/build-node.sh)",
                path.display()
            )
        })
}

fn bin_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("KATA_NODE_BIN_DIR").unwrap_or_default())
}

/// A running node; torn down when dropped. Fields drop in order: the
/// kubelet and CRI-O are stopped in [`Drop`] before the rest goes.
pub struct RealNode {
    kubelet: Option<Child>,
    crio: Option<Crio>,
    scheduler: Option<Child>,
    controller_manager: Option<Child>,
    plane: Option<ControlPlane>,
    host: cleanup::HostChanges,
    stand_ins: stand_ins::StandIns,
    dir: PathBuf,
    _temp_dir: tempfile::TempDir,
}

impl RealNode {
    /// Starts the control plane, its controllers, CRI-O and the kubelet, and
    /// waits until the Node is Ready.
    pub async fn start() -> Result<Self, Error> {
        let temp_dir = tempfile::Builder::new()
            .prefix(cleanup::DIR_PREFIX)
            .tempdir()
            .map_err(|e| Error::Setup(format!("cannot create a temporary directory: {e}")))?;
        let dir = temp_dir.path().to_path_buf();
        // What a run killed before its teardown left behind.
        cleanup::leftovers();
        let host = cleanup::HostChanges::before_start();
        let mut node = RealNode {
            kubelet: None,
            crio: None,
            scheduler: None,
            controller_manager: None,
            plane: None,
            host,
            stand_ins: stand_ins::StandIns::default(),
            dir: dir.clone(),
            _temp_dir: temp_dir,
        };
        let plane = ControlPlane::start_with(Options { for_node: true }).await?;
        let plane = node.plane.insert(plane);
        let (controller_manager, scheduler) = components::start_controllers(plane, &dir)?;
        node.controller_manager = Some(controller_manager);
        node.scheduler = Some(scheduler);
        node.host.hugetlb_mounted = runtime::mount_hugetlb_v1()?;
        node.host.root_shared = runtime::share_root_mount()?;
        runtime::bridge_with_host_address()?;
        let crio_dir = dir.join("crio");
        let config_dir = node.crio_config_dir();
        node.crio = Some(runtime::start_crio(&crio_dir, &config_dir, &bin_dir())?);
        let kubelet = components::start_kubelet(node.plane()?, &dir, &bin_dir())?;
        node.kubelet = Some(kubelet);
        node.wait_ready().await?;
        Ok(node)
    }

    fn plane(&self) -> Result<&ControlPlane, Error> {
        self.plane
            .as_ref()
            .ok_or_else(|| Error::Setup("the real node's control plane is gone".into()))
    }

    /// The control plane the node is registered with.
    pub fn control_plane(&self) -> &ControlPlane {
        // Set in `start` before a RealNode is handed out; taken only on drop.
        #[allow(clippy::expect_used)]
        self.plane.as_ref().expect("a started node's control plane")
    }

    /// Stops the kubelet as a node going down stops it (SIGTERM, killed
    /// after [`KUBELET_STOP_GRACE`]), leaving CRI-O and the containers it
    /// runs as they are: the pods outlive their kubelet, as they do on a
    /// node whose kubelet restarts. [`RealNode::start_kubelet`] brings it back.
    pub fn stop_kubelet(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            stop(&mut kubelet, KUBELET_STOP_GRACE);
        }
    }

    /// Starts the kubelet again on the node's directories (its root dir,
    /// pod logs and checkpoints are those of the kubelet before), as a
    /// restarted node's kubelet starts: it finds its Node registered and the
    /// pods CRI-O kept. Does not wait for Ready: when the node comes back
    /// is what a caller watches.
    pub fn start_kubelet(&mut self) -> Result<(), Error> {
        if self.kubelet.is_some() {
            return Err(Error::Setup("the kubelet is already running".into()));
        }
        let kubelet = components::start_kubelet(self.plane()?, &self.dir, &bin_dir())?;
        self.kubelet = Some(kubelet);
        Ok(())
    }

    /// The directory that stands for the node's `/` where the
    /// machine-config daemon writes a rendered config's files.
    fn node_root(&self) -> PathBuf {
        self.dir.join("node-root")
    }

    /// CRI-O's `--config-dir`: the node's `/etc/crio/crio.conf.d`, where
    /// the coordinator's drop-in goes ([`contract::DROP_IN_PATH`]).
    pub fn crio_config_dir(&self) -> PathBuf {
        let drop_ins = Path::new(contract::DROP_IN_PATH)
            .parent()
            .unwrap_or(Path::new("/"));
        in_root(&self.node_root(), &drop_ins.to_string_lossy())
    }

    /// Plays the machine-config daemon for the rendered config `spec` on
    /// this node, as far as CRI-O sees it: the stand-ins for what its
    /// extension would install (Kata's shim and configuration, at the paths
    /// its `kata` drop-in names, see [`stand_ins`]), then its files written
    /// under the node's root by the MCO simulator's own daemon code, then
    /// CRI-O reloaded with SIGHUP, which re-reads its configuration file and
    /// drop-in directory and takes the new runtime handlers (cri-o v1.36.3
    /// `server/server.go` `startReloadWatcher`, `pkg/config/reload.go`
    /// `Reload` and `ReloadRuntimes`). The MCO reboots the node instead,
    /// and CRI-O reads the same files when it starts; a reload keeps the
    /// node, its pods and the agent's connection as they are. The rendered
    /// config's extensions are not installed (no rpm-ostree here). What it
    /// wrote, and the stand-ins.
    pub fn apply_rendered_config(
        &mut self,
        spec: &MachineConfigSpec,
    ) -> Result<(Vec<PathBuf>, Vec<StandIn>), Error> {
        let files = files_of(spec).map_err(Error::Setup)?;
        let drop_in_dir = self.crio_config_dir();
        let mut stand_ins = Vec::new();
        for file in &files {
            let on_node = in_root(&self.node_root(), &file.path);
            if on_node.parent() == Some(drop_in_dir.as_path()) {
                let text = String::from_utf8_lossy(&file.contents);
                stand_ins.extend(
                    self.stand_ins
                        .install_for(&text, contract::RUNTIME_HANDLER)?,
                );
            }
        }
        let root = self.node_root();
        let written = write_config_files(&root, spec)?;
        let crio = self
            .crio
            .as_ref()
            .ok_or_else(|| Error::Setup("the real node's CRI-O is gone".into()))?;
        crio.reload()
            .map_err(|e| Error::Setup(format!("cannot send CRI-O SIGHUP: {e}")))?;
        let written = written.iter().map(|path| in_root(&root, path)).collect();
        Ok((written, stand_ins))
    }

    /// The runtime handlers the node's CRI-O serves (CRI `Status`, as
    /// `crictl info` shows it): each one's name.
    pub fn served_runtime_handlers(&self) -> Result<Vec<String>, Error> {
        let crio = self
            .crio
            .as_ref()
            .ok_or_else(|| Error::Setup("the real node's CRI-O is gone".into()))?;
        let info = crio.info().map_err(Error::Setup)?;
        let handlers = info["runtimeHandlers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(handlers
            .iter()
            .filter_map(|h| h["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// Builds an image into the node's CRI-O storage, for pods to run.
    pub fn build_image(&self, spec: &images::ImageSpec) -> Result<(), Error> {
        images::build(&self.dir.join("crio"), spec)
    }

    /// An admin client.
    pub async fn client(&self) -> Result<Client, Error> {
        self.plane()?.client().await
    }

    /// The last lines of a component's log (`kubelet`, `kube-scheduler`,
    /// `kube-controller-manager`, `crio`), for failure messages.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = match name {
            "crio" => self.dir.join("crio").join("crio.log"),
            other => self.dir.join(format!("{other}.log")),
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let nodes: Api<Node> = Api::all(self.client().await?);
        let ready = eventually(
            "the real node to be Ready and untainted",
            READY_TIMEOUT,
            || {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get_opt(NODE_NAME).await.map_err(|e| e.to_string())?;
                    node.as_ref()
                        .ok_or_else(|| "not registered yet".to_owned())
                        .and_then(schedulable)
                }
            },
        )
        .await;
        ready.map_err(|e| {
            Error::Setup(format!(
                "{e}\n--- kubelet log (tail) ---\n{}\n--- crio log (tail) ---\n{}",
                self.log_tail("kubelet", 30),
                self.log_tail("crio", 15)
            ))
        })
    }

    /// Waits until `namespace`'s `default` ServiceAccount exists (the
    /// controller-manager makes it); pods are refused until then.
    pub async fn wait_default_service_account(&self, namespace: &str) -> Result<(), Error> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        eventually(
            "the default ServiceAccount",
            Duration::from_secs(60),
            || {
                let accounts = accounts.clone();
                async move {
                    let found = accounts
                        .get_opt("default")
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(found.is_some())
                }
            },
        )
        .await
    }
}

/// A pod named `name` with `runtimeClassName: kata`, running [`PAUSE_IMAGE`]
/// (which the node has), that ends at once when deleted (its PID 1 may
/// ignore SIGTERM).
pub fn kata_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: Some(kata_coordinator::names::RUNTIME_CLASS_NAME.into()),
            containers: vec![Container {
                name: "workload".into(),
                image: Some(PAUSE_IMAGE.into()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether pods can be scheduled to `node`: Ready, and without the
/// not-ready taint, which the controller-manager takes off a moment after
/// Ready (a pod created before then is unschedulable for that taint).
fn schedulable(node: &Node) -> Result<bool, String> {
    let status = node.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == "True" => {}
        Some(c) => {
            return Err(format!(
                "Ready={}: {}",
                c.status,
                c.message.clone().unwrap_or_default()
            ));
        }
        None => return Err("no Ready condition yet".into()),
    }
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default();
    match taints.iter().find(|t| t.effect == "NoSchedule") {
        Some(taint) => Err(format!("tainted {}", taint.key)),
        None => Ok(true),
    }
}

/// Starts `command` with its output appended to `<dir>/<name>.log` (a
/// restarted kubelet's after its first run's), tied to the test process.
fn spawn_logged(dir: &Path, name: &str, mut command: Command) -> Result<Child, Error> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let log_err = log.try_clone().map_err(|e| Error::io(&log_path, e))?;
    command.stdin(Stdio::null()).stdout(log).stderr(log_err);
    spawn_tied_to_process(command).map_err(|e| Error::Setup(format!("cannot start {name}: {e}")))
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // The kubelet first, so that nothing starts the pods again; then the
        // pods through CRI-O (timeout 0: a test pod's PID 1 may ignore
        // SIGTERM), then CRI-O. The controllers before their API server.
        self.stop_kubelet();
        if let Some(crio) = self.crio.take() {
            runtime::remove_all_pods(&crio);
            drop(crio);
        }
        self.stand_ins.remove();
        for mut child in [self.scheduler.take(), self.controller_manager.take()]
            .into_iter()
            .flatten()
        {
            stop(&mut child, Duration::from_secs(10));
        }
        drop(self.plane.take());
        cleanup::host(&self.dir, &self.host);
    }
}
