//! The two verdicts, a pure function of a cycle's outcomes.
//!
//! `kvm_capable` (hardware and kernel can run Kata):
//! - `kvm` is OK: a VM was actually created;
//! - `kernel-modules` is OK, or WARN `ModulesLoadOnDemand` (the device nodes
//!   exist and load the modules on first open), or a WARN on a KVM module
//!   parameter: `UnrestrictedGuestDisabled` (nested only; on bare metal it is
//!   a FAIL), `KvmclockPeriodicSyncDisabled`, `KvmParameterUnreadable`;
//! - `cpu` is not FAIL: its flags are a hint and a WARN (flags hidden by a
//!   parent hypervisor, cpuinfo unreadable) does not outweigh a working KVM.
//!
//! `runtime_ready` (capable, installed, configured and served):
//! - `kvm_capable`, and
//! - `qemu`, `kata-shim` OK;
//! - `rpm-ostree` OK, SKIP `NotOstreeHost`, or WARN `ExtensionRemovalPending`
//!   (the extension is booted now; the next boot will remove it). WARN
//!   `RebootPending` is *not* ready: the installed runtime is not running yet;
//! - `crio-drop-in` OK, WARN `RuntimeRootMissing` (CRI-O serves the handler
//!   with its default root) or WARN `PrivilegedWithoutHostDevicesUnset` (ordinary
//!   pods run; only privileged ones are affected);
//! - `cri-handler` OK, SKIP `CrioSocketAbsent` (no socket to ask), or WARN
//!   `HandlerUnverifiable` (a CRI-O before 1.30 reports neither its handlers
//!   nor its loaded configuration; `crio-drop-in` still checks the file);
//! - `capacity` OK or WARN `LowAvailableMemory` (it moves with the load).
//!
//! Anything else, including a probe that timed out or is missing from the
//! list, makes the verdict false: the agent only says "ready" when it knows.

use kata_proto::health::v1 as proto;
use serde::Serialize;

use crate::probe::{ProbeName, ProbeOutcome, ProbeStatus, reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    pub kvm_capable: bool,
    pub runtime_ready: bool,
}

impl From<Verdicts> for proto::Verdicts {
    fn from(verdicts: Verdicts) -> Self {
        proto::Verdicts {
            kvm_capable: verdicts.kvm_capable,
            runtime_ready: verdicts.runtime_ready,
        }
    }
}

/// The probes that decide `kvm_capable`; `runtime_ready` needs them all.
const CAPABILITY_PROBES: [ProbeName; 3] =
    [ProbeName::Kvm, ProbeName::KernelModules, ProbeName::Cpu];

pub fn verdicts(outcomes: &[ProbeOutcome]) -> Verdicts {
    let all_acceptable = |names: &[ProbeName]| {
        names.iter().all(|name| {
            outcomes
                .iter()
                .find(|outcome| outcome.name == *name)
                .is_some_and(acceptable)
        })
    };
    let kvm_capable = all_acceptable(&CAPABILITY_PROBES);
    Verdicts {
        kvm_capable,
        runtime_ready: kvm_capable && all_acceptable(&ProbeName::ALL),
    }
}

