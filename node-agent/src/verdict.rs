//! The two verdicts, a pure function of a cycle's outcomes.
//!
//! `kvm_capable` (hardware and kernel can run Kata):
//! - `kvm` is OK: a VM was actually created;
//! - `kernel-modules` is OK, or WARN `ModulesLoadOnDemand` (the device nodes
//!   exist and load the modules on first open), or a WARN on a KVM module
//!   parameter: `UnrestrictedGuestDisabled` (nested only; on bare metal it is
//!   a FAIL), `KvmclockPeriodicSyncDisabled`, `KvmParameterUnreadable`;
//! - `cpu` is not FAIL, or FAIL `NoVirtualizationFlags`: its flags are a
//!   hint. A WARN (flags hidden by a parent hypervisor, cpuinfo unreadable)
//!   does not outweigh a working KVM, and a missing vmx/svm flag is only
//!   reported as a FAIL when KVM failed too, so the `kvm` outcome (and its
//!   evidence) decides; nested guests hide the flag while KVM works. A
//!   missing `lm` or `sse4_1` still fails: no Kata guest kernel runs there.
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
//!
//! A false `kvm_capable` carries what it proves ([`Verdicts::kvm_failure`]):
//! definitive when a capability probe FAILs on definitive evidence,
//! transient when every probe that stands in the way could not tell (a
//! WARN, a transient FAIL, a missing outcome).

use kata_proto::health::v1 as proto;
use serde::Serialize;

use crate::probe::{Evidence, ProbeName, ProbeOutcome, ProbeStatus, reason};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    pub kvm_capable: bool,
    pub runtime_ready: bool,
    /// What a false `kvm_capable` proves; `None` when capable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kvm_failure: Option<Evidence>,
}

