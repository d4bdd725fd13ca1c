//! The runner of the integration suites (`tests/suite`, `node-agent/tests/agent`).
//!
//! One test binary per suite, one process per test. Functions marked
//! `#[kata_test]` register themselves; [`main`] lists them to libtest-mimic,
//! which schedules them on `--test-threads` threads, and each test runs in a
//! child process of the same binary (as nextest runs them). So a test keeps
//! what a test binary of its own gave it: process-wide state (the global log
//! subscriber, environment, signal handlers) is its own, its output is
//! captured and shown when it fails, and a test that crashes or is killed
//! takes only its own children along.
//!
//! What the standard harness cannot do, this one does:
//! - **Prerequisites**: `requires(..)` names checks (root, `/dev/kvm`, a tool
//!   built) that run before the test; an unmet one reports the test as
//!   ignored with its reason instead of as passed. A test may also find out
//!   late and call [`skip`].
//! - **Skips that fail CI**: every skip is listed again after the summary,
//!   and with `CI=true` the run fails when anything was skipped.
//! - **Exclusive resources**: `exclusive(name)` keeps tests that share a
//!   machine-global resource (CRI-O's fixed socket) from overlapping, while
//!   all the others overlap their waits.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

pub use inventory;
pub use kata_test_macros::kata_test;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// A registered test (written by `#[kata_test]`).
pub struct Test {
    /// `module_path!()` of the test: the suite's crate, then its module.
    pub module: &'static str,
    pub name: &'static str,
    pub run: fn(),
    /// Each returns why the test cannot run here, or `None`.
    pub requires: &'static [fn() -> Option<String>],
    /// Named resources no other test may hold while this one runs.
    pub exclusive: &'static [&'static str],
    /// Not a test: run only as a child process that a test starts
    /// ([`child_command`]).
    pub helper: bool,
}

inventory::collect!(Test);

