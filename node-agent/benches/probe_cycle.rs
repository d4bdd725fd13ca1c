//! The cost of one full probe cycle: CPU time per cycle (getrusage user+sys,
//! all threads, averaged over many cycles after a warm-up cycle that runs
//! QEMU's `--version` once) and the process's resident memory.
//!
//! Targets (issue "[agent]"): under 5 ms of CPU per cycle, RSS under 10 MiB.
//! Run: `cargo bench -p kata-node-agent --bench probe_cycle [-- CYCLES]`.

use std::time::Duration;

use kata_node_agent::fixtures::FakeHost;
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

fn measure(label: &str, runtime: &tokio::runtime::Runtime, mut runner: ProbeRunner, cycles: u32) {
    // The warm-up cycle runs QEMU's --version, which later cycles take from the cache.
    let warm = runtime.block_on(runner.run_cycle());
    let before = cpu_time();
    for _ in 0..cycles {
        std::hint::black_box(runtime.block_on(runner.run_cycle()));
    }
    let per_cycle = (cpu_time() - before) / cycles;
    let (rss, hwm) = memory_kib();
    println!("{label}");
    for outcome in &warm {
        println!(
            "    {:<15} {:<4} {}",
            outcome.name, outcome.status, outcome.reason
        );
    }
    println!(
        "    {cycles} cycles: {:.3} ms CPU per cycle (user+sys); VmRSS {:.1} MiB, VmHWM {:.1} MiB; \
         qemu --version ran {} time(s)",
        per_cycle.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        runner.qemu_version_runs()
    );
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
    measure(label, &runtime, good.runner(), cycles);
    let real = ProbeRunner::new(ExpectedConfig::default(), HostRoot::default());
    measure("this machine's real root /", &runtime, real, cycles);
}
