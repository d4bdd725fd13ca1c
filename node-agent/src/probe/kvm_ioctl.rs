//! The KVM ioctls the agent issues, and the memory mappings they need. This
//! is the only module allowed `unsafe`: raw ioctls and `mmap` cannot be
//! expressed safely, so they are wrapped here in types that own what the
//! kernel hands out (a VM, a vCPU, a mapping) and release it exactly once,
//! when dropped, on every path.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc::{c_int, c_ulong};
use nix::sys::ioctl::ioctl_num_type;

/// The ioctl type of `/dev/kvm` (`KVMIO` in `<linux/kvm.h>`).
const KVMIO: u8 = 0xAE;

// The `_IO` requests: no structure, an `unsigned long` argument by value.
// KVM checks that the argument of the "no argument" ones is 0 (EINVAL
// otherwise), so they are not issued through nix's `ioctl_none!`, which
// passes no third argument at all and leaves whatever the register held.

/// `KVM_GET_API_VERSION`, argument 0: returns the version.
const KVM_GET_API_VERSION: ioctl_num_type = nix::request_code_none!(KVMIO, 0x00);
/// `KVM_CREATE_VM`, the machine type (0 is the default): returns a VM descriptor.
const KVM_CREATE_VM: ioctl_num_type = nix::request_code_none!(KVMIO, 0x01);

/// An `_IO` request with its argument by value.
///
/// # Safety
///
/// `request` must be one of the `_IO` requests of this module, which take an
/// integer by value and write no memory of ours, and `fd` the kind of KVM
/// descriptor (system, VM, vCPU) it is defined on.
unsafe fn ioctl_value(
    fd: BorrowedFd<'_>,
    request: ioctl_num_type,
    arg: c_ulong,
) -> nix::Result<c_int> {
    let mut interrupted = 0;
    loop {
        // SAFETY: the descriptor is borrowed, so it stays open for the call;
        // the caller vouches that the request takes `arg` by value, not a
        // pointer.
        match Errno::result(unsafe { nix::libc::ioctl(fd.as_raw_fd(), request, arg) }) {
            // A signal arrived during the call (KVM_CREATE_VM waits for the
            // mm lock killably, KVM_RUN exits to let a handler run). Each of
            // these requests can be issued again: a create that failed with
            // EINTR created nothing, and KVM_RUN resumes the guest where it
            // stopped. A bound keeps a signal storm from holding the probe
            // thread; past it, EINTR is the probe's answer.
            Err(Errno::EINTR) if interrupted < MAX_INTERRUPTED_RETRIES => interrupted += 1,
            result => return result,
        }
    }
}

/// How many times an `_IO` request interrupted by a signal is issued again.
const MAX_INTERRUPTED_RETRIES: u32 = 8;

/// `KVM_GET_API_VERSION`; a working KVM answers 12.
pub(super) fn api_version(kvm: BorrowedFd<'_>) -> nix::Result<i32> {
    // SAFETY: an `_IO` request of this module with argument 0. The caller has
    // checked that the descriptor is the KVM character device (misc 10:232),
    // so the request number means what we expect.
    unsafe { ioctl_value(kvm, KVM_GET_API_VERSION, 0) }
}

/// `KVM_CREATE_VM` with the default machine type. The VM is closed at once:
/// creating it proves that no other hypervisor holds VMX/SVM and that the
/// kernel can allocate a VM.
pub(super) fn create_and_close_vm(kvm: BorrowedFd<'_>) -> nix::Result<()> {
    create_vm(kvm).map(drop)
}

fn create_vm(kvm: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    // SAFETY: as above, an `_IO` request on the open KVM device, with the
    // machine type by value.
    let vm_fd = unsafe { ioctl_value(kvm, KVM_CREATE_VM, 0) }?;
    // SAFETY: on success the kernel returns a new descriptor that nothing else
    // in the process refers to; wrapping it in `OwnedFd` makes it closed
    // exactly once, when dropped.
    Ok(unsafe { OwnedFd::from_raw_fd(vm_fd) })
}

#[cfg(target_arch = "x86_64")]
pub use guest::RunKick;
#[cfg(target_arch = "x86_64")]
pub(super) use guest::{
    CREATE_VM_STEP, GUEST_BYTE, GUEST_PORT, GuestExit, GuestRunError, run_guest_program,
};

/// Without guest code there is no run to end.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Debug, Default)]
pub struct RunKick;

#[cfg(not(target_arch = "x86_64"))]
impl RunKick {
    pub fn kick(&self) {}
}

