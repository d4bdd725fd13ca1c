//! What the KataConfig controller needs from a host-configuration backend
//! besides its pure planning ([`HostConfigRollout`]): the watches that keep
//! the backend's caches and the reads a reconcile makes. The wiring
//! (`app.rs`) picks the backend; the controller, the labeller and the
//! health channel only see this interface.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::plan::ObservedNode;
use crate::plan::rollout::HostConfigRollout;

/// Why the backend could not read the cluster.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}: {source}")]
pub struct ReadError {
    pub what: String,
    pub source: kube::Error,
}

/// A rollout as observed, ready to plan with.
pub type ObservedRollout = Box<dyn HostConfigRollout + Send + Sync>;

/// The observing side of a backend.
pub trait RolloutSource: Send + Sync {
    /// Completes once every cache of the backend holds a complete list:
    /// planning from part of one would undo the rollout on the rest.
    fn wait_until_ready(&self) -> BoxFuture<'_, ()>;

    /// The rollout as it stands, read for `nodes` (sorted by name).
    fn observe<'a>(
        &'a self,
        nodes: &'a [ObservedNode],
    ) -> BoxFuture<'a, Result<ObservedRollout, ReadError>>;

    /// The node label keys its reads name beyond roles and ours (the
    /// node cache keeps only those: [`crate::node::LabelKeys`]).
    fn node_label_keys(&self) -> Vec<String>;
}

/// A backend with its watches built; they run while `triggers` is polled.
pub struct Backend {
    pub source: Arc<dyn RolloutSource>,
    /// Yields whenever an object the backend watches changes.
    pub triggers: BoxStream<'static, ()>,
    /// The node annotations it reads (its [`CurrentHostConfig`] among
    /// them): the node cache keeps these and drops the others.
    pub node_annotations: &'static [&'static str],
}

/// The configuration a node runs, read from its annotations by the
/// backend's rules; `None` when the backend has not configured it.
pub type CurrentHostConfig = fn(&dyn crate::node::Annotations) -> Option<&str>;
