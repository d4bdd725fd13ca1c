//! The status's node lists, from each node's phase, and the capped lists
//! the KataConfig's status holds: pure.

use super::NodeTarget;
use super::rollout::{NodeAssessment, NodePhase};
use crate::api::{FailedNode, KataNodesStatus, MAX_LISTED_NODES, OmittedNodes};

/// The most bytes of a node's error the status keeps. The agents' reasons
/// (`Reason: message`, 64 + 2 + 1,024 bytes at most) always fit; the Machine
/// Config Operator's reasons are not bounded, and a hundred long ones in a
/// list would weigh on the status's size limit.
pub const MAX_ERROR_BYTES: usize = 1_100;

/// `error` cut to [`MAX_ERROR_BYTES`] at a character boundary.
fn bounded_error(error: &str) -> String {
    error[..error.floor_char_boundary(MAX_ERROR_BYTES)].to_owned()
}

fn failed_node(name: String, error: &str) -> FailedNode {
    FailedNode {
        name,
        error: bounded_error(error),
    }
}

/// The node lists and counts; `targets` is the number of selected nodes.
pub fn node_status(phases: &[NodeAssessment], targets: usize) -> KataNodesStatus {
    let mut status = KataNodesStatus {
        node_count: i32::try_from(targets).unwrap_or(i32::MAX),
        ..Default::default()
    };
    for NodeAssessment { name, phase } in phases {
        let name = name.clone();
        match phase {
            NodePhase::Installed => status.installed.push(name),
            NodePhase::Installing => status.installing.push(name),
            NodePhase::WaitingToInstall => status.waiting_to_install.push(name),
            NodePhase::FailedToInstall(error) | NodePhase::Refused(error) => {
                status
                    .failure_reasons
                    .push(failed_node(name.clone(), error));
                status.failed_to_install.push(name);
            }
            NodePhase::Uninstalling => status.uninstalling.push(name),
            NodePhase::WaitingToUninstall => status.waiting_to_uninstall.push(name),
            NodePhase::FailedToUninstall(error) => {
                status
                    .failure_reasons
                    .push(failed_node(name.clone(), error));
                status.failed_to_uninstall.push(name);
            }
            NodePhase::Untouched => {}
        }
    }
    status.ready_node_count = i32::try_from(status.installed.len()).unwrap_or(i32::MAX);
    status
}

