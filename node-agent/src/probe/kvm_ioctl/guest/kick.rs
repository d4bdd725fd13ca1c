//! Ending a guest run that does not come back, from another thread.

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Mutex, Once, PoisonError};

use nix::libc::c_int;

use super::KvmRunHeader;

/// The signal that interrupts a `KVM_RUN` [`RunKick::kick`] ends. Its
/// handler does nothing: the point is the interruption (the handler is
/// installed without `SA_RESTART`, so the ioctl returns EINTR). Nothing
/// else in the agent uses it.
const KICK_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

extern "C" fn on_kick(_: c_int) {}

/// Ends a guest run that does not come back, from another thread, so a
/// hung guest does not hold its thread for good.
///
/// `KVM_RUN` leaves the guest when a signal is pending for its thread;
/// `immediate_exit` makes every later `KVM_RUN` on that vCPU return
/// EINTR at once, so the bounded retries of an interrupted request
/// (see `ioctl_value`) end too and the run fails with EINTR. A kick
/// before the run starts stops it from starting.
#[derive(Debug, Default)]
pub struct RunKick {
    state: Mutex<KickState>,
}

#[derive(Debug, Default)]
struct KickState {
    kicked: bool,
    /// The thread in `KVM_RUN` and its `kvm_run` mapping (as an
    /// address: a raw pointer is not `Send`), while one is.
    running: Option<(nix::libc::pthread_t, usize)>,
}

impl RunKick {
    /// Ends the run under way, and any to come on this kick.
    pub fn kick(&self) {
        static HANDLER: Once = Once::new();
        HANDLER.call_once(|| {
            use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
            let action = SigAction::new(
                SigHandler::Handler(on_kick),
                SaFlags::empty(),
                SigSet::empty(),
            );
            // SAFETY: the handler does nothing at all, which is
            // async-signal-safe; the signal is the agent's own.
            if let Err(errno) = unsafe { sigaction(KICK_SIGNAL, &action) } {
                tracing::warn!(%errno, "cannot install the handler that ends a hung guest run");
            }
        });
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.kicked = true;
        if let Some((thread, run)) = state.running {
            // SAFETY: `run` is the address of the live `kvm_run` mapping
            // of the vCPU in `KVM_RUN`: it is cleared, under this lock,
            // before `KVM_RUN` returns to code that could unmap it. The
            // byte is `immediate_exit`, which the kernel reads on entry;
            // a volatile write of a `u8` to a mapping shared with the
            // kernel is the documented protocol.
            unsafe {
                let header = run as *mut KvmRunHeader;
                std::ptr::addr_of_mut!((*header).immediate_exit).write_volatile(1);
            }
            // The thread is alive: it cannot leave `KVM_RUN` for good
            // without taking this lock first.
            let _ = nix::sys::pthread::pthread_kill(thread, KICK_SIGNAL);
        }
    }

    /// Whether [`Self::kick`] was called.
    pub fn is_kicked(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kicked
    }

    /// Whether the calling thread may start `KVM_RUN` on `run`.
    pub(super) fn enter(&self, run: NonNull<c_void>) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.kicked {
            return false;
        }
        state.running = Some((nix::sys::pthread::pthread_self(), run.as_ptr() as usize));
        true
    }

    pub(super) fn leave(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .running = None;
    }
}
