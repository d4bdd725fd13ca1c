//! KVM: `/dev/kvm` opens read-write, speaks API version 12 and creates a VM.
//! Only that proves the kernel can run a Kata guest; CPU flags are a hint.

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use nix::errno::Errno;

use super::host::{HostRoot, display, file_kind};
use super::{ProbeName, ProbeOutcome, kvm_ioctl, reason};
use crate::error::AgentError;

pub const KVM_DEVICE: &str = "/dev/kvm";
/// Every KVM since Linux 2.6.22 answers this; anything else is not KVM as
/// QEMU knows it.
const KVM_API_VERSION: i32 = 12;
/// `/dev/kvm` is the misc device 10:232 (`KVM_MINOR`).
const MISC_MAJOR: u64 = 10;
const KVM_MINOR: u64 = 232;

const NAME: ProbeName = ProbeName::Kvm;

/// Opens the host's `/dev/kvm`, checks the API version and creates (then
/// closes) a VM. Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot) -> ProbeOutcome {
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
    match kvm_ioctl::create_and_close_vm(device.as_fd()) {
        Ok(()) => ProbeOutcome::ok(
            NAME,
            reason::KVM_USABLE,
            format!("{shown}: API version {KVM_API_VERSION}, KVM_CREATE_VM succeeded"),
        ),
        Err(Errno::EBUSY) => ProbeOutcome::fail(
            NAME,
            reason::KVM_BUSY,
            format!(
                "KVM_CREATE_VM on {shown}: device busy; another hypervisor \
                 (VirtualBox, VMware) holds the CPU's virtualization extensions"
            ),
        ),
        Err(errno @ (Errno::EACCES | Errno::EPERM)) => ProbeOutcome::fail(
            NAME,
            reason::KVM_PERMISSION_DENIED,
            format!("KVM_CREATE_VM on {shown}: {}", errno.desc()),
        ),
        Err(errno) => ProbeOutcome::fail(
            NAME,
            reason::KVM_CREATE_VM_FAILED,
            format!("KVM_CREATE_VM on {shown} failed: {}", errno.desc()),
        ),
    }
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