/// Targeted nodes whose agent reports the runtime not ready, with why.
pub fn not_runtime_ready(nodes: &[NodeTarget<'_>]) -> Vec<FailedNode> {
    nodes
        .iter()
        .filter(|t| t.targeted)
        .map(|t| t.node)
        .filter_map(|n| {
            n.not_ready_reason
                .as_deref()
                .map(|reason| failed_node(n.name.clone(), reason))
        })
        .collect()
}

/// An entry of a node list.
trait Named {
    fn node_name(&self) -> &str;
}

impl Named for String {
    fn node_name(&self) -> &str {
        self
    }
}

impl Named for FailedNode {
    fn node_name(&self) -> &str {
        &self.name
    }
}

/// A list's first [`MAX_LISTED_NODES`] entries by node name, and how many
/// it leaves out (None: none). Sorted here rather than trusted to be, so
/// that the written list is always a prefix of the sorted full one: what
/// [`super::events`] relies on to tell, from a written list alone, which
/// nodes it cannot have held.
fn capped<T: Named + Clone>(list: &[T]) -> (Vec<T>, Option<i32>) {
    let mut sorted: Vec<&T> = list.iter().collect();
    sorted.sort_by(|a, b| a.node_name().cmp(b.node_name()));
    let omitted = list.len().saturating_sub(MAX_LISTED_NODES);
    let kept = sorted.into_iter().take(MAX_LISTED_NODES).cloned().collect();
    let omitted = (omitted > 0).then(|| i32::try_from(omitted).unwrap_or(i32::MAX));
    (kept, omitted)
}

/// The node lists as the KataConfig's status holds them: each capped by
/// [`capped`], the counts of what each leaves out in `omitted`, and
/// `nodeCount` and `readyNodeCount` exact. `full` is what the planner
/// works from (conditions, metrics and Events read every node).
pub fn written(full: &KataNodesStatus) -> KataNodesStatus {
    let (installed, installed_omitted) = capped(&full.installed);
    let (installing, installing_omitted) = capped(&full.installing);
    let (waiting_to_install, waiting_to_install_omitted) = capped(&full.waiting_to_install);
    let (failed_to_install, failed_to_install_omitted) = capped(&full.failed_to_install);
    let (uninstalling, uninstalling_omitted) = capped(&full.uninstalling);
    let (waiting_to_uninstall, waiting_to_uninstall_omitted) = capped(&full.waiting_to_uninstall);
    let (failed_to_uninstall, failed_to_uninstall_omitted) = capped(&full.failed_to_uninstall);
    let (not_runtime_ready, not_runtime_ready_omitted) = capped(&full.not_runtime_ready);
    let omitted = OmittedNodes {
        installed: installed_omitted,
        installing: installing_omitted,
        waiting_to_install: waiting_to_install_omitted,
        failed_to_install: failed_to_install_omitted,
        uninstalling: uninstalling_omitted,
        waiting_to_uninstall: waiting_to_uninstall_omitted,
        failed_to_uninstall: failed_to_uninstall_omitted,
        not_runtime_ready: not_runtime_ready_omitted,
    };
    // One reason per failed node the lists hold, so the reasons are capped
    // with them.
    let mut failure_reasons: Vec<FailedNode> = full
        .failure_reasons
        .iter()
        .filter(|f| failed_to_install.contains(&f.name) || failed_to_uninstall.contains(&f.name))
        .cloned()
        .collect();
    failure_reasons.sort_by(|a, b| a.name.cmp(&b.name));
    KataNodesStatus {
        node_count: full.node_count,
        ready_node_count: full.ready_node_count,
        installed,
        installing,
        waiting_to_install,
        uninstalling,
        waiting_to_uninstall,
        failure_reasons,
        failed_to_install,
        failed_to_uninstall,
        not_runtime_ready,
        omitted: (omitted != OmittedNodes::default()).then_some(omitted),
    }
}

/// Whether no node is still on its way off the configuration.
pub fn settled(nodes: &KataNodesStatus) -> bool {
    nodes.uninstalling.is_empty()
        && nodes.waiting_to_uninstall.is_empty()
        && nodes.failed_to_uninstall.is_empty()
}

/// Why `node` failed, as `failureReasons` says (empty when it does not).
pub fn failure_reason<'a>(nodes: &'a KataNodesStatus, node: &str) -> &'a str {
    nodes
        .failure_reasons
        .iter()
        .find(|f| f.name == node)
        .map_or("", |f| f.error.as_str())
}

