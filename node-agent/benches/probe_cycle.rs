//! The cost of one full probe cycle: CPU time per cycle (getrusage user+sys,
//! all threads, averaged over many cycles after a warm-up cycle that runs
//! QEMU's `--version` once) and the process's resident memory.
//!
//! Each root is measured three times, so an admin sees what the KVM probe's
//! guest-code run (a VM, a vCPU and two `KVM_RUN`s) costs: with the guest
//! code never run (the probe stops at `KVM_CREATE_VM`), on the daemon's
//! default schedule (every `DEFAULT_GUEST_CODE_EVERY`th cycle), and every
//! cycle. They run in that order because VmHWM only grows.
//!
//! Targets: under 1 ms of CPU per cycle and RSS under 6 MiB, with and without
//! the guest-code run (issue "[host-truth]"); the figures are in the closing notes.
//! Run: `cargo bench -p kata-node-agent --bench probe_cycle [-- CYCLES]`.

use std::time::Duration;

use kata_node_agent::fixtures::FakeHost;
use kata_node_agent::probe::kvm::{DEFAULT_GUEST_CODE_EVERY, GuestSchedule};
use kata_node_agent::{ExpectedConfig, HostRoot, ProbeRunner};
use nix::sys::resource::{UsageWho, getrusage};

const DEFAULT_CYCLES: u32 = 200;

fn cpu_time() -> Duration {
    let usage = match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => usage,
        Err(err) => panic!("getrusage: {err}"),
    };
    let as_duration = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec().unsigned_abs())
            + Duration::from_micros(tv.tv_usec().unsigned_abs())
    };
    as_duration(usage.user_time()) + as_duration(usage.system_time())
}

/// `VmRSS` and `VmHWM` (peak) of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn measure(
    label: &str,
    runtime: &tokio::runtime::Runtime,
    new_runner: &dyn Fn() -> ProbeRunner,
    cycles: u32,
) {
    println!("{label}");
    let schedules = [
        ("guest code never run", GuestSchedule::never()),
        (
            "guest code on the default schedule",
            GuestSchedule::default(),
        ),
        ("guest code every cycle", GuestSchedule::every(1)),
    ];
    let mut per_cycle_ms = Vec::new();
    for (index, (name, schedule)) in schedules.into_iter().enumerate() {
        let mut runner = new_runner();
        runner.set_kvm_guest_schedule(schedule);
        per_cycle_ms.push(measure_one(name, runtime, runner, cycles, index == 0));
    }
    if let [never, default, every] = per_cycle_ms[..] {
        println!(
            "  guest-code run: about {:.3} ms CPU each (every cycle minus never); \
             {:+.3} ms per cycle on the default schedule",
            every - never,
            default - never
        );
    }
}

fn measure_one(
    label: &str,
    runtime: &tokio::runtime::Runtime,
    mut runner: ProbeRunner,
    cycles: u32,
    show_outcomes: bool,
) -> f64 {
    // The warm-up cycle runs QEMU's --version, which later cycles take from
    // the cache (and the guest code, on every schedule but `never`).
    let warm = runtime.block_on(runner.run_cycle());
    let warm_guest_runs = runner.kvm_guest_code_runs();
    let before = cpu_time();
    for _ in 0..cycles {
        std::hint::black_box(runtime.block_on(runner.run_cycle()));
    }
    let per_cycle = (cpu_time() - before) / cycles;
    let (rss, hwm) = memory_kib();
    if show_outcomes {
        for outcome in &warm {
            println!(
                "    {:<15} {:<4} {}",
                outcome.name, outcome.status, outcome.reason
            );
        }
    }
    println!(
        "  {label} (guest code ran in {} of the {cycles} measured cycles):\n    \
         {cycles} cycles: {:.3} ms CPU per cycle (user+sys); VmRSS {:.1} MiB, VmHWM {:.1} MiB; \
         qemu --version ran {} time(s)",
        runner.kvm_guest_code_runs() - warm_guest_runs,
        per_cycle.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        runner.qemu_version_runs()
    );
    per_cycle.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; a bare number overrides the cycle count.
    let cycles = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    // The runtime the agent itself uses: one thread plus the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("tokio runtime: {err}"),
    };
    let good = FakeHost::good();
    let (good, label) = match good.with_real_kvm() {
        Ok(host) => (host, "fixture good root (with the machine's real /dev/kvm)"),
        Err(_) => (
            FakeHost::good(),
            "fixture good root (no /dev/kvm on this machine)",
        ),
    };
    println!("(default schedule: guest code every {DEFAULT_GUEST_CODE_EVERY} cycles)");
    measure(label, &runtime, &|| good.runner(), cycles);
    let real = || ProbeRunner::new(ExpectedConfig::default(), HostRoot::default());
    measure("this machine's real root /", &runtime, &real, cycles);
}