/// Whether one outcome allows its verdict; the rule is in the module docs.
fn acceptable(outcome: &ProbeOutcome) -> bool {
    use ProbeName as N;
    use ProbeStatus::{Fail, Ok, Skip, Warn};
    match (outcome.name, outcome.status, outcome.reason) {
        (_, Ok, _) => true,
        (N::Cpu, Warn | Skip, _) => true,
        (N::KernelModules, Warn, reason::MODULES_LOAD_ON_DEMAND) => true,
        (
            N::KernelModules,
            Warn,
            reason::UNRESTRICTED_GUEST_DISABLED
            | reason::KVMCLOCK_PERIODIC_SYNC_DISABLED
            | reason::KVM_PARAMETER_UNREADABLE,
        ) => true,
        (N::RpmOstree, Skip, reason::NOT_OSTREE_HOST) => true,
        (N::RpmOstree, Warn, reason::EXTENSION_REMOVAL_PENDING) => true,
        (N::CrioDropIn, Warn, reason::PRIVILEGED_WITHOUT_HOST_DEVICES_UNSET) => true,
        (N::CrioDropIn, Warn, reason::RUNTIME_ROOT_MISSING) => true,
        (N::CriHandler, Skip, reason::CRIO_SOCKET_ABSENT) => true,
        (N::CriHandler, Warn, reason::HANDLER_UNVERIFIABLE) => true,
        (N::Capacity, Warn, reason::LOW_AVAILABLE_MEMORY) => true,
        (_, Warn | Skip | Fail, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ok() -> Vec<ProbeOutcome> {
        ProbeName::ALL
            .into_iter()
            .map(|name| ProbeOutcome::ok(name, "Fine", ""))
            .collect()
    }

    fn with(name: ProbeName, status: ProbeStatus, reason: &'static str) -> Vec<ProbeOutcome> {
        let mut outcomes = all_ok();
        for outcome in &mut outcomes {
            if outcome.name == name {
                *outcome = ProbeOutcome::new(name, status, reason, "");
            }
        }
        outcomes
    }

    fn v(capable: bool, ready: bool) -> Verdicts {
        Verdicts {
            kvm_capable: capable,
            runtime_ready: ready,
        }
    }

    #[test]
    fn all_ok_is_ready() {
        assert_eq!(verdicts(&all_ok()), v(true, true));
    }

    #[test]
    fn one_outcome_changed_from_all_ok() {
        use ProbeName as N;
        use ProbeStatus::*;
        let cases: [(N, ProbeStatus, &'static str, Verdicts); 20] = [
            (N::Kvm, Fail, "KvmBusy", v(false, false)),
            (N::Kvm, Warn, "ProbeTimedOut", v(false, false)),
            (
                N::KernelModules,
                Fail,
                "KernelModulesMissing",
                v(false, false),
            ),
            (N::KernelModules, Warn, "ModulesLoadOnDemand", v(true, true)),
            (N::Cpu, Warn, "VirtFlagsHidden", v(true, true)),
            (N::Cpu, Warn, "CpuinfoUnreadable", v(true, true)),
            (N::Cpu, Fail, "CpuFlagsMissing", v(false, false)),
            (N::RpmOstree, Warn, "RebootPending", v(true, false)),
            (N::RpmOstree, Skip, "NotOstreeHost", v(true, true)),
            (N::RpmOstree, Warn, "ExtensionRemovalPending", v(true, true)),
            (N::CriHandler, Skip, "CrioSocketAbsent", v(true, true)),
            (N::CriHandler, Fail, "HandlerNotServed", v(true, false)),
            (N::Qemu, Warn, "ProbeTimedOut", v(true, false)),
            (N::Qemu, Skip, "Whatever", v(true, false)),
            (N::KataShim, Fail, "KataShimMissing", v(true, false)),
            (
                N::CrioDropIn,
                Warn,
                "PrivilegedWithoutHostDevicesUnset",
                v(true, true),
            ),
            (N::CrioDropIn, Fail, "DropInSyntaxError", v(true, false)),
            (N::Capacity, Warn, "LowAvailableMemory", v(true, true)),
            (N::Capacity, Warn, "CapacityUnknown", v(true, false)),
            (N::Capacity, Fail, "InsufficientMemory", v(true, false)),
        ];
        for (name, status, reason, expected) in cases {
            assert_eq!(
                verdicts(&with(name, status, reason)),
                expected,
                "{name} {status} {reason}"
            );
        }
    }

    #[test]
    fn a_missing_probe_is_not_evidence() {
        let mut outcomes = all_ok();
        outcomes.retain(|outcome| outcome.name != ProbeName::CrioDropIn);
        assert_eq!(verdicts(&outcomes), v(true, false));
        assert_eq!(verdicts(&[]), v(false, false));
    }

    #[test]
    fn an_unverifiable_cri_handler_is_accepted_but_invalid_info_is_not() {
        use ProbeName as N;
        use ProbeStatus::*;
        assert_eq!(
            verdicts(&with(N::CriHandler, Warn, "HandlerUnverifiable")),
            v(true, true)
        );
        for reason in ["CriInfoInvalid", "RuntimeTypeNotVm"] {
            assert_eq!(verdicts(&with(N::CriHandler, Warn, reason)), v(true, false));
            assert_eq!(verdicts(&with(N::CriHandler, Fail, reason)), v(true, false));
        }
    }

    #[test]
    fn kvm_module_parameter_warnings_keep_the_node_capable() {
        use ProbeName as N;
        use ProbeStatus::*;
        for reason in [
            "UnrestrictedGuestDisabled",
            "KvmclockPeriodicSyncDisabled",
            "KvmParameterUnreadable",
        ] {
            assert_eq!(
                verdicts(&with(N::KernelModules, Warn, reason)),
                v(true, true)
            );
        }
        for reason in ["UnrestrictedGuestDisabled", "KvmVendorModuleMismatch"] {
            assert_eq!(
                verdicts(&with(N::KernelModules, Fail, reason)),
                v(false, false)
            );
        }
    }
}
