//! What the coordinator reads from a Node, for the reconciler and the
//! labeller alike.

use k8s_openapi::api::core::v1::{Node, NodeCondition};

use crate::names;

/// The node's `KataRuntimeReady` condition, written by the labeller.
pub fn kata_ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == names::NODE_CONDITION)
}

/// Drops what the coordinator never reads from its cached Nodes: the
/// managed-fields bookkeeping and the image list are most of a real Node's
/// size, and the cache holds every node of the cluster.
pub fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerImage, NodeStatus};

    #[test]
    fn finds_only_our_condition_and_slims_the_cache_copy() {
        let condition = |type_: &str| NodeCondition {
            type_: type_.into(),
            status: "True".into(),
            ..Default::default()
        };
        let mut node = Node {
            status: Some(NodeStatus {
                conditions: Some(vec![condition("Ready"), condition(names::NODE_CONDITION)]),
                images: Some(vec![ContainerImage::default()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            kata_ready_condition(&node).map(|c| c.type_.as_str()),
            Some(names::NODE_CONDITION)
        );
        slim_node(&mut node);
        assert!(node.status.as_ref().is_some_and(|s| s.images.is_none()));
        assert!(kata_ready_condition(&Node::default()).is_none());
    }
}
