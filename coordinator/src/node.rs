//! What the coordinator reads from a Node, for the reconciler and the
//! labeller alike.

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::json;

use crate::names;
use crate::plan::ownership;

/// The labels the labeller writes on nodes.
pub const MARK_LABELS: [&str; 2] = [names::KATA_RUNTIME_LABEL, names::KATA_CAPABLE_LABEL];

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
/// size, and the cache holds every node of the cluster. Of the managed
/// fields only what the labeller needs stays: other managers' ownership of
/// our labels ([`MARK_LABELS`]), which no apply of ours can remove — on
/// most nodes, nothing.
pub fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = node
        .metadata
        .managed_fields
        .take()
        .map(|entries| {
            entries
                .into_iter()
                .filter_map(foreign_mark_owner)
                .collect::<Vec<_>>()
        })
        .filter(|kept| !kept.is_empty());
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

/// `entry` cut down to the labels of [`MARK_LABELS`] it owns, when it is
/// another manager's entry of the main resource that owns any.
fn foreign_mark_owner(entry: ManagedFieldsEntry) -> Option<ManagedFieldsEntry> {
    let manager = entry.manager.as_deref().unwrap_or_default();
    let on_main = entry.subresource.as_deref().is_none_or(str::is_empty);
    if ownership::is_ours(manager) || !on_main {
        return None;
    }
    let labels = entry
        .fields_v1
        .as_ref()?
        .0
        .get("f:metadata")?
        .get("f:labels")?;
    let kept: serde_json::Map<String, serde_json::Value> = MARK_LABELS
        .iter()
        .map(|label| format!("f:{label}"))
        .filter(|key| labels.get(key).is_some())
        .map(|key| (key, json!({})))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(ManagedFieldsEntry {
        fields_v1: Some(FieldsV1(json!({ "f:metadata": { "f:labels": kept } }))),
        // When it last wrote is no part of who owns what.
        time: None,
        ..entry
    })
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

    #[test]
    fn the_slim_copy_keeps_only_other_managers_ownership_of_our_labels() {
        let entry = |manager: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(fields)),
            time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        };
        let labels = |keys: &[&str]| {
            let keys: serde_json::Map<String, serde_json::Value> =
                keys.iter().map(|k| (format!("f:{k}"), json!({}))).collect();
            json!({ "f:metadata": { "f:labels": keys }, "f:spec": { "f:podCIDR": {} } })
        };
        let mut node = Node::default();
        node.metadata.managed_fields = Some(vec![
            entry(names::MANAGER_HEALTH, labels(&[names::KATA_RUNTIME_LABEL])),
            entry("admin", labels(&["team", names::KATA_RUNTIME_LABEL])),
            entry("kubelet", labels(&["kubernetes.io/hostname"])),
        ]);
        slim_node(&mut node);
        let kept = node.metadata.managed_fields.unwrap_or_default();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].manager.as_deref(), Some("admin"));
        assert_eq!(kept[0].time, None);
        let runtime_only = json!({ "f:metadata": { "f:labels": {
            format!("f:{}", names::KATA_RUNTIME_LABEL): {}
        } } });
        assert_eq!(kept[0].fields_v1, Some(FieldsV1(runtime_only)));

        let mut ours_only = Node::default();
        ours_only.metadata.managed_fields = Some(vec![entry(
            names::MANAGER_HEALTH,
            labels(&[names::KATA_RUNTIME_LABEL]),
        )]);
        slim_node(&mut ours_only);
        assert_eq!(ours_only.metadata.managed_fields, None);
    }
}
