//! What the coordinator reads from a Node, for the reconciler and the
//! labeller alike.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::names;
use crate::plan::ownership;

/// The labels the labeller writes on nodes.
pub const MARK_LABELS: [&str; 2] = [names::KATA_RUNTIME_LABEL, names::KATA_CAPABLE_LABEL];

/// A Node as the node cache holds it: what the controller and the labeller
/// read, and nothing else. The cache holds every node of the cluster, and a
/// real Node (some 16 KiB on an OpenShift worker) is mostly what others
/// write for themselves: the image list, capacity, addresses, the kubelet's
/// conditions, the network plugin's and cloud's annotations, the
/// managed-fields bookkeeping. k8s-openapi's `Node` would also carry every
/// optional field of its spec and status inline, set or not: 1.5 KiB per
/// node before any of its text, where this type is a quarter of that.
///
/// The node watch decodes Nodes as this type: its metadata, our
/// `KataRuntimeReady` condition and the OS image. Every watch event and every
/// page of the (re)list carries whole Nodes (some 19 KiB on an OpenShift
/// worker, half of it the image list); serde skips the rest of the text
/// without allocating. [`slim_node`] then cuts the metadata down before the
/// node is stored. Nothing is ever written back from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CachedNode {
    /// The name, uid, labels and managed fields; never the annotations,
    /// which are in `annotations`.
    pub metadata: ObjectMeta,
    /// The annotations kept of the node.
    pub annotations: NodeAnnotations,
    /// Our `KataRuntimeReady` condition, written by the labeller.
    pub ready: Option<NodeCondition>,
    /// `status.nodeInfo.osImage`: which OS extension the node needs.
    pub os_image: Option<String>,
}

impl CachedNode {
    /// A node of `metadata`, whose status has `conditions` (ours among
    /// them, or not) and `os_image`.
    fn from_parts(
        mut metadata: ObjectMeta,
        conditions: Option<Vec<NodeCondition>>,
        os_image: Option<String>,
    ) -> Self {
        Self {
            annotations: NodeAnnotations::from_map(metadata.annotations.take()),
            metadata,
            ready: conditions
                .into_iter()
                .flatten()
                .find(|c| c.type_ == names::NODE_CONDITION),
            os_image,
        }
    }

    /// The annotations kept of the node (the inherent method, before
    /// kube's `ResourceExt::annotations`, which would read the metadata).
    pub fn annotations(&self) -> &NodeAnnotations {
        &self.annotations
    }
}

/// A cached node's annotations: the few the backend reads (four on
/// OpenShift's MCO, on every node). A short list rather than a map, keyed by
/// the backend's own static names: at 5,000 nodes a map and its key strings
/// for four entries cost some 3 MiB more. Sorted by key, as read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAnnotations(Box<[(Cow<'static, str>, Box<str>)]>);

impl NodeAnnotations {
    /// The value of the annotation `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// The annotations as a map, for the planner.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        (self.0.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Every annotation of `map`, under its own key.
    fn from_map(map: Option<BTreeMap<String, String>>) -> Self {
        (map.into_iter().flatten())
            .map(|(k, v)| (Cow::Owned(k), v.into_boxed_str()))
            .collect()
    }

