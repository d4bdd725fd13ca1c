//! Kernel modules Kata needs, as listed under `/sys/module`, and the vsock
//! device Kata's shim uses to reach the agent inside the guest.
//!
//! `vhost_net` and `vhost_vsock` may be absent from `/sys/module` while their
//! device nodes exist: kmod creates `/dev/vhost-net` and `/dev/vhost-vsock`
//! at boot and the kernel loads the module on first open. That is a WARN the
//! verdict accepts, not a FAIL.

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

const NAME: ProbeName = ProbeName::KernelModules;

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot) -> ProbeOutcome {
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
    let vendor = KVM_VENDOR_MODULES.into_iter().find(|module| loaded(module));
    let other_backends;
    if vendor.is_none() {
        // Say what provides KVM instead (kvm_pvm, for one), if anything.
        let others: Vec<String> = root
            .read_dir_sorted(SYS_MODULE)
            .unwrap_or_default()
            .into_iter()
            .filter(|module| module.starts_with("kvm_"))
            .collect();
        other_backends = if others.is_empty() {
            "kvm_intel|kvm_amd".to_owned()
        } else {
            format!("kvm_intel|kvm_amd (found {} instead)", others.join(", "))
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
    if !on_demand.is_empty() {
        return ProbeOutcome::warn(
            NAME,
            reason::MODULES_LOAD_ON_DEMAND,
            format!(
                "kvm, {vendor} and vhost loaded; {} not yet loaded, their device nodes \
                 exist and load them on first use",
                on_demand.join(", ")
            ),
        );
    }
    ProbeOutcome::ok(
        NAME,
        reason::KERNEL_MODULES_LOADED,
        format!(
            "kvm, {vendor}, vhost, vhost_net, vhost_vsock loaded; {} present",
            display(VHOST_VSOCK_DEVICE)
        ),
    )
}
