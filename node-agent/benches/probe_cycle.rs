//! The cost of one full probe cycle: CPU time per cycle (getrusage user+sys,
//! all threads, averaged over many cycles after a warm-up cycle that runs
//! QEMU's `--version` once) and the process's resident memory.
//!
//! Each root is measured four ways, so an admin sees what the KVM probe's
//! VM and guest-code steps cost: a VM created every cycle with no guest
//! code (what the probe did before VMs had a schedule), a VM on the default
//! schedule (every `DEFAULT_CREATE_VM_EVERY`th cycle) with no guest code,
//! both on the default schedule (guest code every
//! `DEFAULT_GUEST_CODE_EVERY`th cycle), and guest code every cycle. The
//! fixture root is also measured without a KVM device, which is the cost of
//! everything but the kernel's work behind the KVM ioctls. VmHWM only grows,
//! so later lines carry the earlier lines' peak.
//!
//! Targets: under 1 ms of CPU per cycle and RSS under 6 MiB, with and without
//! the guest-code run (issue "[host-truth]"); the figures are in the closing notes.
//! Run: `cargo bench -p kata-node-agent --bench probe_cycle [-- CYCLES]`.

use std::time::Duration;

use kata_node_agent::fixtures::FakeHost;
use kata_node_agent::probe::kvm::{
    DEFAULT_CREATE_VM_EVERY, DEFAULT_GUEST_CODE_EVERY, GuestSchedule,
};
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
        (
            "guest code never run, a VM every cycle",
            GuestSchedule::never().create_vm_every(1),
        ),
        (
            "guest code never run, a VM on the default schedule",
            GuestSchedule::never(),
        ),
        (
            "guest code and VM on the default schedule",
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
    if let [vm_every_cycle, never, default, every] = per_cycle_ms[..] {
        println!(
            "  KVM_CREATE_VM: about {:.3} ms CPU each (a VM every cycle minus the default \
             VM schedule, scaled)",
            (vm_every_cycle - never) * f64::from(DEFAULT_CREATE_VM_EVERY)
                / f64::from(DEFAULT_CREATE_VM_EVERY - 1)
        );
        println!(
            "  guest-code run: about {:.3} ms CPU each (every cycle minus a VM every cycle); \
             {:+.3} ms per cycle on the default schedule",
            every - vm_every_cycle,
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
    let warm_vm_runs = runner.kvm_create_vm_runs();
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
        "  {label} (guest code planned in {} and a VM in {} of the {cycles} measured \
         cycles):\n    \
         {cycles} cycles: {:.3} ms CPU per cycle (user+sys); VmRSS {:.1} MiB, VmHWM {:.1} MiB; \
         qemu --version ran {} time(s)",
        runner.kvm_guest_code_runs() - warm_guest_runs,
        runner.kvm_create_vm_runs() - warm_vm_runs,
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
    // The runtime the agent itself uses.
    let runtime = match kata_node_agent::runner::agent_runtime() {
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
    println!(
        "(default schedule: a VM every {DEFAULT_CREATE_VM_EVERY} cycles, guest code every \
         {DEFAULT_GUEST_CODE_EVERY} cycles)"
    );
    // The same root without a KVM device: the probes' cost apart from the
    // kernel's work behind KVM_CREATE_VM and the guest code.
    let without_kvm = FakeHost::good();
    println!("fixture good root without /dev/kvm (what every probe but KVM's ioctls costs)");
    measure_one(
        "no KVM device",
        &runtime,
        without_kvm.runner(),
        cycles,
        false,
    );
    measure(label, &runtime, &|| good.runner(), cycles);
    let real = || ProbeRunner::new(ExpectedConfig::default(), HostRoot::default());
    measure("this machine's real root /", &runtime, &real, cycles);
}
