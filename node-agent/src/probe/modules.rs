//! Kernel modules Kata needs, as listed under `/sys/module`, and the vsock
//! device Kata's shim uses to reach the agent inside the guest.
//!
//! `vhost_net` and `vhost_vsock` may be absent from `/sys/module` while their
//! device nodes exist: kmod creates `/dev/vhost-net` and `/dev/vhost-vsock`
//! at boot and the kernel loads the module on first open. That is a WARN the
//! verdict accepts, not a FAIL.
//!
//! As Kata's own host check (`kata-runtime check`, `kata-ctl check`) does, the
//! probe also requires the hardware module of the CPU's vendor (`vendor_id`
//! in `/proc/cpuinfo`: GenuineIntel needs `kvm_intel`, AuthenticAMD
//! `kvm_amd`), and looks at two module parameters:
//! - `kvm_intel`'s `unrestricted_guest` must be `Y` on bare metal (a FAIL
//!   otherwise); in a nested guest (cpuinfo flag `hypervisor`) the parent
//!   hypervisor often hides it, and that is a WARN;
//! - `kvm`'s `kvmclock_periodic_sync` should be `Y` (guest clocks drift
//!   otherwise): a WARN when it is not, or cannot be read.
//!
//! A parameter file that cannot be read is a WARN (`KvmParameterUnreadable`),
//! which the verdict accepts: the KVM probe's guest-code run, which starts in
//! real mode, is the proof that KVM runs guests at all.

use super::cpu::{self, CpuInfo};
use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, reason};

pub const VHOST_VSOCK_DEVICE: &str = "/dev/vhost-vsock";
const SYS_MODULE: &str = "/sys/module";
/// Hardware-assisted KVM backends; one of them must be loaded.
const KVM_VENDOR_MODULES: [&str; 2] = ["kvm_intel", "kvm_amd"];
/// Modules that must be loaded, each with the device node that would load it
/// on demand, if any.
const REQUIRED_MODULES: [(&str, Option<&str>); 4] = [
    ("kvm", None),
    ("vhost", None),
    ("vhost_net", Some("/dev/vhost-net")),
    ("vhost_vsock", Some(VHOST_VSOCK_DEVICE)),
];

/// `Y`/`N` and a newline; anything much longer is not a boolean parameter.
const PARAMETER_LIMIT: u64 = 64;
pub const UNRESTRICTED_GUEST: &str = "/sys/module/kvm_intel/parameters/unrestricted_guest";
pub const KVMCLOCK_PERIODIC_SYNC: &str = "/sys/module/kvm/parameters/kvmclock_periodic_sync";

