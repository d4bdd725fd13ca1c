//! KVM: `/dev/kvm` opens read-write, speaks API version 12, creates a VM
//! and, on x86-64, runs guest code in it: a VM with one page of real-mode
//! code (`mov al, 0x42; out 0x10, al; hlt`) and one vCPU, which must come
//! back with exactly that port write and then the halt. Only that proves the
//! kernel can run a Kata guest; CPU flags are a hint.
//!
//! Creating a VM is the kernel's most expensive answer here (0.5–0.8 ms of
//! CPU on a nested host: it registers an MMU notifier and, for the first VM,
//! flips static keys on every CPU), and the guest-code step adds a vCPU on
//! top. Both are proofs that hold for a while, so the runner does not take
//! them every cycle: [`GuestSchedule`] creates a VM on the first cycle, again
//! after any cycle whose KVM outcome was not OK, and otherwise every
//! [`DEFAULT_CREATE_VM_EVERY`]th cycle (a minute at the 10 s interval); the
//! guest code runs on the same terms every [`DEFAULT_GUEST_CODE_EVERY`]th
//! cycle (five minutes). Every cycle still stats the device, opens it
//! read-write and asks its API version, so a removed module, a device that
//! changed or lost its permissions fails at once; what only `KVM_CREATE_VM`
//! sees (another hypervisor holding VMX/SVM on kernels that enable it per
//! VM, a memory limit) is found within a minute, and is then re-checked
//! every cycle until it passes. The OK message is the same whichever steps
//! ran, so an unchanged node gives an unchanged outcome.
//!
//! A vCPU stuck in `KVM_RUN` keeps its thread in the kernel until it is
//! kicked out: the probe's budget ends the wait, and the next cycle ends the
//! run ([`RunKick`]: `immediate_exit` and a signal to that
//! thread), so a hung guest holds a thread for one cycle, not for good. The
//! program is three instructions and all other guest memory is `hlt`, so a
//! working KVM exits at once; a run that has not come back by the next cycle
//! is a FAIL, transient (a loaded host can be that slow; a run that never
//! returns again and again persists, and the coordinator then treats it as
//! proof), and no second run is started beside it: at most one run is ever
//! abandoned at a time.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;

use super::host::{HostRoot, display, file_kind};
use super::{Evidence, ProbeName, ProbeOutcome, ProbeStatus, kvm_ioctl, reason};
use crate::error::AgentError;

pub use super::kvm_ioctl::RunKick;

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

/// By default, a VM is created every 6th cycle: every minute at the
/// daemon's 10 s probe interval.
pub const DEFAULT_CREATE_VM_EVERY: u32 = 6;

/// What one cycle's KVM probe does beyond opening the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmPlan {
    pub guest: GuestCode,
    /// Whether this cycle proves `KVM_CREATE_VM` (the guest-code step does
    /// so with its own VM).
    pub create_vm: bool,
}

impl KvmPlan {
    /// Every step, as a one-off check does it.
    pub const FULL: KvmPlan = KvmPlan {
        guest: GuestCode::Run,
        create_vm: true,
    };
}

/// When the runner's KVM probe runs guest code (see the module docs).
#[derive(Debug)]
pub struct GuestSchedule {
    /// Run at least every this many cycles; 0 never runs it.
    every: u32,
    /// Create a VM at least every this many cycles (at least 1).
    create_vm_every: u32,
    /// Cycles since the guest code last passed, `None` when it has not run
    /// yet or the KVM probe was not OK since.
    since_pass: Option<u32>,
    /// The same for `KVM_CREATE_VM`.
    since_vm: Option<u32>,
    runs: u64,
    vm_runs: u64,
    /// Set while a run is on its blocking thread.
    in_flight: Arc<AtomicBool>,
    /// Ends the latest run started, should it not come back.
    kick: Arc<RunKick>,
}

/// Held by the blocking work of a cycle that runs guest code; dropping it
/// (when that work returns or unwinds) tells the schedule the run is over.
#[derive(Debug)]
pub struct GuestRunInFlight {
    done: Arc<AtomicBool>,
    kick: Arc<RunKick>,
}

impl GuestRunInFlight {
    /// What ends this run from another thread.
    pub fn kick(&self) -> &RunKick {
        &self.kick
    }
}

impl Drop for GuestRunInFlight {
    fn drop(&mut self) {
        self.done.store(false, Ordering::Release);
    }
}

impl GuestSchedule {
    /// Every `every` cycles (1: every cycle), plus the first cycle and after
    /// a failure. 0 never runs guest code.
    /// VMs are created on the default schedule, or every cycle with
    /// `every(1)`.
    pub fn every(every: u32) -> Self {
        Self {
            every,
            create_vm_every: DEFAULT_CREATE_VM_EVERY,
            since_pass: None,
            since_vm: None,
            runs: 0,
            vm_runs: 0,
            in_flight: Arc::new(AtomicBool::new(false)),
            kick: Arc::default(),
        }
        .create_vm_every(if every == 1 {
            1
        } else {
            DEFAULT_CREATE_VM_EVERY
        })
    }

    /// Creates a VM at least every `every` cycles (0 counts as 1: a VM is
    /// never skipped for good).
    pub fn create_vm_every(mut self, every: u32) -> Self {
        self.create_vm_every = every.max(1);
        self
    }

    /// Never runs guest code: the KVM probe stops at `KVM_CREATE_VM`.
    pub fn never() -> Self {
        Self::every(0)
    }