impl From<Verdicts> for proto::Verdicts {
    fn from(verdicts: Verdicts) -> Self {
        let kvm_failure = match verdicts.kvm_failure {
            None => proto::FailureClass::Unspecified,
            Some(Evidence::Definitive) => proto::FailureClass::Definitive,
            Some(Evidence::Transient) => proto::FailureClass::Transient,
        };
        proto::Verdicts {
            kvm_capable: verdicts.kvm_capable,
            runtime_ready: verdicts.runtime_ready,
            kvm_failure: kvm_failure.into(),
            ready_profiles: Vec::new(),
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
        kvm_failure: (!kvm_capable).then(|| capability_evidence(outcomes)),
    }
}

/// What the capability probes that stand in the way prove together: one
/// definitive FAIL is proof; WARNs, transient FAILs and missing outcomes
/// are not.
fn capability_evidence(outcomes: &[ProbeOutcome]) -> Evidence {
    let proven = CAPABILITY_PROBES.iter().any(|name| {
        outcomes.iter().any(|outcome| {
            outcome.name == *name
                && !acceptable(outcome)
                && outcome.status == ProbeStatus::Fail
                && outcome.evidence == Evidence::Definitive
        })
    });
    if proven {
        Evidence::Definitive
    } else {
        Evidence::Transient
    }
}

/// Whether one outcome allows its verdict; the rule is in the module docs.
fn acceptable(outcome: &ProbeOutcome) -> bool {
    use ProbeName as N;
    use ProbeStatus::{Fail, Ok, Skip, Warn};
    match (outcome.name, outcome.status, outcome.reason) {
        (_, Ok, _) => true,
        (N::Cpu, Warn | Skip, _) => true,
        (N::Cpu, Fail, reason::NO_VIRTUALIZATION_FLAGS) => true,
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

    /// The two verdicts, without what a failure proves.
    fn v(capable: bool, ready: bool) -> (bool, bool) {
        (capable, ready)
    }

    fn both(verdicts: Verdicts) -> (bool, bool) {
        (verdicts.kvm_capable, verdicts.runtime_ready)
    }

    #[test]
    fn all_ok_is_ready() {
        assert_eq!(both(verdicts(&all_ok())), v(true, true));
    }

    #[test]
    fn one_outcome_changed_from_all_ok() {
        use ProbeName as N;
        use ProbeStatus::*;
        let cases: [(N, ProbeStatus, &'static str, (bool, bool)); 21] = [
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
            // Only reported when KVM fails too: the kvm outcome decides.
            (N::Cpu, Fail, "NoVirtualizationFlags", v(true, true)),
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
                both(verdicts(&with(name, status, reason))),
                expected,
                "{name} {status} {reason}"
            );
        }
    }

    #[test]
    fn a_missing_probe_is_not_evidence() {
        let mut outcomes = all_ok();
        outcomes.retain(|outcome| outcome.name != ProbeName::CrioDropIn);
        assert_eq!(both(verdicts(&outcomes)), v(true, false));
        assert_eq!(both(verdicts(&[])), v(false, false));
    }

    #[test]
    fn an_unverifiable_cri_handler_is_accepted_but_invalid_info_is_not() {
        use ProbeName as N;
        use ProbeStatus::*;
        assert_eq!(
            both(verdicts(&with(N::CriHandler, Warn, "HandlerUnverifiable"))),
            v(true, true)
        );
        for reason in ["CriInfoInvalid", "RuntimeTypeNotVm"] {
            assert_eq!(
                both(verdicts(&with(N::CriHandler, Warn, reason))),
                v(true, false)
            );
            assert_eq!(
                both(verdicts(&with(N::CriHandler, Fail, reason))),
                v(true, false)
            );
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
                both(verdicts(&with(N::KernelModules, Warn, reason))),
                v(true, true)
            );
        }
        for reason in ["UnrestrictedGuestDisabled", "KvmVendorModuleMismatch"] {
            assert_eq!(
                both(verdicts(&with(N::KernelModules, Fail, reason))),
                v(false, false)
            );
        }
    }

    #[test]
    fn a_failed_capability_says_what_it_proves() {
        use ProbeName as N;
        use ProbeStatus::*;
        let class = |outcomes: Vec<ProbeOutcome>| verdicts(&outcomes).kvm_failure;
        assert_eq!(class(all_ok()), None, "capable: nothing to classify");
        let mut transient_kvm = with(N::Kvm, Fail, reason::KVM_CREATE_VM_FAILED);
        transient_kvm[0] = transient_kvm[0].clone().transient();
        assert_eq!(class(transient_kvm.clone()), Some(Evidence::Transient));
        assert_eq!(
            class(with(N::Kvm, Fail, reason::KVM_DEVICE_MISSING)),
            Some(Evidence::Definitive)
        );
        assert_eq!(
            class(with(N::Kvm, Warn, reason::PROBE_TIMED_OUT)),
            Some(Evidence::Transient),
            "a WARN could not tell"
        );
        // A nested guest hides vmx/svm: with KVM failing transiently the cpu
        // probe FAILs NoVirtualizationFlags, which must not turn the
        // failure into proof.
        let mut nested = transient_kvm.clone();
        for outcome in &mut nested {
            if outcome.name == N::Cpu {
                *outcome = ProbeOutcome::fail(N::Cpu, reason::NO_VIRTUALIZATION_FLAGS, "");
            }
        }
        assert_eq!(class(nested), Some(Evidence::Transient));
        // A definitive failure beside a transient one is proof.
        let mut mixed = transient_kvm;
        for outcome in &mut mixed {
            if outcome.name == N::KernelModules {
                *outcome = ProbeOutcome::fail(N::KernelModules, "KernelModulesMissing", "");
            }
        }
        assert_eq!(class(mixed), Some(Evidence::Definitive));
        assert_eq!(
            class(Vec::new()),
            Some(Evidence::Transient),
            "no outcome, no proof"
        );
    }

    #[test]
    fn the_class_travels_on_the_wire_and_unspecified_means_capable() {
        let wire = |kvm_failure: Option<Evidence>| {
            proto::Verdicts::from(Verdicts {
                kvm_capable: kvm_failure.is_none(),
                runtime_ready: false,
                kvm_failure,
            })
            .kvm_failure()
        };
        assert_eq!(wire(None), proto::FailureClass::Unspecified);
        assert_eq!(
            wire(Some(Evidence::Definitive)),
            proto::FailureClass::Definitive
        );
        assert_eq!(
            wire(Some(Evidence::Transient)),
            proto::FailureClass::Transient
        );
    }
}
