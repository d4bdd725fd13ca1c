use super::{deleted_since, finished_update};
use std::collections::HashSet;

#[test]
fn nodes_gone_from_the_cache_are_deleted() {
    let set = |names: &[&str]| {
        names
            .iter()
            .map(|n| (*n).to_owned())
            .collect::<HashSet<_>>()
    };
    assert_eq!(
        deleted_since(&set(&["a", "b", "c"]), &set(&["b", "d"])),
        ["a", "c"]
    );
    assert!(
        deleted_since(&set(&[]), &set(&["a"])).is_empty(),
        "nothing seen before, nothing deleted"
    );
    assert!(deleted_since(&set(&["a"]), &set(&["a"])).is_empty());
}

#[test]
fn only_a_change_of_configuration_is_an_update() {
    assert!(!finished_update(None, "rendered-worker-1"), "first sight");
    assert!(!finished_update(
        Some("rendered-worker-1"),
        "rendered-worker-1"
    ));
    assert!(finished_update(
        Some("rendered-worker-1"),
        "rendered-kata-oc-2"
    ));
}

mod contested {
    use std::sync::Arc;
    use std::time::Instant;

    use crate::node::CachedNode;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    use super::super::NodeWrite;
    use super::super::contest::Contests;
    use crate::health::marks::contest::ContestPolicy;
    use crate::health::marks::{NodeMarks, ReadyCondition};
    use crate::names;

    /// A node labelled runtime-ready and capable, the runtime label also
    /// owned by `admin` (an Update).
    fn node() -> Arc<CachedNode> {
        let mut node = CachedNode::default();
        node.metadata.name = Some("w1".into());
        node.metadata.labels = Some(
            [names::KATA_RUNTIME_LABEL, names::KATA_CAPABLE_LABEL]
                .map(|l| (l.to_owned(), "true".to_owned()))
                .into(),
        );
        let label = format!("f:{}", names::KATA_RUNTIME_LABEL);
        node.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("admin".into()),
            operation: Some("Update".into()),
            fields_v1: Some(FieldsV1(
                json!({ "f:metadata": { "f:labels": { label: {} } } }),
            )),
            ..Default::default()
        }]);
        Arc::new(node)
    }

    /// What the labeller plans for it once its agent reports it not ready.
    fn not_ready_write() -> NodeWrite {
        NodeWrite {
            node: node(),
            removes_runtime_label: true,
            removes_capable_label: false,
            labels: true,
            condition: true,
            marks: NodeMarks {
                capable: true,
                runtime_ready: false,
                profiles: Vec::new(),
                condition: ReadyCondition {
                    ready: false,
                    reason: "AgentNotReporting".into(),
                    message: "silent".into(),
                },
            },
            patched: Vec::new(),
            notices: Vec::new(),
        }
    }

    #[test]
    fn a_co_owned_label_comes_off_by_patch_not_apply_until_it_is_held() {
        let mut contests = Contests::new(ContestPolicy::DEFAULT);
        let now = Instant::now();
        for round in 0..ContestPolicy::DEFAULT.removals {
            let mut write = not_ready_write();
            contests.settle(&mut write, now);
            assert_eq!(write.patched, [names::KATA_RUNTIME_LABEL], "round {round}");
            assert!(!write.labels, "no futile apply: the patch removes it");
            assert!(write.removes_runtime_label);
            assert_eq!(
                write.notices.len(),
                usize::from(round == 0),
                "round {round}"
            );
            assert_eq!(write.marks.condition.reason, "AgentNotReporting");
        }
        let mut write = not_ready_write();
        contests.settle(&mut write, now);
        assert!(write.patched.is_empty() && !write.labels);
        assert!(!write.removes_runtime_label, "held: it stays");
        assert_eq!(write.marks.condition.reason, "LabelHeldByOtherManager");
        assert_eq!(write.notices.len(), 1);
        assert!(write.any(), "the condition and the Event are due");

        // The next scan: the held condition is on the node, nothing to do.
        let mut node = (*node()).clone();
        node.ready = Some(k8s_openapi::api::core::v1::NodeCondition {
            type_: names::NODE_CONDITION.into(),
            status: "False".into(),
            reason: Some(write.marks.condition.reason.clone()),
            message: Some(write.marks.condition.message.clone()),
            ..Default::default()
        });
        let mut again = not_ready_write();
        again.node = Arc::new(node);
        contests.settle(&mut again, now);
        assert!(!again.any(), "nothing written, nothing said");
    }

    #[test]
    fn a_label_only_we_own_is_left_to_the_apply() {
        let mut contests = Contests::new(ContestPolicy::DEFAULT);
        let mut write = not_ready_write();
        let mut bare = (*write.node).clone();
        bare.metadata.managed_fields = None;
        write.node = Arc::new(bare);
        contests.settle(&mut write, Instant::now());
        assert!(write.patched.is_empty() && write.notices.is_empty());
        assert!(write.labels && write.removes_runtime_label);
    }
}
