//! One probe cycle: every probe, concurrently, each under its own budget.
//!
//! The runner is what the daemon keeps between cycles: the QEMU version
//! cache, the KVM probe's guest-code schedule and sysinfo's state live here,
//! and the expected configuration can be swapped when the coordinator sends
//! a new one.

use crate::config::ExpectedConfig;
use crate::probe::capacity::{self, CapacityReader, CapacitySource};
use crate::probe::qemu::{self, QemuCache};
use crate::probe::rpm_ostree::{self, StatusSource};
use crate::probe::{
    Budgets, HostRoot, ProbeName, ProbeOutcome, ProbeStatus, blocking_within, cpu, cri, crio,
    kata_shim, kvm, modules, run_blocking,
};

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

    /// How many cycles so far had the KVM probe run guest code (it gets as
    /// far only when `/dev/kvm` works up to `KVM_CREATE_VM`).
    pub fn kvm_guest_code_runs(&self) -> u64 {
        self.kvm_guest.runs()
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
        let kvm = run_blocking(ProbeName::Kvm, budgets.filesystem, move || {
            let _in_flight = in_flight;
            kvm::probe_with(&kvm_root, guest_plan)
        });
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
        let (kvm, cpu_info, modules, qemu, shim, rpm_ostree, crio, cri, capacity) = tokio::join!(
            kvm,
            cpu_info,
            blocking(ProbeName::KernelModules, modules::probe),
            qemu::probe(
                root,
                config.minimum_qemu_version,
                &mut self.qemu_cache,
                &budgets
            ),
            shim,
            rpm_ostree::probe(
                root,
                &self.options.rpm_ostree_status,
                &config.extension_packages,
                &budgets
            ),
            crio,
            cri::probe(root, &config.runtime_handler, &budgets),
            capacity,
        );
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
