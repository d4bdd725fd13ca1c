//! What the benchmarks share: a process's CPU and memory from `/proc`,
//! simulated node-agents that check in as the real agent does, and the
//! Node objects they create ([`nodes`]).
//!
//! A simulated agent speaks the real protocol with a real pod-bound token
//! over real TLS: each check-in is its own connection (Hello and a report
//! of the nine probes a healthy RHCOS worker's agent sends, with messages of
//! the real length), closed after the reply; a failed check-in is tried
//! again after the real agent's jittered backoff. It does not probe, so a
//! few thousand fit in one process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_node_agent::daemon::Backoff;
use kata_proto::health::v1::node_health_client::NodeHealthClient;
use kata_proto::health::v1::{
    CheckInRequest, CheckInResponse, HealthReport, Hello, ProbeOutcome, ProbeStatus, Verdicts,
};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Endpoint;

pub mod nodes;

pub use nodes::{NodeShape, unadopted};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A process's memory, in MiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    /// VmHWM: the peak resident set so far.
    pub peak: f64,
    /// VmRSS: resident now.
    pub now: f64,
}

pub fn memory(pid: u32) -> Result<Memory, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64, BoxError> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(kib / 1024.0)
    };
    Ok(Memory {
        peak: field("VmHWM:")?,
        now: field("VmRSS:")?,
    })
}

/// A process's user + system CPU time, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (in parentheses) may hold spaces: split after it.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("bad stat")?
        .1
        .split(' ')
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let per_second =
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or("no CLK_TCK")? as f64;
    Ok(ticks / per_second)
}

/// What a healthy RHCOS worker's agent reports: every probe the real agent
/// runs, with messages of the real length, so the coordinator stores and
/// decodes reports of the real size.
pub fn healthy_outcomes() -> Vec<ProbeOutcome> {
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

/// Counts over every simulated agent of a bench.
#[derive(Debug, Default)]
pub struct AgentCounts {
    pub accepted: AtomicU64,
    pub failed: AtomicU64,
    /// The failed check-ins by [`failure_cause`].
    causes: Mutex<BTreeMap<String, u64>>,
}

impl AgentCounts {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Counts a failed check-in and its cause.
    pub fn fail(&self, error: &BoxError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        *causes.entry(failure_cause(error)).or_insert(0) += 1;
    }

    /// The failed check-ins so far, by cause.
    pub fn causes(&self) -> BTreeMap<String, u64> {
        self.causes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What made a check-in fail, in a few words that group alike failures:
/// the gRPC status code, or whether the connection failed, and the
/// innermost error's text with its numbers (ports, addresses) left out.
pub fn failure_cause(error: &BoxError) -> String {
    let stage = match error.downcast_ref::<tonic::Status>() {
        Some(status) => format!("status {:?}", status.code()),
        None => "connection".to_owned(),
    };
    let mut innermost: &(dyn std::error::Error + 'static) = error.as_ref();
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text: String = innermost
        .to_string()
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(80)
        .collect();
    format!("{stage}: {text}")
}

/// One simulated agent of `node`.
pub struct SimulatedAgent {
    endpoint: Endpoint,
    bearer: MetadataValue<Ascii>,
    node: String,
    sequence: u64,
}

impl SimulatedAgent {
    /// `endpoint` carries the TLS settings; `token` is the node's pod-bound
    /// token.
    pub fn new(endpoint: Endpoint, token: &str, node: String) -> Result<Self, BoxError> {
        // As the real agent sends it: never indexed by HPACK.
        let bearer = kata_node_agent::daemon::bearer_value(std::path::Path::new("bench"), token)?;
        Ok(Self {
            endpoint,
            bearer,
            node,
            sequence: 0,
        })
    }

    /// One check-in on a connection of its own.
    pub async fn check_in(&mut self) -> Result<CheckInResponse, BoxError> {
        let channel = self.endpoint.connect().await?;
        let mut request = tonic::Request::new(CheckInRequest {
            hello: Some(Hello {
                node_name: self.node.clone(),
                agent_version: "bench".into(),
                boot_id: "3b8f1d2c-6a4e-4f0b-9c7d-2e5a8b1f0c6d".into(),
            }),
            report: Some(HealthReport {
                sequence: self.sequence + 1,
                outcomes: healthy_outcomes(),
                verdicts: Some(Verdicts {
                    kvm_capable: true,
                    runtime_ready: true,
                    ..Default::default()
                }),
                probed_at_unix_ms: 0,
            }),
        });
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        let reply = NodeHealthClient::new(channel)
            .check_in(request)
            .await?
            .into_inner();
        self.sequence += 1;
        Ok(reply)
    }

    /// Checks in every `heartbeat` (the first at once), for good; a failed
    /// check-in is tried again after the real agent's backoff.
    pub async fn run(mut self, heartbeat: Duration, counts: Arc<AgentCounts>) {
        let backoff = Backoff::default();
        let mut failures = 0u32;
        loop {
            match self.check_in().await {
                Ok(_) => {
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    tokio::time::sleep(heartbeat).await;
                }
                Err(error) => {
                    counts.fail(&error);
                    failures = failures.saturating_add(1);
                    tokio::time::sleep(backoff.delay(failures, rand::random::<f64>())).await;
                }
            }
        }
    }
}

/// Resets a process's peak resident set (VmHWM) to what it holds now, by
/// writing 5 to `/proc/<pid>/clear_refs` (which needs root or the same
/// user), so that a later [`memory`] reads the peak since this call.
pub fn reset_peak(pid: u32) -> Result<(), BoxError> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")?;
    Ok(())
}

/// The size of `node` as the API server returns it (with its managed
/// fields), in KiB of compact JSON.
pub async fn stored_size(
    nodes: &kube::Api<k8s_openapi::api::core::v1::Node>,
    node: &str,
) -> Result<f64, BoxError> {
    Ok(serde_json::to_vec(&nodes.get(node).await?)?.len() as f64 / 1024.0)
}
