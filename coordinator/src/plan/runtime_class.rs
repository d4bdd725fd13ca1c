//! The `kata` RuntimeClass and the runtime profiles' in the plan: pure.

use super::{Desired, Step, conditions};
use crate::profiles::KataRuntimeProfile;
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
        name: names::RUNTIME_CLASS_NAME.into(),
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

/// What the plan does about the runtime profiles' RuntimeClasses.
#[derive(Debug, Default, PartialEq)]
pub struct ProfileClasses {
    pub steps: Vec<Step>,
    /// Their names, for the status's `runtimeClasses`.
    pub names: Vec<String>,
}

/// Each profile's RuntimeClass, applied when `wanted` (once the `kata` one
/// is: every target installed) and drifted from ours; and ours of profiles
/// that are gone, deleted. `others` is every RuntimeClass but `kata`. A
/// profile's class selects the nodes that serve that profile
/// (`katacontainers.io/kata-runtime.<profile>`, which the labeller sets from
/// the agents' checks). Pods using a class keep the uninstall waiting (the
/// status lists it); a profile removed while pods use its class is not
/// held yet.
pub fn profile_classes(
    profiles: &[KataRuntimeProfile],
    others: &[serde_json::Value],
    wanted: bool,
) -> ProfileClasses {
    let observed = |name: &str| others.iter().find(|rc| rc["metadata"]["name"] == name);
    let mut plan = ProfileClasses::default();
    for profile in profiles {
        let name = profile.profile_name();
        let seen = observed(name);
        if !wanted && seen.is_none() {
            continue;
        }
        plan.names.push(name.to_owned());
        let desired = profile.runtime_class();
        let up_to_date = serde_json::to_value(&desired)
            .ok()
            .zip(seen)
            .is_some_and(|(d, o)| same_class(d, o));
        if !up_to_date && !seen.is_some_and(being_deleted) {
            plan.steps
                .push(Step::Apply(Desired::RuntimeClass(Box::new(desired))));
        }
    }
    for rc in others.iter().filter(|rc| is_ours(rc) && !being_deleted(rc)) {
        let name = rc["metadata"]["name"].as_str().unwrap_or_default();
        if !profiles.iter().any(|p| p.profile_name() == name) {
            plan.steps.push(Step::Delete {
                kind: kind::RUNTIME_CLASS,
                name: name.to_owned().into(),
            });
        }
    }
    plan
}

/// Whether the observed class is the desired one: every field of ours as
/// we want it, the overhead compared by value (the API server writes
/// quantities its own way: `1024Mi` as `1Gi`).
fn same_class(mut desired: serde_json::Value, observed: &serde_json::Value) -> bool {
    let fixed = |class: &serde_json::Value| -> Option<Vec<(String, Option<u128>)>> {
        let fixed = class["overhead"]["podFixed"].as_object()?;
        Some(
            fixed
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().and_then(crate::profiles::quantity_millis),
                    )
                })
                .collect(),
        )
    };
    let same_overhead = fixed(&desired) == fixed(observed);
    if let Some(desired) = desired.as_object_mut() {
        desired.remove("overhead");
    }
    same_overhead && objects::is_subset(&desired, observed)
}

/// Every RuntimeClass of `others` labelled ours, by name: the profiles'.
pub fn ours(others: &[serde_json::Value]) -> impl Iterator<Item = String> + '_ {
    others
        .iter()
        .filter(|rc| is_ours(rc))
        .filter_map(|rc| rc["metadata"]["name"].as_str().map(str::to_owned))
}

/// A profile whose RuntimeClass name is taken by a RuntimeClass that is not
/// ours, named with the field: such a profile is refused, as a bad profile
/// is.
pub fn profile_collisions(
    profiles: &[KataRuntimeProfile],
    others: &[serde_json::Value],
) -> Result<(), String> {
    for profile in profiles {
        let name = profile.profile_name();
        let taken = others
            .iter()
            .any(|rc| rc["metadata"]["name"] == name && !is_ours(rc));
        if taken {
            return Err(format!(
                "KataRuntimeProfile {name}: metadata.name is the name of a RuntimeClass the \
                 operator does not own; rename the profile or delete that RuntimeClass"
            ));
        }
    }
    Ok(())
}

/// Whether a RuntimeClass carries our managed-by label.
pub fn is_ours(rc: &serde_json::Value) -> bool {
    rc["metadata"]["labels"][names::MANAGED_BY_LABEL] == names::MANAGED_BY_VALUE
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
    fn each_profile_gets_its_class_with_the_kata_one_and_loses_it_with_the_profile() {
        let large = KataRuntimeProfile::of_size("kata-large", 4, 8192);
        let profiles = [large.clone()];
        assert_eq!(
            profile_classes(&profiles, &[], false),
            ProfileClasses::default()
        );
        let first = profile_classes(&profiles, &[], true);
        assert_eq!(first.names, ["kata-large"]);
        let [Step::Apply(Desired::RuntimeClass(rc))] = first.steps.as_slice() else {
            panic!("{:?}", first.steps);
        };
        assert_eq!(rc.handler, "kata-large");
        let selector = rc.scheduling.as_ref().and_then(|s| s.node_selector.clone());
        assert_eq!(
            selector.unwrap_or_default().into_iter().collect::<Vec<_>>(),
            [(
                "katacontainers.io/kata-runtime.kata-large".to_owned(),
                "true".to_owned()
            )]
        );
        let fixed = rc.overhead.as_ref().and_then(|o| o.pod_fixed.clone());
        assert_eq!(
            fixed
                .unwrap_or_default()
                .get("memory")
                .map(|q| q.0.as_str()),
            Some("6494Mi"),
            "350Mi plus what 8192 MiB exceeds Kata's 2048"
        );

        // Applied: nothing to do, even before the kata class is wanted, and
        // whatever way the API server wrote its quantities.
        let mut applied = serde_json::to_value(rc.as_ref()).unwrap_or_default();
        applied["overhead"]["podFixed"]["cpu"] = "0.25".into();
        let kept = profile_classes(&profiles, std::slice::from_ref(&applied), false);
        assert_eq!(
            (kept.steps, kept.names),
            (Vec::new(), vec!["kata-large".to_owned()])
        );

        // The profile gone: ours goes; someone else's class stays.
        let admins = serde_json::json!({"metadata": {"name": "gvisor"}, "handler": "runsc"});
        let gone = profile_classes(&[], &[applied, admins.clone()], true);
        assert_eq!(
            gone.steps,
            [Step::Delete {
                kind: kind::RUNTIME_CLASS,
                name: "kata-large".into()
            }]
        );

        // A profile named like someone else's class is refused.
        let gvisor = KataRuntimeProfile::of_size("gvisor", 1, 1024);
        let refused = profile_collisions(&[large, gvisor], &[admins]);
        assert!(
            refused.is_err_and(|message| message.contains("gvisor: metadata.name")),
            "a collision names the profile and the field"
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