/// Running a few bytes of real-mode code in a fresh VM (x86-64 only: the
/// register and segment layouts below are x86's).
#[cfg(target_arch = "x86_64")]
mod guest {
    use std::ffi::c_void;
    use std::marker::PhantomData;
    use std::num::NonZeroUsize;
    use std::os::fd::AsFd;
    use std::ptr::NonNull;

    use nix::sys::mman::{MapFlags, ProtFlags, mmap, mmap_anonymous, munmap};

    use super::*;

    mod kick;
    pub use kick::RunKick;

    // The layouts of `<linux/kvm.h>` and `<asm/kvm.h>` on x86-64; the sizes
    // are asserted in the tests below.

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmUserspaceMemoryRegion {
        pub slot: u32,
        pub flags: u32,
        pub guest_phys_addr: u64,
        pub memory_size: u64,
        pub userspace_addr: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmRegs {
        pub rax: u64,
        pub rbx: u64,
        pub rcx: u64,
        pub rdx: u64,
        pub rsi: u64,
        pub rdi: u64,
        pub rsp: u64,
        pub rbp: u64,
        pub r8: u64,
        pub r9: u64,
        pub r10: u64,
        pub r11: u64,
        pub r12: u64,
        pub r13: u64,
        pub r14: u64,
        pub r15: u64,
        pub rip: u64,
        pub rflags: u64,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmSegment {
        pub base: u64,
        pub limit: u32,
        pub selector: u16,
        pub type_: u8,
        pub present: u8,
        pub dpl: u8,
        pub db: u8,
        pub s: u8,
        pub l: u8,
        pub g: u8,
        pub avl: u8,
        pub unusable: u8,
        pub padding: u8,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmDtable {
        pub base: u64,
        pub limit: u16,
        pub padding: [u16; 3],
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmSregs {
        pub cs: KvmSegment,
        pub ds: KvmSegment,
        pub es: KvmSegment,
        pub fs: KvmSegment,
        pub gs: KvmSegment,
        pub ss: KvmSegment,
        pub tr: KvmSegment,
        pub ldt: KvmSegment,
        pub gdt: KvmDtable,
        pub idt: KvmDtable,
        pub cr0: u64,
        pub cr2: u64,
        pub cr3: u64,
        pub cr4: u64,
        pub cr8: u64,
        pub efer: u64,
        pub apic_base: u64,
        pub interrupt_bitmap: [u64; 4],
    }

    /// `struct kvm_run` up to the `io` member of its exit union (offset 32),
    /// which is all the agent reads. The kernel's structure is much larger;
    /// the mapping is `KVM_GET_VCPU_MMAP_SIZE` bytes.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmRunHeader {
        pub request_interrupt_window: u8,
        pub immediate_exit: u8,
        pub padding1: [u8; 6],
        pub exit_reason: u32,
        pub ready_for_interrupt_injection: u8,
        pub if_flag: u8,
        pub flags: u16,
        pub cr8: u64,
        pub apic_base: u64,
        /// The union's first 16 bytes, read as `io`.
        pub io: KvmRunIo,
    }

    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    pub(super) struct KvmRunIo {
        pub direction: u8,
        pub size: u8,
        pub port: u16,
        pub count: u32,
        /// From the start of the `kvm_run` mapping.
        pub data_offset: u64,
    }

    pub(super) const KVM_EXIT_IO: u32 = 2;
    pub(super) const KVM_EXIT_HLT: u32 = 5;
    pub(super) const KVM_EXIT_IO_OUT: u8 = 1;

    /// `_IO(KVMIO, 0x04)`, argument 0: the size of a vCPU's `kvm_run` mapping.
    const KVM_GET_VCPU_MMAP_SIZE: ioctl_num_type = nix::request_code_none!(KVMIO, 0x04);
    /// `_IO(KVMIO, 0x41)`, the vCPU id: returns a vCPU descriptor.
    const KVM_CREATE_VCPU: ioctl_num_type = nix::request_code_none!(KVMIO, 0x41);
    nix::ioctl_write_ptr!(
        kvm_set_user_memory_region,
        KVMIO,
        0x46,
        KvmUserspaceMemoryRegion
    );
    /// `_IO(KVMIO, 0x47)`, a guest-physical address (which would not fit
    /// the 32-bit `int` of nix's `ioctl_write_int_bad!`).
    const KVM_SET_TSS_ADDR: ioctl_num_type = nix::request_code_none!(KVMIO, 0x47);
    /// `_IO(KVMIO, 0x80)`, argument 0.
    const KVM_RUN: ioctl_num_type = nix::request_code_none!(KVMIO, 0x80);
    nix::ioctl_write_ptr!(kvm_set_regs, KVMIO, 0x82, KvmRegs);
    nix::ioctl_read!(kvm_get_sregs, KVMIO, 0x83, KvmSregs);
    nix::ioctl_write_ptr!(kvm_set_sregs, KVMIO, 0x84, KvmSregs);

    const PAGE: usize = 4096;
    /// Guest-physical 0 to 16 KiB: four pages, the program in the second.
    const GUEST_MEMORY_SIZE: usize = 4 * PAGE;
    pub(super) const GUEST_CODE_ADDRESS: u64 = 0x1000;
    /// Where kvmtool puts the three pages of the real-mode TSS, outside
    /// guest memory: Intel needs one to run real mode without
    /// `unrestricted_guest`; AMD ignores it.
    const TSS_ADDRESS: c_ulong = 0xfffb_d000;
    /// `hlt`: what every byte of guest memory except the program is, so a
    /// guest that strays off the program stops instead of running on.
    const HLT: u8 = 0xf4;

    /// The step of [`GuestRunError::Setup`] that is `KVM_CREATE_VM` itself.
    pub(in crate::probe) const CREATE_VM_STEP: &str = "KVM_CREATE_VM";

    /// The port and byte the program writes.
    pub(in crate::probe) const GUEST_PORT: u16 = 0x10;
    pub(in crate::probe) const GUEST_BYTE: u8 = 0x42;
    /// `mov al, 0x42; out 0x10, al; hlt`
    const GUEST_PROGRAM: [u8; 5] = [0xb0, GUEST_BYTE, 0xe6, GUEST_PORT as u8, HLT];

    /// An anonymous or device mapping, unmapped when dropped.
    struct Mapping {
        ptr: NonNull<c_void>,
        len: NonZeroUsize,
    }

    impl Mapping {
        fn anonymous(len: NonZeroUsize) -> nix::Result<Self> {
            // SAFETY: a fresh private anonymous mapping at an address the
            // kernel chooses cannot overlap any memory Rust already owns; the
            // pointer is kept only by this `Mapping`, which unmaps it once.
            let ptr = unsafe {
                mmap_anonymous(
                    None,
                    len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
                )
            }?;
            Ok(Self { ptr, len })
        }

        /// A vCPU's `kvm_run` area: `len` bytes of the vCPU descriptor, shared.
        fn vcpu_run(vcpu: BorrowedFd<'_>, len: NonZeroUsize) -> nix::Result<Self> {
            // SAFETY: as above the kernel chooses a fresh address; the
            // descriptor is borrowed and open for the call (the mapping keeps
            // its own reference to the file afterwards); `len` is the size
            // KVM itself reported for this mapping, at offset 0.
            let ptr = unsafe {
                mmap(
                    None,
                    len,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_SHARED,
                    vcpu,
                    0,
                )
            }?;
            Ok(Self { ptr, len })
        }

        fn as_mut_slice(&mut self) -> &mut [u8] {
            // SAFETY: the mapping is `len` readable and writable bytes for as
            // long as `self` lives, and `&mut self` makes this the only view
            // of it in this process (guest memory is used only before the
            // vCPU exists; `kvm_run` only between runs).
            unsafe {
                std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<u8>(), self.len.get())
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: `ptr` and `len` are exactly what mmap returned and were
            // given, and no reference into the mapping outlives `self`. An
            // error (impossible for a valid mapping) leaves nothing to do.
            let _ = unsafe { munmap(self.ptr, self.len.get()) };
        }
    }

    /// A VM with one memory slot of guest memory. Fields drop in order: the
    /// VM descriptor is closed before the memory it points at is unmapped.
    struct Vm {
        fd: OwnedFd,
        /// Never read again: held so the slot's memory stays mapped.
        _memory: Mapping,
    }

    impl Vm {
        /// A VM whose memory is `hlt` everywhere but `program`, at
        /// [`GUEST_CODE_ADDRESS`].
        fn new(kvm: BorrowedFd<'_>, program: &[u8]) -> Result<Self, GuestRunError> {
            let fd = create_vm(kvm).map_err(GuestRunError::step(CREATE_VM_STEP))?;
            let len = NonZeroUsize::new(GUEST_MEMORY_SIZE).ok_or(GuestRunError::Setup {
                step: "guest memory size",
                errno: Errno::EINVAL,
            })?;
            let mut memory = Mapping::anonymous(len).map_err(GuestRunError::step("mmap"))?;
            let bytes = memory.as_mut_slice();
            bytes.fill(HLT);
            let start = GUEST_CODE_ADDRESS as usize;
            bytes
                .get_mut(start..start.saturating_add(program.len()))
                .ok_or(GuestRunError::Setup {
                    step: "guest program size",
                    errno: Errno::E2BIG,
                })?
                .copy_from_slice(program);
            let region = KvmUserspaceMemoryRegion {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: GUEST_MEMORY_SIZE as u64,
                userspace_addr: memory.ptr.as_ptr() as u64,
            };
            // SAFETY: the VM descriptor is open; `region` is a valid
            // `kvm_userspace_memory_region` the kernel only reads; the memory
            // it describes stays mapped for as long as the VM descriptor is
            // open, since `Vm` owns both and closes the descriptor first.
            unsafe { kvm_set_user_memory_region(fd.as_raw_fd(), &region) }
                .map_err(GuestRunError::step("KVM_SET_USER_MEMORY_REGION"))?;
            // SAFETY: an `_IO` request on the open VM descriptor, with a
            // guest-physical address (outside the memory slot) by value.
            unsafe { ioctl_value(fd.as_fd(), KVM_SET_TSS_ADDR, TSS_ADDRESS) }
                .map_err(GuestRunError::step("KVM_SET_TSS_ADDR"))?;
            Ok(Self {
                fd,
                _memory: memory,
            })
        }
    }

    /// A vCPU and its `kvm_run` area, which is unmapped before the vCPU
    /// descriptor is closed (field order).
    ///
    /// It borrows its VM: the guest memory must stay mapped for as long as
    /// the vCPU can run.
    struct Vcpu<'vm> {
        run: Mapping,
        fd: OwnedFd,
        _vm: PhantomData<&'vm Vm>,
    }

    impl<'vm> Vcpu<'vm> {
        fn new(kvm: BorrowedFd<'_>, vm: &'vm Vm) -> Result<Self, GuestRunError> {
            // SAFETY: an `_IO` request on the open KVM device, argument 0.
            let size = unsafe { ioctl_value(kvm, KVM_GET_VCPU_MMAP_SIZE, 0) }
                .map_err(GuestRunError::step("KVM_GET_VCPU_MMAP_SIZE"))?;
            let size = usize::try_from(size)
                .ok()
                .filter(|size| *size >= std::mem::size_of::<KvmRunHeader>())
                .and_then(NonZeroUsize::new)
                .ok_or(GuestRunError::Setup {
                    step: "KVM_GET_VCPU_MMAP_SIZE (size too small)",
                    errno: Errno::EINVAL,
                })?;
            // SAFETY: an `_IO` request on the open VM descriptor, with the
            // vCPU id by value.
            let raw = unsafe { ioctl_value(vm.fd.as_fd(), KVM_CREATE_VCPU, 0) }
                .map_err(GuestRunError::step("KVM_CREATE_VCPU"))?;
            // SAFETY: a new descriptor nothing else refers to; `OwnedFd`
            // closes it exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let run =
                Mapping::vcpu_run(fd.as_fd(), size).map_err(GuestRunError::step("mmap kvm_run"))?;
            Ok(Self {
                run,
                fd,
                _vm: PhantomData,
            })
        }

        /// Real mode with CS at 0, starting at the program.
        fn set_up_registers(&self) -> Result<(), GuestRunError> {
            let mut sregs = KvmSregs::default();
            // SAFETY: the vCPU descriptor is open and `sregs` is a writable
            // `kvm_sregs` of the kernel's size (asserted in the tests).
            unsafe { kvm_get_sregs(self.fd.as_raw_fd(), &mut sregs) }
                .map_err(GuestRunError::step("KVM_GET_SREGS"))?;
            sregs.cs.base = 0;
            sregs.cs.selector = 0;
            // SAFETY: as above; the kernel only reads `sregs`.
            unsafe { kvm_set_sregs(self.fd.as_raw_fd(), &sregs) }
                .map_err(GuestRunError::step("KVM_SET_SREGS"))?;
            let regs = KvmRegs {
                rip: GUEST_CODE_ADDRESS,
                // Bit 1 is reserved and always set.
                rflags: 0x2,
                ..KvmRegs::default()
            };
            // SAFETY: as above; the kernel only reads `regs`.
            unsafe { kvm_set_regs(self.fd.as_raw_fd(), &regs) }
                .map_err(GuestRunError::step("KVM_SET_REGS"))?;
            Ok(())
        }

        /// One `KVM_RUN`, and why it came back. `kick` can end it from
        /// another thread ([`RunKick`]): it then fails with EINTR.
        fn run(&mut self, kick: &RunKick) -> Result<GuestExit, GuestRunError> {
            let result = match kick.enter(self.run.ptr) {
                // SAFETY: an `_IO` request on the open vCPU descriptor,
                // argument 0. The kernel writes only the `kvm_run` mapping
                // (owned by `self`; the kick writes one byte of it, under its
                // lock, which `leave` below takes before the mapping can go)
                // and guest memory (which outlives `self`, and to which no
                // Rust reference exists after `Vm::new`).
                true => unsafe { ioctl_value(self.fd.as_fd(), KVM_RUN, 0) },
                false => Err(Errno::EINTR),
            };
            kick.leave();
            result.map_err(GuestRunError::step("KVM_RUN"))?;
            let bytes = self.run.as_mut_slice();
            // SAFETY: the mapping is at least `size_of::<KvmRunHeader>()`
            // bytes (checked in `new`) and page-aligned, and every bit pattern
            // is a valid `KvmRunHeader` (integers only).
            let header = unsafe { bytes.as_ptr().cast::<KvmRunHeader>().read_volatile() };
            Ok(match header.exit_reason {
                KVM_EXIT_IO => {
                    let io = header.io;
                    let len = usize::from(io.size).saturating_mul(io.count as usize);
                    let data = usize::try_from(io.data_offset)
                        .ok()
                        .and_then(|start| bytes.get(start..start.checked_add(len)?))
                        .map(<[u8]>::to_vec);
                    GuestExit::Io(GuestIo {
                        out: io.direction == KVM_EXIT_IO_OUT,
                        size: io.size,
                        port: io.port,
                        count: io.count,
                        data,
                    })
                }
                KVM_EXIT_HLT => GuestExit::Hlt,
                other => GuestExit::Other(other),
            })
        }
    }

    /// A port I/O exit (`KVM_EXIT_IO`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(in crate::probe) struct GuestIo {
        pub out: bool,
        pub size: u8,
        pub port: u16,
        pub count: u32,
        /// The bytes written, `None` when `data_offset` points outside the
        /// `kvm_run` mapping.
        pub data: Option<Vec<u8>>,
    }

    /// Why `KVM_RUN` came back.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(in crate::probe) enum GuestExit {
        Io(GuestIo),
        Hlt,
        /// Any other `KVM_EXIT_*` code.
        Other(u32),
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(in crate::probe) enum GuestRunError {
        /// Setting the VM up, or `KVM_RUN` itself, failed.
        Setup { step: &'static str, errno: Errno },
        /// The guest ran but exited otherwise than the program does; the
        /// exits so far, the unexpected one last.
        UnexpectedExits(Vec<GuestExit>),
    }

    impl GuestRunError {
        fn step(step: &'static str) -> impl FnOnce(Errno) -> Self {
            move |errno| Self::Setup { step, errno }
        }
    }

    /// Creates a VM with the program in its memory and one vCPU, and runs it:
    /// `Ok` only when the first exit is the program's `out` (port and byte
    /// as written) and the second its `hlt`. Everything is released on
    /// return, whatever happened. `kick` ends a run that does not come back.
    pub(in crate::probe) fn run_guest_program(
        kvm: BorrowedFd<'_>,
        kick: &RunKick,
    ) -> Result<(), GuestRunError> {
        run_program(kvm, &GUEST_PROGRAM, kick)
    }

    /// [`run_guest_program`] with another program (the tests' wrong ones),
    /// still expecting the `out` and `hlt` of the real one.
    fn run_program(
        kvm: BorrowedFd<'_>,
        program: &[u8],
        kick: &RunKick,
    ) -> Result<(), GuestRunError> {
        let vm = Vm::new(kvm, program)?;
        let mut vcpu = Vcpu::new(kvm, &vm)?;
        vcpu.set_up_registers()?;
        let mut exits = Vec::with_capacity(2);
        let expected_io = GuestIo {
            out: true,
            size: 1,
            port: GUEST_PORT,
            count: 1,
            data: Some(vec![GUEST_BYTE]),
        };
        for expected in [GuestExit::Io(expected_io), GuestExit::Hlt] {
            let exit = vcpu.run(kick)?;
            let matches = exit == expected;
            exits.push(exit);
            if !matches {
                return Err(GuestRunError::UnexpectedExits(exits));
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests;
}
