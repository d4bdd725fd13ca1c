//! The KataConfig controller: gathers a [`plan::Observed`] snapshot (and
//! the host-configuration backend's, through [`RolloutSource`]) from watches
//! and a few reads, asks [`plan::plan`] what to do, performs each step with
//! one [`Applier`] call, and writes the status only when it changed.
//!
//! By job: `observe` (the snapshot), `pod_gate` (the Kata pods that
//! hold an uninstall), `stuck` (what holds a stuck node's drain),
//! `steps` (one applier call per step, and the KataConfig request
//! bodies), `report` (status and Events), `wiring` (the watches).

mod observe;
mod pod_gate;
mod profile_settle;
mod report;
mod steps;
mod stuck;
mod throttle;
mod wiring;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::node::CachedNode;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::api::KataConfig;
use crate::applier::{Applier, WriteError};
use crate::backend::{ReadError, RolloutSource};
use crate::kata_pods;
use crate::plan::events::LastWrite;
use crate::plan::stuck::WorkingClock;
use crate::plan::{self, Requeue, Step};
use crate::status;

#[cfg(test)]
pub(crate) use observe::observed_node;
pub use wiring::{KataConfigController, SHUTDOWN_GRACE};

/// Why a reconcile failed, by the phase that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("observing the cluster: {0}")]
    Observe(#[from] ReadError),
    #[error("{step} failed: {source}")]
    Apply { step: String, source: kube::Error },
    #[error("writing the status of KataConfig {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("stopped after {0} writes, as configured")]
    WriteBudgetSpent(u64),
}

impl Error {
    /// The category the errors metric counts.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Observe(_) => "observe",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::WriteBudgetSpent(_) => "stopped",
        }
    }

    /// A failed write: a spent budget, or an API failure in the phase
    /// `api_failure` names.
    fn write(error: WriteError, api_failure: impl FnOnce(kube::Error) -> Error) -> Error {
        match error {
            WriteError::BudgetSpent(limit) => Error::WriteBudgetSpent(limit),
            WriteError::Api(source) => api_failure(source),
        }
    }
}

fn observe_error(what: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| {
        Error::Observe(ReadError {
            what: what.to_owned(),
            source,
        })
    }
}

/// How the coordinator runs; the defaults are production's.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop (as if the process died) once this many writes were made. The
    /// restart tests use it to interrupt install and uninstall at every step.
    pub stop_after_writes: Option<u64>,
    pub metrics: crate::metrics::Metrics,
    /// How long a node may stay updating (MCO state `Working`) before the
    /// KataConfig and an Event say it is stuck, and what holds its drain.
    pub stuck_after: Duration,
    /// Where the runtime profiles the plan renders are published for the
    /// health side.
    pub profiles_in_force: crate::profiles::InForce,
}

/// A drain and reboot take minutes; a quarter of an hour means something
/// holds the node.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

impl Default for Options {
    fn default() -> Self {
        Self {
            stop_after_writes: None,
            metrics: crate::metrics::Metrics::default(),
            stuck_after: DEFAULT_STUCK_AFTER,
            profiles_in_force: crate::profiles::InForce::default(),
        }
    }
}

struct Context {
    client: Client,
    nodes: Store<CachedNode>,
    /// Which labels `nodes` holds of each Node.
    kept_labels: crate::node::KeptLabels,
    /// The host-configuration backend's caches and reads.
    rollout: Arc<dyn RolloutSource>,
    configs: Store<KataConfig>,
    /// Our RuntimeClass, from its watch (the only object it holds).
    runtime_classes: Store<RuntimeClass>,
    /// The runtime profiles planned from, and a change settling.
    profiles: std::sync::Mutex<profile_settle::ProfileSettle>,
    /// The uninstall's last list of pods using our RuntimeClass.
    kata_pods: std::sync::Mutex<Option<kata_pods::Answer>>,
    /// When each node was first seen updating (see [`plan::stuck`]).
    working: std::sync::Mutex<WorkingClock>,
    /// Per KataConfig, the full node lists its status was last written
    /// from: the status holds them capped, and the Events of nodes past
    /// the cap are derived from these ([`plan::events::Previous`]).
    written_from: std::sync::Mutex<BTreeMap<String, LastWrite>>,
    applier: Applier,
    options: Options,
}

/// One reconcile, timed whatever its outcome.
async fn reconcile(config: Arc<KataConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let outcome = reconcile_once(config, &ctx).await;
    ctx.options
        .metrics
        .reconcile_duration
        .0
        .observe(started.elapsed());
    outcome
}

#[instrument(skip_all, fields(kataconfig = %config.name_any()))]
async fn reconcile_once(config: Arc<KataConfig>, ctx: &Context) -> Result<Action, Error> {
    ctx.options.metrics.reconciles.inc();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let Some((observed, rollout)) = ctx.observe(&config).await? else {
        // The node watch lists again with the keys asked for, and fires
        // once the cache holds them; the requeue is a fallback.
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let plan = plan::plan(&observed, rollout.as_ref());
    if plan.renders_profiles {
        ctx.options.profiles_in_force.set(&observed.profiles);
    }
    for step in &plan.steps {
        ctx.execute(&config, step).await?;
    }
    let metrics = &ctx.options.metrics;
    if plan.steps.contains(&Step::RemoveFinalizer) {
        info!("uninstall complete; finalizer removed");
        metrics.clear_kataconfig();
        ctx.remember_write(&observed.name, None);
        return Ok(Action::await_change());
    }
    if plan::active_config(&observed.configs) == Some(observed.name.as_str()) {
        let conditions: Vec<(&str, bool)> = plan
            .conditions
            .iter()
            .map(|c| (c.type_, c.status))
            .collect();
        metrics.observe_kataconfig(&conditions, &plan.nodes);
    }
    let new = status::status(
        config.status.as_ref(),
        &plan.nodes,
        plan.runtime_classes,
        &plan.conditions,
        config.meta().generation,
        &now,
    );
    if config.status.as_ref() != Some(&new) {
        ctx.write_status(&config, &new).await?;
    }
    // The status observed now is `new` (written, or already so): the next
    // reconcile measures transitions against the full lists behind it.
    let last = LastWrite {
        full: plan.nodes,
        before: observed.recorded_nodes.clone(),
    };
    ctx.remember_write(&observed.name, Some(last));
    ctx.announce_transitions(&config, &plan.transitions).await;
    ctx.announce_stuck(&config, &observed.stuck_nodes).await;
    Ok(match plan.requeue {
        Requeue::After(after) => Action::requeue(after),
        Requeue::Resync => Action::requeue(Duration::from_secs(300)),
        Requeue::OnChange => Action::await_change(),
    })
}

fn error_policy(_config: Arc<KataConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.options
        .metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::CategoryLabel {
            category: error.category().into(),
        })
        .inc();
    warn!(%error, category = error.category(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_category_is_exported_from_the_start() {
        let errors = [
            Error::Observe(ReadError {
                what: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            }),
            Error::Apply {
                step: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Status {
                name: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::WriteBudgetSpent(1),
        ];
        assert_eq!(
            errors.map(|e| e.category()),
            crate::metrics::RECONCILE_ERROR_CATEGORIES
        );
    }
}
