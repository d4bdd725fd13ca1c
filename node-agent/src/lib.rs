//! The Kata node agent: probes a host for Kata readiness.
//!
//! * [`probe`]: the individual probes and their outcome type.
//! * [`runner::ProbeRunner`]: one full cycle, reusable across cycles by the
//!   daemon (it keeps the QEMU version cache).
//! * [`verdict`]: `kvm_capable` / `runtime_ready` from a cycle's outcomes.
//! * [`check`]: the `node-agent check` report.
//! * [`config::ExpectedConfig`]: what the node should look like; the
//!   coordinator sends its own.
//! * [`metrics`]: the agent's Prometheus metrics and `GET /metrics`;
//!   [`sandbox_metrics`]: Kata's per-sandbox metrics, relayed from the shims.
//! * [`liveness`]: whether the agent can still report (`GET /healthz`).
//! * `fixtures` (feature `fixtures`, for tests only): fake host roots.

pub mod check;
pub mod config;
pub mod daemon;
pub mod error;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod liveness;
pub mod metrics;
pub mod probe;
pub mod runner;
pub mod sandbox_metrics;
pub mod verdict;

pub use check::CheckReport;
pub use config::{ExpectedConfig, RuntimeProfile, Version};
pub use error::AgentError;
pub use probe::capacity::{Capacity, CapacitySource};
pub use probe::rpm_ostree::StatusSource;
pub use probe::{Budgets, HostRoot, ProbeName, ProbeOutcome, ProbeStatus};
pub use runner::{ProbeRunner, RunnerOptions};
pub use verdict::{Verdicts, verdicts};
