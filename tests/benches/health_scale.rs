//! N simulated node-agents streaming to one coordinator process against the
//! real control plane. Prints figures; asserts nothing.
//!
//! `make bench-health` (AGENTS=1000 by default; `make bench-health AGENTS=5000`).
//! The coordinator runs as its own process (`target/release/coordinator`,
//! or `COORDINATOR_BIN`), so its RSS and CPU are its own. The agents are
//! simulated: each is a real TLS gRPC stream with a real pod-bound token, that
//! says Hello, reports "capable and ready" once and then heartbeats.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_proto::health::v1::agent_message::Message;
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    AgentMessage, HealthReport, Hello, ProbeOutcome, ProbeStatus, Verdicts,
};
use kata_tests::operator::{
    control_plane_with_operator_api, eventually, pod_bound_token, scrape_metric,
};
use kata_tests::pki::TlsFiles;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const NAMESPACE: &str = "kata-operator";
const AGENT_ACCOUNT: &str = "kata-node-agent";
const AUDIENCE: &str = "kata-operator.openshift.io/node-agent";
const HEARTBEAT_SECONDS: u64 = 10;
const CONCURRENCY: usize = 32;
const STEADY_WINDOW: Duration = Duration::from_secs(60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set once the figures are taken: agent streams that end after that end
/// because the coordinator is being stopped.
static DONE: AtomicBool = AtomicBool::new(false);
/// Agent streams that failed while the measurements ran.
static FAILED_AGENTS: AtomicUsize = AtomicUsize::new(0);

fn free_addr() -> Result<SocketAddr, BoxError> {
    Ok(kata_tests::demo_world::free_addr()?)
}

fn coordinator_binary() -> Result<PathBuf, BoxError> {
    if let Some(path) = std::env::var_os("COORDINATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    // target/release/deps/health_scale-… → target/release/coordinator
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("coordinator"))
        .ok_or("no target directory")?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: run `cargo build --release -p kata-coordinator` first (make bench-health does)", path.display()).into())
    }
}

/// The coordinator's utime + stime in seconds, and its VmRSS in MiB.
fn cpu_and_rss(pid: u32) -> Result<(f64, f64), BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("bad stat")?
        .1
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or("no CLK_TCK")? as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no VmRSS")?;
    Ok((ticks / per_second, rss_kib / 1024.0))
}

async fn count_labelled(nodes: &Api<Node>, label: &str) -> Result<usize, BoxError> {
    Ok(nodes
        .list(&ListParams::default().labels(label))
        .await?
        .items
        .len())
}

/// What a healthy RHCOS worker's agent reports: every probe the real agent
/// runs, with messages of the real length, so the coordinator stores and
/// decodes reports of the real size.
fn healthy_outcomes() -> Vec<ProbeOutcome> {
    [
        ("kvm", "KvmUsable", "/dev/kvm: API version 12, KVM_CREATE_VM succeeded"),
        ("cpu", "CpuFlagsPresent", "GenuineIntel: vmx present"),
        ("kernel-modules", "KernelModulesLoaded", "loaded: vhost, vhost_net, vhost_vsock, kvm_intel"),
        ("qemu", "QemuVersionSupported", "/usr/libexec/qemu-kiwi: QEMU emulator version 8.2.0 (qemu-kvm-8.2.0-11.el9_4)"),
        ("kata-shim", "KataShimInstalled", "/usr/bin/containerd-shim-kata-v2 with /usr/share/kata-containers/defaults/configuration.toml"),
        ("rpm-ostree", "ExtensionBooted", "sandboxed-containers is in the booted deployment (rhcos 9.4.20241022)"),
        ("crio-drop-in", "HandlerConfigured", "[crio.runtime.runtimes.kata] in /etc/crio/crio.conf.d/50-kata"),
        ("cri-handler", "HandlerServed", "CRI-O at /var/run/crio/crio.sock serves the kata runtime handler"),
        ("capacity", "CapacitySufficient", "16 CPUs, 64000 MiB total, 52000 MiB available; a Kata pod's overhead is 250m CPU and 350 MiB"),
    ]
    .into_iter()
    .map(|(name, reason, message)| ProbeOutcome {
        name: name.into(),
        status: ProbeStatus::Ok.into(),
        reason: reason.into(),
        message: message.into(),
    })
    .collect()
}

