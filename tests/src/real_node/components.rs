//! The node's Kubernetes processes: kube-controller-manager and
//! kube-scheduler beside the control plane, and the kubelet, each with a
//! client certificate of the identity Kubernetes' own RBAC defaults expect.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::{NODE_NAME, spawn_logged};
use crate::Error;
use crate::control_plane::{ControlPlane, free_port};
use crate::crio::SOCKET;

/// A kubeconfig in `dir` for the identity `user` in `groups`.
fn kubeconfig_for(
    plane: &ControlPlane,
    dir: &Path,
    name: &str,
    user: &str,
    groups: &[&str],
) -> Result<PathBuf, Error> {
    let (cert, key) = plane.ca().client_cert(user, groups)?.write(dir, name)?;
    let path = dir.join(format!("{name}.kubeconfig"));
    plane.write_kubeconfig(&path, &cert, &key)?;
    Ok(path)
}

/// How often the kubelet writes its Node's status even when nothing
/// changed (its default is 5 minutes): each write moves the Ready
/// condition's heartbeat, so a test sees the kubelet's writes within
/// seconds.
pub const STATUS_REPORT_FREQUENCY: Duration = Duration::from_secs(10);

/// Starts kube-controller-manager and kube-scheduler, in that order.
pub(super) fn start_controllers(plane: &ControlPlane, dir: &Path) -> Result<(Child, Child), Error> {
    let bin = super::bin_dir();
    let manager_config = kubeconfig_for(
        plane,
        dir,
        "kube-controller-manager",
        "system:kube-controller-manager",
        &[],
    )?;
    let mut manager = Command::new(bin.join("kube-controller-manager"));
    manager.args([
        format!("--kubeconfig={}", manager_config.display()),
        // Signs the tokens of the ServiceAccounts it creates, as the API
        // server does.
        format!(
            "--service-account-private-key-file={}",
            plane.service_account_key_file().display()
        ),
        // Published as every namespace's kube-root-ca.crt ConfigMap; without
        // it every pod's kube-api-access volume fails to mount.
        format!("--root-ca-file={}", plane.ca_file().display()),
        "--use-service-account-credentials=true".into(),
        // Its default is under /usr/libexec, which it would create.
        format!(
            "--flex-volume-plugin-dir={}",
            dir.join("flex-volume").display()
        ),
        "--leader-elect=false".into(),
        // Nothing scrapes or probes it here.
        "--secure-port=0".into(),
        "--v=1".into(),
    ]);
    let manager = spawn_logged(dir, "kube-controller-manager", manager)?;

    let scheduler_config =
        kubeconfig_for(plane, dir, "kube-scheduler", "system:kube-scheduler", &[])?;
    let mut scheduler = Command::new(bin.join("kube-scheduler"));
    scheduler.args([
        format!("--kubeconfig={}", scheduler_config.display()),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
        "--v=1".into(),
    ]);
    let scheduler = spawn_logged(dir, "kube-scheduler", scheduler)?;
    Ok((manager, scheduler))
}

/// Starts the kubelet as [`NODE_NAME`] against CRI-O's socket.
pub(super) fn start_kubelet(
    plane: &ControlPlane,
    dir: &Path,
    node_bin: &Path,
) -> Result<Child, Error> {
    let kubelet_dir = dir.join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).map_err(|e| Error::io(&kubelet_dir, e))?;
    let node_ip = node_ip()?;
    let kubeconfig = kubeconfig_for(
        plane,
        &kubelet_dir,
        "kubelet",
        &format!("system:node:{NODE_NAME}"),
        &["system:nodes"],
    )?;
    // Its serving certificate, which the API server checks for logs and exec.
    let (serving_cert, serving_key) = plane
        .ca()
        .server_cert(&[NODE_NAME, node_ip.as_str(), "127.0.0.1"])?
        .write(&kubelet_dir, "kubelet-serving")?;
    let config = kubelet_dir.join("config.yaml");
    let text = kubelet_config(&KubeletPaths {
        dir: &kubelet_dir,
        ca: &plane.ca_file(),
        cert: &serving_cert,
        key: &serving_key,
    })?;
    std::fs::write(&config, text).map_err(|e| Error::io(&config, e))?;
    let mut kubelet = Command::new(node_bin.join("kubelet"));
    kubelet
        .args([
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", kubelet_dir.join("root").display()),
            format!("--cert-dir={}", kubelet_dir.join("pki").display()),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={node_ip}"),
            "--v=2".into(),
        ])
        // Without /usr/sbin on its PATH the kubelet finds no iptables and
        // adds no canary chains to the machine's tables: no kube-proxy runs
        // here to need them.
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    spawn_logged(dir, "kubelet", kubelet)
}

/// The address the kubelet reports as the node's InternalIP: the source
/// address of the default route. It refuses a loopback one.
fn node_ip() -> Result<String, Error> {
    let output = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.255"])
        .output()
        .map_err(|e| Error::Setup(format!("ip route get: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "src")
        .and_then(|_| words.next())
        .map(str::to_owned)
        .ok_or_else(|| Error::Setup(format!("no source address for a route: {text}")))
}

struct KubeletPaths<'a> {
    dir: &'a Path,
    ca: &'a Path,
    cert: &'a Path,
    key: &'a Path,
}

/// The kubelet's configuration. It decodes leniently (a misspelt field is
/// only logged as `strict decoding error`), so each field here was seen to
/// take effect:
/// - `failCgroupV1: false`, `failSwapOn: false`: this machine is cgroup v1
///   hybrid, and may have swap.
/// - evictionHard near zero and image GC thresholds at 100: a test machine's
///   disk is often fuller than a node's defaults allow, and evicting or
///   collecting would only make tests flaky.
/// - podLogsDir and volumePluginDir in the test's directory; what the
///   kubelet still writes elsewhere is removed by the teardown.
/// - A port of its own, the read-only port off, the healthz port on loopback.
/// - nodeStatusReportFrequency [`STATUS_REPORT_FREQUENCY`] (default 5
///   minutes when nothing changed), and the status computed as often
///   (nodeStatusUpdateFrequency, already 10 s by default): the kubelet
///   writes its Node every 10 s, so a test sees the writes that another
///   writer of the Node must live with.
fn kubelet_config(paths: &KubeletPaths) -> Result<String, Error> {
    let config = serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": paths.ca },
        },
        "authorization": { "mode": "Webhook" },
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": format!("unix://{SOCKET}"),
        "failCgroupV1": false,
        "failSwapOn": false,
        "port": free_port()?,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": free_port()?,
        "tlsCertFile": paths.cert,
        "tlsPrivateKeyFile": paths.key,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "podLogsDir": paths.dir.join("pod-logs"),
        "volumePluginDir": paths.dir.join("volume-plugins"),
        // No cluster DNS runs here.
        "resolvConf": "",
        "registerNode": true,
        "nodeStatusReportFrequency": format!("{}s", STATUS_REPORT_FREQUENCY.as_secs()),
        "nodeStatusUpdateFrequency": format!("{}s", STATUS_REPORT_FREQUENCY.as_secs()),
    });
    serde_yaml::to_string(&config).map_err(|e| Error::Setup(format!("kubelet config: {e}")))
}
