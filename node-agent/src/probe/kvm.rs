//! KVM: `/dev/kvm` opens read-write, speaks API version 12, creates a VM
//! and, on x86-64, runs guest code in it: a VM with one page of real-mode
//! code (`mov al, 0x42; out 0x10, al; hlt`) and one vCPU, which must come
//! back with exactly that port write and then the halt. Only that proves the
//! kernel can run a Kata guest; CPU flags are a hint.
//!
//! The guest-code step costs a VM and a vCPU (far more than the rest of a
//! cycle), so the runner does not take it every cycle: [`GuestSchedule`]
//! runs it on the first cycle, again after any cycle whose KVM outcome was
//! not OK, and otherwise every [`DEFAULT_GUEST_CODE_EVERY`]th cycle. A
//! hypervisor that ran guest code a few minutes ago and still creates VMs now
//! is very unlikely to have stopped running guests in between, and what does
//! break it (a module reload, another hypervisor taking VMX/SVM) also breaks
//! `KVM_CREATE_VM`, which runs every cycle.
//!
//! A vCPU stuck in `KVM_RUN` keeps its thread in the kernel: the probe's
//! budget ends the wait, not the run (a signal to that thread would
//! interrupt it, but that needs a process-wide handler the agent does not
//! otherwise install). The program is three instructions and all other guest
//! memory is `hlt`, so a working KVM exits at once; a run that has not come
//! back by the next cycle is a FAIL, and no second one is started beside it.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

use super::host::{HostRoot, display, file_kind};
use super::{ProbeName, ProbeOutcome, ProbeStatus, kvm_ioctl, reason};
use crate::error::AgentError;

pub const KVM_DEVICE: &str = "/dev/kvm";
/// Every KVM since Linux 2.6.22 answers this; anything else is not KVM as
/// QEMU knows it.
const KVM_API_VERSION: i32 = 12;
/// `/dev/kvm` is the misc device 10:232 (`KVM_MINOR`).
const MISC_MAJOR: u64 = 10;
const KVM_MINOR: u64 = 232;

const NAME: ProbeName = ProbeName::Kvm;

/// Whether a KVM probe also runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCode {
    Run,
    /// Not this cycle: it last ran, and passed, this many cycles ago.
    Skip {
        passed_cycles_ago: u32,
    },
    /// Not at all ([`GuestSchedule::never`]).
    Disabled,
    /// Not this cycle: an earlier run has not come back from `KVM_RUN`.
    StillRunning,
}

/// By default, the guest code runs every 30th cycle: every five minutes at
/// the daemon's 10 s probe interval.
pub const DEFAULT_GUEST_CODE_EVERY: u32 = 30;

/// When the runner's KVM probe runs guest code (see the module docs).
#[derive(Debug)]
pub struct GuestSchedule {
    /// Run at least every this many cycles; 0 never runs it.
    every: u32,
    /// Cycles since the guest code last passed, `None` when it has not run
    /// yet or the KVM probe was not OK since.
    since_pass: Option<u32>,
    runs: u64,
    /// Set while a run is on its blocking thread.
    in_flight: Arc<AtomicBool>,
}

/// Held by the blocking work of a cycle that runs guest code; dropping it
/// (when that work returns or unwinds) tells the schedule the run is over.
#[derive(Debug)]
pub struct GuestRunInFlight(Arc<AtomicBool>);

