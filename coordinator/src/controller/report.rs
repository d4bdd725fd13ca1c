//! What a reconcile reports: the status (written only when it changed),
//! the full node lists it was written from, and the Events of what changed.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::steps::status_body;
use super::{Context, Error};
use crate::api::{KataConfig, KataConfigStatus, condition, reason};
use crate::applier::Subresource;
use crate::kind;
use crate::names;
use crate::plan::events::{LastWrite, NodeTransition};
use crate::status::{self, ConditionStatus};

impl Context {
    pub(super) fn last_write(&self, config: &str) -> Option<LastWrite> {
        self.written_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(config)
            .cloned()
    }

    pub(super) fn remember_write(&self, config: &str, last: Option<LastWrite>) {
        let mut written_from = self
            .written_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last {
            Some(last) => written_from.insert(config.to_owned(), last),
            None => written_from.remove(config),
        };
    }

    /// Writes the new status, then announces the conditions that changed
    /// and say what is happening. After the write, so a failed write
    /// (retried) announces nothing twice.
    pub(super) async fn write_status(
        &self,
        config: &KataConfig,
        new: &KataConfigStatus,
    ) -> Result<(), Error> {
        let name = config.name_any();
        let body = status_body(new);
        self.applier
            .apply(
                kind::KATA_CONFIG,
                &name,
                names::MANAGER,
                &body,
                Subresource::Status,
            )
            .await
            .map_err(|error| {
                Error::write(error, |source| Error::Status {
                    name: name.clone(),
                    source,
                })
            })?;
        let old = config
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for changed in status::changed(old, &new.conditions) {
            // Only the condition that says what is happening becomes an Event.
            if changed.type_ == condition::READY
                || (changed.type_ == condition::DEGRADED
                    && ConditionStatus::parse(&changed.status) == ConditionStatus::True)
            {
                let event = Event {
                    type_: condition_event_type(&changed.type_, &changed.reason),
                    reason: changed.reason.clone(),
                    note: Some(changed.message.clone()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                self.applier.publish(event, &config.object_ref(&())).await;
            }
        }
        Ok(())
    }

    /// Announces the nodes' transitions, once the status that records them
    /// is written (or, when only nodes past the status's lists moved, was
    /// already as it should be).
    pub(super) async fn announce_transitions(
        &self,
        config: &KataConfig,
        transitions: &[NodeTransition],
    ) {
        let kata_config = config.object_ref(&());
        for transition in transitions {
            let event = Event {
                type_: if transition.is_warning() {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: transition.reason().into(),
                note: Some(transition.note()),
                action: "Install".into(),
                secondary: Some(kata_config.clone()),
            };
            self.applier
                .publish(event, &self.node_reference(transition.node()))
                .await;
        }
    }

    /// The node as an Event's subject, with its uid when the cache has it
    /// (`kubectl describe node` matches on it).
    pub(super) fn node_reference(&self, name: &str) -> ObjectReference {
        self.nodes
            .get(&ObjectRef::new(name))
            .map(|node| node.object_ref(&()))
            .unwrap_or_else(|| ObjectReference {
                api_version: Some(kind::NODE.api_version()),
                kind: Some(kind::NODE.kind.into()),
                name: Some(name.into()),
                ..Default::default()
            })
    }
}

/// A condition's Event is a warning when it asks an admin to act: the
/// KataConfig degraded, or the uninstall waiting on pods only they can
/// delete.
fn condition_event_type(type_: &str, condition_reason: &str) -> EventType {
    if type_ == condition::DEGRADED || condition_reason == reason::BLOCKED_BY_EXISTING_KATA_PODS {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{condition, reason};

    #[test]
    fn condition_events_warn_when_an_admin_must_act() {
        assert_eq!(
            condition_event_type(condition::DEGRADED, reason::NODE_DEGRADED),
            EventType::Warning
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::BLOCKED_BY_EXISTING_KATA_PODS),
            EventType::Warning,
            "only deleting the pods lets the uninstall go on"
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::INSTALLED),
            EventType::Normal
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::UNINSTALLING),
            EventType::Normal
        );
    }
}
