//! The operator on the real node: the node-agent's image built on the node,
//! the operator's namespace and accounts from `deploy/base`, and the
//! coordinator in this process with its TLS health channel where the node's
//! pods reach it and the node-agent DaemonSet it creates itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kata_coordinator::app::{AgentServerOptions, AppError, RunOptions};
use kata_coordinator::health::ReviewFairness;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::operands::OperandSettings;
use kata_node_agent::ProbeName;
use kata_proto::contract;
use kata_tests::demo_world::free_addr;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::{apply_objects, deploy_dir, read_manifests};
use kata_tests::pki::TestCa;
use kata_tests::real_node::images::{ImageSpec, shared_libraries};
use kata_tests::real_node::{HOST_ON_BRIDGE, RealNode};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::task::JoinHandle;

pub const NAMESPACE: &str = contract::DEFAULT_NAMESPACE;
/// The node-agent's image, as `RELATED_IMAGE_NODE_AGENT` names it.
pub const AGENT_IMAGE: &str = "localhost/kata-tests/node-agent:release";
/// The agents' heartbeat and grace: the coordinator's defaults
/// (`--heartbeat-seconds` 30, grace three heartbeats).
const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long an agent may be silent before its node's condition says so:
/// the coordinator's default, three heartbeats.
pub const GRACE: Duration = Duration::from_secs(HEARTBEAT.as_secs() * 3);
/// Short, so the capable label is settled before the window that counts
/// the coordinator's writes starts; the dwell itself is eligibility_dwell's.
const JOIN_DWELL: Duration = Duration::from_secs(5);

/// The node-agent built for release, which the image is made from.
fn release_agent() -> PathBuf {
    std::env::var_os("KATA_NODE_AGENT_RELEASE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/node-agent"),
        PathBuf::from,
    )
}

const BUSYBOX: &str = "/bin/busybox";

/// Why the node-agent's image cannot be built here, if it cannot.
pub fn image_unavailable() -> Option<String> {
    if !release_agent().is_file() {
        return Some(format!(
            "{} is missing (cargo build --release -p kata-node-agent)",
            release_agent().display()
        ));
    }
    (!Path::new(BUSYBOX).is_file())
        .then(|| format!("{BUSYBOX} is missing (tests/scripts/install-packages.sh)"))
}

/// Builds the node-agent's image into the node's CRI-O storage, FROM
/// scratch: the release binary where the Containerfile puts it, the shared
/// libraries it loads as this machine resolves them, and busybox's `chroot`
/// for the probes that run host binaries.
pub fn build_agent_image(node: &RealNode) -> Result<(), kata_tests::Error> {
    let binary = release_agent();
    let mut files = vec![
        (binary.clone(), "/usr/local/bin/node-agent".to_owned()),
        (PathBuf::from(BUSYBOX), "/usr/bin/chroot".to_owned()),
    ];
    for library in shared_libraries(&binary)? {
        // The loader's path is a link on Debian; the image gets the file.
        let file =
            std::fs::canonicalize(&library).map_err(|e| kata_tests::Error::io(&library, e))?;
        files.push((file, library.display().to_string()));
    }
    node.build_image(&ImageSpec {
        reference: AGENT_IMAGE,
        files,
        entrypoint: "/usr/local/bin/node-agent",
    })
}

/// What `kubectl apply -k deploy/base` and the cluster give the operator
/// before its coordinator runs: its namespace (Pod Security `privileged`),
/// its ServiceAccounts, the node-agents' pod policy, the KataConfig and
/// Machine Config Operator APIs, and the ConfigMap with the CA the agents
/// verify the coordinator with (cert-manager's or service-ca's job).
pub async fn install(node: &RealNode, ca: &TestCa) -> Result<(), kata_tests::Error> {
    let plane = node.control_plane();
    plane.install_openshift_crds().await?;
    plane
        .install_crds(&kata_tests::manifests::operator_crds())
        .await?;
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "node-agent-pod-policy.yaml",
    ] {
        apply_objects(
            plane,
            &read_manifests(&deploy_dir().join("base").join(file))?,
        )
        .await?;
    }
    let bundle: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "kata-coordinator-ca" },
        "data": { "service-ca.crt": ca.cert_pem() },
    }))
    .map_err(|e| kata_tests::Error::Setup(e.to_string()))?;
    Api::<ConfigMap>::namespaced(node.client().await?, NAMESPACE)
        .create(&PostParams::default(), &bundle)
        .await
        .map_err(kata_tests::Error::Kube)?;
    Ok(())
}

/// `kata_coordinator::app::run` in this process, as its Deployment runs
/// it but for the address: the health channel listens on the host's
/// address on the node's bridge, and the DaemonSet it writes names that
/// address (`AGENT_COORDINATOR_URL`), since no Service or DNS runs here.
pub struct InProcessCoordinator {
    task: JoinHandle<Result<(), AppError>>,
    pub metrics: SocketAddr,
    /// What the DaemonSet's `--coordinator` says.
    pub url: String,
    _tls_dir: tempfile::TempDir,
}

