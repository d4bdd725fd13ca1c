//! Which nodes get Kata: pure.

use super::ObservedNode;
use crate::api::KataConfigSpec;
use crate::{names, selector};

/// Whether a node is a target: a worker matching the pool selector and, when
/// asked, proven capable by its agent. The capable label is read, not the
/// latest report: the labeller sets it only once a verdict has held for its
/// dwell, so one report never moves a node in or out of the pool. A label
/// an admin changes by hand moves the node at once; the labeller brings it
/// back to the agent's verdict only once that verdict has held for the
/// dwell.
pub fn is_target(spec: &KataConfigSpec, node: &ObservedNode) -> bool {
    node.has_label(names::WORKER_ROLE_LABEL)
        && selector::matches(spec.kata_config_pool_selector.as_ref(), &node.labels)
        && (!spec.check_node_eligibility
            || node
                .labels
                .get(names::KATA_CAPABLE_LABEL)
                .is_some_and(|v| v == "true"))
}

/// A node, and whether the KataConfig selects it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NodeTarget<'a> {
    pub node: &'a ObservedNode,
    pub targeted: bool,
}

/// [`is_target`] for every node: decided once per plan.
pub fn targets<'a>(spec: &KataConfigSpec, nodes: &'a [ObservedNode]) -> Vec<NodeTarget<'a>> {
    nodes
        .iter()
        .map(|node| NodeTarget {
            node,
            targeted: is_target(spec, node),
        })
        .collect()
}

/// Every node, none of them selected (the uninstall).
pub fn none_targeted(nodes: &[ObservedNode]) -> Vec<NodeTarget<'_>> {
    nodes
        .iter()
        .map(|node| NodeTarget {
            node,
            targeted: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelectorOperator;
    use crate::plan::fixtures::{expression_selector, worker};

    #[test]
    fn eligibility_and_selector_decide_targets() {
        let mut spec = KataConfigSpec {
            check_node_eligibility: true,
            kata_config_pool_selector: Some(expression_selector(
                "zone",
                SelectorOperator::In,
                &["a"],
            )),
            ..Default::default()
        };
        let capable = worker("w0", &[("zone", "a"), (names::KATA_CAPABLE_LABEL, "true")]);
        let incapable = worker("w1", &[("zone", "a")]);
        let elsewhere = worker("w2", &[("zone", "b"), (names::KATA_CAPABLE_LABEL, "true")]);
        assert!(is_target(&spec, &capable));
        assert!(!is_target(&spec, &incapable));
        assert!(!is_target(&spec, &elsewhere));
        spec.check_node_eligibility = false;
        assert!(is_target(&spec, &incapable));
        assert_eq!(
            targets(&spec, &[capable, elsewhere, incapable])
                .iter()
                .map(|t| t.targeted)
                .collect::<Vec<_>>(),
            [true, false, true]
        );
    }

    #[test]
    fn masters_are_never_targets() {
        let master =
            crate::plan::fixtures::node("m0", &[("node-role.kubernetes.io/master", "")], &[]);
        assert!(!is_target(&KataConfigSpec::default(), &master));
    }
}
