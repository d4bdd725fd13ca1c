//! Capacity: can the node afford the RuntimeClass overhead?
//!
//! Each Kata pod pays a fixed overhead for its VM (the RuntimeClass
//! `overhead.podFixed`, from [`kata_proto::contract`]: 250m CPU, 350Mi).
//! The rule, with a margin so that a node that passes can run more than one
//! pod next to its own daemons:
//! - at least 2 online CPUs (FAIL below): the guest's vCPU plus the host;
//! - at least 4 × 350Mi = 1400Mi of memory in total (FAIL below);
//! - at least 2 × 350Mi = 700Mi available right now, else a WARN: available
//!   memory moves with the load, so it is reported but does not make the
//!   node unready.

use kata_proto::contract;

use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, reason};

pub const POD_OVERHEAD_MILLICPU: u64 = contract::POD_OVERHEAD_MILLICPU;
pub const POD_OVERHEAD_BYTES: u64 = contract::POD_OVERHEAD_MEMORY_MIB * MIB;
pub const MIN_CPUS: usize = 2;
pub const MIN_TOTAL_MEMORY: u64 = 4 * POD_OVERHEAD_BYTES;
pub const MIN_AVAILABLE_MEMORY: u64 = 2 * POD_OVERHEAD_BYTES;

const MIB: u64 = 1024 * 1024;
const MEMINFO: &str = "/proc/meminfo";
const CPUS_ONLINE: &str = "/sys/devices/system/cpu/online";
/// Both files are a few KiB at most.
const SMALL_FILE_LIMIT: u64 = 64 * 1024;

const NAME: ProbeName = ProbeName::Capacity;

/// What the node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: usize,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
}

/// Where capacity figures come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CapacitySource {
    /// sysinfo when the host root is `/`; otherwise the root's
    /// `proc/meminfo` and `sys/devices/system/cpu/online` (in the DaemonSet
    /// these are the host's, as `/host/proc` is the host's procfs).
    #[default]
    Auto,
    /// Fixed figures, for tests and simulated nodes.
    Fixed(Capacity),
}

/// Reads capacity; keeps sysinfo's state across cycles.
#[derive(Debug, Default)]
pub struct CapacityReader {
    source: CapacitySource,
    system: Option<sysinfo::System>,
}

impl CapacityReader {
    pub fn new(source: CapacitySource) -> Self {
        Self {
            source,
            system: None,
        }
    }

    /// Blocking: reads files under `/proc` and `/sys`.
    pub fn read(&mut self, root: &HostRoot) -> Result<Capacity, String> {
        match self.source {
            CapacitySource::Fixed(capacity) => Ok(capacity),
            CapacitySource::Auto if root.is_system_root() => self.read_sysinfo(),
            CapacitySource::Auto => read_from_root(root),
        }
    }

    fn read_sysinfo(&mut self) -> Result<Capacity, String> {
        if self.system.is_none() {
            self.system = Some(sysinfo::System::new().map_err(|err| format!("sysinfo: {err}"))?);
        }
        let Some(system) = self.system.as_mut() else {
            return Err("sysinfo is unavailable".to_owned());
        };
        system.refresh_memory();
        system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        Ok(Capacity {
            cpus: system.cpus().len(),
            memory_total_bytes: system.total_memory(),
            memory_available_bytes: system.available_memory(),
        })
    }
}

/// Judges capacity against the overhead rule in the module documentation.
pub fn evaluate(capacity: Result<Capacity, String>) -> ProbeOutcome {
    let capacity = match capacity {
        Ok(capacity) => capacity,
        Err(why) => return ProbeOutcome::warn(NAME, reason::CAPACITY_UNKNOWN, why),
    };
    let summary = format!(
        "{} CPUs, {} MiB total, {} MiB available; a Kata pod's overhead is {}m CPU and {} MiB",
        capacity.cpus,
        capacity.memory_total_bytes / MIB,
        capacity.memory_available_bytes / MIB,
        POD_OVERHEAD_MILLICPU,
        POD_OVERHEAD_BYTES / MIB
    );
    if capacity.cpus < MIN_CPUS {
        return ProbeOutcome::fail(
            NAME,
            reason::INSUFFICIENT_CPU,
            format!("{summary}; at least {MIN_CPUS} CPUs needed"),
        );
    }
    if capacity.memory_total_bytes < MIN_TOTAL_MEMORY {
        return ProbeOutcome::fail(
            NAME,
            reason::INSUFFICIENT_MEMORY,
            format!("{summary}; at least {} MiB needed", MIN_TOTAL_MEMORY / MIB),
        );
    }
    if capacity.memory_available_bytes < MIN_AVAILABLE_MEMORY {
        return ProbeOutcome::warn(
            NAME,
            reason::LOW_AVAILABLE_MEMORY,
            format!(
                "{summary}; under {} MiB available now",
                MIN_AVAILABLE_MEMORY / MIB
            ),
        );
    }
    ProbeOutcome::ok(NAME, reason::CAPACITY_SUFFICIENT, summary)
}

/// `MemTotal` and `MemAvailable` of a meminfo text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            kib.checked_mul(1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Counts the CPUs in a kernel CPU list such as `0-3,8-11`.
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let mut count = 0usize;
    for range in text.trim().split(',') {
        let (first, last) = match range.split_once('-') {
            Some((first, last)) => (first.parse::<usize>().ok()?, last.parse::<usize>().ok()?),
            None => {
                let single = range.parse::<usize>().ok()?;
                (single, single)
            }
        };
        count = count.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    Some(count)
}

fn read_from_root(root: &HostRoot) -> Result<Capacity, String> {
    let text = |path: &str| {
        root.read_file(path, SMALL_FILE_LIMIT)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|err| err.to_string())
    };
    let (memory_total_bytes, memory_available_bytes) = parse_meminfo(&text(MEMINFO)?)
        .ok_or_else(|| format!("{}: no MemTotal/MemAvailable", display(MEMINFO)))?;
    let cpus = parse_cpu_list(&text(CPUS_ONLINE)?)
        .ok_or_else(|| format!("{}: not a CPU list", display(CPUS_ONLINE)))?;
    Ok(Capacity {
        cpus,
        memory_total_bytes,
        memory_available_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeStatus;

    fn capacity(cpus: usize, total_mib: u64, available_mib: u64) -> Result<Capacity, String> {
        Ok(Capacity {
            cpus,
            memory_total_bytes: total_mib * MIB,
            memory_available_bytes: available_mib * MIB,
        })
    }

    #[test]
    fn the_overhead_rule() {
        let judge = |c| {
            let outcome = evaluate(c);
            (outcome.status, outcome.reason)
        };
        assert_eq!(
            judge(capacity(2, 1400, 700)),
            (ProbeStatus::Ok, "CapacitySufficient")
        );
        assert_eq!(
            judge(capacity(1, 8192, 4096)),
            (ProbeStatus::Fail, "InsufficientCpu")
        );
        assert_eq!(
            judge(capacity(4, 1399, 1000)),
            (ProbeStatus::Fail, "InsufficientMemory")
        );
        assert_eq!(
            judge(capacity(4, 8192, 699)),
            (ProbeStatus::Warn, "LowAvailableMemory")
        );
        assert_eq!(
            judge(Err("x".to_owned())),
            (ProbeStatus::Warn, "CapacityUnknown")
        );
    }

    #[test]
    fn proc_and_sys_formats() {
        let meminfo = "MemTotal:       16315904 kB\nMemFree:  1 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some((16315904 * 1024, 8000000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_cpu_list("0-3,8-11\n"), Some(8));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("garbage"), None);
    }
}