impl InProcessCoordinator {
    /// Starts it with a serving certificate from `ca` for
    /// [`HOST_ON_BRIDGE`] and [`AGENT_IMAGE`] as `RELATED_IMAGE_NODE_AGENT`.
    pub fn start(client: Client, ca: &TestCa) -> Result<Self, kata_tests::Error> {
        let tls_dir = tempfile::tempdir().map_err(|e| kata_tests::Error::Setup(e.to_string()))?;
        let (cert, key) = ca
            .server_cert(&[&HOST_ON_BRIDGE.to_string()])?
            .write(tls_dir.path(), "coordinator")?;
        let listen = SocketAddr::from((HOST_ON_BRIDGE, kata_tests::control_plane::free_port()?));
        let url = format!("https://{listen}");
        let metrics = free_addr()?;
        let options = RunOptions {
            leader_election: None,
            agents: Some(AgentServerOptions {
                listen,
                tls_cert_file: cert,
                tls_key_file: key,
                audience: contract::TOKEN_AUDIENCE.into(),
                namespace: NAMESPACE.into(),
                service_account: contract::AGENT_SERVICE_ACCOUNT.into(),
                heartbeat: HEARTBEAT,
                limits: kata_coordinator::health::tls::Limits::default(),
                review_fairness: ReviewFairness::default(),
            }),
            operands: Some(OperandSettings {
                namespace: NAMESPACE.into(),
                node_agent_image: Some(AGENT_IMAGE.into()),
                coordinator_url: url.clone(),
                host_root: "/".into(),
                // No Deployment runs it here.
                owner_deployment: None,
                resync: Duration::from_secs(30),
            }),
            metrics_listen: metrics,
            mark_policy: MarkPolicy {
                grace: GRACE,
                join_dwell: JOIN_DWELL,
                ..MarkPolicy::default()
            },
            log_filter: None,
            heap: None,
        };
        let task = tokio::spawn(kata_coordinator::app::run(client, options));
        Ok(InProcessCoordinator {
            task,
            metrics,
            url,
            _tls_dir: tls_dir,
        })
    }

    /// One series' value from its `/metrics`.
    pub async fn metric(&self, name: &str) -> Result<f64, String> {
        if self.task.is_finished() {
            return Err("the coordinator stopped".into());
        }
        scrape_metric(self.metrics, name).await
    }

    /// The health channel's and the writes' series of its `/metrics`, for
    /// failure messages.
    pub async fn health_metrics(&self) -> String {
        match kata_tests::http::http_get(self.metrics, "/metrics").await {
            Ok((_, page)) => page
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter(|l| {
                    ["agent", "refus", "review", "writes"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => e,
        }
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A pod running as the agent's ServiceAccount, privileged with the host
/// root, but made by hand rather than by the DaemonSet controller: what
/// the pod policy refuses.
pub fn hand_made_agent_pod(template: &serde_json::Value) -> Pod {
    let mut pod = template.clone();
    pod["metadata"]["name"] = "node-agent-by-hand".into();
    // Scheduled nowhere: only admission matters.
    pod["spec"]["nodeName"] = "nowhere".into();
    serde_json::from_value(pod).unwrap_or_default()
}

/// The series of `family` on a metrics page: each one's labels and value.
fn series(page: &str, family: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let prefix = format!("{family}{{");
    page.lines()
        .filter_map(|line| line.strip_prefix(&prefix)?.rsplit_once("} "))
        .map(|(labels, value)| {
            let labels = labels
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            (labels, value.trim().parse().unwrap_or(f64::NAN))
        })
        .collect()
}

/// What the agent's metrics say of each probe's last cycle, in the
/// agent's probe order: its status (`ok`, `warn`, `fail`, `skip`) and, for
/// a FAIL, the reason it counted. The failure counters keep every reason a
/// probe ever failed for, so with an earlier page `since` the reason is the
/// one whose count grew since (a probe failing now failed in every cycle
/// between); without one, any it counted.
pub fn probe_results(page: &str, since: Option<&str>) -> Vec<(String, String, Option<String>)> {
    let statuses = series(page, "kata_node_agent_probe_status");
    let failures = series(page, "kata_node_agent_probe_failures_total");
    let earlier = since.map(|page| series(page, "kata_node_agent_probe_failures_total"));
    let before = |labels: &BTreeMap<String, String>| {
        earlier
            .iter()
            .flatten()
            .find(|(l, _)| l == labels)
            .map_or(0.0, |(_, value)| *value)
    };
    ProbeName::ALL
        .iter()
        .map(|probe| {
            let name = probe.as_str();
            let of = |labels: &BTreeMap<String, String>| labels["probe"] == name;
            let status = statuses
                .iter()
                .find(|(labels, value)| of(labels) && *value == 1.0)
                .map(|(labels, _)| labels["status"].clone())
                .unwrap_or_default();
            let reason = failures
                .iter()
                .filter(|_| status == "fail")
                .find(|(labels, value)| of(labels) && *value > before(labels))
                .map(|(labels, _)| labels["reason"].clone());
            (name.to_owned(), status, reason)
        })
        .collect()
}
