//! CPU: vendor and the flags Kata cares about, from `/proc/cpuinfo`.
//!
//! The flags are a hint, not proof: a nested guest may hide `vmx`/`svm`
//! while KVM works (and a bare-metal CPU may show them with virtualization
//! disabled in the firmware), so the verdict on virtualization comes from the
//! KVM probe and a missing flag next to a working KVM is only a WARN.

use std::collections::BTreeSet;

use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, reason};

pub const CPUINFO: &str = "/proc/cpuinfo";
/// The first processor block is about 2 KiB; 64 KiB is plenty and bounds the
/// read when the file is hostile (a 100 MB cpuinfo is never read whole).
const CPUINFO_LIMIT: u64 = 64 * 1024;
/// Flags a Kata x86-64 guest needs whatever the hypervisor.
const REQUIRED_FLAGS: [&str; 2] = ["lm", "sse4_1"];
const VIRT_FLAGS: [&str; 2] = ["vmx", "svm"];

const NAME: ProbeName = ProbeName::Cpu;

/// The fields of the first processor block that the probe uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub vendor: Option<String>,
    pub model_name: Option<String>,
    /// `None` when the block has no `flags` line (non-x86, or garbage).
    pub flags: Option<BTreeSet<String>>,
}

impl CpuInfo {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags
            .as_ref()
            .is_some_and(|flags| flags.contains(flag))
    }

    /// Whether this is a guest of another hypervisor (the `hypervisor` flag
    /// every x86 hypervisor sets in CPUID for its guests).
    pub fn is_nested(&self) -> bool {
        self.has_flag("hypervisor")
    }

    /// The hardware KVM module this CPU's vendor needs, as Kata's host check
    /// maps it: `None` for any other vendor (or none known).
    pub fn kvm_vendor_module(&self) -> Option<&'static str> {
        match self.vendor.as_deref()? {
            "GenuineIntel" => Some("kvm_intel"),
            "AuthenticAMD" => Some("kvm_amd"),
            _ => None,
        }
    }
}

/// Parses the first processor block of a cpuinfo text; stops at the first
/// blank line after it. Unknown or malformed lines are ignored.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut in_block = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() && in_block {
                break;
            }
            continue;
        };
        in_block = true;
        let value = value.trim();
        match key.trim() {
            "vendor_id" => info.vendor = Some(value.to_owned()),
            "model name" => info.model_name = Some(value.to_owned()),
            "flags" => {
                info.flags = Some(value.split_whitespace().map(str::to_owned).collect());
            }
            _ => {}
        }
    }
    info
}

/// Reads the first block of the host's cpuinfo. Blocking.
pub fn read(root: &HostRoot) -> Result<CpuInfo, ProbeOutcome> {
    match root.read_prefix(CPUINFO, CPUINFO_LIMIT) {
        Ok(bytes) => Ok(parse_cpuinfo(&String::from_utf8_lossy(&bytes))),
        Err(err) => Err(ProbeOutcome::warn(
            NAME,
            reason::CPUINFO_UNREADABLE,
            format!("{err}; CPU flags unknown"),
        )),
    }
}