impl Drop for GuestRunInFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl GuestSchedule {
    /// Every `every` cycles (1: every cycle), plus the first cycle and after
    /// a failure. 0 never runs guest code.
    pub fn every(every: u32) -> Self {
        Self {
            every,
            since_pass: None,
            runs: 0,
            in_flight: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Never runs guest code: the KVM probe stops at `KVM_CREATE_VM`.
    pub fn never() -> Self {
        Self::every(0)
    }

    /// What this cycle's probe should do.
    pub fn plan(&self) -> GuestCode {
        match self.since_pass {
            _ if self.every == 0 => GuestCode::Disabled,
            _ if self.in_flight.load(Ordering::Acquire) => GuestCode::StillRunning,
            Some(since) if since.saturating_add(1) < self.every => GuestCode::Skip {
                passed_cycles_ago: since.saturating_add(1),
            },
            _ => GuestCode::Run,
        }
    }

    /// For a cycle whose plan is [`GuestCode::Run`]: move it into the
    /// blocking work that runs the probe.
    pub fn start(&self, plan: GuestCode) -> Option<GuestRunInFlight> {
        (plan == GuestCode::Run).then(|| {
            self.in_flight.store(true, Ordering::Release);
            GuestRunInFlight(Arc::clone(&self.in_flight))
        })
    }

    /// Takes note of the cycle's outcome under `plan`.
    pub fn record(&mut self, plan: GuestCode, outcome: &ProbeOutcome) {
        if plan == GuestCode::Run {
            self.runs += 1;
        }
        self.since_pass = match (outcome.status, plan) {
            (ProbeStatus::Ok, GuestCode::Run) => Some(0),
            (ProbeStatus::Ok, GuestCode::Skip { .. } | GuestCode::Disabled) => {
                self.since_pass.map(|n| n.saturating_add(1))
            }
            _ => None,
        };
    }

    /// How many cycles were planned [`GuestCode::Run`] (and started).
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

impl Default for GuestSchedule {
    fn default() -> Self {
        Self::every(DEFAULT_GUEST_CODE_EVERY)
    }
}

/// Opens the host's `/dev/kvm`, checks the API version, creates a VM and
/// runs guest code in it. Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot) -> ProbeOutcome {
    probe_with(root, GuestCode::Run)
}

/// [`probe`], with the guest-code step as `guest` says. Blocking.
pub fn probe_with(root: &HostRoot, guest: GuestCode) -> ProbeOutcome {
    let shown = display(KVM_DEVICE);
    // stat first: nothing that is not a character device is ever opened, so
    // a FIFO or a file on a hung mount cannot block the open.
    let meta = match root.metadata(KVM_DEVICE) {
        Ok(meta) => meta,
        Err(err) => return open_failed(&err),
    };
    if !meta.file_type().is_char_device() {
        return ProbeOutcome::fail(
            NAME,
            reason::KVM_NOT_CHAR_DEVICE,
            format!("{shown} is a {}, not the KVM device", file_kind(&meta)),
        );
    }
    let (major, minor) = (
        nix::sys::stat::major(meta.rdev()),
        nix::sys::stat::minor(meta.rdev()),
    );
    if (major, minor) != (MISC_MAJOR, KVM_MINOR) {
        return ProbeOutcome::fail(
            NAME,
            reason::KVM_NOT_KVM_DEVICE,
            format!(
                "{shown} is character device {major}:{minor}, not KVM ({MISC_MAJOR}:{KVM_MINOR})"
            ),
        );
    }
    let path = match root.resolve(KVM_DEVICE) {
        Ok(path) => path,
        Err(err) => return open_failed(&err),
    };
    // std opens with O_CLOEXEC; O_NONBLOCK guards against the node being
    // swapped for something else between the stat and the open.
    let device = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(device) => device,
        Err(source) => {
            return open_failed(&AgentError::Io {
                path: shown,
                source,
            });
        }
    };
    match kvm_ioctl::api_version(device.as_fd()) {
        Ok(KVM_API_VERSION) => {}
        Ok(other) => {
            return ProbeOutcome::fail(
                NAME,
                reason::KVM_API_VERSION_UNSUPPORTED,
                format!("{shown} reports KVM API version {other}, expected {KVM_API_VERSION}"),
            );
        }
        Err(errno) => {
            return ProbeOutcome::fail(
                NAME,
                reason::KVM_IOCTL_FAILED,
                format!("KVM_GET_API_VERSION on {shown} failed: {}", errno.desc()),
            );
        }
    }
    // The guest-code step creates a VM of its own (and reports its failure
    // the same way): a VM created and closed first would only add its cost.
    let guest_creates_vm = cfg!(target_arch = "x86_64") && guest == GuestCode::Run;
    if !guest_creates_vm && let Err(errno) = kvm_ioctl::create_and_close_vm(device.as_fd()) {
        return create_vm_failed(&shown, errno);
    }
    let guest = match guest {
        GuestCode::Run => match run_guest_code(device.as_fd(), &shown) {
            Ok(done) => done,
            Err(outcome) => return outcome,
        },
        GuestCode::Disabled => "guest code not run (disabled)".to_owned(),
        GuestCode::StillRunning => {
            return ProbeOutcome::fail(
                NAME,
                reason::GUEST_CODE_DID_NOT_RUN,
                format!(
                    "the guest code started on {shown} in an earlier cycle has not come back \
                     from KVM_RUN; a 3-instruction guest that never exits"
                ),
            );
        }
        // The same words as the run that passed: an unchanged node must give
        // an unchanged outcome, or every cycle would count as a change to
        // report (and to write onto the node).
        GuestCode::Skip { .. } => guest_code_passed(),
    };
    ProbeOutcome::ok(
        NAME,
        reason::KVM_USABLE,
        format!("{shown}: API version {KVM_API_VERSION}, KVM_CREATE_VM succeeded; {guest}"),
    )
}

/// What the OK message says of the guest code, whether it ran this cycle or
/// passed in an earlier one.
#[cfg(not(target_arch = "x86_64"))]
fn guest_code_passed() -> String {
    "guest code not run on this architecture".to_owned()
}

/// What the OK message says of the guest code, whether it ran this cycle or
/// passed in an earlier one.
#[cfg(target_arch = "x86_64")]
fn guest_code_passed() -> String {
    format!(
        "guest code ran (out {:#x} to port {:#x}, then hlt)",
        kvm_ioctl::GUEST_BYTE,
        kvm_ioctl::GUEST_PORT
    )
}

fn create_vm_failed(shown: &str, errno: Errno) -> ProbeOutcome {
    match errno {
        Errno::EBUSY => ProbeOutcome::fail(
            NAME,
            reason::KVM_BUSY,
            format!(
                "KVM_CREATE_VM on {shown}: device busy; another hypervisor \
                 (VirtualBox, VMware) holds the CPU's virtualization extensions"
            ),
        ),
        Errno::EACCES | Errno::EPERM => ProbeOutcome::fail(
            NAME,
            reason::KVM_PERMISSION_DENIED,
            format!("KVM_CREATE_VM on {shown}: {}", errno.desc()),
        ),
        _ => ProbeOutcome::fail(
            NAME,
            reason::KVM_CREATE_VM_FAILED,
            format!("KVM_CREATE_VM on {shown} failed: {}", errno.desc()),
        ),
    }
}

/// The guest-code step: `Ok` with a phrase for the OK message.
#[cfg(target_arch = "x86_64")]
fn run_guest_code(kvm: BorrowedFd<'_>, shown: &str) -> Result<String, ProbeOutcome> {
    use kvm_ioctl::{GuestExit, GuestRunError};
    let describe = |exit: &GuestExit| match exit {
        GuestExit::Io(io) => format!(
            "KVM_EXIT_IO ({} port {:#x}, size {}, count {}, data {})",
            if io.out { "out" } else { "in" },
            io.port,
            io.size,
            io.count,
            io.data.as_ref().map_or_else(
                || "outside kvm_run".to_owned(),
                |data| format!("{data:02x?}")
            )
        ),
        GuestExit::Hlt => "KVM_EXIT_HLT".to_owned(),
        GuestExit::Other(code) => format!("{} ({code})", exit_name(*code)),
    };
    match kvm_ioctl::run_guest_program(kvm) {
        Ok(()) => Ok(guest_code_passed()),
        Err(GuestRunError::Setup {
            step: kvm_ioctl::CREATE_VM_STEP,
            errno,
        }) => Err(create_vm_failed(shown, errno)),
        Err(GuestRunError::Setup { step, errno }) => Err(ProbeOutcome::fail(
            NAME,
            reason::KVM_GUEST_SETUP_FAILED,
            format!(
                "{step} failed on a VM of {shown}: {}; cannot run guest code",
                errno.desc()
            ),
        )),
        Err(GuestRunError::UnexpectedExits(exits)) => {
            let seen: Vec<String> = exits.iter().map(describe).collect();
            Err(ProbeOutcome::fail(
                NAME,
                reason::GUEST_CODE_DID_NOT_RUN,
                format!(
                    "a 3-instruction real-mode guest on {shown} exited with {}; expected \
                     KVM_EXIT_IO (out port {:#x}, data [{:02x}]) then KVM_EXIT_HLT",
                    seen.join(" then "),
                    kvm_ioctl::GUEST_PORT,
                    kvm_ioctl::GUEST_BYTE
                ),
            ))
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn run_guest_code(_kvm: BorrowedFd<'_>, _shown: &str) -> Result<String, ProbeOutcome> {
    Ok(format!(
        "guest code not run: the probe's guest program is x86-64 real mode, this is {}",
        std::env::consts::ARCH
    ))
}

/// `KVM_EXIT_*` names from `<linux/kvm.h>`, for messages.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn exit_name(code: u32) -> &'static str {
    const NAMES: [&str; 18] = [
        "KVM_EXIT_UNKNOWN",
        "KVM_EXIT_EXCEPTION",
        "KVM_EXIT_IO",
        "KVM_EXIT_HYPERCALL",
        "KVM_EXIT_DEBUG",
        "KVM_EXIT_HLT",
        "KVM_EXIT_MMIO",
        "KVM_EXIT_IRQ_WINDOW_OPEN",
        "KVM_EXIT_SHUTDOWN",
        "KVM_EXIT_FAIL_ENTRY",
        "KVM_EXIT_INTR",
        "KVM_EXIT_SET_TPR",
        "KVM_EXIT_TPR_ACCESS",
        "KVM_EXIT_S390_SIEIC",
        "KVM_EXIT_S390_RESET",
        "KVM_EXIT_DCR",
        "KVM_EXIT_NMI",
        "KVM_EXIT_INTERNAL_ERROR",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|code| NAMES.get(code))
        .copied()
        .unwrap_or("KVM_EXIT_*")
}

fn open_failed(err: &AgentError) -> ProbeOutcome {
    let errno = err.raw_os_error().map(Errno::from_raw);
    let reason = match errno {
        Some(Errno::ENOENT) => reason::KVM_DEVICE_MISSING,
        Some(Errno::EACCES | Errno::EPERM) => reason::KVM_PERMISSION_DENIED,
        // The node exists but no driver is bound: the kvm module is not loaded.
        Some(Errno::ENXIO | Errno::ENODEV) => reason::KVM_DEVICE_UNAVAILABLE,
        _ => reason::KVM_DEVICE_UNREADABLE,
    };
    let hint = match reason {
        reason::KVM_DEVICE_MISSING => {
            "; KVM is not available (no virtualization, or the kvm module is not loaded)"
        }
        _ => "",
    };
    ProbeOutcome::fail(NAME, reason, format!("{err}{hint}"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fixtures::FakeHost;

    fn ok() -> ProbeOutcome {
        ProbeOutcome::ok(NAME, reason::KVM_USABLE, "")
    }

    #[test]
    fn guest_code_runs_first_then_every_nth_cycle_and_after_a_failure() {
        let mut schedule = GuestSchedule::every(3);
        let mut plans = Vec::new();
        for outcome in [ok(), ok(), ok(), ok()] {
            let plan = schedule.plan();
            plans.push(plan);
            schedule.record(plan, &outcome);
        }
        assert_eq!(
            plans,
            [
                GuestCode::Run,
                GuestCode::Skip {
                    passed_cycles_ago: 1
                },
                GuestCode::Skip {
                    passed_cycles_ago: 2
                },
                GuestCode::Run,
            ]
        );
        let plan = schedule.plan();
        schedule.record(plan, &ProbeOutcome::fail(NAME, reason::KVM_BUSY, ""));
        assert_eq!(schedule.plan(), GuestCode::Run, "a failure re-runs it");
        assert_eq!(schedule.runs(), 2);
        let mut every = GuestSchedule::every(1);
        every.record(every.plan(), &ok());
        assert_eq!(every.plan(), GuestCode::Run);
        assert_eq!(GuestSchedule::never().plan(), GuestCode::Disabled);
    }

    #[test]
    fn a_run_that_has_not_come_back_is_not_started_again() {
        let mut schedule = GuestSchedule::every(3);
        let plan = schedule.plan();
        let in_flight = schedule.start(plan);
        assert!(in_flight.is_some());
        // The cycle's budget ran out while the run is still on its thread.
        schedule.record(plan, &ProbeOutcome::timed_out(NAME, Duration::from_secs(2)));
        assert_eq!(schedule.plan(), GuestCode::StillRunning);
        assert!(schedule.start(GuestCode::StillRunning).is_none());
        let outcome = probe_with(&HostRoot::new("/nonexistent"), GuestCode::StillRunning);
        assert_eq!(outcome.status, ProbeStatus::Fail);
        drop(in_flight);
        assert_eq!(schedule.plan(), GuestCode::Run);
    }

    #[test]
    fn exit_codes_have_names() {
        assert_eq!(exit_name(2), "KVM_EXIT_IO");
        assert_eq!(exit_name(5), "KVM_EXIT_HLT");
        assert_eq!(exit_name(17), "KVM_EXIT_INTERNAL_ERROR");
        assert_eq!(exit_name(1000), "KVM_EXIT_*");
    }

    /// On a machine with a usable `/dev/kvm`: the guest program really runs.
    /// Skips, saying why, where there is none or it cannot be mirrored.
    #[test]
    fn guest_code_runs_on_the_real_kvm() {
        let Some(host) = FakeHost::empty().with_real_kvm_or_skip("guest_code_runs_on_the_real_kvm")
        else {
            return;
        };
        let root = host.host_root();
        let started = Instant::now();
        let without = probe_with(&root, GuestCode::Disabled);
        let create_only = started.elapsed();
        let started = Instant::now();
        let outcome = probe_with(&root, GuestCode::Run);
        let with_guest = started.elapsed();
        eprintln!(
            "real /dev/kvm: probe with guest code {:.3} ms, without (open + KVM_CREATE_VM) \
             {:.3} ms: {} {}: {}",
            with_guest.as_secs_f64() * 1000.0,
            create_only.as_secs_f64() * 1000.0,
            outcome.status,
            outcome.reason,
            outcome.message
        );
        assert_eq!(without.status, ProbeStatus::Ok, "{}", without.message);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Ok, reason::KVM_USABLE),
            "{}",
            outcome.message
        );
        if cfg!(target_arch = "x86_64") {
            assert!(
                outcome.message.contains("guest code ran"),
                "{}",
                outcome.message
            );
        }
    }
}
