use super::*;

/// [`place`] with the targeted nodes given as flags beside them.
fn place_nodes(
    spec: &KataConfigSpec,
    nodes: &[ObservedNode],
    targeted: &[bool],
    pools: &[ObservedPool],
) -> Placement {
    let targets: Vec<NodeTarget> = nodes
        .iter()
        .zip(targeted)
        .map(|(node, targeted)| NodeTarget {
            node,
            targeted: *targeted,
        })
        .collect();
    place(spec, &targets, pools)
}
use crate::plan::fixtures::{node, worker};
use serde_json::json;

const MASTER: (&str, &str) = (names::MASTER_ROLE_LABEL, "");

fn pool(name: &str, node_selector: serde_json::Value) -> ObservedPool {
    ObservedPool::from_object(&json!({
        "metadata": {"name": name},
        "spec": {"nodeSelector": node_selector},
    }))
}

fn stock_pools() -> Vec<ObservedPool> {
    vec![
        pool(
            "master",
            json!({"matchLabels": {names::MASTER_ROLE_LABEL: ""}}),
        ),
        pool(
            "worker",
            json!({"matchLabels": {crate::names::WORKER_ROLE_LABEL: ""}}),
        ),
        pool(
            "kata-oc",
            json!({"matchLabels": {names::KATA_POOL_ROLE_LABEL: ""}}),
        ),
    ]
}

fn compact(n: usize) -> Vec<ObservedNode> {
    (0..n)
        .map(|i| worker(&format!("m{i}"), &[MASTER]))
        .collect()
}

#[test]
fn pure_workers_go_to_our_pool() {
    let nodes = [
        worker("w0", &[]),
        worker("w1", &[]),
        node("m0", &[MASTER], &[]),
    ];
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &nodes,
        &[true, false, false],
        &stock_pools(),
    );
    assert_eq!(
        placement.nodes,
        [
            NodePlacement::Install(Role::KataPool),
            NodePlacement::NotTargeted,
            NodePlacement::NotTargeted
        ]
    );
    assert!(placement.kata_pool.wanted() && !placement.master.wanted());
    assert_eq!(placement.kata_pool.extension, "sandboxed-containers");
}

#[test]
fn a_whole_compact_cluster_goes_through_the_master_pool() {
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &compact(3),
        &[true; 3],
        &stock_pools(),
    );
    assert_eq!(
        placement.nodes,
        vec![NodePlacement::Install(Role::Master); 3]
    );
    assert!(placement.master.wanted() && !placement.kata_pool.wanted());
    assert!(placement.refusals().is_empty());
}

#[test]
fn part_of_a_shared_pool_is_refused_naming_the_unselected_nodes() {
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &compact(3),
        &[true, true, false],
        &stock_pools(),
    );
    assert!(!placement.master.wanted());
    let refusal = placement.master.refusal.clone().unwrap_or_default();
    assert!(
        refusal.contains("MachineConfigPool master also holds m2"),
        "{refusal}"
    );
    assert!(matches!(
        &placement.nodes[0],
        NodePlacement::Refused { frozen: true, reason } if *reason == refusal
    ));
    assert_eq!(
        placement.nodes[2],
        NodePlacement::Held,
        "nothing is applied to the pool, so m2 is not being uninstalled"
    );
    assert_eq!(placement.refusals(), [refusal]);
}

#[test]
fn compact_plus_workers_uses_both_pools() {
    let mut nodes = compact(3);
    nodes.push(worker("w0", &[]));
    nodes.push(worker("w1", &[]));
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &nodes,
        &[true; 5],
        &stock_pools(),
    );
    assert_eq!(placement.master.targets, [0, 1, 2]);
    assert_eq!(placement.kata_pool.targets, [3, 4]);
    assert!(placement.master.wanted() && placement.kata_pool.wanted());
}

#[test]
fn a_node_in_another_custom_pool_is_reported_not_moved() {
    let mut pools = stock_pools();
    pools.push(pool(
        "infra",
        json!({"matchLabels": {"node-role.kubernetes.io/infra": ""}}),
    ));
    // An empty selector selects nothing, as in the MCO.
    pools.push(pool("everything", json!({})));
    let nodes = [
        worker("w0", &[]),
        worker("i0", &[("node-role.kubernetes.io/infra", "")]),
    ];
    let placement = place_nodes(&KataConfigSpec::default(), &nodes, &[true, true], &pools);
    assert_eq!(placement.nodes[0], NodePlacement::Install(Role::KataPool));
    let NodePlacement::Refused { reason, frozen } = &placement.nodes[1] else {
        panic!("{:?}", placement.nodes[1]);
    };
    assert!(
        reason.contains("node i0 is in MachineConfigPool infra"),
        "{reason}"
    );
    assert!(!frozen, "its kata-oc label, if any, goes");
    assert!(placement.kata_pool.wanted());
}

#[test]
fn master_wins_over_our_label_even_without_a_master_pool_seen() {
    let labelled = worker("m0", &[MASTER, (names::KATA_POOL_ROLE_LABEL, "")]);
    assert_eq!(machine_pool(&labelled, &[]), MachinePool::Master);
    assert_eq!(
        machine_pool(
            &worker("w0", &[(names::KATA_POOL_ROLE_LABEL, "")]),
            &stock_pools()
        ),
        MachinePool::Worker
    );
}

#[test]
fn the_extension_follows_the_os_and_an_unknown_os_refuses_its_pool() {
    let fcos = |name: &str| ObservedNode {
        os_image: Some("Fedora CoreOS 39.20240210.3.0".into()),
        ..worker(name, &[])
    };
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &[fcos("w0"), fcos("w1")],
        &[true, true],
        &stock_pools(),
    );
    assert_eq!(placement.kata_pool.extension, "kata-containers");
    let unknown = ObservedNode {
        os_image: Some("Ubuntu 24.04.1 LTS".into()),
        ..worker("w2", &[])
    };
    let placement = place_nodes(
        &KataConfigSpec::default(),
        &[fcos("w0"), unknown],
        &[true, true],
        &stock_pools(),
    );
    assert!(!placement.kata_pool.wanted());
    let refusal = placement.kata_pool.refusal.unwrap_or_default();
    assert!(
        refusal.contains("w2") && refusal.contains("spec.extension"),
        "{refusal}"
    );
}
