//! The `kata` RuntimeClass in the plan: pure.

use super::{Desired, Step};
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
    RuntimeClassPlan {
        step: (!up_to_date).then_some(Step::Apply(Desired::RuntimeClass(Box::new(desired)))),
        names: vec![names::RUNTIME_CLASS_NAME.into()],
    }
}

/// Taking the RuntimeClass away.
pub fn delete() -> Step {
    Step::Delete {
        kind: kind::RUNTIME_CLASS,
        name: names::RUNTIME_CLASS_NAME,
    }
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
        let mut drifted = observed.unwrap_or_default();
        drifted["handler"] = "runc".into();
        assert!(plan(false, Some(&drifted)).step.is_some());
    }
}