/// Judges the flags, knowing whether KVM itself works.
pub fn evaluate(info: &CpuInfo, kvm_usable: bool) -> ProbeOutcome {
    let vendor = info.vendor.as_deref().unwrap_or("unknown vendor");
    let Some(flags) = &info.flags else {
        return if std::env::consts::ARCH == "x86_64" {
            ProbeOutcome::warn(
                NAME,
                reason::CPUINFO_UNPARSEABLE,
                format!(
                    "no `flags` line in the first processor block of {}",
                    display(CPUINFO)
                ),
            )
        } else {
            ProbeOutcome::skip(
                NAME,
                reason::CPU_FLAGS_NOT_APPLICABLE,
                format!(
                    "{vendor}: x86 CPU flags do not apply on {}",
                    std::env::consts::ARCH
                ),
            )
        };
    };
    let missing: Vec<&str> = REQUIRED_FLAGS
        .into_iter()
        .filter(|flag| !flags.contains(*flag))
        .collect();
    if !missing.is_empty() {
        return ProbeOutcome::fail(
            NAME,
            reason::CPU_FLAGS_MISSING,
            format!(
                "{vendor}: missing CPU flags {}; Kata guests need 64-bit long mode and SSE4.1",
                missing.join(", ")
            ),
        );
    }
    match VIRT_FLAGS.into_iter().find(|flag| flags.contains(*flag)) {
        Some(virt) => ProbeOutcome::ok(
            NAME,
            reason::CPU_FLAGS_PRESENT,
            format!("{vendor}: {virt} lm sse4_1"),
        ),
        None if kvm_usable => ProbeOutcome::warn(
            NAME,
            reason::VIRT_FLAGS_HIDDEN,
            format!(
                "{vendor}: no vmx/svm flag, yet KVM works; usual in a nested guest whose \
                 hypervisor hides the flag"
            ),
        ),
        None => ProbeOutcome::fail(
            NAME,
            reason::NO_VIRTUALIZATION_FLAGS,
            format!(
                "{vendor}: no vmx/svm flag and KVM does not work; enable virtualization \
                 in the firmware or the parent hypervisor"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeStatus;

    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n\
        flags\t\t: fpu vmx lm sse4_1 avx\n\nprocessor\t: 1\nvendor_id\t: Other\n";

    #[test]
    fn only_the_first_block_is_read() {
        let info = parse_cpuinfo(INTEL);
        assert_eq!(info.vendor.as_deref(), Some("GenuineIntel"));
        assert_eq!(info.model_name.as_deref(), Some("Xeon"));
        assert!(
            info.flags
                .as_ref()
                .is_some_and(|flags| flags.contains("vmx"))
        );
    }

    #[test]
    fn a_hidden_virt_flag_is_a_warning_only_when_kvm_works() {
        let info = parse_cpuinfo("vendor_id : GenuineIntel\nflags : lm sse4_1 hypervisor\n");
        let with_kvm = evaluate(&info, true);
        assert_eq!(
            (with_kvm.status, with_kvm.reason),
            (ProbeStatus::Warn, "VirtFlagsHidden")
        );
        let without = evaluate(&info, false);
        assert_eq!(
            (without.status, without.reason),
            (ProbeStatus::Fail, "NoVirtualizationFlags")
        );
        let ok = evaluate(&parse_cpuinfo(INTEL), true);
        assert_eq!((ok.status, ok.reason), (ProbeStatus::Ok, "CpuFlagsPresent"));
    }

    #[test]
    fn vendor_module_and_nesting() {
        let intel = parse_cpuinfo(INTEL);
        assert_eq!(intel.kvm_vendor_module(), Some("kvm_intel"));
        assert!(!intel.is_nested());
        let amd = parse_cpuinfo("vendor_id : AuthenticAMD\nflags : svm lm hypervisor\n");
        assert_eq!(amd.kvm_vendor_module(), Some("kvm_amd"));
        assert!(amd.is_nested());
        assert_eq!(
            parse_cpuinfo("vendor_id : HygonGenuine\n").kvm_vendor_module(),
            None
        );
        assert_eq!(CpuInfo::default().kvm_vendor_module(), None);
    }

    #[test]
    fn missing_long_mode_fails_and_garbage_is_undecided() {
        let info = parse_cpuinfo("flags : vmx sse4_1\n");
        assert_eq!(evaluate(&info, true).reason, "CpuFlagsMissing");
        let garbage = parse_cpuinfo("\0\0\0\u{1}binary");
        assert_eq!(garbage, CpuInfo::default());
        assert_ne!(evaluate(&garbage, true).status, ProbeStatus::Ok);
    }
}