    /// The annotations named in `read`, under `read`'s names.
    fn kept(self, read: &[&'static str]) -> Self {
        (self.0.into_iter())
            .filter_map(|(k, v)| {
                read.iter()
                    .find(|r| **r == k)
                    .map(|r| (Cow::Borrowed(*r), v))
            })
            .collect()
    }
}

impl FromIterator<(Cow<'static, str>, Box<str>)> for NodeAnnotations {
    fn from_iter<I: IntoIterator<Item = (Cow<'static, str>, Box<str>)>>(entries: I) -> Self {
        Self(entries.into_iter().collect())
    }
}

/// Reading one annotation by key, of a cached node or of one the planner
/// observed.
pub trait Annotations {
    fn annotation(&self, key: &str) -> Option<&str>;
}

impl Annotations for NodeAnnotations {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

impl Annotations for BTreeMap<String, String> {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl From<Node> for CachedNode {
    fn from(node: Node) -> Self {
        let (conditions, node_info) = node
            .status
            .map(|s| (s.conditions, s.node_info))
            .unwrap_or_default();
        Self::from_parts(node.metadata, conditions, node_info.map(|i| i.os_image))
    }
}

/// The node's `KataRuntimeReady` condition, written by the labeller.
pub fn kata_ready_condition(node: &CachedNode) -> Option<&NodeCondition> {
    node.ready.as_ref()
}

/// Cuts a node down to what the cache keeps, before it is stored: of the
/// metadata the name and uid (Events about the node carry the uid: `kubectl
/// describe node` finds them by it), the labels those [`LabelKeys::keeps`]
/// (an OpenShift worker carries some 40, nearly all for others), the
/// annotations in `annotations_read` (the backend's), and of the managed
/// fields only other managers' ownership of our labels ([`MARK_LABELS`]),
/// which no apply of ours can remove — on most nodes, nothing. The resource
/// version goes: the watch has read it before this runs, and nothing reads
/// it from the cache.
pub fn slim_node(
    node: &mut CachedNode,
    annotations_read: &[&'static str],
    labels_read: &LabelKeys,
) {
    let metadata = std::mem::take(&mut node.metadata);
    node.annotations = std::mem::take(&mut node.annotations).kept(annotations_read);
    node.metadata = ObjectMeta {
        name: metadata.name,
        uid: metadata.uid,
        labels: kept_labels(metadata.labels, labels_read),
        managed_fields: metadata
            .managed_fields
            .map(|entries| {
                entries
                    .into_iter()
                    .filter_map(foreign_mark_owner)
                    .collect::<Vec<_>>()
            })
            .filter(|kept| !kept.is_empty()),
        ..ObjectMeta::default()
    };
}

/// The labels whose keys `read` keeps; `None` when none is left.
fn kept_labels(
    labels: Option<BTreeMap<String, String>>,
    read: &LabelKeys,
) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = (labels?.into_iter())
        .filter(|(key, _)| read.keeps(key))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

impl<'de> Deserialize<'de> for CachedNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: ObjectMeta,
            status: Option<WireStatus>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct WireStatus {
            conditions: Option<Vec<NodeCondition>>,
            node_info: Option<WireNodeInfo>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct WireNodeInfo {
            #[serde(default)]
            os_image: String,
        }
        let wire = Wire::deserialize(deserializer)?;
        let (conditions, node_info) = wire
            .status
            .map(|s| (s.conditions, s.node_info))
            .unwrap_or_default();
        Ok(Self::from_parts(
            wire.metadata,
            conditions,
            node_info.map(|i| i.os_image),
        ))
    }
}

impl k8s_openapi::Resource for CachedNode {
    const API_VERSION: &'static str = Node::API_VERSION;
    const GROUP: &'static str = Node::GROUP;
    const KIND: &'static str = Node::KIND;
    const VERSION: &'static str = Node::VERSION;
    const URL_PATH_SEGMENT: &'static str = Node::URL_PATH_SEGMENT;
    type Scope = <Node as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for CachedNode {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The label keys the node cache keeps of each Node: the roles (the MCO's
/// pools and the worker role), ours, and the `extra` keys that selectors
/// name — the KataConfigs' `kataConfigPoolSelector` and the pools'
/// `nodeSelector`, read from the cluster. A selector naming a key the
/// cache did not keep would read every node as lacking it, so the
/// controller plans only once the cache was listed with every key it
/// needs ([`KeptLabels`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelKeys {
    pub extra: BTreeSet<String>,
}

/// The prefixes of the label keys always kept: roles and ours.
const KEPT_PREFIXES: [&str; 2] = ["node-role.kubernetes.io/", "katacontainers.io/"];

impl LabelKeys {
    /// Keys that are not always kept, from `keys`.
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            extra: keys
                .into_iter()
                .filter(|key| !always_kept(key))
                .map(str::to_owned)
                .collect(),
        }
    }

    pub fn keeps(&self, key: &str) -> bool {
        always_kept(key) || self.extra.contains(key)
    }

    /// Whether a cache listed with these keys holds every one of `needed`.
    pub fn covers(&self, needed: &LabelKeys) -> bool {
        needed.extra.is_subset(&self.extra)
    }
}

fn always_kept(key: &str) -> bool {
    KEPT_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) || MARK_LABELS.contains(&key)
}

/// The node cache's label keys, shared by the node watch and the
/// controller. The controller asks for the keys it needs
/// ([`KeptLabels::ask`]); a change restarts the node watch, which lists
/// every node again with the new keys, and only once that list is in the
/// cache ([`KeptLabels::listed`]) does the controller plan from it. Until
/// then it writes nothing: a pool or selector read on nodes missing its key
/// would move them between pools, a drain and a reboot each.
#[derive(Clone, Debug)]
pub struct KeptLabels {
    wanted: tokio::sync::watch::Sender<Arc<LabelKeys>>,
    /// The keys of the watch under way, then of the cache once it listed.
    started: Arc<std::sync::Mutex<Arc<LabelKeys>>>,
    listed: tokio::sync::watch::Sender<Arc<LabelKeys>>,
}

impl Default for KeptLabels {
    fn default() -> Self {
        Self {
            wanted: tokio::sync::watch::Sender::new(Arc::default()),
            started: Arc::default(),
            listed: tokio::sync::watch::Sender::new(Arc::default()),
        }
    }
}

impl KeptLabels {
    /// Asks for `needed` (a change restarts the node watch); answers
    /// whether the cache already holds every one of its keys.
    pub fn ask(&self, needed: &LabelKeys) -> bool {
        let covered = self.listed.borrow().covers(needed);
        self.wanted.send_if_modified(|wanted| {
            let changed = **wanted != *needed;
            if changed {
                *wanted = Arc::new(needed.clone());
            }
            changed
        });
        covered
    }

