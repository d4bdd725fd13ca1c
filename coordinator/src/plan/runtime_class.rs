//! The `kata` RuntimeClass in the plan: pure.

use super::{Desired, Step, conditions};
use crate::{kind, names, objects};

/// What the plan does about the RuntimeClass.
#[derive(Debug, PartialEq)]
pub struct RuntimeClassPlan {
    pub step: Option<Step>,
    /// The status's `runtimeClasses`.
    pub names: Vec<String>,
}

/// The RuntimeClass appears once every target is installed, as in OSC, and
/// then stays: nodes joining later do not make it disappear. Applied only
/// when the observed one lacks something of ours.
pub fn plan(all_installed: bool, observed: Option<&serde_json::Value>) -> RuntimeClassPlan {
    let wanted = all_installed || observed.is_some();
    // A RuntimeClass being deleted is the guard's ([`release`]); once it is
    // gone it is created again.
    let applicable = !observed.is_some_and(being_deleted);
    if !wanted {
        return RuntimeClassPlan {
            step: None,
            names: Vec::new(),
        };
    }
    let desired = objects::runtime_class();
    // A RuntimeClass always serializes; were it not to, applying is the safe side.
    let up_to_date = serde_json::to_value(&desired)
        .ok()
        .zip(observed)
        .is_some_and(|(d, o)| objects::is_subset(&d, o));
    let apply = (applicable && !up_to_date)
        .then_some(Step::Apply(Desired::RuntimeClass(Box::new(desired))));
    RuntimeClassPlan {
        step: apply.or_else(|| observed.filter(|_| applicable).and_then(release_owner)),
        names: vec![names::RUNTIME_CLASS_NAME.into()],
    }
}

/// An ownerReference to a KataConfig taken off the RuntimeClass: older
/// releases of the OpenShift sandboxed containers operator made theirs a
/// dependent of the KataConfig (`createRuntimeClass`,
/// `controllers/openshift_controller.go`), which would let the garbage
/// collector delete it on its own; here the uninstall removes it, after
/// the pods are gone. One per reconcile, as observed.
fn release_owner(observed: &serde_json::Value) -> Option<Step> {
    let references = observed["metadata"]["ownerReferences"].as_array()?;
    let (index, reference) = references.iter().enumerate().find(|(_, r)| {
        r["kind"] == crate::api::KIND
            && r["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with(crate::api::GROUP))
    })?;
    Some(Step::ReleaseOwnerReference {
        kind: kind::RUNTIME_CLASS,
        name: names::RUNTIME_CLASS_NAME,
        index,
        reference: reference.clone(),
    })
}

/// Taking the RuntimeClass away.
pub fn delete() -> Step {
    Step::Delete {
        kind: kind::RUNTIME_CLASS,
        name: names::RUNTIME_CLASS_NAME,
    }
}

/// The guard of a RuntimeClass someone is deleting while the KataConfig
/// still installs Kata: held (a Degraded condition naming the pods) while
/// pods use it, else released.
pub fn guard(observed: Option<&serde_json::Value>, pods: &[String]) -> Guard {
    match observed.filter(|rc| being_deleted(rc)) {
        None => Guard::Untouched,
        Some(_) if !pods.is_empty() => Guard::Held(conditions::runtime_class_deletion_held(pods)),
        Some(rc) => Guard::Release(release(rc)),
    }
}

/// What [`guard`] decided.
#[derive(Debug, PartialEq)]
pub enum Guard {
    /// Not being deleted.
    Untouched,
    /// Held for pods: this is the Degraded condition.
    Held(super::ConditionState),
    /// No pod uses it: our finalizer goes (None: it carries none).
    Release(Option<Step>),
}

/// Whether the observed object has been asked to go.
pub fn being_deleted(observed: &serde_json::Value) -> bool {
    !observed["metadata"]["deletionTimestamp"].is_null()
}

/// Our finalizer taken off the observed RuntimeClass, so that its deletion
/// completes; None when it does not carry it. Called only once no pod uses
/// the class.
pub fn release(observed: &serde_json::Value) -> Option<Step> {
    let finalizers: Vec<String> = observed["metadata"]["finalizers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if !finalizers
        .iter()
        .any(|f| f == names::RUNTIME_CLASS_FINALIZER)
    {
        return None;
    }
    Some(Step::ReleaseFinalizer {
        kind: kind::RUNTIME_CLASS,
        name: names::RUNTIME_CLASS_NAME,
        finalizer: names::RUNTIME_CLASS_FINALIZER,
        seen: finalizers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appears_after_the_rollout_and_then_stays() {
        assert_eq!(plan(false, None).step, None);
        let first = plan(true, None);
        assert!(matches!(
            first.step,
            Some(Step::Apply(Desired::RuntimeClass(_)))
        ));
        assert_eq!(first.names, ["kata"]);
        let observed = serde_json::to_value(objects::runtime_class()).ok();
        let kept = plan(false, observed.as_ref());
        assert_eq!((kept.step, kept.names), (None, vec!["kata".to_string()]));
        let mut drifted = observed.clone().unwrap_or_default();
        drifted["handler"] = "runc".into();
        assert!(plan(false, Some(&drifted)).step.is_some());
        drifted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert_eq!(
            plan(true, Some(&drifted)).step,
            None,
            "a RuntimeClass being deleted is not applied again"
        );
    }

    #[test]
    fn an_ownerreference_to_a_kataconfig_is_released_as_seen() {
        let mut observed = serde_json::to_value(objects::runtime_class()).unwrap_or_default();
        let keep =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"});
        let osc = serde_json::json!({"apiVersion": "kataconfiguration.openshift.io/v1",
            "kind": "KataConfig", "name": "example-kataconfig", "uid": "2", "controller": true});
        observed["metadata"]["ownerReferences"] = serde_json::json!([keep, osc]);
        assert_eq!(
            plan(true, Some(&observed)).step,
            Some(Step::ReleaseOwnerReference {
                kind: kind::RUNTIME_CLASS,
                name: names::RUNTIME_CLASS_NAME,
                index: 1,
                reference: osc,
            })
        );
        observed["metadata"]["ownerReferences"] = serde_json::json!([keep]);
        assert_eq!(plan(true, Some(&observed)).step, None);
    }

    #[test]
    fn the_guard_releases_our_finalizer_as_seen() {
        let mut observed = serde_json::to_value(objects::runtime_class()).unwrap_or_default();
        observed["metadata"]["finalizers"] =
            serde_json::json!(["example.com/keep", names::RUNTIME_CLASS_FINALIZER]);
        assert_eq!(
            release(&observed),
            Some(Step::ReleaseFinalizer {
                kind: kind::RUNTIME_CLASS,
                name: names::RUNTIME_CLASS_NAME,
                finalizer: names::RUNTIME_CLASS_FINALIZER,
                seen: vec![
                    "example.com/keep".into(),
                    names::RUNTIME_CLASS_FINALIZER.into()
                ],
            })
        );
        assert!(matches!(guard(Some(&observed), &[]), Guard::Untouched));
        observed["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        assert!(matches!(
            guard(Some(&observed), &["apps/p".into()]),
            Guard::Held(held) if held.message.contains("apps/p")
        ));
        assert!(matches!(
            guard(Some(&observed), &[]),
            Guard::Release(Some(Step::ReleaseFinalizer { .. }))
        ));
        observed["metadata"]["finalizers"] = serde_json::json!(["example.com/keep"]);
        assert_eq!(release(&observed), None, "nothing of ours to release");
    }
}
