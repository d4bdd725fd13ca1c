//! Host probes. Each one looks at one aspect of the node through a
//! [`HostRoot`] and says OK, WARN, FAIL or SKIP with a stable reason (the
//! codes are in [`reason`]).
//!
//! Probes never panic on what they read and never hang: blocking filesystem
//! work runs on the blocking pool under a deadline ([`run_blocking`]), and
//! commands and RPCs have their own deadlines. A probe that cannot decide
//! says so with a WARN rather than guessing.

pub mod capacity;
pub mod cpu;
pub mod cri;
pub mod crio;
pub mod crio_process;
pub mod host;
pub mod kata_shim;
pub mod kvm;
mod kvm_ioctl;
pub mod modules;
pub mod profiles;
pub mod qemu;
pub mod reason;
pub mod rpm_ostree;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use kata_proto::health::v1 as proto;
use serde::Serialize;

pub use host::HostRoot;

/// Which probe an outcome belongs to. The string forms are the stable names
/// on the wire and in `check` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeName {
    Kvm,
    Cpu,
    KernelModules,
    Qemu,
    KataShim,
    RpmOstree,
    CrioDropIn,
    CriHandler,
    Capacity,
}

impl ProbeName {
    /// Every probe, in the order a cycle reports them.
    pub const ALL: [ProbeName; 9] = [
        ProbeName::Kvm,
        ProbeName::Cpu,
        ProbeName::KernelModules,
        ProbeName::Qemu,
        ProbeName::KataShim,
        ProbeName::RpmOstree,
        ProbeName::CrioDropIn,
        ProbeName::CriHandler,
        ProbeName::Capacity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeName::Kvm => "kvm",
            ProbeName::Cpu => "cpu",
            ProbeName::KernelModules => "kernel-modules",
            ProbeName::Qemu => "qemu",
            ProbeName::KataShim => "kata-shim",
            ProbeName::RpmOstree => "rpm-ostree",
            ProbeName::CrioDropIn => "crio-drop-in",
            ProbeName::CriHandler => "cri-handler",
            ProbeName::Capacity => "capacity",
        }
    }
}

impl fmt::Display for ProbeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ProbeStatus {
    Ok,
    Warn,
    Fail,
    /// The probe does not apply to this host (not an ostree host, no CRI-O socket).
    Skip,
}

impl ProbeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStatus::Ok => "OK",
            ProbeStatus::Warn => "WARN",
            ProbeStatus::Fail => "FAIL",
            ProbeStatus::Skip => "SKIP",
        }
    }
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How much an outcome that is not OK proves. The coordinator takes a node
/// out of the Kata pool (a drain and a reboot) only on definitive evidence,
/// or on transient evidence that persisted through its whole leave dwell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Evidence {
    /// The node is as the outcome says until someone changes it.
    #[default]
    Definitive,
    /// The probe could not tell, or hit a condition that may pass (an
    /// errno such as ENOMEM or EBUSY, a guest run that did not come back,
    /// a deadline).
    Transient,
}

impl Evidence {
    fn is_definitive(&self) -> bool {
        *self == Evidence::Definitive
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeOutcome {
    pub name: ProbeName,
    pub status: ProbeStatus,
    /// Stable CamelCase, for machines: `KvmDeviceMissing`, `RebootPending`.
    pub reason: &'static str,
    /// For a person: names the file, key or command involved.
    pub message: String,
    /// What a WARN or FAIL proves; shown only when transient.
    #[serde(skip_serializing_if = "Evidence::is_definitive")]
    pub evidence: Evidence,
}

impl ProbeOutcome {
    pub fn new(
        name: ProbeName,
        status: ProbeStatus,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            name,
            status,
            reason,
            message: message.into(),
            evidence: Evidence::Definitive,
        }
    }

    /// The same outcome, as evidence of a condition that may pass.
    pub fn transient(self) -> Self {
        self.with_evidence(Evidence::Transient)
    }

    pub fn with_evidence(self, evidence: Evidence) -> Self {
        Self { evidence, ..self }
    }

    pub fn ok(name: ProbeName, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, ProbeStatus::Ok, reason, message)
    }

    pub fn warn(name: ProbeName, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, ProbeStatus::Warn, reason, message)
    }

    pub fn fail(name: ProbeName, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, ProbeStatus::Fail, reason, message)
    }

    pub fn skip(name: ProbeName, reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(name, ProbeStatus::Skip, reason, message)
    }

    /// The probe ran out of time: it cannot tell either way.
    pub fn timed_out(name: ProbeName, budget: Duration) -> Self {
        Self::warn(
            name,
            reason::PROBE_TIMED_OUT,
            format!(
                "no answer within {:.1}s; the probe cannot decide",
                budget.as_secs_f64()
            ),
        )
        .transient()
    }
}

