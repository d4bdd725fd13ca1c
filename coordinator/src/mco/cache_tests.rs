//! The node cache keeps what this backend reads of a Node: every reading
//! of the planner gives the same answer on the slim copy as on the whole
//! Node.

use super::names::{NODE_ANNOTATIONS, REASON, STATE, STATE_DEGRADED};
use super::observe::{current_config, install_phase, runs_kata_pool_config, uninstall_phase};
use crate::controller::observed_node;
use crate::names;
use crate::node::{CachedNode, LabelKeys, kata_ready_condition, slim_node};
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::NodeCondition;

/// An OpenShift worker's Node (what the scale benchmarks create).
const OPENSHIFT_WORKER: &str = include_str!("../../../tests/fixtures/nodes/openshift-worker.json");

/// Every read of the planner and the labeller gives the same answer on
/// the cache's slim copy as on the Node the API server sent.
#[test]
fn a_slim_cache_copy_reads_as_the_whole_node() {
    let mut full: Node = serde_json::from_str(OPENSHIFT_WORKER).expect("the fixture");
    let annotations = full
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(STATE.into(), STATE_DEGRADED.into());
    annotations.insert(REASON.into(), "failed to drain".into());
    full.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(names::KATA_RUNTIME_LABEL.into(), "true".into());
    full.status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(NodeCondition {
            type_: names::NODE_CONDITION.into(),
            status: "False".into(),
            reason: Some("KvmUnusable".into()),
            message: Some("/dev/kvm: no such file".into()),
            ..Default::default()
        });
    let full = CachedNode::from(full);
    let mut slim = full.clone();
    slim_node(&mut slim, &NODE_ANNOTATIONS, &LabelKeys::default());
    let (whole, cut) = (
        observed_node(full.clone().into()),
        observed_node(slim.clone().into()),
    );
    assert!(cut.annotations.len() < whole.annotations.len());
    // Of the labels, those no selector names are gone (the cache keeps
    // more when a selector names them); the rest read the same.
    let read: BTreeMap<&String, &String> = whole
        .labels
        .iter()
        .filter(|(key, _)| LabelKeys::default().keeps(key))
        .collect();
    assert!(read.len() < whole.labels.len() && read.len() > 1);
    assert_eq!(cut.labels.iter().collect::<BTreeMap<_, _>>(), read);
    assert_eq!(
        (
            &cut.name,
            cut.has_ready_condition,
            &cut.os_image,
            &cut.not_ready_reason
        ),
        (
            &whole.name,
            whole.has_ready_condition,
            &whole.os_image,
            &whole.not_ready_reason
        )
    );
    assert!(cut.not_ready_reason.is_some() && cut.os_image.is_some());
    for target in [None, Some("rendered-kata-oc-1")] {
        assert_eq!(install_phase(&cut, target), install_phase(&whole, target));
    }
    for runs_kata in [false, true] {
        assert_eq!(
            uninstall_phase(&cut, runs_kata),
            uninstall_phase(&whole, runs_kata)
        );
    }
    assert_eq!(runs_kata_pool_config(&cut), runs_kata_pool_config(&whole));
    assert_eq!(
        current_config(slim.annotations()),
        current_config(full.annotations())
    );
    assert!(current_config(slim.annotations()).is_some());
    assert_eq!(kata_ready_condition(&slim), kata_ready_condition(&full));
}
