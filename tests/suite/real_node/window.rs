//! A window over the real Node while its kubelet keeps writing: what the
//! kubelet changed (its Ready heartbeat, its Lease, the Node's
//! resourceVersion) and what became of the coordinator's condition.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition};
use kata_coordinator::names;
use kata_tests::real_node::NODE_NAME;
use kube::Client;
use kube::api::Api;

/// The feature's figure: two minutes of the kubelet's heartbeats, twelve
/// status writes at [`kata_tests::real_node::STATUS_REPORT_FREQUENCY`]. Most
/// of this test's time; shorten it here if the suite's time matters more.
pub const WINDOW: Duration = Duration::from_secs(120);
/// Several reads per kubelet write, so none goes unseen.
const POLL: Duration = Duration::from_secs(2);

/// What the window saw, each value once.
#[derive(Debug, Default)]
pub struct Seen {
    pub resource_versions: BTreeSet<String>,
    /// The kubelet's Ready condition's lastHeartbeatTime.
    pub ready_heartbeats: BTreeSet<String>,
    /// The node Lease's renewTime.
    pub lease_renewals: BTreeSet<String>,
    /// Every distinct `KataRuntimeReady` condition (None: absent).
    pub kata_conditions: Vec<Option<NodeCondition>>,
}

impl Seen {
    fn record(&mut self, node: &Node, lease: Option<&Lease>) {
        if let Some(version) = &node.metadata.resource_version {
            self.resource_versions.insert(version.clone());
        }
        let find = |type_: &str| condition(node, type_);
        if let Some(heartbeat) = find("Ready").and_then(|c| c.last_heartbeat_time) {
            self.ready_heartbeats.insert(heartbeat.0.to_string());
        }
        if let Some(renewed) = lease
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.renew_time.as_ref())
        {
            self.lease_renewals.insert(renewed.0.to_string());
        }
        let kata = find(names::NODE_CONDITION);
        if !self.kata_conditions.contains(&kata) {
            self.kata_conditions.push(kata);
        }
    }
}

/// The Node's condition of `type_`, if it has one.
pub fn condition(node: &Node, type_: &str) -> Option<NodeCondition> {
    let conditions = node.status.as_ref().and_then(|s| s.conditions.as_deref());
    let found = conditions
        .unwrap_or_default()
        .iter()
        .find(|c| c.type_ == type_);
    found.cloned()
}

/// Reads the Node and its Lease every [`POLL`] for [`WINDOW`].
pub async fn watch_node(client: &Client) -> Result<Seen, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let mut seen = Seen::default();
    let end = tokio::time::Instant::now() + WINDOW;
    while tokio::time::Instant::now() < end {
        let node = nodes.get(NODE_NAME).await?;
        let lease = leases.get_opt(NODE_NAME).await?;
        seen.record(&node, lease.as_ref());
        tokio::time::sleep(POLL).await;
    }
    Ok(seen)
}
