//! Installing the operator's own manifests into a test control plane.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};

use crate::{ControlPlane, Error};

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every YAML document of a file, as dynamic objects.
pub fn read_manifests(path: &Path) -> Result<Vec<DynamicObject>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
            serde_yaml::from_value(value)
                .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
        })
        .collect()
}

use serde::Deserialize;

/// Applies objects with server-side apply, finding each one's resource by discovery.
pub async fn apply_objects(plane: &ControlPlane, objects: &[DynamicObject]) -> Result<(), Error> {
    let client = plane.client().await?;
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Kube)?;
    for object in objects {
        let types = object
            .types
            .clone()
            .ok_or_else(|| Error::Setup("manifest without apiVersion/kind".into()))?;
        let gvk = kube::api::GroupVersionKind::try_from(&types)
            .map_err(|e| Error::Setup(e.to_string()))?;
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .ok_or_else(|| Error::Setup(format!("the API server does not serve {gvk:?}")))?;
        let name = object.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match (caps.scope, object.metadata.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &resource),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &resource),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply("kata-tests").force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(Error::Kube)?;
    }
    Ok(())
}

/// A control plane with the OpenShift MCO CRDs, the KataConfig CRD and the
/// singleton admission policy installed.
pub async fn control_plane_with_operator_api() -> Result<ControlPlane, Error> {
    let plane = ControlPlane::start().await?;
    install_operator_api(&plane).await?;
    Ok(plane)
}

/// Installs the OpenShift MCO CRDs, the KataConfig CRD and the singleton
/// admission policy into a running control plane.
pub async fn install_operator_api(plane: &ControlPlane) -> Result<(), Error> {
    plane.install_openshift_crds().await?;
    plane.install_crds(&[kata_coordinator_crd()]).await?;
    apply_objects(
        plane,
        &read_manifests(&deploy_dir().join("base/kataconfig-singleton.yaml"))?,
    )
    .await
}

pub fn kata_coordinator_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    kata_coordinator::api::KataConfig::crd()
}

/// Polls `check` until it returns true, or fails naming `what` and the last
/// thing `check` said.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Setup(format!(
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A coordinator running in this process; aborted when dropped.
pub struct RunningCoordinator {
    task: tokio::task::JoinHandle<()>,
    pub writes: kata_coordinator::metrics::WriteCounter,
}

impl RunningCoordinator {
    pub fn start(client: kube::Client, options: kata_coordinator::reconciler::Options) -> Self {
        let writes = options.metrics.api_writes.clone();
        let task = tokio::spawn(kata_coordinator::reconciler::run(
            client,
            options,
            kube::runtime::reflector::store::Writer::default(),
        ));
        RunningCoordinator { task, writes }
    }

    /// [`Self::start`] with default options, and the metrics it counts in.
    pub fn with_metrics(client: kube::Client) -> (Self, kata_coordinator::metrics::Metrics) {
        let metrics = kata_coordinator::metrics::Metrics::default();
        let options = kata_coordinator::reconciler::Options {
            metrics: metrics.clone(),
            ..kata_coordinator::reconciler::Options::default()
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

/// Creates a Node with the given labels (a worker unless told otherwise).
pub async fn create_node(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Result<(), Error> {
    use k8s_openapi::api::core::v1::Node;
    let node = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Node>::all(client.clone())
        .create(&Default::default(), &node)
        .await
        .map_err(Error::Kube)?;
    Ok(())
}

/// Creates a Pod of ServiceAccount `account` on `node` (no kubelet runs: it
/// only has to exist) and returns a token bound to that Pod for `audience`,
/// as the kubelet would project it into the node-agent.
pub async fn pod_bound_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    pod: &str,
    node: &str,
    audience: &str,
) -> Result<String, Error> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ServiceAccount};
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(account.into()),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("agent:test".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&Default::default(), &pod)
        .await
        .map_err(Error::Kube)?;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            // A day: no kubelet refreshes these tokens, and a demo may run long.
            expiration_seconds: Some(86_400),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let response = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &Default::default(), &request)
        .await
        .map_err(Error::Kube)?;
    response
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::Setup("TokenRequest returned no token".into()))
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    http_request(addr, "GET", path, "").await
}

/// A plain HTTP/1.1 request on loopback: the status code and the body.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {response:.80}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One sample's value from a Prometheus text endpoint (`/metrics` at `addr`).
pub async fn scrape_metric(addr: std::net::SocketAddr, name: &str) -> Result<f64, String> {
    let (_, body) = http_get(addr, "/metrics").await?;
    metric_value(&body, name)
}

/// The value of `name` in a classic-text scrape: one series when `name`
/// carries its labels (`family{label="x"}`), else the sum of every series
/// of the family (a labelled counter read as its total).
pub fn metric_value(body: &str, name: &str) -> Result<f64, String> {
    let exact = name.contains('{');
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.strip_prefix(' ') {
            Some(value) => value,
            // Another series of the family: `{labels} value`.
            None if !exact && rest.starts_with('{') => match rest.rsplit_once("} ") {
                Some((_, value)) => value,
                None => continue,
            },
            None => continue,
        };
        let value: f64 = value.trim().parse().map_err(|e| format!("{name}: {e}"))?;
        *found.get_or_insert(0.0) += value;
        if exact {
            break;
        }
    }
    found.ok_or_else(|| format!("{name} not in /metrics"))
}

/// The `coordinator` binary of this workspace, built (or found up to date)
/// by cargo once per test binary: `COORDINATOR_BIN` when set, else
/// `cargo build -p kata-coordinator --bin coordinator` into the target
/// directory this test binary runs from.
pub fn coordinator_binary() -> Result<PathBuf, Error> {
    static BINARY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("COORDINATOR_BIN") {
                return Ok(PathBuf::from(path));
            }
            // target/<profile>/deps/<test>-<hash> → target/<profile>
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or_else(|| format!("{} is not in a target directory", exe.display()))?;
            let target_dir = profile_dir
                .parent()
                .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "kata-coordinator",
                    "--bin",
                    "coordinator",
                ])
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() {
                return Err(format!("cargo build of the coordinator failed ({status})"));
            }
            Ok(profile_dir.join("coordinator"))
        })
        .clone()
        .map_err(Error::Setup)
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
            .env_remove("LOG_FORMAT")
            .env_remove("LOG_LEVEL")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(file_err);
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

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        crate::child_process::stop(&mut self.child, std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn a_bare_family_name_sums_its_series_and_labels_pick_one() {
        let body = "# TYPE w counter\nw_total{kind=\"Node\"} 2\nw_total{kind=\"Event\"} 3\n\
                    w_total_other 7\ng 1.5\n";
        assert_eq!(metric_value(body, "w_total"), Ok(5.0));
        assert_eq!(metric_value(body, "w_total{kind=\"Event\"}"), Ok(3.0));
        assert_eq!(metric_value(body, "g"), Ok(1.5));
        assert!(metric_value(body, "missing").is_err());
    }
}
