//! The snapshot a reconcile plans from: the caches, the backend's rollout,
//! and the reads only a deleting or stuck KataConfig needs.

use std::sync::Arc;

use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::info;

use super::{Context, Error};
use crate::api::KataConfig;
use crate::backend::{ObservedRollout, ReadError};
use crate::kind;
use crate::node::{CachedNode, LabelKeys, kata_ready_condition};
use crate::plan::{self, ConfigId, Observed, ObservedNode};
use crate::profiles::KataRuntimeProfile;
use crate::status::ConditionStatus;
use crate::{names, selector};

impl Context {
    pub(super) async fn observe(
        &self,
        config: &KataConfig,
    ) -> Result<Option<(Observed, ObservedRollout)>, Error> {
        // Plan only from complete caches: an empty node list would unlabel every node.
        let _ = self.nodes.wait_until_ready().await;
        self.rollout.wait_until_ready().await;
        let _ = self.runtime_classes.wait_until_ready().await;
        // ...and only from a node cache that kept every label a selector
        // reads: a node missing one would read as outside its pool.
        let needed = self.label_keys_needed();
        if !self.kept_labels.ask(&needed) {
            info!(
                keys = ?needed.extra,
                "listing the nodes again to keep the labels the selectors name; planning once done"
            );
            return Ok(None);
        }
        let deleting = config.meta().deletion_timestamp.is_some();
        let mut nodes: Vec<ObservedNode> =
            self.nodes.state().into_iter().map(observed_node).collect();
        // The cache has no order; the status lists must, or they would
        // change (and be written) on every reconcile.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let rollout = self.rollout.observe(&nodes).await?;
        let (runtime_class, other_runtime_classes) = self.observed_runtime_classes();
        // The pods are listed only when something waits on them: the
        // uninstall, or a deletion of the RuntimeClass its guard holds.
        let guarding = runtime_class
            .as_ref()
            .is_some_and(plan::runtime_class::being_deleted);
        let pods_using_kata = if deleting || guarding {
            self.pods_using_kata(config, runtime_class.is_some())
                .await?
        } else {
            self.forget_kata_pods();
            Vec::new()
        };
        let configs: Vec<ConfigId> = self
            .configs
            .state()
            .iter()
            .map(|c| ConfigId {
                name: c.name_any(),
                created: c.creation_timestamp().map(|t| t.0),
            })
            .collect();
        // Only the active KataConfig watches the rollout's clock.
        let stuck_nodes = if plan::active_config(&configs) == Some(config.name_any().as_str()) {
            self.stuck_nodes(rollout.as_ref(), &nodes).await
        } else {
            Vec::new()
        };
        let (profiles, profiles_settling) = self.settled_profiles().await?;
        let mut owned_objects = rollout.owned_objects();
        let ours = (other_runtime_classes.iter()).filter(|rc| plan::runtime_class::is_ours(rc));
        owned_objects
            .extend((runtime_class.iter().chain(ours)).map(|rc| (kind::RUNTIME_CLASS, rc.clone())));
        let observed = Observed {
            name: config.name_any(),
            configs,
            spec: config.spec.clone(),
            profiles,
            profiles_settling,
            deleting,
            has_finalizer: config.finalizers().iter().any(|f| f == names::FINALIZER),
            nodes,
            runtime_class,
            other_runtime_classes,
            pods_using_kata,
            recorded_nodes: config
                .status
                .as_ref()
                .map(|s| s.kata_nodes.clone())
                .unwrap_or_default(),
            last_write: self.last_write(&config.name_any()),
            owned_objects,
            stuck_nodes,
            fleet_brake: self
                .options
                .metrics
                .fleet_brake
                .engaged()
                .map(|brake| brake.message()),
        };
        Ok(Some((observed, rollout)))
    }

    /// The `kata` RuntimeClass (None: absent) and every other one, as the
    /// API server returns them.
    fn observed_runtime_classes(&self) -> (Option<serde_json::Value>, Vec<serde_json::Value>) {
        let kata = self
            .runtime_classes
            .get(&ObjectRef::new(names::RUNTIME_CLASS_NAME))
            .and_then(|rc| serde_json::to_value(rc.as_ref()).ok());
        let others = (self.runtime_classes.state().iter())
            .filter(|rc| rc.name_any() != names::RUNTIME_CLASS_NAME)
            .filter_map(|rc| serde_json::to_value(rc.as_ref()).ok())
            .collect();
        (kata, others)
    }

    /// The runtime profiles to plan from ([`super::profile_settle`]), and
    /// when to look again while a change settles.
    async fn settled_profiles(
        &self,
    ) -> Result<(Vec<KataRuntimeProfile>, Option<std::time::Duration>), ReadError> {
        let read = self.profiles().await?;
        Ok(self
            .profiles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .settle(read, std::time::Instant::now()))
    }

    /// The runtime profiles, in name order. None where their CRD is not
    /// installed (a cluster given only the KataConfig's): there can be none
    /// there, and the KataConfig is still reconciled.
    async fn profiles(&self) -> Result<Vec<KataRuntimeProfile>, ReadError> {
        let api = Api::<KataRuntimeProfile>::all(self.client.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let mut profiles = list.items;
                profiles.sort_by(|a, b| a.profile_name().cmp(b.profile_name()));
                Ok(profiles)
            }
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
            Err(source) => Err(ReadError {
                what: "listing the KataRuntimeProfiles".into(),
                source,
            }),
        }
    }

    /// The label keys the plan reads: every KataConfig's selector (the
    /// union, so that reconciles of different KataConfigs ask for the
    /// same) and the backend's.
    fn label_keys_needed(&self) -> LabelKeys {
        let configs = self.configs.state();
        let selectors = configs
            .iter()
            .map(|c| c.spec.kata_config_pool_selector.as_ref());
        let backend = self.rollout.node_label_keys();
        LabelKeys::of(
            selectors
                .flat_map(selector::keys)
                .chain(backend.iter().map(String::as_str)),
        )
    }
}

/// What the planner reads of a node.
pub(crate) fn observed_node(node: Arc<CachedNode>) -> ObservedNode {
    let condition = kata_ready_condition(&node);
    ObservedNode {
        name: node.name_any(),
        annotations: node.annotations().to_map(),
        has_ready_condition: condition.is_some(),
        os_image: node.os_image.clone(),
        not_ready_reason: condition
            .filter(|c| ConditionStatus::parse(&c.status) == ConditionStatus::False)
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
            }),
        labels: node.into(),
    }
}