    /// The keys the cache holds.
    pub fn listed(&self) -> Arc<LabelKeys> {
        self.listed.borrow().clone()
    }

    /// For the node watch: the keys wanted now, and what changes them.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<LabelKeys>> {
        self.wanted.subscribe()
    }

    /// For the node watch: a list with `keys` has begun.
    pub fn list_started(&self, keys: Arc<LabelKeys>) {
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = keys;
    }

    /// For the node watch: the cache now holds the last list begun.
    pub fn list_done(&self) {
        let keys = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.listed.send_if_modified(|listed| {
            let changed = *listed != keys;
            *listed = keys;
            changed
        });
    }

    /// Yields each time the cache holds a list with new keys.
    pub fn lists(&self) -> impl futures::Stream<Item = ()> + Send + use<> {
        futures::stream::unfold(self.listed.subscribe(), |mut listed| async move {
            listed.changed().await.ok()?;
            Some(((), listed))
        })
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
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ContainerImage;
    use kube::ResourceExt;

    const READ: [&str; 1] = ["machineconfiguration.openshift.io/currentConfig"];

    #[test]
    fn finds_only_our_condition_and_slims_the_cache_copy() {
        let condition = |type_: &str| NodeCondition {
            type_: type_.into(),
            status: "True".into(),
            ..Default::default()
        };
        let mut node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": "w0", "uid": "u", "resourceVersion": "7",
                "labels": {"node-role.kubernetes.io/worker": "", "team": "a"},
                "annotations": {READ[0]: "rendered-worker-1", "k8s.ovn.org/node-subnets": "{}"},
            },
            "spec": {"providerID": "aws:///i-1", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "capacity": {"cpu": "16"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "nodeInfo": {"osImage": "Red Hat Enterprise Linux CoreOS", "kernelVersion": "5.14",
                    "architecture": "amd64", "bootID": "b", "containerRuntimeVersion": "cri-o://1.29",
                    "kubeProxyVersion": "", "kubeletVersion": "v1.29", "machineID": "m",
                    "operatingSystem": "linux", "systemUUID": "s"},
            },
        }))
        .expect("a node");
        let status = node.status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![condition("Ready"), condition(names::NODE_CONDITION)]);
        status.images = Some(vec![ContainerImage::default()]);
        let labels = node.metadata.labels.clone();
        let mut node = CachedNode::from(node);
        assert_eq!(
            kata_ready_condition(&node).map(|c| c.type_.as_str()),
            Some(names::NODE_CONDITION)
        );
        slim_node(&mut node, &READ, &LabelKeys::of(["team"]));
        assert_eq!(node.metadata.labels, labels);
        assert_eq!(node.metadata.name.as_deref(), Some("w0"));
        assert_eq!(node.metadata.uid.as_deref(), Some("u"));
        assert_eq!(node.metadata.resource_version, None);
        assert_eq!(node.metadata.annotations, None);
        assert_eq!(
            node.annotations().to_map(),
            BTreeMap::from([(READ[0].to_owned(), "rendered-worker-1".to_owned())])
        );
        assert_eq!(node.annotations().get(READ[0]), Some("rendered-worker-1"));
        assert_eq!(node.annotations().get("k8s.ovn.org/node-subnets"), None);
        assert_eq!(
            node.os_image.as_deref(),
            Some("Red Hat Enterprise Linux CoreOS")
        );
        assert!(kata_ready_condition(&node).is_some());

        let kubelets_only = CachedNode::from(Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions: Some(vec![condition("Ready")]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(kata_ready_condition(&kubelets_only).is_none());
        assert!(kata_ready_condition(&CachedNode::default()).is_none());
    }

    /// The watch's narrow decoding loses nothing the cache keeps: an
    /// OpenShift worker's Node, with our condition and another manager
    /// owning our label, decoded as [`CachedNode`] and slimmed is the same
    /// as decoded whole and slimmed.
    #[test]
    fn the_watchs_narrow_decoding_keeps_what_the_slim_copy_keeps() {
        let mut wire: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/nodes/openshift-worker.json"
        ))
        .expect("the fixture");
        wire["metadata"]["managedFields"] = json!([{
            "manager": "admin", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": { "f:metadata": { "f:labels": {
                format!("f:{}", names::KATA_RUNTIME_LABEL): {}, "f:team": {}
            } } },
        }]);
        let conditions = wire["status"]["conditions"]
            .as_array_mut()
            .expect("the fixture's conditions");
        conditions.push(json!({
            "type": names::NODE_CONDITION, "status": "False",
            "reason": "KvmUnusable", "message": "/dev/kvm: no such file",
        }));
        let text = wire.to_string();
        let whole: Node = serde_json::from_str(&text).expect("a Node");
        assert!(whole.status.as_ref().is_some_and(|s| s.images.is_some()));
        let mut whole = CachedNode::from(whole);
        let mut narrow: CachedNode = serde_json::from_str(&text).expect("a Node as read");
        slim_node(&mut whole, &READ, &LabelKeys::default());
        slim_node(&mut narrow, &READ, &LabelKeys::default());
        assert_eq!(narrow, whole);
        assert!(kata_ready_condition(&narrow).is_some());
        assert!(narrow.metadata.managed_fields.is_some());
        assert!(narrow.os_image.is_some_and(|i| !i.is_empty()));
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
        let mut node = CachedNode::default();
        node.metadata.managed_fields = Some(vec![
            entry(names::MANAGER_HEALTH, labels(&[names::KATA_RUNTIME_LABEL])),
            entry("admin", labels(&["team", names::KATA_RUNTIME_LABEL])),
            entry("kubelet", labels(&["kubernetes.io/hostname"])),
        ]);
        slim_node(&mut node, &READ, &LabelKeys::default());
        let kept = node.metadata.managed_fields.unwrap_or_default();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].manager.as_deref(), Some("admin"));
        assert_eq!(kept[0].time, None);
        let runtime_only = json!({ "f:metadata": { "f:labels": {
            format!("f:{}", names::KATA_RUNTIME_LABEL): {}
        } } });
        assert_eq!(kept[0].fields_v1, Some(FieldsV1(runtime_only)));

        let mut ours_only = CachedNode::default();
        ours_only.metadata.managed_fields = Some(vec![entry(
            names::MANAGER_HEALTH,
            labels(&[names::KATA_RUNTIME_LABEL]),
        )]);
        slim_node(&mut ours_only, &READ, &LabelKeys::default());
        assert_eq!(ours_only.metadata.managed_fields, None);
    }

    #[test]
    fn the_cache_keeps_roles_ours_and_the_keys_selectors_name() {
        let mut node = CachedNode::default();
        node.metadata.labels = Some(
            [
                names::WORKER_ROLE_LABEL,
                "node-role.kubernetes.io/infra",
                names::KATA_RUNTIME_LABEL,
                names::KATA_CAPABLE_LABEL,
                "custom-kata1",
                "kubernetes.io/hostname",
                "topology.kubernetes.io/zone",
            ]
            .map(|k| (k.to_owned(), "v".to_owned()))
            .into(),
        );
        let keys = LabelKeys::of(["custom-kata1", names::WORKER_ROLE_LABEL]);
        assert_eq!(keys.extra, BTreeSet::from(["custom-kata1".to_owned()]));
        slim_node(&mut node, &READ, &keys);
        let kept: Vec<&str> = node.labels().keys().map(String::as_str).collect();
        assert_eq!(
            kept,
            [
                "custom-kata1",
                names::KATA_CAPABLE_LABEL,
                names::KATA_RUNTIME_LABEL,
                "node-role.kubernetes.io/infra",
                names::WORKER_ROLE_LABEL,
            ]
        );
    }

    /// The controller may plan only from a cache listed with every key it
    /// needs; asking for new keys restarts the watch, and the cache holds
    /// them once that watch's list is in.
    #[tokio::test]
    async fn new_keys_are_planned_from_only_once_listed() {
        let kept = KeptLabels::default();
        let mut wanted = kept.subscribe();
        let mut lists = Box::pin(kept.lists());
        assert!(kept.ask(&LabelKeys::of([names::WORKER_ROLE_LABEL])));
        assert!(
            !wanted.has_changed().expect("the sender lives"),
            "roles are always kept"
        );

        let custom = LabelKeys::of(["custom-kata1"]);
        assert!(!kept.ask(&custom));
        assert!(
            wanted.has_changed().expect("the sender lives"),
            "the watch is restarted"
        );
        let keys = wanted.borrow_and_update().clone();
        kept.list_started(keys);
        assert!(!kept.ask(&custom), "not while the list is under way");
        assert!(
            !wanted.has_changed().expect("the sender lives"),
            "the same keys: no restart"
        );
        kept.list_done();
        lists.next().await.expect("the new list is announced");
        assert!(kept.ask(&custom));
        assert_eq!(*kept.listed(), custom);

        // Fewer keys: planning goes on from the larger cache meanwhile.
        assert!(kept.ask(&LabelKeys::default()));
        assert!(wanted.has_changed().expect("the sender lives"));
    }
}
