//! The labeller's view of the whole fleet at a scan: where each capable
//! label is headed, and the brake over the leaves that are due.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::node::CachedNode;
use kata_proto::health::v1::RuntimeProfile;
use kube::ResourceExt;
use tracing::{info, warn};

use super::Labeller;
use crate::health::marks::brake::{self, BrakeDecision, Leaving};
use crate::health::marks::eligibility::{self, Capability};
use crate::health::marks::{CurrentMarks, NodeMarks, capability_evidence, desired_marks};

/// The runtime profiles the node's agent had been told of when it probed
/// for its last report (`NodeHealth::told`).
type Told = Option<Arc<[RuntimeProfile]>>;

impl Labeller {
    /// Where `node`'s capable label is headed this scan, from its agent's
    /// reports and the dwell so far; `None` when the coordinator has not
    /// heard enough to say (the node keeps its marks). Pure: the dwell is
    /// recorded by [`Self::plan_node`].
    pub(super) fn capability(
        &self,
        name: &str,
        current: &CurrentMarks,
        now: Instant,
        wall: SystemTime,
    ) -> Option<(NodeMarks, Capability, Told)> {
        let health = self.registry.get(name);
        let desired = desired_marks(health.as_ref(), current, now, self.started, self.policy)?;
        let capability = eligibility::settle(
            current.capable,
            capability_evidence(health.as_ref(), now, self.policy),
            self.dwells.get(name).copied(),
            now,
            wall,
            &self.policy,
        );
        Some((desired, capability, health.and_then(|h| h.told)))
    }

    /// The capable nodes at this scan, as the brake counts them.
    fn leaving(&self, workers: &[Arc<CachedNode>], now: Instant, wall: SystemTime) -> Leaving {
        let mut leaving = Leaving::default();
        for node in workers {
            let current = CurrentMarks::from_labels(node.labels(), None);
            if !current.capable {
                continue;
            }
            leaving.labelled += 1;
            let name = node.name_any();
            let Some((_, capability, _)) = self.capability(&name, &current, now, wall) else {
                continue;
            };
            if capability.dwell.is_some_and(|dwell| !dwell.toward) {
                leaving.dwelling += 1;
            }
            if !capability.capable {
                leaving.due.push(name);
            }
        }
        leaving
    }

    /// Decides the brake for this scan, publishes it, and says so when it
    /// engages or releases.
    pub(super) fn brake(
        &mut self,
        workers: &[Arc<CachedNode>],
        now: Instant,
        wall: SystemTime,
    ) -> BrakeDecision {
        let policy = self.policy.brake;
        self.capable_removals.prune(now, policy.window);
        let leaving = self.leaving(workers, now, wall);
        let decision = brake::decide(leaving, &self.capable_removals, now, policy);
        self.metrics.fleet_brake.publish(&decision);
        if decision.engaged != self.brake_engaged {
            if decision.engaged {
                warn!(
                    flipping = decision.flipping,
                    fleet = decision.fleet,
                    held = ?decision.held,
                    "fleet-wide brake engaged: capable labels are kept"
                );
            } else {
                info!("fleet-wide brake released");
            }
            self.brake_engaged = decision.engaged;
        }
        decision
    }
}
