//! From the node-agent DaemonSet's pod to the process the kubelet stand-in
//! starts, pure: which template fields are played and how, which are not
//! and why, and a failed test for any other (a template change must not go
//! unplayed in silence). The mappings, each for something this machine
//! lacks (docs/testing.md, "OLM"):
//! - a path under a volume's mount → where the stand-in put that volume
//!   (the node's fake host root for the host root, files for the token and
//!   the CA);
//! - the coordinator's URL (the Service's name) → the Service's loopback
//!   address, with `--tls-server-name` keeping the Service's name the
//!   certificate is checked against;
//! - the metrics address (the pod's own port) → a loopback port of its own;
//! - `--rpm-ostree-status-file` added: no rpm-ostree here, and the MCO
//!   simulator writes the status it would print to that file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kata_node_agent::fixtures::SIMULATED_STATUS_FILE;
use serde_json::Value;

use super::super::pod::{container_env, expand};

/// Pod spec fields the stand-in plays.
const POD_PLAYED: &[&str] = &[
    "containers",
    "volumes",
    "serviceAccountName",
    // The deprecated alias the API server fills in from serviceAccountName.
    "serviceAccount",
    // Which nodes get a pod.
    "nodeSelector",
    // Must be false: the stand-in mounts no default token.
    "automountServiceAccountToken",
];
/// Pod spec fields with nothing to play here, and why.
const POD_NOT_PLAYED: &[&str] = &[
    // The process runs as the test's user; the policy judges the pod.
    "securityContext",
    // No scheduler, no preemption, no taints on the simulated nodes.
    "priorityClassName",
    "tolerations",
    "schedulerName",
    // A process that exits fails the test rather than restarting.
    "restartPolicy",
    // SIGTERM, then up to the stand-in's own grace.
    "terminationGracePeriodSeconds",
    // No cluster DNS: the one name the agent resolves is mapped.
    "dnsPolicy",
];
/// Container fields the stand-in plays.
const CONTAINER_PLAYED: &[&str] = &[
    "name",
    // Recorded on the pod; the process is this workspace's binary.
    "image",
    "command",
    "args",
    "env",
    "ports",
    "volumeMounts",
    // Played once: the agent must answer it before the next pod rolls.
    "livenessProbe",
];
/// Container fields with nothing to play here: no cgroups, no image pull,
/// the process runs as the test's user on this machine's root.
const CONTAINER_NOT_PLAYED: &[&str] = &[
    "resources",
    "securityContext",
    "imagePullPolicy",
    "terminationMessagePath",
    "terminationMessagePolicy",
];

/// Fails the test when `object` has a field outside `known`.
pub fn only(what: &str, object: &Value, known: &[&[&str]]) {
    let fields = object
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {object}"));
    for field in fields.keys() {
        assert!(
            known.iter().any(|list| list.contains(&field.as_str())),
            "{what}.{field} is not played by the kubelet stand-in: {object}"
        );
    }
}

/// Checks that the stand-in knows every field of the DaemonSet's pod
/// template; the volumes and mounts are checked where they are prepared.
pub fn check_template(template: &Value) {
    only("template", template, &[&["metadata", "spec"], &[]]);
    only(
        "template.metadata",
        &template["metadata"],
        &[&["labels", "annotations", "creationTimestamp"]],
    );
    let spec = &template["spec"];
    only("template.spec", spec, &[POD_PLAYED, POD_NOT_PLAYED]);
    assert_eq!(
        spec["automountServiceAccountToken"], false,
        "the stand-in mounts no default token"
    );
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container is played: {spec}");
    only(
        "container",
        &containers[0],
        &[CONTAINER_PLAYED, CONTAINER_NOT_PLAYED],
    );
}

/// Where the service the agent's URL names is on this machine.
pub struct ServiceAddress<'a> {
    /// `HOST:PORT` as the URL gives them.
    pub host: &'a str,
    pub port: u16,
    pub local: SocketAddr,
}

/// The process for one pod: its arguments and environment, and the
/// liveness probe as a path on a loopback address.
#[derive(Debug)]
pub struct Launch {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub liveness: Option<(String, SocketAddr)>,
}

