//! The two KVM ioctls the agent issues. This is the only module allowed
//! `unsafe`: raw ioctls cannot be expressed safely, so they are wrapped here
//! in functions that take a borrowed, open file descriptor.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The ioctl type of `/dev/kvm` (`KVMIO` in `<linux/kvm.h>`).
const KVMIO: u8 = 0xAE;

// KVM_GET_API_VERSION = _IO(KVMIO, 0x00): no argument, returns the version.
nix::ioctl_none!(kvm_get_api_version, KVMIO, 0x00);
// KVM_CREATE_VM = _IO(KVMIO, 0x01) with the machine type passed by value (0
// is the default type), returning a new VM file descriptor.
nix::ioctl_write_int_bad!(kvm_create_vm, nix::request_code_none!(KVMIO, 0x01));

/// `KVM_GET_API_VERSION`; a working KVM answers 12.
pub(super) fn api_version(kvm: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: the descriptor is borrowed, so it stays open for the call; the
    // ioctl takes no argument and writes no memory of ours. The caller has
    // checked that the descriptor is the KVM character device (misc 10:232),
    // so the request number means what we expect.
    unsafe { kvm_get_api_version(kvm.as_raw_fd()) }
}

/// `KVM_CREATE_VM` with the default machine type. The VM is closed at once:
/// creating it proves that no other hypervisor holds VMX/SVM and that the
/// kernel can allocate a VM.
pub(super) fn create_and_close_vm(kvm: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: as above, the descriptor is an open KVM device for the whole
    // call; the argument is an integer passed by value, no pointer is involved.
    let vm_fd = unsafe { kvm_create_vm(kvm.as_raw_fd(), 0) }?;
    // SAFETY: on success the kernel returns a new descriptor that nothing else
    // in the process refers to; wrapping it in `OwnedFd` makes it closed
    // exactly once, when dropped here.
    drop(unsafe { OwnedFd::from_raw_fd(vm_fd) });
    Ok(())
}