impl From<ProbeStatus> for proto::ProbeStatus {
    fn from(status: ProbeStatus) -> Self {
        match status {
            ProbeStatus::Ok => proto::ProbeStatus::Ok,
            ProbeStatus::Warn => proto::ProbeStatus::Warn,
            ProbeStatus::Fail => proto::ProbeStatus::Fail,
            ProbeStatus::Skip => proto::ProbeStatus::Skip,
        }
    }
}

impl From<&ProbeOutcome> for proto::ProbeOutcome {
    fn from(outcome: &ProbeOutcome) -> Self {
        proto::ProbeOutcome {
            name: outcome.name.as_str().to_owned(),
            status: proto::ProbeStatus::from(outcome.status).into(),
            reason: outcome.reason.to_owned(),
            message: outcome.message.clone(),
        }
    }
}

/// Time allowed to each kind of probe work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Reading files and issuing ioctls.
    pub filesystem: Duration,
    /// Running host commands (`qemu --version`, `rpm-ostree status`), which
    /// can be slow on a loaded node.
    pub command: Duration,
    /// Asking CRI-O over its socket.
    pub rpc: Duration,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            filesystem: Duration::from_secs(2),
            command: Duration::from_secs(10),
            rpc: Duration::from_secs(3),
        }
    }
}

/// Runs blocking probe work on the blocking pool, giving up after `budget`.
///
/// A timed-out closure keeps its thread until the kernel returns (a read from
/// a hung NFS mount cannot be cancelled), but the cycle moves on.
pub async fn run_blocking<F>(name: ProbeName, budget: Duration, work: F) -> ProbeOutcome
where
    F: FnOnce() -> ProbeOutcome + Send + 'static,
{
    blocking_within(name, budget, move || Ok(work()))
        .await
        .unwrap_or_else(|outcome| outcome)
}

/// Like [`run_blocking`] for work that produces a value for a later step;
/// `Err` carries the outcome to report instead.
pub async fn blocking_within<T, F>(
    name: ProbeName,
    budget: Duration,
    work: F,
) -> Result<T, ProbeOutcome>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ProbeOutcome> + Send + 'static,
{
    let progress = Arc::new(AtomicU8::new(RUNNING));
    let work_progress = Arc::clone(&progress);
    let task = tokio::task::spawn_blocking(move || {
        let result = work();
        // Given up on already: this thread is free again.
        if work_progress
            .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            ABANDONED.fetch_sub(1, Ordering::AcqRel);
        }
        result
    });
    match tokio::time::timeout(budget, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join_error)) => Err(ProbeOutcome::fail(
            name,
            reason::PROBE_CRASHED,
            format!("the probe stopped unexpectedly: {join_error}"),
        )
        .transient()),
        Err(_) => {
            // Still on its thread (or still queued for one): counted until
            // it returns, as it holds one of the pool's few threads.
            if progress
                .compare_exchange(
                    RUNNING,
                    ABANDONED_STATE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                ABANDONED.fetch_add(1, Ordering::AcqRel);
            }
            Err(ProbeOutcome::timed_out(name, budget))
        }
    }
}

/// Blocking probe work given up on at its deadline that has not returned
/// yet: each holds a thread of the small blocking pool (a read stuck on a
/// hung mount, an ioctl that never comes back). Exported as a metric.
pub fn abandoned_blocking_work() -> usize {
    ABANDONED.load(Ordering::Acquire)
}

static ABANDONED: AtomicUsize = AtomicUsize::new(0);
const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED_STATE: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_given_up_on_is_counted_until_it_returns() {
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let before = abandoned_blocking_work();
        let outcome = run_blocking(ProbeName::Qemu, Duration::from_millis(50), move || {
            let _ = wait.recv();
            ProbeOutcome::ok(ProbeName::Qemu, "Late", "")
        })
        .await;
        assert_eq!(outcome.reason, reason::PROBE_TIMED_OUT);
        // Other tests run probes at the same time, so only this one's
        // difference is certain while it is held.
        assert!(abandoned_blocking_work() > before);
        release.send(()).expect("the probe thread waits for this");
        let returned = async {
            while abandoned_blocking_work() > before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), returned)
            .await
            .expect("the abandoned work returned, so the count goes back down");
    }

    #[test]
    fn outcomes_convert_to_the_wire_form() {
        let outcome = ProbeOutcome::warn(ProbeName::RpmOstree, "RebootPending", "reboot");
        let wire = proto::ProbeOutcome::from(&outcome);
        assert_eq!(wire.name, "rpm-ostree");
        assert_eq!(wire.status, proto::ProbeStatus::Warn as i32);
        assert_eq!(wire.reason, "RebootPending");
    }

    #[tokio::test]
    async fn blocking_work_past_its_budget_is_undecided() {
        let outcome = run_blocking(ProbeName::Cpu, Duration::from_millis(10), || {
            std::thread::sleep(Duration::from_millis(200));
            ProbeOutcome::ok(ProbeName::Cpu, "Late", "")
        })
        .await;
        assert_eq!(outcome.status, ProbeStatus::Warn);
        assert_eq!(outcome.reason, "ProbeTimedOut");
    }
}
