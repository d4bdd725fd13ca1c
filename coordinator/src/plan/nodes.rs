//! The status's node lists, from each node's phase: pure.

use super::ObservedNode;
use super::rollout::NodePhase;
use crate::api::{FailedNode, KataNodesStatus};

/// The node lists and counts; `phases` is parallel to `nodes`, `targets`
/// the number of selected nodes.
pub fn node_status(
    nodes: &[ObservedNode],
    phases: &[NodePhase],
    targets: usize,
) -> KataNodesStatus {
    let mut status = KataNodesStatus {
        node_count: i32::try_from(targets).unwrap_or(i32::MAX),
        ..Default::default()
    };
    for (node, phase) in nodes.iter().zip(phases) {
        let name = node.name.clone();
        match phase {
            NodePhase::Installed => status.installed.push(name),
            NodePhase::Installing => status.installing.push(name),
            NodePhase::WaitingToInstall => status.waiting_to_install.push(name),
            NodePhase::FailedToInstall(error) | NodePhase::Refused(error) => {
                status.failed_to_install.push(FailedNode {
                    name,
                    error: error.clone(),
                })
            }
            NodePhase::Uninstalling => status.uninstalling.push(name),
            NodePhase::WaitingToUninstall => status.waiting_to_uninstall.push(name),
            NodePhase::FailedToUninstall(error) => status.failed_to_uninstall.push(FailedNode {
                name,
                error: error.clone(),
            }),
            NodePhase::Untouched => {}
        }
    }
    status.ready_node_count = i32::try_from(status.installed.len()).unwrap_or(i32::MAX);
    status
}

/// Targeted nodes whose agent reports the runtime not ready, with why.
pub fn not_runtime_ready(nodes: &[ObservedNode], targeted: &[bool]) -> Vec<FailedNode> {
    nodes
        .iter()
        .zip(targeted)
        .filter(|(_, targeted)| **targeted)
        .filter_map(|(n, _)| {
            n.not_ready_reason.as_ref().map(|reason| FailedNode {
                name: n.name.clone(),
                error: reason.clone(),
            })
        })
        .collect()
}

/// Whether no node is still on its way off the configuration.
pub fn settled(nodes: &KataNodesStatus) -> bool {
    nodes.uninstalling.is_empty()
        && nodes.waiting_to_uninstall.is_empty()
        && nodes.failed_to_uninstall.is_empty()
}

/// Every node whose install or uninstall failed.
pub fn failed(nodes: &KataNodesStatus) -> Vec<FailedNode> {
    [
        nodes.failed_to_install.as_slice(),
        nodes.failed_to_uninstall.as_slice(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::worker;

    #[test]
    fn phases_land_in_their_lists_and_counts() {
        let nodes = [
            worker("a", &[]),
            worker("b", &[]),
            worker("c", &[]),
            worker("d", &[]),
        ];
        let phases = [
            NodePhase::Installed,
            NodePhase::FailedToInstall("disk".into()),
            NodePhase::Untouched,
            NodePhase::WaitingToUninstall,
        ];
        let status = node_status(&nodes, &phases, 2);
        assert_eq!(status.installed, ["a"]);
        assert_eq!(status.failed_to_install[0].name, "b");
        assert_eq!(status.waiting_to_uninstall, ["d"]);
        assert_eq!((status.node_count, status.ready_node_count), (2, 1));
        assert!(!settled(&status));
        assert_eq!(failed(&status).len(), 1);
    }

    #[test]
    fn only_targeted_unready_nodes_are_listed() {
        let mut sick = worker("sick", &[]);
        sick.not_ready_reason = Some("KvmDeviceMissing: kvm: none".into());
        let mut elsewhere = worker("elsewhere", &[]);
        elsewhere.not_ready_reason = Some("x".into());
        let listed = not_runtime_ready(
            &[sick, elsewhere, worker("fine", &[])],
            &[true, false, true],
        );
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "sick");
    }
}