/// The launch of `pod`'s container, its volumes at `volumes` (name → local
/// path), its metrics port on `metrics`.
pub fn launch(
    pod: &Value,
    volumes: &BTreeMap<String, PathBuf>,
    service: &ServiceAddress,
    metrics: SocketAddr,
) -> Launch {
    let container = &pod["spec"]["containers"][0];
    let env = container_env(container, pod);
    let mounts = mounts(container, volumes);
    // Without a command the image's entrypoint runs: the node-agent.
    if let Some(command) = container["command"].as_array() {
        assert!(
            command.len() == 1
                && command[0]
                    .as_str()
                    .is_some_and(|c| c.ends_with("node-agent")),
            "a command other than the node-agent is not played: {command:?}"
        );
    }
    for port in container["ports"].as_array().into_iter().flatten() {
        only("port", port, &[&["name", "containerPort", "protocol"]]);
    }
    let mut ports = BTreeMap::new();
    let mut args = Vec::new();
    for arg in container["args"].as_array().into_iter().flatten() {
        let arg = expand(arg.as_str().unwrap(), &env);
        args.extend(map_arg(&arg, &mounts, service, metrics, &mut ports));
    }
    if !args.iter().any(|a| a.starts_with("--tls-server-name")) {
        args.push(format!("--tls-server-name={}", service.host));
    }
    args.push(format!("--rpm-ostree-status-file={SIMULATED_STATUS_FILE}"));
    Launch {
        args,
        env,
        liveness: liveness(container, &ports),
    }
}

/// Each mount's path in the container and where it is here, longest first
/// so that a nested mount wins.
fn mounts(container: &Value, volumes: &BTreeMap<String, PathBuf>) -> Vec<(String, PathBuf)> {
    let mut mounts: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mount| {
            only("volumeMount", mount, &[&["name", "mountPath", "readOnly"]]);
            let name = mount["name"].as_str().unwrap();
            let local = volumes
                .get(name)
                .unwrap_or_else(|| panic!("mount of an unknown volume {name}"));
            (
                mount["mountPath"].as_str().unwrap().to_owned(),
                local.clone(),
            )
        })
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    mounts
}

/// One argument as it is run here (the URL's becomes two).
fn map_arg(
    arg: &str,
    mounts: &[(String, PathBuf)],
    service: &ServiceAddress,
    metrics: SocketAddr,
    ports: &mut BTreeMap<u64, SocketAddr>,
) -> Vec<String> {
    let Some((flag, value)) = arg.split_once('=') else {
        return vec![arg.to_owned()];
    };
    match flag {
        "--coordinator" => {
            let expected = format!("https://{}:{}", service.host, service.port);
            assert_eq!(value, expected, "the URL names the Service");
            vec![
                format!("--coordinator=https://{}", service.local),
                format!("--tls-server-name={}", service.host),
            ]
        }
        "--metrics-address" => {
            let port = value.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            ports.insert(port.unwrap_or_else(|| panic!("{arg}: no port")), metrics);
            vec![format!("--metrics-address={metrics}")]
        }
        _ if value.starts_with('/') => vec![format!("{flag}={}", local_path(value, mounts))],
        _ => vec![arg.to_owned()],
    }
}

/// Where the container's `path` is here: under the mount that holds it.
fn local_path(path: &str, mounts: &[(String, PathBuf)]) -> String {
    let (mount, local) = mounts
        .iter()
        .find(|(mount, _)| Path::new(path).starts_with(mount))
        .unwrap_or_else(|| {
            panic!("{path} is under no mount: the image's own files are not played")
        });
    match Path::new(path).strip_prefix(mount).unwrap() {
        rest if rest.as_os_str().is_empty() => local.display().to_string(),
        rest => local.join(rest).display().to_string(),
    }
}

/// The liveness probe's path and where its port is here.
fn liveness(container: &Value, ports: &BTreeMap<u64, SocketAddr>) -> Option<(String, SocketAddr)> {
    let probe = container.get("livenessProbe")?;
    only(
        "livenessProbe",
        probe,
        &[&[
            "httpGet",
            "periodSeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
        ]],
    );
    let get = &probe["httpGet"];
    only("livenessProbe.httpGet", get, &[&["path", "port", "scheme"]]);
    let port = match &get["port"] {
        Value::Number(number) => number.as_u64(),
        Value::String(name) => container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_u64()),
        other => panic!("probe port {other}"),
    };
    let port = port.unwrap_or_else(|| panic!("the probe's port is not declared: {get}"));
    let local = *ports
        .get(&port)
        .unwrap_or_else(|| panic!("the probe's port {port} is served by no argument"));
    Some((get["path"].as_str().unwrap().to_owned(), local))
}
