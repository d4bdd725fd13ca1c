//! The coordinator under test: in this process, or as the `coordinator`
//! binary in a child process.

use std::path::{Path, PathBuf};

use crate::http::http_get;
use crate::{ControlPlane, Error};

/// A coordinator running in this process; aborted when dropped.
pub struct RunningCoordinator {
    task: tokio::task::JoinHandle<()>,
    pub writes: kata_coordinator::metrics::WriteCounter,
}

impl RunningCoordinator {
    pub fn start(client: kube::Client, options: kata_coordinator::controller::Options) -> Self {
        let writes = options.metrics.api_writes.clone();
        let task = tokio::spawn(kata_coordinator::app::run_controller(
            client,
            options,
            kube::runtime::reflector::store::Writer::default(),
        ));
        RunningCoordinator { task, writes }
    }

    /// [`Self::start`] with default options, and the metrics it counts in.
    pub fn with_metrics(client: kube::Client) -> (Self, kata_coordinator::metrics::Metrics) {
        let metrics = kata_coordinator::metrics::Metrics::default();
        let options = kata_coordinator::controller::Options {
            metrics: metrics.clone(),
            ..kata_coordinator::controller::Options::default()
        };
        (Self::start(client, options), metrics)
    }

    /// Whether it stopped by itself (a spent write budget).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it and waits until it has, so no write of its lands afterwards.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningCoordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `coordinator` binary of this workspace: `COORDINATOR_BIN` when set,
/// else built by [`crate::workspace_binary::workspace_binary`].
pub fn coordinator_binary() -> Result<PathBuf, Error> {
    crate::workspace_binary::workspace_binary("kata-coordinator", "coordinator", "COORDINATOR_BIN")
}

/// The coordinator binary running as a child process against a control
/// plane, without the agents' channel, its log kept in a file. Killed when
/// dropped if still running.
pub struct CoordinatorProcess {
    child: std::process::Child,
    /// Where it serves /metrics, /healthz and /readyz.
    pub metrics: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CoordinatorProcess {
    /// `coordinator run` with the admin kubeconfig of `plane` and `args`
    /// added (for example `--leader-elect`).
    pub fn start(plane: &ControlPlane, args: &[&str]) -> Result<Self, Error> {
        Self::start_with(plane, args, &PodSettings::default())
    }

    /// [`Self::start`] as a pod of a Deployment runs it: on `pod`'s token
    /// rather than the admin's certificate, with its env (and the operands
    /// managed unless that env says otherwise).
    pub fn start_with(
        plane: &ControlPlane,
        args: &[&str],
        pod: &PodSettings,
    ) -> Result<Self, Error> {
        let binary = coordinator_binary()?;
        let dir = tempfile::tempdir().map_err(|e| Error::Setup(e.to_string()))?;
        let log = dir.path().join("coordinator.log");
        let file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let file_err = file.try_clone().map_err(|e| Error::io(&log, e))?;
        let metrics: std::net::SocketAddr =
            ([127, 0, 0, 1], crate::control_plane::free_port()?).into();
        // Ports of their own, so coordinators of tests running at the same
        // time never meet on the default admin port.
        let admin: std::net::SocketAddr =
            ([127, 0, 0, 1], crate::control_plane::free_port()?).into();
        let mut command = std::process::Command::new(&binary);
        command
            .arg("run")
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .args(args)
            .env("KUBECONFIG", plane.kubeconfig())
            // The operands (a DaemonSet, cluster-wide admission policies)
            // only where a test asks for them.
            .env("MANAGE_OPERANDS", "false")
            // Every simulated agent connects from 127.0.0.1.
            .env("AGENT_MAX_CONNECTIONS_PER_PEER", "100000")
            .env_remove("LOG_FORMAT")
            .env_remove("LOG_LEVEL")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(file_err);
        if let Some(token) = &pod.token {
            let kubeconfig = dir.path().join("kubeconfig");
            write_token_kubeconfig(plane, token, &kubeconfig)?;
            command.env("KUBECONFIG", kubeconfig);
        }
        if !pod.env.is_empty() {
            command.env_remove("MANAGE_OPERANDS");
            command.envs(pod.env.iter().map(|(k, v)| (k, v)));
        }
        let child = crate::child_process::spawn_tied_to_process(command)
            .map_err(|e| Error::Setup(format!("cannot start {}: {e}", binary.display())))?;
        Ok(CoordinatorProcess {
            child,
            metrics,
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a node failure would: no lease released, nothing
    /// flushed; returns once it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/readyz`: its status code and body.
    pub async fn readyz(&self) -> Result<(u16, String), String> {
        http_get(self.metrics, "/readyz").await
    }

    /// Sends SIGTERM and waits up to `timeout` for it to exit: its exit
    /// status and how long it took, or (after killing it) what went wrong.
    pub async fn terminate(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<(std::process::ExitStatus, std::time::Duration), String> {
        use nix::sys::signal::{Signal, kill};
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        let sent = std::time::Instant::now();
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM).map_err(|e| e.to_string())?;
        while sent.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok((status, sent.elapsed()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "still running {timeout:?} after SIGTERM; its log:\n{}",
            self.log()
        ))
    }
}

/// How a pod would run the coordinator: its ServiceAccount's token and
/// its container's env. Empty: the admin's kubeconfig, no operands.
#[derive(Default)]
pub struct PodSettings {
    pub token: Option<String>,
    pub env: Vec<(String, String)>,
}

/// A kubeconfig for `plane` that authenticates with `token` only, as a
/// pod's mounted ServiceAccount token does.
fn write_token_kubeconfig(plane: &ControlPlane, token: &str, path: &Path) -> Result<(), Error> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {
            "server": plane.api_server_url(),
            "certificate-authority": plane.ca_file(),
        }}],
        "users": [{"name": "pod", "user": {"token": token}}],
        "contexts": [{"name": "pod", "context": {"cluster": "plane", "user": "pod"}}],
        "current-context": "pod",
    });
    std::fs::write(path, kubeconfig.to_string()).map_err(|e| Error::io(path, e))
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        crate::child_process::stop(&mut self.child, std::time::Duration::from_secs(1));
    }
}
