//! The `kata` handler arriving at run time, the way the MCO delivers it:
//! the pool the coordinator created is rendered from the MachineConfigs it
//! wrote (the MCO simulator's render), the machine-config daemon's write of
//! that rendered config is played on the real node (the simulator's own
//! daemon code, see `RealNode::apply_rendered_config`), and CRI-O reloads.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kata_coordinator::api::KataConfig;
use kata_coordinator::mco::names as mco;
use kata_proto::contract;
use kata_tests::http::metric_value;
use kata_tests::mco_simulator::render::{ClusterOs, Rendered, files_of};
use kata_tests::mco_simulator::render_from_api;
use kata_tests::real_node::RealNode;
use kube::api::{Api, ListParams};

use super::{SETTLE, agent_metrics, operator};

/// Renders the coordinator's pool once its MachineConfig holds the drop-in,
/// writes it onto the node, reloads CRI-O; prints what went where.
pub async fn kata_drop_in_delivered(node: &mut RealNode, client: &kube::Client) {
    let rendered = rendered_with_drop_in(client).await;
    let (written, stand_ins) = node.apply_rendered_config(&rendered.spec).unwrap();
    println!(
        "the machine-config daemon's write of {} (from {}), then SIGHUP to CRI-O:",
        rendered.name,
        rendered.sources.join(", ")
    );
    for path in &written {
        println!("  wrote {}", path.display());
    }
    for stand_in in &stand_ins {
        println!(
            "  stand-in at {} (the drop-in's {}; removed at teardown)",
            stand_in.path.display(),
            stand_in.named_by
        );
    }
    let drop_in = node.crio_config_dir().join(
        std::path::Path::new(contract::DROP_IN_PATH)
            .file_name()
            .unwrap(),
    );
    assert!(written.contains(&drop_in), "{written:?}");
}

/// The coordinator's pool rendered, once it exists and carries the drop-in
/// at the contract's path.
async fn rendered_with_drop_in(client: &kube::Client) -> Rendered {
    let deadline = Instant::now() + SETTLE;
    loop {
        let rendered = render_from_api(client, mco::POOL_NAME, ClusterOs::default())
            .await
            .unwrap();
        if let Some(rendered) = rendered {
            let files = files_of(&rendered.spec).unwrap();
            if files.iter().any(|f| f.path == contract::DROP_IN_PATH) {
                return rendered;
            }
        }
        if Instant::now() > deadline {
            let configs = Api::<KataConfig>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|list| list.items.into_iter().map(|c| c.status).collect::<Vec<_>>());
            panic!(
                "the coordinator's pool {} never rendered with {}; the KataConfig's status: {configs:?}",
                mco::POOL_NAME,
                contract::DROP_IN_PATH
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the agent finds the drop-in and the handler served (its
/// probes every 10 s), and has checked in since the delivery (a changed
/// probe is reported at once); its metrics page then.
pub async fn agent_sees_the_handler(node: &RealNode, agent: &Pod, reports_before: f64) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = agent_metrics(agent).await;
        let probes = operator::probe_results(&page, None);
        let ok = |name: &str| probes.iter().any(|(p, s, _)| p == name && s == "ok");
        let reports = metric_value(&page, "kata_node_agent_reports_sent_total").unwrap_or(0.0);
        if ok("crio-drop-in") && ok("cri-handler") && reports > reports_before {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the kata handler:\n{page}\n--- crio log (tail) ---\n{}",
            node.log_tail("crio", 30)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