impl Test {
    /// `module::name`, without the suite's crate: what the summary prints and
    /// a filter matches.
    pub fn full_name(&self) -> String {
        match self.module.split_once("::") {
            Some((_crate, module)) => format!("{module}::{}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// Names the one test (or helper) a child process runs.
const CHILD_ENV: &str = "KATA_TEST_CHILD";
/// Where a child writes why it skipped.
const SKIP_FILE_ENV: &str = "KATA_TEST_SKIP_FILE";
/// The exit code of a child whose test skipped (the one automake uses).
const SKIP_EXIT: u8 = 77;
/// Overrides the default number of test threads (`--test-threads` wins).
const THREADS_ENV: &str = "KATA_TEST_THREADS";
/// Tests mostly wait on their own control planes, agents and rollouts; on 2
/// cores four at a time keep both busy without starving the timing-sensitive
/// ones (grace periods, dwells) of CPU.
const DEFAULT_THREADS: usize = 4;

/// The payload of the panic [`skip`] raises.
struct Skipped(String);

/// Ends the running test as skipped, with the reason. For conditions only
/// the test itself can find (a device present but unusable); prefer
/// `requires(..)` for what can be checked before it starts.
pub fn skip(reason: impl Into<String>) -> ! {
    std::panic::panic_any(Skipped(reason.into()))
}

/// Runs an async test the way `#[tokio::test]` would: on a current-thread
/// runtime, or a multi-thread one with `workers` threads.
pub fn block_on<F: Future<Output = ()>>(workers: Option<usize>, test: F) {
    let mut builder = match workers {
        Some(n) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    #[allow(clippy::expect_used)]
    let runtime = builder
        .enable_all()
        .build()
        .expect("a tokio runtime for the test");
    runtime.block_on(test);
}

/// Checks a test may name in `requires(..)`.
pub mod requirement {
    /// Running as root.
    pub fn root() -> Option<String> {
        let uid = nix::unistd::geteuid();
        (!uid.is_root()).then(|| format!("needs root (running as uid {uid})"))
    }

    /// This machine has `/dev/kvm`.
    pub fn kvm() -> Option<String> {
        (!std::path::Path::new("/dev/kvm").exists())
            .then(|| "this machine has no /dev/kvm".to_owned())
    }
}

/// A command that runs the registered test or helper `full_name` (as
/// [`Test::full_name`] prints it) alone in a new process of this binary.
pub fn child_command(full_name: &str) -> Command {
    let mut command = Command::new(current_exe());
    command.env(CHILD_ENV, full_name).env_remove(SKIP_FILE_ENV);
    command
}

fn current_exe() -> PathBuf {
    #[allow(clippy::expect_used)]
    std::env::current_exe().expect("the test binary's own path")
}

/// The suite's `main`.
pub fn main() -> ExitCode {
    if let Ok(name) = std::env::var(CHILD_ENV) {
        return run_child(&name);
    }
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(
            std::env::var(THREADS_ENV)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(DEFAULT_THREADS),
        );
    }
    let skipped = Skips::default();
    let capture = !args.nocapture;
    let mut tests: Vec<&'static Test> = inventory::iter::<Test>
        .into_iter()
        .filter(|test| !test.helper)
        .collect();
    tests.sort_by_key(|test| test.full_name());
    let trials = tests
        .into_iter()
        .map(|test| {
            let skipped = skipped.clone();
            Trial::ignorable_test(test.full_name(), move || {
                run_in_child(test, capture, &skipped)
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let skipped = skipped.take();
    if !skipped.is_empty() {
        println!("skipped ({}):", skipped.len());
        for (name, reason) in &skipped {
            println!("    {name}: {reason}");
        }
        println!();
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") && !skipped.is_empty() {
        println!(
            "CI=true: {} test(s) skipped on a machine that should run them all; failing the run",
            skipped.len()
        );
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

/// The skips of this run, by test.
#[derive(Clone, Default)]
struct Skips(Arc<Mutex<BTreeMap<String, String>>>);

impl Skips {
    fn record(&self, test: &Test, reason: &str) -> Completion {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(test.full_name(), reason.to_owned());
        Completion::ignored_with(reason)
    }

    fn take(&self) -> BTreeMap<String, String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The parent's side of one test: prerequisites, exclusive resources, then
/// the child process and its verdict.
fn run_in_child(test: &Test, capture: bool, skipped: &Skips) -> Result<Completion, Failed> {
    let unmet: Vec<String> = test.requires.iter().filter_map(|check| check()).collect();
    if !unmet.is_empty() {
        return Ok(skipped.record(test, &unmet.join("; ")));
    }
    let locks = exclusive_locks(test.exclusive);
    let _held: Vec<MutexGuard<'_, ()>> = locks
        .iter()
        .map(|lock| lock.lock().unwrap_or_else(PoisonError::into_inner))
        .collect();

    let skip_file = skip_file_path();
    let mut command = Command::new(current_exe());
    command
        .env(CHILD_ENV, test.full_name())
        .env(SKIP_FILE_ENV, &skip_file)
        .stdin(Stdio::null());
    let outcome = if capture {
        run_captured(&mut command)
    } else {
        command
            .status()
            .map(|status| (status, String::new()))
            .map_err(|e| e.to_string())
    };
    let reason = std::fs::read_to_string(&skip_file).ok();
    let _ = std::fs::remove_file(&skip_file);
    let (status, output) = outcome.map_err(|e| format!("could not start the test: {e}"))?;
    match (status.code(), reason) {
        (Some(0), _) => Ok(Completion::Completed),
        (Some(code), Some(reason)) if code == i32::from(SKIP_EXIT) => {
            Ok(skipped.record(test, &reason))
        }
        _ => Err(Failed::from(ChildFailure { status, output })),
    }
}

/// Runs the child with stdout and stderr on one pipe, so its output reads in
/// the order it was written.
fn run_captured(command: &mut Command) -> Result<(std::process::ExitStatus, String), String> {
    let (mut reader, writer) = std::io::pipe().map_err(|e| e.to_string())?;
    let stderr = writer.try_clone().map_err(|e| e.to_string())?;
    let mut child = command
        .stdout(writer)
        .stderr(stderr)
        .spawn()
        .map_err(|e| e.to_string())?;
    // The command still holds the pipe's write ends: without dropping them
    // the read below would never see the end of the output.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut output = Vec::new();
    reader.read_to_end(&mut output).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&output).into_owned()))
}

struct ChildFailure {
    status: std::process::ExitStatus,
    output: String,
}

impl fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.output)?;
        if !self.output.ends_with('\n') && !self.output.is_empty() {
            writeln!(f)?;
        }
        write!(f, "(the test's process ended with {})", self.status)
    }
}

fn skip_file_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "kata-test-skip-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// One lock per resource name, taken in name order so two tests that share
/// several can never wait for each other.
fn exclusive_locks(names: &[&'static str]) -> Vec<Arc<Mutex<()>>> {
    type Locks = BTreeMap<&'static str, Arc<Mutex<()>>>;
    static LOCKS: OnceLock<Mutex<Locks>> = OnceLock::new();
    let mut sorted = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut locks = LOCKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    sorted
        .into_iter()
        .map(|name| Arc::clone(locks.entry(name).or_default()))
        .collect()
}

/// The child's side: run the one test, and say through the exit code (and
/// the skip file) how it ended.
fn run_child(name: &str) -> ExitCode {
    let Some(test) = inventory::iter::<Test>
        .into_iter()
        .find(|test| test.full_name() == name)
    else {
        eprintln!("no test or helper named {name} in this binary");
        return ExitCode::from(2);
    };
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Skipped>().is_none() {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(test.run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(payload) => match payload.downcast_ref::<Skipped>() {
            Some(Skipped(reason)) => {
                println!("skipped: {reason}");
                if let Some(path) = std::env::var_os(SKIP_FILE_ENV)
                    && let Err(e) = std::fs::write(&path, reason)
                {
                    eprintln!("could not record the skip in {path:?}: {e}");
                }
                ExitCode::from(SKIP_EXIT)
            }
            None => ExitCode::from(101),
        },
    }
}
