//! One probe cycle: every probe, concurrently, each under its own budget.
//!
//! The runner is what the daemon keeps between cycles: the QEMU version
//! cache, the KVM probe's guest-code schedule and sysinfo's state live here,
//! and the expected configuration can be swapped when the coordinator sends
//! a new one.

use std::time::{Duration, Instant};

use crate::config::ExpectedConfig;
use crate::probe::capacity::{self, CapacityReader, CapacitySource};
use crate::probe::qemu::{self, QemuCache};
use crate::probe::rpm_ostree::{self, StatusSource};
use crate::probe::{
    Budgets, HostRoot, ProbeName, ProbeOutcome, ProbeStatus, blocking_within, cpu, cri, crio,
    kata_shim, kvm, modules, run_blocking,
};

/// Threads the blocking pool may hold: the probes' file and ioctl work.
/// Nine probes start at once, but each takes well under a millisecond, so
/// four threads finish a cycle as fast as nine while holding less memory
/// (each thread brings its own stack and malloc arena: 5.5 MiB against
/// 6.3 MiB in the probe-cycle bench). A probe stuck in the kernel (a hung
/// mount) keeps its thread; the others run on the rest, and work that
/// cannot get a thread within its budget reports a timeout.
pub const BLOCKING_THREADS: usize = 4;

/// How long an idle blocking thread waits for work: longer than the 10 s
/// probe interval, so a steady agent keeps its few threads instead of
/// starting them afresh every cycle.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// The runtime the agent runs on: one thread for the daemon (it mostly
/// waits on the network and the blocking pool) and a small blocking pool
/// for the probes.
pub fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
}

/// How the probes get their inputs, as opposed to what they expect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerOptions {
    pub rpm_ostree_status: StatusSource,
    pub capacity: CapacitySource,
    pub budgets: Budgets,
}

pub struct ProbeRunner {
    config: ExpectedConfig,
    root: HostRoot,
    options: RunnerOptions,
    qemu_cache: QemuCache,
    kvm_guest: kvm::GuestSchedule,
    capacity: CapacityReader,
    last_durations: Vec<(ProbeName, Duration)>,
}

impl ProbeRunner {
    pub fn new(config: ExpectedConfig, root: HostRoot) -> Self {
        Self::with_options(config, root, RunnerOptions::default())
    }

    pub fn with_options(config: ExpectedConfig, root: HostRoot, options: RunnerOptions) -> Self {
        Self {
            capacity: CapacityReader::new(options.capacity),
            config,
            root,
            options,
            qemu_cache: QemuCache::default(),
            kvm_guest: kvm::GuestSchedule::default(),
            last_durations: Vec::new(),
        }
    }

    pub fn config(&self) -> &ExpectedConfig {
        &self.config
    }

    /// Takes effect from the next cycle.
    pub fn set_config(&mut self, config: ExpectedConfig) {
        self.config = config;
    }

    pub fn host_root(&self) -> &HostRoot {
        &self.root
    }

    /// How many times QEMU's `--version` has run so far (the cache works
    /// when this stays put across cycles).
    pub fn qemu_version_runs(&self) -> u64 {
        self.qemu_cache.runs()
    }

    /// How often the KVM probe runs guest code (see [`kvm::GuestSchedule`]);
    /// takes effect from the next cycle.
    pub fn set_kvm_guest_schedule(&mut self, schedule: kvm::GuestSchedule) {
        self.kvm_guest = schedule;
    }

    /// How many cycles so far planned guest code for the KVM probe (it runs
    /// only where `/dev/kvm` opens and answers its API version; a failing
    /// device plans it every cycle and never gets there).
    pub fn kvm_guest_code_runs(&self) -> u64 {
        self.kvm_guest.runs()
    }

    /// How many cycles so far planned a VM for the KVM probe, with or
    /// without guest code in it (the same caveat).
    pub fn kvm_create_vm_runs(&self) -> u64 {
        self.kvm_guest.vm_runs()
    }

    /// How long each probe of the last cycle took, from its start to its
    /// outcome (time spent waiting for a blocking thread included), in
    /// [`ProbeName::ALL`] order; empty before the first cycle.
    pub fn last_durations(&self) -> &[(ProbeName, Duration)] {
        &self.last_durations
    }

    /// The runtime profiles of the expected configuration this node serves
    /// as rendered ([`crate::probe::profiles`]).
    pub async fn ready_profiles(&self) -> Vec<String> {
        crate::probe::profiles::ready(
            &self.root,
            &self.config.runtime_profiles,
            &self.options.budgets,
        )
        .await
    }