/// Connects as a real agent does: on a refused or reset connection, again
/// after a jittered backoff (5,000 agents dialling at once can overflow the
/// listen backlog).
async fn connect_with_retry(endpoint: &Endpoint, node: &str) -> Result<Channel, BoxError> {
    let mut attempt = 0u32;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(_) if attempt < 8 => {
                attempt += 1;
                // Spread the retries by node so they don't arrive together again.
                let spread = node.bytes().map(u64::from).sum::<u64>() % 500;
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt) + spread)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// One simulated agent: Hello, one report, then a heartbeat report every
/// `HEARTBEAT_SECONDS` until the process ends.
async fn simulated_agent(endpoint: Endpoint, token: String, node: String) -> Result<(), BoxError> {
    let channel = connect_with_retry(&endpoint, &node).await?;
    // As the real agent sends it: never indexed by HPACK.
    let bearer = kata_node_agent::daemon::bearer_value(std::path::Path::new("bench"), &token)?;
    let mut client =
        NodeHealthClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            Ok(request)
        });
    let report = |sequence: u64| AgentMessage {
        message: Some(Message::Report(HealthReport {
            sequence,
            outcomes: healthy_outcomes(),
            verdicts: Some(Verdicts {
                kvm_capable: true,
                runtime_ready: true,
            }),
            probed_at_unix_ms: 0,
        })),
    };
    let hello = AgentMessage {
        message: Some(Message::Hello(Hello {
            node_name: node,
            agent_version: "bench".into(),
            boot_id: "bench".into(),
        })),
    };
    let outbound = futures::stream::iter([hello, report(1)]).chain(futures::stream::unfold(
        2u64,
        move |sequence| async move {
            tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECONDS)).await;
            Some((report(sequence), sequence + 1))
        },
    ));
    let mut inbound = client.report(outbound).await?.into_inner();
    while inbound.message().await?.is_some() {}
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let agents: usize = std::env::var("AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let coordinator_bin = coordinator_binary()?;
    println!("health-channel scale benchmark: {agents} simulated agents");
    let plane = control_plane_with_operator_api().await?;
    let client = plane.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());

    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &PatchParams::apply("bench"),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            ),
        )
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .patch(AGENT_ACCOUNT, &PatchParams::apply("bench"), &Patch::Apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_ACCOUNT}})))
        .await?;
    let names: Vec<String> = (0..agents).map(|i| format!("worker-{i:05}")).collect();
    let setup = Instant::now();
    let tokens: Vec<(String, String)> = futures::stream::iter(names.clone())
        .map(|node| {
            let client = client.clone();
            async move {
                let object: Node = serde_json::from_value(
                    json!({"metadata": {"name": node, "labels": {names::WORKER_ROLE_LABEL: ""}}}),
                )?;
                Api::<Node>::all(client.clone())
                    .create(&PostParams::default(), &object)
                    .await?;
                let token = pod_bound_token(
                    &client,
                    NAMESPACE,
                    AGENT_ACCOUNT,
                    &format!("agent-{node}"),
                    &node,
                    AUDIENCE,
                )
                .await?;
                Ok::<_, BoxError>((node, token))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    println!(
        "set-up: {agents} nodes, pods and tokens in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    let tls = TlsFiles::generate()?;
    let grpc = free_addr()?;
    let metrics = free_addr()?;
    let mut coordinator: Child = Command::new(&coordinator_bin)
        .args(["run", "--log-level", "warn"])
        .arg(format!("--grpc-listen={grpc}"))
        .arg(format!("--metrics-listen={metrics}"))
        .arg(format!("--admin-listen={}", free_addr()?))
        .arg(format!("--tls-cert-file={}", tls.cert.display()))
        .arg(format!("--tls-key-file={}", tls.key.display()))
        .arg(format!("--heartbeat-seconds={HEARTBEAT_SECONDS}"))
        // The bench times labelling, not the eligibility dwell.
        .arg("--eligibility-join-seconds=0")
        .arg(format!("--agent-namespace={NAMESPACE}"))
        .env("KUBECONFIG", plane.kubeconfig())
        .stdout(Stdio::null())
        .spawn()?;
    let pid = coordinator.id();
    let result = run_measurements(&client, &nodes, tokens, grpc, metrics, pid, &tls).await;
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    result
}

async fn run_measurements(
    client: &kube::Client,
    nodes: &Api<Node>,
    tokens: Vec<(String, String)>,
    grpc: SocketAddr,
    metrics: SocketAddr,
    pid: u32,
    tls: &TlsFiles,
) -> Result<(), BoxError> {
    let agents = tokens.len();
    let patience = Duration::from_secs(600);
    eventually("the coordinator's /metrics", patience, || async {
        scrape_metric(metrics, "kata_operator_connected_agents")
            .await
            .map(|_| true)
    })
    .await?;
    let (_, rss_idle) = cpu_and_rss(pid)?;

    let ca = Certificate::from_pem(std::fs::read(&tls.ca)?);
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", grpc.port()))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("localhost"),
        )?;
    for (node, token) in tokens {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            if let Err(error) = simulated_agent(endpoint, token, node.clone()).await
                && !DONE.load(Ordering::SeqCst)
            {
                FAILED_AGENTS.fetch_add(1, Ordering::SeqCst);
                eprintln!("agent {node}: {error}");
            }
        });
    }
    let connecting = Instant::now();
    eventually("every agent connected", patience, || async {
        let connected = scrape_metric(metrics, "kata_operator_connected_agents").await?;
        Ok(connected as usize == agents)
    })
    .await?;
    println!(
        "all {agents} agents connected over TLS in {:.1} s",
        connecting.elapsed().as_secs_f64()
    );
    let (_, rss_connected) = cpu_and_rss(pid)?;
    let writes_before = scrape_metric(metrics, "kata_operator_api_writes_total").await?;

    // The measured part: from the KataConfig to every node labelled capable.
    let created = Instant::now();
    let kataconfig: kata_coordinator::api::KataConfig = serde_json::from_value(
        json!({"apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig", "metadata": {"name": "bench"}, "spec": {"checkNodeEligibility": true}}),
    )?;
    Api::<kata_coordinator::api::KataConfig>::all(client.clone())
        .create(&PostParams::default(), &kataconfig)
        .await?;
    let capable_label = format!("{}=true", names::KATA_CAPABLE_LABEL);
    eventually("every node labelled capable", patience, || async {
        Ok(count_labelled(nodes, &capable_label)
            .await
            .map_err(|e| e.to_string())?
            == agents)
    })
    .await?;
    let converged = created.elapsed();

    // Every node also targeted (the reconciler) and its condition written.
    eventually("every node targeted", patience, || async {
        Ok(count_labelled(nodes, mco::KATA_POOL_ROLE_LABEL)
            .await
            .map_err(|e| e.to_string())?
            == agents)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes_install =
        scrape_metric(metrics, "kata_operator_api_writes_total").await? - writes_before;
    // Per node: one label write (both labels), one condition, one pool-role
    // label; plus finalizer, pool, MachineConfig and status.
    let minimum = 3 * agents + 4;

    // Steady state: heartbeats keep arriving, nothing changes.
    let (cpu_start, _) = cpu_and_rss(pid)?;
    let writes_start = scrape_metric(metrics, "kata_operator_api_writes_total").await?;
    tokio::time::sleep(STEADY_WINDOW).await;
    let (cpu_end, rss) = cpu_and_rss(pid)?;
    let writes_end = scrape_metric(metrics, "kata_operator_api_writes_total").await?;
    let window = STEADY_WINDOW.as_secs_f64();

    // The reference: the same server-side-apply label patches, in a bare loop
    // with the same concurrency as the labeller, against the same API server.
    let bare = Instant::now();
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    futures::stream::iter(names)
        .map(|node| async move {
            let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"bench.kata-operator/reference": "true"}}});
            nodes.patch(&node, &PatchParams::apply("bench-reference").force(), &Patch::Apply(&body)).await.map(|_| ())
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let reference = bare.elapsed();
    DONE.store(true, Ordering::SeqCst);

    println!(
        "KataConfig created → all {agents} nodes labelled capable: {:.2} s",
        converged.as_secs_f64()
    );
    println!(
        "bare loop of {agents} SSA label patches (32 at once):       {:.2} s  (ratio {:.2}, target ≤ 1.2)",
        reference.as_secs_f64(),
        converged.as_secs_f64() / reference.as_secs_f64()
    );
    println!(
        "agent streams that failed during the run: {}",
        FAILED_AGENTS.load(Ordering::SeqCst)
    );
    println!("API writes for the install: {writes_install} (minimum {minimum})");
    println!(
        "steady state over {window:.0} s: {:.1} API writes/min (target 0), coordinator CPU {:.1} % of one core, RSS {rss:.1} MiB",
        (writes_end - writes_start) * 60.0 / window,
        (cpu_end - cpu_start) * 100.0 / window
    );
    println!(
        "coordinator RSS: {rss_idle:.1} MiB before any agent, {rss_connected:.1} MiB with {agents} connected (before the KataConfig), {rss:.1} MiB at steady state (target < 150 at 5,000)"
    );
    Ok(())
}
