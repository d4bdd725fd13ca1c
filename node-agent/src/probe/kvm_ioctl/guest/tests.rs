//! The ioctl layer against the kernel's layouts and, where the machine has
//! one, the real `/dev/kvm`: wrong programs, a guest that never exits,
//! signals.

use std::mem::size_of;

use super::*;

#[test]
fn structures_have_the_kernel_layout() {
    assert_eq!(size_of::<KvmRegs>(), 144);
    assert_eq!(size_of::<KvmSregs>(), 312);
    assert_eq!(size_of::<KvmSegment>(), 24);
    assert_eq!(size_of::<KvmDtable>(), 16);
    assert_eq!(size_of::<KvmUserspaceMemoryRegion>(), 32);
    assert_eq!(std::mem::offset_of!(KvmRunHeader, exit_reason), 8);
    assert_eq!(std::mem::offset_of!(KvmRunHeader, io), 32);
    assert_eq!(size_of::<KvmRunIo>(), 16);
    assert_eq!(size_of::<KvmRunHeader>(), 48);
}

#[test]
fn the_program_is_mov_out_hlt() {
    assert_eq!(GUEST_PROGRAM, [0xb0, 0x42, 0xe6, 0x10, 0xf4]);
}

/// The machine's own `/dev/kvm`, or `None` (and why, on stderr).
fn real_kvm(test: &str) -> Option<std::fs::File> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(kvm) => Some(kvm),
        Err(err) => {
            eprintln!("SKIP {test}: /dev/kvm not openable ({err})");
            None
        }
    }
}