    /// Runs every probe once; outcomes come in [`ProbeName::ALL`] order.
    pub async fn run_cycle(&mut self) -> Vec<ProbeOutcome> {
        let budgets = self.options.budgets;
        let root = &self.root;
        let config = &self.config;
        let blocking = |name: ProbeName, probe: fn(&HostRoot) -> ProbeOutcome| {
            let root = root.clone();
            run_blocking(name, budgets.filesystem, move || probe(&root))
        };
        let cpu_root = root.clone();
        let cpu_info = blocking_within(ProbeName::Cpu, budgets.filesystem, move || {
            cpu::read(&cpu_root)
        });
        let guest_plan = self.kvm_guest.plan();
        let in_flight = self.kvm_guest.start(guest_plan);
        let kvm_root = root.clone();
        let kvm = run_blocking(
            ProbeName::Kvm,
            budgets.filesystem,
            move || match &in_flight {
                Some(run) => kvm::probe_kickable(&kvm_root, guest_plan, run.kick()),
                None => kvm::probe_with(&kvm_root, guest_plan),
            },
        );
        let crio_root = root.clone();
        let crio_config = config.clone();
        let crio = run_blocking(ProbeName::CrioDropIn, budgets.filesystem, move || {
            crio::probe(&crio_root, &crio_config)
        });
        let shim_root = root.clone();
        let shim_config = config.clone();
        let shim = run_blocking(ProbeName::KataShim, budgets.filesystem, move || {
            kata_shim::probe(&shim_root, &shim_config)
        });
        let mut reader = std::mem::take(&mut self.capacity);
        let capacity_root = root.clone();
        let capacity = blocking_within(ProbeName::Capacity, budgets.filesystem, move || {
            let capacity = reader.read(&capacity_root);
            Ok((reader, capacity))
        });
        let (
            (kvm, kvm_took),
            (cpu_info, cpu_took),
            (modules, modules_took),
            (qemu, qemu_took),
            (shim, shim_took),
            (rpm_ostree, rpm_ostree_took),
            (crio, crio_took),
            (cri, cri_took),
            (capacity, capacity_took),
        ) = tokio::join!(
            timed(kvm),
            timed(cpu_info),
            timed(blocking(ProbeName::KernelModules, modules::probe)),
            timed(qemu::probe(
                root,
                config.minimum_qemu_version,
                &mut self.qemu_cache,
                &budgets
            )),
            timed(shim),
            timed(rpm_ostree::probe(
                root,
                &self.options.rpm_ostree_status,
                &config.extension_packages,
                &budgets
            )),
            timed(crio),
            timed(cri::probe(root, &config.runtime_handler, &budgets)),
            timed(capacity),
        );
        self.last_durations = vec![
            (ProbeName::Kvm, kvm_took),
            (ProbeName::Cpu, cpu_took),
            (ProbeName::KernelModules, modules_took),
            (ProbeName::Qemu, qemu_took),
            (ProbeName::KataShim, shim_took),
            (ProbeName::RpmOstree, rpm_ostree_took),
            (ProbeName::CrioDropIn, crio_took),
            (ProbeName::CriHandler, cri_took),
            (ProbeName::Capacity, capacity_took),
        ];
        self.kvm_guest.record(guest_plan, &kvm);
        let cpu = match cpu_info {
            Ok(info) => cpu::evaluate(&info, kvm.status == ProbeStatus::Ok),
            Err(outcome) => outcome,
        };
        let capacity = match capacity {
            Ok((reader, capacity)) => {
                self.capacity = reader;
                capacity::evaluate(capacity)
            }
            // The reader is stuck on its thread; start afresh next cycle.
            Err(outcome) => {
                self.capacity = CapacityReader::new(self.options.capacity);
                outcome
            }
        };
        vec![
            kvm, cpu, modules, qemu, shim, rpm_ostree, crio, cri, capacity,
        ]
    }
}

/// A future's output with the time it took to produce it.
async fn timed<T>(future: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let output = future.await;
    (output, start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::FakeHost;

    #[tokio::test]
    async fn each_cycle_times_every_probe_in_report_order() {
        let host = FakeHost::good();
        let mut runner = host.runner();
        assert!(runner.last_durations().is_empty());
        let outcomes = runner.run_cycle().await;
        let timed: Vec<ProbeName> = runner.last_durations().iter().map(|(n, _)| *n).collect();
        let reported: Vec<ProbeName> = outcomes.iter().map(|o| o.name).collect();
        assert_eq!(timed, ProbeName::ALL);
        assert_eq!(reported, ProbeName::ALL);
        // Every probe does some work, so none can take no time at all.
        assert!(
            runner
                .last_durations()
                .iter()
                .all(|(_, took)| !took.is_zero())
        );
    }
}