const NAME: ProbeName = ProbeName::KernelModules;

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot) -> ProbeOutcome {
    // An unreadable cpuinfo leaves the vendor unknown: either vendor module
    // will do, and nothing is taken to be nested. (The cpu probe reports it.)
    let cpu = cpu::read(root).unwrap_or_default();
    let loaded = |module: &str| root.exists(&format!("{SYS_MODULE}/{module}"));
    let mut missing = Vec::new();
    let mut on_demand = Vec::new();
    for (module, device) in REQUIRED_MODULES {
        if loaded(module) {
            continue;
        }
        match device {
            Some(device) if root.exists(device) => on_demand.push(module),
            _ => missing.push(module),
        }
    }
    let vendor_name = cpu.vendor.as_deref().unwrap_or("unknown vendor");
    let expected = cpu.kvm_vendor_module();
    let vendor = KVM_VENDOR_MODULES
        .into_iter()
        .filter(|module| expected.is_none_or(|expected| expected == *module))
        .find(|module| loaded(module));
    if let (Some(expected), None) = (expected, vendor)
        && let Some(wrong) = KVM_VENDOR_MODULES.into_iter().find(|module| loaded(module))
    {
        return ProbeOutcome::fail(
            NAME,
            reason::KVM_VENDOR_MODULE_MISMATCH,
            format!(
                "{} says vendor_id {vendor_name}, which needs {expected}; {} has {wrong} \
                 instead, which cannot run guests on this CPU",
                display(cpu::CPUINFO),
                display(SYS_MODULE)
            ),
        );
    }
    let other_backends;
    if vendor.is_none() {
        let wanted = match expected {
            Some(expected) => format!("kvm_intel|kvm_amd ({expected} for {vendor_name})"),
            None => "kvm_intel|kvm_amd".to_owned(),
        };
        // Say what provides KVM instead (kvm_pvm, for one), if anything.
        let others: Vec<String> = root
            .read_dir_sorted(SYS_MODULE)
            .unwrap_or_default()
            .into_iter()
            .filter(|module| module.starts_with("kvm_"))
            .collect();
        other_backends = if others.is_empty() {
            wanted
        } else {
            format!("{wanted}, found {} instead", others.join(", "))
        };
        missing.push(&other_backends);
    }
    if !missing.is_empty() {
        return ProbeOutcome::fail(
            NAME,
            reason::KERNEL_MODULES_MISSING,
            format!(
                "not loaded (no entry under {}): {}",
                display(SYS_MODULE),
                missing.join(", ")
            ),
        );
    }
    if !root.exists(VHOST_VSOCK_DEVICE) {
        return ProbeOutcome::fail(
            NAME,
            reason::VHOST_VSOCK_DEVICE_MISSING,
            format!(
                "{} is missing; Kata's shim talks to its guest agent over vsock",
                display(VHOST_VSOCK_DEVICE)
            ),
        );
    }
    let vendor = vendor.unwrap_or("kvm_intel|kvm_amd");
    let mut warnings: Vec<(&'static str, String)> = Vec::new();
    if !on_demand.is_empty() {
        warnings.push((
            reason::MODULES_LOAD_ON_DEMAND,
            format!(
                "kvm, {vendor} and vhost loaded; {} not yet loaded, their device nodes \
                 exist and load them on first use",
                on_demand.join(", ")
            ),
        ));
    }
    if vendor == "kvm_intel"
        && let Err(problem) = unrestricted_guest(root, &cpu)
    {
        match problem {
            Problem::Fail(message) => {
                return ProbeOutcome::fail(NAME, reason::UNRESTRICTED_GUEST_DISABLED, message);
            }
            Problem::Warn(reason, message) => warnings.push((reason, message)),
        }
    }
    match parameter(root, KVMCLOCK_PERIODIC_SYNC) {
        Ok(true) => {}
        Ok(false) => warnings.push((
            reason::KVMCLOCK_PERIODIC_SYNC_DISABLED,
            format!(
                "{} is N; guest clocks are not kept in sync with the host",
                display(KVMCLOCK_PERIODIC_SYNC)
            ),
        )),
        Err(unreadable) => warnings.push((reason::KVM_PARAMETER_UNREADABLE, unreadable)),
    }
    if let Some((reason, _)) = warnings.first() {
        let messages: Vec<&str> = warnings
            .iter()
            .map(|(_, message)| message.as_str())
            .collect();
        return ProbeOutcome::warn(NAME, reason, messages.join("; "));
    }
    let parameters = if vendor == "kvm_intel" {
        "unrestricted_guest=Y, kvmclock_periodic_sync=Y"
    } else {
        "kvmclock_periodic_sync=Y"
    };
    ProbeOutcome::ok(
        NAME,
        reason::KERNEL_MODULES_LOADED,
        format!(
            "kvm, {vendor}, vhost, vhost_net, vhost_vsock loaded; {} present; {parameters}",
            display(VHOST_VSOCK_DEVICE)
        ),
    )
}

enum Problem {
    Fail(String),
    Warn(&'static str, String),
}

/// `kvm_intel`'s `unrestricted_guest`: required on bare metal, a WARN nested.
fn unrestricted_guest(root: &HostRoot, cpu: &CpuInfo) -> Result<(), Problem> {
    let shown = display(UNRESTRICTED_GUEST);
    match parameter(root, UNRESTRICTED_GUEST) {
        Ok(true) => Ok(()),
        Ok(false) if cpu.is_nested() => Err(Problem::Warn(
            reason::UNRESTRICTED_GUEST_DISABLED,
            format!(
                "{shown} is N; nested (cpuinfo flag `hypervisor`), where the parent \
                 hypervisor often does not offer it, so not a failure"
            ),
        )),
        Ok(false) => Err(Problem::Fail(format!(
            "{shown} is N on bare metal; Kata needs unrestricted guests (reload kvm_intel \
             with unrestricted_guest=Y; it needs EPT)"
        ))),
        Err(unreadable) => Err(Problem::Warn(reason::KVM_PARAMETER_UNREADABLE, unreadable)),
    }
}

/// A boolean module parameter: `Ok` with its value, `Err` with a message
/// naming the file when it is missing, unreadable or not a boolean.
fn parameter(root: &HostRoot, path: &str) -> Result<bool, String> {
    let bytes = root
        .read_file(path, PARAMETER_LIMIT)
        .map_err(|err| format!("{err}; cannot tell whether it is Y"))?;
    let text = String::from_utf8_lossy(&bytes);
    match text.trim() {
        "Y" | "y" | "1" => Ok(true),
        "N" | "n" | "0" => Ok(false),
        other => Err(format!(
            "{} is {other:?}, not Y or N; cannot tell whether it is Y",
            display(path)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeHost;
    use crate::probe::ProbeStatus::{self, Fail, Ok, Warn};

    /// The probe's outcome on `host`: `status` and `reason`, and a message
    /// containing every one of `parts`.
    fn check(host: &FakeHost, status: ProbeStatus, reason: &str, parts: &[&str]) {
        let outcome = probe(&host.host_root());
        assert_eq!(
            (outcome.status, outcome.reason),
            (status, reason),
            "{}",
            outcome.message
        );
        for part in parts {
            assert!(
                outcome.message.contains(part),
                "{part}: {}",
                outcome.message
            );
        }
    }

    fn amd() -> FakeHost {
        FakeHost::good().cpu_vendor("AuthenticAMD")
    }

    #[test]
    fn the_vendor_module_matches_the_vendor() {
        let good = FakeHost::good();
        check(
            &good,
            Ok,
            "KernelModulesLoaded",
            &["kvm_intel", "unrestricted_guest=Y"],
        );
        let amd = amd().kvm_vendor_module("kvm_amd");
        check(&amd, Ok, "KernelModulesLoaded", &["kvm_amd"]);
        // A vendor the check does not know takes either module.
        let other = FakeHost::good()
            .cpu_vendor("HygonGenuine")
            .kvm_vendor_module("kvm_amd");
        check(&other, Ok, "KernelModulesLoaded", &[]);
    }

    #[test]
    fn the_other_vendors_module_fails() {
        let intel_with_amd = FakeHost::good().kvm_vendor_module("kvm_amd");
        let parts = [
            "/proc/cpuinfo",
            "GenuineIntel",
            "needs kvm_intel",
            "has kvm_amd",
        ];
        check(&intel_with_amd, Fail, "KvmVendorModuleMismatch", &parts);
        let parts = ["AuthenticAMD", "needs kvm_amd", "has kvm_intel"];
        check(&amd(), Fail, "KvmVendorModuleMismatch", &parts);
        // Neither: missing, naming the one this CPU needs and what is there.
        let pvm = amd().kvm_vendor_module("kvm_pvm");
        let parts = ["kvm_amd for AuthenticAMD", "found kvm_pvm instead"];
        check(&pvm, Fail, "KernelModulesMissing", &parts);
    }

    #[test]
    fn unrestricted_guest_off_fails_on_bare_metal_and_warns_nested() {
        let off = |host: FakeHost| host.module_parameter("kvm_intel", "unrestricted_guest", "N");
        let parts = [UNRESTRICTED_GUEST, "is N", "bare metal"];
        check(
            &off(FakeHost::good()),
            Fail,
            "UnrestrictedGuestDisabled",
            &parts,
        );
        let parts = [UNRESTRICTED_GUEST, "is N", "nested"];
        let nested = off(FakeHost::good().nested());
        check(&nested, Warn, "UnrestrictedGuestDisabled", &parts);
        // kvm_amd has no such parameter: not looked for.
        let amd = amd().kvm_vendor_module("kvm_amd");
        check(&amd, Ok, "KernelModulesLoaded", &[]);
        let missing = FakeHost::good().remove(UNRESTRICTED_GUEST);
        check(
            &missing,
            Warn,
            "KvmParameterUnreadable",
            &[UNRESTRICTED_GUEST],
        );
    }

    #[test]
    fn kvmclock_periodic_sync_off_or_absent_warns() {
        let sync =
            |host: FakeHost, value| host.module_parameter("kvm", "kvmclock_periodic_sync", value);
        let parts = [KVMCLOCK_PERIODIC_SYNC, "is N"];
        check(
            &sync(FakeHost::good(), "N"),
            Warn,
            "KvmclockPeriodicSyncDisabled",
            &parts,
        );
        let nested = sync(FakeHost::good().nested(), "N");
        check(&nested, Warn, "KvmclockPeriodicSyncDisabled", &parts);
        let garbage = sync(FakeHost::good(), "maybe");
        check(
            &garbage,
            Warn,
            "KvmParameterUnreadable",
            &[KVMCLOCK_PERIODIC_SYNC, "\"maybe\""],
        );
        let absent = FakeHost::good().remove(KVMCLOCK_PERIODIC_SYNC);
        check(
            &absent,
            Warn,
            "KvmParameterUnreadable",
            &[KVMCLOCK_PERIODIC_SYNC],
        );
        // Several warnings: the first reason, every message.
        let both = sync(FakeHost::good().without_module("vhost_vsock"), "N");
        let parts = ["vhost_vsock not yet loaded", KVMCLOCK_PERIODIC_SYNC];
        check(&both, Warn, "ModulesLoadOnDemand", &parts);
    }

    #[test]
    fn warnings_keep_the_node_capable_and_failures_do_not() {
        use crate::probe::ProbeName as N;
        use crate::verdict::verdicts;
        let capable = |host: FakeHost| {
            let outcomes: Vec<ProbeOutcome> = N::ALL
                .into_iter()
                .map(|name| match name {
                    N::KernelModules => probe(&host.host_root()),
                    _ => ProbeOutcome::ok(name, "Fine", ""),
                })
                .collect();
            verdicts(&outcomes).kvm_capable
        };
        let good = FakeHost::good;
        assert!(capable(good()));
        assert!(capable(good().module_parameter(
            "kvm",
            "kvmclock_periodic_sync",
            "N"
        )));
        assert!(capable(good().remove(KVMCLOCK_PERIODIC_SYNC)));
        let ug_off = |host: FakeHost| host.module_parameter("kvm_intel", "unrestricted_guest", "N");
        assert!(capable(ug_off(good().nested())));
        assert!(!capable(ug_off(good())));
        assert!(!capable(good().kvm_vendor_module("kvm_amd")));
    }
}