#[test]
fn the_real_kvm_runs_the_program_and_catches_wrong_exits() {
    let Some(kvm) = real_kvm("the_real_kvm_runs_the_program_and_catches_wrong_exits") else {
        return;
    };
    let started = std::time::Instant::now();
    let result = run_guest_program(kvm.as_fd(), &RunKick::default());
    eprintln!(
        "real /dev/kvm: VM + vCPU + 2 x KVM_RUN of the guest program took {:.3} ms: {result:?}",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(result, Ok(()));
    // The two runs alone, without creating the VM and vCPU.
    let vm = Vm::new(kvm.as_fd(), &GUEST_PROGRAM).expect("a VM");
    let mut vcpu = Vcpu::new(kvm.as_fd(), &vm).expect("a vCPU");
    vcpu.set_up_registers().expect("registers");
    let started = std::time::Instant::now();
    let kick = RunKick::default();
    let exits = [vcpu.run(&kick), vcpu.run(&kick)];
    eprintln!(
        "real /dev/kvm: the 2 x KVM_RUN alone took {:.1} us: {exits:?}",
        started.elapsed().as_secs_f64() * 1e6
    );
    assert!(matches!(exits, [Ok(GuestExit::Io(_)), Ok(GuestExit::Hlt)]));
    let wrong_byte = [0xb0, 0x43, 0xe6, GUEST_PORT as u8, HLT];
    assert_eq!(
        run_program(kvm.as_fd(), &wrong_byte, &RunKick::default()),
        Err(GuestRunError::UnexpectedExits(vec![GuestExit::Io(
            GuestIo {
                out: true,
                size: 1,
                port: GUEST_PORT,
                count: 1,
                data: Some(vec![0x43]),
            }
        )]))
    );
    assert_eq!(
        run_program(kvm.as_fd(), &[HLT], &RunKick::default()),
        Err(GuestRunError::UnexpectedExits(vec![GuestExit::Hlt]))
    );
    // `out` then `out` again instead of `hlt`.
    let twice = [0xe6, GUEST_PORT as u8, 0xe6, GUEST_PORT as u8, HLT];
    match run_program(
        kvm.as_fd(),
        &[&[0xb0, GUEST_BYTE][..], &twice].concat(),
        &RunKick::default(),
    ) {
        Err(GuestRunError::UnexpectedExits(exits)) => {
            assert_eq!(exits.len(), 2, "{exits:?}");
            assert!(matches!(exits[1], GuestExit::Io(_)), "{exits:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        run_program(kvm.as_fd(), &[HLT; GUEST_MEMORY_SIZE], &RunKick::default()),
        Err(GuestRunError::Setup {
            errno: Errno::E2BIG,
            ..
        })
    ));
}

/// `jmp $`: a guest that never exits by itself.
const SPIN: [u8; 2] = [0xeb, 0xfe];

#[test]
fn a_guest_that_never_exits_is_kicked_out() {
    use std::sync::{Arc, mpsc};
    use std::time::Duration;
    let Some(kvm) = real_kvm("a_guest_that_never_exits_is_kicked_out") else {
        return;
    };
    let kick = Arc::new(RunKick::default());
    let (done, result) = mpsc::channel();
    let runner = std::thread::spawn({
        let kick = Arc::clone(&kick);
        let kvm = kvm.try_clone().expect("a second descriptor of /dev/kvm");
        move || {
            let _ = done.send(run_program(kvm.as_fd(), &SPIN, &kick));
        }
    });
    assert!(
        result.recv_timeout(Duration::from_millis(300)).is_err(),
        "the spinning guest came back by itself"
    );
    let kicked = std::time::Instant::now();
    kick.kick();
    let ended = result
        .recv_timeout(Duration::from_secs(5))
        .expect("the kick ends the run");
    eprintln!(
        "a spinning guest was kicked out in {:.3} ms",
        kicked.elapsed().as_secs_f64() * 1000.0
    );
    let interrupted = Err(GuestRunError::Setup {
        step: "KVM_RUN",
        errno: Errno::EINTR,
    });
    assert_eq!(ended, interrupted);
    runner.join().expect("the run's thread returned");
    // Once kicked, no further run starts on it; a fresh kick runs.
    assert_eq!(run_program(kvm.as_fd(), &GUEST_PROGRAM, &kick), interrupted);
    assert_eq!(run_guest_program(kvm.as_fd(), &RunKick::default()), Ok(()));
}

static SIGNALS_HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_signal(_: c_int) {
    SIGNALS_HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// A process with signal handlers (tokio's SIGCHLD one, for the
/// commands the other probes run) gets signals on any thread, the
/// probe's too: creating and running VMs under a storm of them still
/// succeeds.
#[test]
fn signals_during_the_ioctls_do_not_fail_the_probe() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(kvm) = real_kvm("signals_during_the_ioctls_do_not_fail_the_probe") else {
        return;
    };
    // No SA_RESTART: an interrupted ioctl returns EINTR to us.
    let handler = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only touches an atomic, which is
    // async-signal-safe; no test of this binary sends SIGUSR1 otherwise.
    unsafe { sigaction(Signal::SIGUSR1, &handler) }.expect("a SIGUSR1 handler");
    let target = nix::sys::pthread::pthread_self();
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let signaller = std::thread::spawn({
        let done = done.clone();
        move || {
            while !done.load(Ordering::Relaxed) {
                nix::sys::pthread::pthread_kill(target, Signal::SIGUSR1)
                    .expect("signal the probe thread");
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    });
    let before = SIGNALS_HANDLED.load(Ordering::Relaxed);
    let creates: Vec<_> = (0..300).map(|_| create_and_close_vm(kvm.as_fd())).collect();
    let runs: Vec<_> = (0..20)
        .map(|_| run_guest_program(kvm.as_fd(), &RunKick::default()))
        .collect();
    done.store(true, Ordering::Relaxed);
    signaller.join().expect("the signaller");
    let handled = SIGNALS_HANDLED.load(Ordering::Relaxed) - before;
    eprintln!("{handled} signals handled during 300 creates and 20 guest runs");
    assert!(handled > 0, "the storm reached the probe thread");
    assert!(creates.iter().all(Result::is_ok), "{creates:?}");
    assert!(runs.iter().all(Result::is_ok), "{runs:?}");
}
