//! Nodes updating for too long: the rollout's clock, what holds their
//! drain (their pods' PodDisruptionBudgets, read only then), and one Event
//! per stuck episode.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::Context;
use crate::api::KataConfig;
use crate::plan::rollout::HostConfigRollout;
use crate::plan::stuck::{DrainBlocker, StuckNode};
use crate::plan::{self, ObservedNode};

/// How often what holds a stuck node's drain is read again while it stays stuck.
const BLOCKERS_REFRESH: Duration = Duration::from_secs(30);

impl Context {
    /// Nodes updating longer than [`Options::stuck_after`], with what holds
    /// their drain: the pods on such a node and their namespaces'
    /// budgets are read only then, and again at most every
    /// [`BLOCKERS_REFRESH`].
    pub(super) async fn stuck_nodes(
        &self,
        rollout: &(dyn HostConfigRollout + Send + Sync),
        nodes: &[ObservedNode],
    ) -> Vec<StuckNode> {
        let now = std::time::Instant::now();
        let threshold = self.options.stuck_after;
        let lookups: Vec<String> = {
            let mut clock = self.working.lock().unwrap_or_else(|p| p.into_inner());
            clock.track(
                rollout
                    .updating_nodes(nodes)
                    .into_iter()
                    .map(|n| (n.name, n.toward)),
                now,
            );
            clock
                .stuck(now, threshold)
                .into_iter()
                .filter(|s| clock.needs_lookup(&s.name, now, BLOCKERS_REFRESH))
                .map(|s| s.name)
                .collect()
        };
        for node in lookups {
            match self.drain_blockers(&node).await {
                Ok(blockers) => self
                    .working
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record_blockers(&node, blockers, now),
                // What holds a drain is an explanation, not a step: not
                // being able to read it is no reason to fail the reconcile.
                Err(error) => warn!(%node, %error, "cannot read what holds the node's drain"),
            }
        }
        self.working
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stuck(now, threshold)
    }

    /// The pods on `node` whose PodDisruptionBudget allows no disruption:
    /// one list of the node's pods, one list of budgets per namespace they
    /// are in.
    pub(super) async fn drain_blockers(
        &self,
        node: &str,
    ) -> Result<Vec<DrainBlocker>, kube::Error> {
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
            .await?
            .items;
        let namespaces: std::collections::BTreeSet<String> =
            pods.iter().filter_map(|p| p.namespace()).collect();
        let mut budgets = Vec::new();
        for namespace in namespaces {
            budgets.extend(
                Api::<PodDisruptionBudget>::namespaced(self.client.clone(), &namespace)
                    .list(&ListParams::default())
                    .await?
                    .items,
            );
        }
        Ok(plan::stuck::drain_blockers(&pods, &budgets))
    }

    /// One Warning Event per stuck episode of a node (the clock remembers
    /// which were announced), about the node, naming the KataConfig.
    pub(super) async fn announce_stuck(&self, config: &KataConfig, stuck: &[StuckNode]) {
        for node in stuck {
            let first = self
                .working
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .announce(&node.name);
            if !first {
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: plan::stuck::REASON_NODE_ROLLOUT_STUCK.into(),
                note: Some(node.message()),
                action: "Install".into(),
                secondary: Some(config.object_ref(&())),
            };
            self.applier
                .publish(event, &self.node_reference(&node.name))
                .await;
        }
    }
}