/// Every node whose install or uninstall failed, with why: those of
/// `failedToInstall`, then those of `failedToUninstall`.
pub fn failed(nodes: &KataNodesStatus) -> Vec<FailedNode> {
    nodes
        .failed_to_install
        .iter()
        .chain(&nodes.failed_to_uninstall)
        .map(|name| FailedNode {
            name: name.clone(),
            error: failure_reason(nodes, name).to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::worker;

    /// Each node with its phase, in order.
    fn assessed(
        nodes: &[crate::plan::ObservedNode],
        phases: impl IntoIterator<Item = NodePhase>,
    ) -> Vec<NodeAssessment> {
        nodes
            .iter()
            .zip(phases)
            .map(|(node, phase)| NodeAssessment {
                name: node.name.clone(),
                phase,
            })
            .collect()
    }

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
        let status = node_status(&assessed(&nodes, phases), 2);
        assert_eq!(status.installed, ["a"]);
        assert_eq!(status.failed_to_install, ["b"]);
        assert_eq!(failure_reason(&status, "b"), "disk");
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
        let nodes = [sick, elsewhere, worker("fine", &[])];
        let targets: Vec<NodeTarget> = nodes
            .iter()
            .zip([true, false, true])
            .map(|(node, targeted)| NodeTarget { node, targeted })
            .collect();
        let listed = not_runtime_ready(&targets);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "sick");
    }

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("w{i:04}")).collect()
    }

    #[test]
    fn written_lists_hold_the_first_names_and_count_the_rest() {
        let many = MAX_LISTED_NODES + 20;
        let mut installed = names(many);
        // Out of order on purpose: the written list is sorted regardless.
        installed.reverse();
        let failed: Vec<FailedNode> = names(many)
            .into_iter()
            .map(|name| FailedNode {
                name,
                error: "e".into(),
            })
            .rev()
            .collect();
        let full = KataNodesStatus {
            node_count: 7_000,
            ready_node_count: 6_000,
            installed,
            installing: names(3),
            not_runtime_ready: failed.clone(),
            failed_to_uninstall: failed.iter().map(|f| f.name.clone()).collect(),
            failure_reasons: failed,
            ..Default::default()
        };
        let written = written(&full);
        assert_eq!(written.installed, names(MAX_LISTED_NODES));
        assert_eq!(written.installing, names(3), "a short list is whole");
        assert_eq!(written.not_runtime_ready.len(), MAX_LISTED_NODES);
        assert_eq!(written.failed_to_uninstall[0], "w0000");
        assert_eq!(
            written.failed_to_uninstall.last().map(String::as_str),
            Some(format!("w{:04}", MAX_LISTED_NODES - 1).as_str())
        );
        let reasons: Vec<&str> = written
            .failure_reasons
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            reasons, written.failed_to_uninstall,
            "one reason for each listed failed node, in the list's order"
        );
        assert_eq!(
            written.omitted,
            Some(OmittedNodes {
                installed: Some(20),
                failed_to_uninstall: Some(20),
                not_runtime_ready: Some(20),
                ..Default::default()
            })
        );
        assert_eq!(
            (written.node_count, written.ready_node_count),
            (7_000, 6_000),
            "the counts stay exact"
        );
        let json = serde_json::to_value(&written).unwrap_or_default();
        assert_eq!(json["omitted"]["installed"], 20);
        assert!(json["omitted"].get("installing").is_none());
    }

    #[test]
    fn complete_lists_are_written_unchanged_without_omitted() {
        let full = KataNodesStatus {
            installed: names(MAX_LISTED_NODES),
            waiting_to_install: names(2),
            ..Default::default()
        };
        assert_eq!(written(&full), full);
        let json = serde_json::to_value(written(&full)).unwrap_or_default();
        assert!(json.get("omitted").is_none(), "{json}");
    }

    #[test]
    fn long_errors_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_BYTES);
        let nodes = [worker("a", &[])];
        let status = node_status(
            &assessed(&nodes, [NodePhase::FailedToInstall(long.clone())]),
            1,
        );
        let error = failure_reason(&status, "a");
        assert!(error.len() <= MAX_ERROR_BYTES && error.len() >= MAX_ERROR_BYTES - 1);
        assert!(long.starts_with(error));
        let short = "Reason: message";
        let status = node_status(
            &assessed(&nodes, [NodePhase::FailedToUninstall(short.into())]),
            0,
        );
        assert_eq!(failure_reason(&status, "a"), short);
    }

    #[test]
    fn the_crd_documents_the_cap_it_applies() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::api::KataConfig::crd()).unwrap_or_default();
        let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"];
        let described = |field: &serde_json::Value| {
            field["description"].as_str().unwrap_or_default().to_owned()
        };
        let kata_nodes = &status["kataNodes"];
        assert!(
            described(kata_nodes).contains(&format!("at most {MAX_LISTED_NODES} nodes")),
            "{}",
            described(kata_nodes)
        );
        assert!(
            described(&kata_nodes["properties"]["omitted"])
                .contains(&format!("first {MAX_LISTED_NODES} entries"))
        );
    }
}
