//! One step, one applier call; the KataConfig request bodies.

use kube::ResourceExt;
use serde_json::{Value, json};
use tracing::{info, instrument};

use super::{Context, Error};
use crate::api::{KataConfig, KataConfigStatus};
use crate::applier::Subresource;
use crate::kind;
use crate::names;
use crate::plan::{Desired, Step};

impl Context {
    /// One step, one applier call.
    #[instrument(skip_all, fields(step = %step))]
    pub(super) async fn execute(&self, config: &KataConfig, step: &Step) -> Result<(), Error> {
        info!(kataconfig = %config.name_any(), "executing step");
        let applier = &self.applier;
        let result = match step {
            Step::AddFinalizer => {
                let name = config.name_any();
                let body = finalizer_body(&name);
                applier
                    .apply(
                        kind::KATA_CONFIG,
                        &name,
                        names::MANAGER,
                        &body,
                        Subresource::Main,
                    )
                    .await
            }
            // Objects others may write too: never taken over by force
            // (plan::ownership decides when to hold them), but for the
            // fields the earlier operator wrote.
            Step::Apply(desired) => apply_desired(applier, desired, false).await,
            Step::TakeOver(desired) => apply_desired(applier, desired, true).await,
            // Whoever wrote it (an earlier operator's manager may own it).
            Step::RemoveFinalizer => {
                applier
                    .remove_finalizer(
                        kind::KATA_CONFIG,
                        &config.name_any(),
                        names::FINALIZER,
                        config.finalizers(),
                    )
                    .await
            }
            Step::ReleaseFinalizer {
                kind,
                name,
                finalizer,
                seen,
            } => applier.remove_finalizer(*kind, name, finalizer, seen).await,
            Step::ReleaseOwnerReference {
                kind,
                name,
                index,
                reference,
            } => {
                applier
                    .remove_list_entry(*kind, name, "ownerReferences", *index, reference.clone())
                    .await
            }
            Step::Delete { kind, name } => applier.delete(*kind, name).await,
            Step::SetNodeLabel {
                node,
                label,
                present,
            } => applier.label(node, label, *present).await,
            // Releasing the health manager's fields removes the labels only
            // it set; the same release on the status subresource removes our
            // condition.
            Step::ReleaseNodeLabels { node } => {
                applier
                    .apply_node_labels(node, names::MANAGER_HEALTH, None)
                    .await
            }
            Step::RemoveNodeCondition { node } => {
                applier
                    .apply_node_conditions(node, names::MANAGER_HEALTH, &[])
                    .await
            }
        };
        result.map_err(|error| {
            Error::write(error, |source| Error::Apply {
                step: step.to_string(),
                source,
            })
        })
    }
}

/// Applies `desired` as our manager; forced only to take over the
/// earlier operator's fields.
async fn apply_desired(
    applier: &crate::applier::Applier,
    desired: &Desired,
    take_over: bool,
) -> Result<(), crate::applier::WriteError> {
    let (kind, name) = (desired.kind(), desired.name());
    match (desired, take_over) {
        (Desired::Untyped { object, .. }, false) => {
            applier
                .apply_unforced(kind, name, names::MANAGER, object)
                .await
        }
        (Desired::RuntimeClass(rc), false) => {
            applier.apply_unforced(kind, name, names::MANAGER, rc).await
        }
        (Desired::Untyped { object, .. }, true) => {
            applier
                .apply(kind, name, names::MANAGER, object, Subresource::Main)
                .await
        }
        (Desired::RuntimeClass(rc), true) => {
            applier
                .apply(kind, name, names::MANAGER, rc, Subresource::Main)
                .await
        }
    }
}

/// The body that applies our finalizer to the KataConfig `name`.
fn finalizer_body(name: &str) -> Value {
    json!({
        "apiVersion": kind::KATA_CONFIG.api_version(),
        "kind": kind::KATA_CONFIG.kind,
        "metadata": { "name": name, "finalizers": [names::FINALIZER] },
    })
}

/// The body that applies `status` to a KataConfig's status subresource.
pub(super) fn status_body(status: &KataConfigStatus) -> Value {
    json!({
        "apiVersion": kind::KATA_CONFIG.api_version(),
        "kind": kind::KATA_CONFIG.kind,
        "status": status,
    })
}