    /// What this cycle's probe should do. A run still out from an earlier
    /// cycle is ended now (see the module docs).
    pub fn plan(&self) -> KvmPlan {
        let guest = match self.since_pass {
            _ if self.every == 0 => GuestCode::Disabled,
            _ if self.in_flight.load(Ordering::Acquire) => {
                self.kick.kick();
                GuestCode::StillRunning
            }
            Some(since) if since.saturating_add(1) < self.every => GuestCode::Skip {
                passed_cycles_ago: since.saturating_add(1),
            },
            _ => GuestCode::Run,
        };
        let vm_due = !matches!(
            self.since_vm,
            Some(since) if since.saturating_add(1) < self.create_vm_every
        );
        KvmPlan {
            guest,
            create_vm: guest == GuestCode::Run || vm_due,
        }
    }

    /// For a cycle whose plan runs guest code: move it into the blocking
    /// work that runs the probe.
    pub fn start(&mut self, plan: KvmPlan) -> Option<GuestRunInFlight> {
        (plan.guest == GuestCode::Run).then(|| {
            self.in_flight.store(true, Ordering::Release);
            self.kick = Arc::default();
            GuestRunInFlight {
                done: Arc::clone(&self.in_flight),
                kick: Arc::clone(&self.kick),
            }
        })
    }

    /// Takes note of the cycle's outcome under `plan`.
    pub fn record(&mut self, plan: KvmPlan, outcome: &ProbeOutcome) {
        if plan.guest == GuestCode::Run {
            self.runs += 1;
        }
        if plan.create_vm {
            self.vm_runs += 1;
        }
        let ok = outcome.status == ProbeStatus::Ok;
        self.since_pass = match plan.guest {
            GuestCode::Run if ok => Some(0),
            GuestCode::Skip { .. } | GuestCode::Disabled if ok => {
                self.since_pass.map(|n| n.saturating_add(1))
            }
            _ => None,
        };
        self.since_vm = match plan.create_vm {
            true if ok => Some(0),
            false if ok => self.since_vm.map(|n| n.saturating_add(1)),
            _ => None,
        };
    }

    /// How many cycles planned guest code (and started the probe with it).
    pub fn runs(&self) -> u64 {
        self.runs
    }

    /// How many cycles planned `KVM_CREATE_VM`, with or without guest code.
    pub fn vm_runs(&self) -> u64 {
        self.vm_runs
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
    probe_with(root, KvmPlan::FULL)
}

/// [`probe`], with the VM and guest-code steps as `plan` says. Blocking.
pub fn probe_with(root: &HostRoot, plan: KvmPlan) -> ProbeOutcome {
    probe_kickable(root, plan, &RunKick::default())
}

/// [`probe_with`], its guest run ended by `kick` should it not come back
/// ([`GuestRunInFlight::kick`]). Blocking.
pub fn probe_kickable(root: &HostRoot, plan: KvmPlan, kick: &RunKick) -> ProbeOutcome {
    let guest = plan.guest;
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
            )
            .with_evidence(errno_evidence(errno));
        }
    }
    // The guest-code step creates a VM of its own (and reports its failure
    // the same way): a VM created and closed first would only add its cost.
    let guest_creates_vm = cfg!(target_arch = "x86_64") && guest == GuestCode::Run;
    if plan.create_vm
        && !guest_creates_vm
        && let Err(errno) = kvm_ioctl::create_and_close_vm(device.as_fd())
    {
        return create_vm_failed(&shown, errno);
    }
    let guest = match guest {
        GuestCode::Run => match run_guest_code(device.as_fd(), &shown, kick) {
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
            )
            .transient();
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

/// What an errno from `/dev/kvm` (its open or an ioctl) proves.
///
/// Definitive: the device or its driver is not there (ENOENT, ENODEV,
/// ENXIO), or the agent may not use it (EACCES, EPERM). A permission error
/// is not a property of the CPU, but it does not pass by itself either: the
/// device's mode or SELinux label, or the pod's security context, must be
/// changed, and waiting longer proves nothing more. When it is the pod's
/// configuration it is the same on every node, and the coordinator's
/// fleet-wide brake keeps the pool as it is.
///
/// Transient: everything else. ENOMEM and EAGAIN (the kernel could not
/// allocate a VM now), EBUSY (another hypervisor holds VMX/SVM for now),
/// EINTR past its retries, and any errno not named here: an unknown answer
/// is not proof that the node cannot run Kata.
pub fn errno_evidence(errno: Errno) -> Evidence {
    match errno {
        Errno::ENOENT | Errno::ENODEV | Errno::ENXIO | Errno::EACCES | Errno::EPERM => {
            Evidence::Definitive
        }
        _ => Evidence::Transient,
    }
}

fn create_vm_failed(shown: &str, errno: Errno) -> ProbeOutcome {
    create_vm_outcome(shown, errno).with_evidence(errno_evidence(errno))
}

fn create_vm_outcome(shown: &str, errno: Errno) -> ProbeOutcome {
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
fn run_guest_code(
    kvm: BorrowedFd<'_>,
    shown: &str,
    kick: &RunKick,
) -> Result<String, ProbeOutcome> {
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
    match kvm_ioctl::run_guest_program(kvm, kick) {
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
        )
        .with_evidence(errno_evidence(errno))),
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
fn run_guest_code(
    _kvm: BorrowedFd<'_>,
    _shown: &str,
    _kick: &RunKick,
) -> Result<String, ProbeOutcome> {
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
    // An error without an errno (a path that cannot be resolved under the
    // host root) says nothing about the device: not proof.
    let evidence = errno.map_or(Evidence::Transient, errno_evidence);
    ProbeOutcome::fail(NAME, reason, format!("{err}{hint}")).with_evidence(evidence)
}

#[cfg(test)]
mod tests;
