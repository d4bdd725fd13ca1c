//! Starting helper processes (etcd, kube-apiserver, coordinators) so that they
//! can never outlive the test binary.
//!
//! Every child is spawned from one long-lived thread with
//! `PR_SET_PDEATHSIG = SIGKILL`. The kernel delivers that signal when the
//! thread that forked the child exits; a test thread or a tokio blocking
//! thread may exit long before the process does, so the spawning thread is a
//! dedicated one that lives exactly as long as the test binary. A test run
//! killed with SIGKILL therefore takes its control planes with it.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // SAFETY: the closure runs in the forked child before
                    // exec and only calls prctl(2), which is async-signal-safe;
                    // it allocates nothing and touches no lock.
                    unsafe {
                        command.pre_exec(|| {
                            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
                // The sender lives in a static and is never dropped, so this
                // loop (and the thread) only ends with the process.
            })
            .expect("spawn the child-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `command` so that it dies with the test process.
pub fn spawn_tied_to_process(command: Command) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("child-spawner lock poisoned"))?
        .send((command, reply_tx))
        .map_err(|_| io::Error::other("child-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("child-spawner thread did not answer"))?
}

/// Asks a child to stop with SIGTERM, then kills it if it has not exited
/// within `grace`. Always reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}
