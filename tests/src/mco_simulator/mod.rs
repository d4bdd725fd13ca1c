//! A stand-in for the OpenShift Machine Config Operator, for tests against
//! the local control plane (which has no MCO).
//!
//! Like the MCO it keeps the stock `master` and `worker` pools, renders each
//! pool's MachineConfigs into a `rendered-<pool>-<hash>` config, rolls nodes
//! to it `maxUnavailable` at a time through the node annotations (the node
//! controller writes `desiredConfig`; the daemon then sets `state` Working →
//! Done and `currentConfig`), writes the pool status, turns
//! ContainerRuntimeConfigs into generated MachineConfigs, and plays the
//! machine-config daemon on each node's fake host root. Each rule follows
//! the real MCO (../shared/UPSTREAM-FACTS.md); the comment at each names the
//! upstream file it mirrors. It counts the rendered configs each node is
//! sent to ([`McoSimulator::rollouts`]): every one is a drain and a reboot.
//!
//! The decisions are pure functions ([`render`], [`rollout`], [`crio`]); this
//! module only lists the objects every `resync_interval` and writes what
//! changed. Listing afresh each time, rather than watching into caches, means
//! a decision never rests on a cache that has not yet seen our last write.

pub mod crio;
pub mod host;
pub mod model;
pub mod render;
pub mod rollout;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::Error;
use crate::api_requests::Requests;
use host::SimulatedNodeRoot;
use model::{
    API_VERSION, CONTROLLER_VERSION, CURRENT_CONFIG, DESIRED_CONFIG, GENERATED_BY, MachineConfig,
    MachineConfigSpec, NodeView, Pool, PoolConfiguration, REASON, ROLE_LABEL, RuntimeConfig, STATE,
    STATE_DEGRADED, STATE_DONE, STATE_UNRECONCILABLE, STATE_WORKING,
};
pub use render::ClusterOs;
use rollout::{Fault, NodeStep, RolloutInput, StatusInput};

const FIELD_MANAGER: &str = "machine-config-operator-simulator";

#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    /// How long a node's drain and reboot take, from `Working` to `Done`.
    pub update_delay: Duration,
    /// How often the simulator looks at the cluster.
    pub resync_interval: Duration,
}

impl Default for SimulatorOptions {
    fn default() -> Self {
        SimulatorOptions {
            update_delay: Duration::from_millis(300),
            resync_interval: Duration::from_millis(100),
        }
    }
}

/// A failure to inject into a node's next update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFault {
    /// The machine-config daemon fails: state `Degraded` with this reason
    /// (it retries once the fault is cleared).
    Degraded { reason: String },
    /// The daemon cannot apply the change at all: state `Unreconcilable`.
    Unreconcilable { reason: String },
}

#[derive(Default)]
struct Shared {
    roots: Mutex<BTreeMap<String, SimulatedNodeRoot>>,
    /// Node → how its updates fail.
    faults: Mutex<BTreeMap<String, Fault>>,
    /// ContainerRuntimeConfig → the error its controller reports.
    runtime_config_faults: Mutex<BTreeMap<String, String>>,
    /// Node → the rendered configs the node controller sent it to, in order.
    sent_to: Mutex<BTreeMap<String, Vec<String>>>,
    /// How long the container-runtime-config controller takes to get to a
    /// ContainerRuntimeConfig change.
    runtime_config_delay: Mutex<Duration>,
    /// The requests the simulator made, as the API server counts them.
    requests: Mutex<Requests>,
}

/// The running simulator; stops when dropped.
pub struct McoSimulator {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    os: ClusterOs,
}

impl McoSimulator {
    /// Creates the stock pools and base MachineConfigs (the OpenShift CRDs
    /// must be installed) and starts the simulation loop.
    pub async fn start(
        client: kube::Client,
        options: SimulatorOptions,
    ) -> Result<McoSimulator, Error> {
        McoSimulator::start_on(client, options, ClusterOs::default()).await
    }

    /// [`McoSimulator::start`] for a cluster whose nodes run `os`: it decides
    /// which extension names the render accepts.
    pub async fn start_on(
        client: kube::Client,
        options: SimulatorOptions,
        os: ClusterOs,
    ) -> Result<McoSimulator, Error> {
        ensure_stock_objects(&client).await?;
        let shared = Arc::new(Shared::default());
        let mut simulation = Simulation::new(client, options.clone(), shared.clone(), os);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(options.resync_interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = simulation.sync().await {
                    warn!(%error, "MCO simulator sync failed; retrying");
                }
            }
        });
        Ok(McoSimulator { shared, task, os })
    }

    /// From now on, the node's config is applied under `root`; the config the
    /// node already runs is applied at once.
    pub fn register_host_root(&self, node: &str, root: impl Into<PathBuf>) {
        let root = SimulatedNodeRoot::new(root.into()).with_os(self.os);
        lock(&self.shared.roots).insert(node.to_owned(), root);
    }

    pub fn set_fault(&self, node: &str, fault: NodeFault) {
        let fault = match fault {
            NodeFault::Degraded { reason } => Fault {
                state: STATE_DEGRADED,
                reason,
            },
            NodeFault::Unreconcilable { reason } => Fault {
                state: STATE_UNRECONCILABLE,
                reason,
            },
        };
        lock(&self.shared.faults).insert(node.to_owned(), fault);
    }

    pub fn clear_fault(&self, node: &str) {
        lock(&self.shared.faults).remove(node);
    }

    /// From now on the container-runtime-config controller fails the
    /// ContainerRuntimeConfig `name` with `error` (reported as `Error: …`).
    pub fn fail_runtime_config(&self, name: &str, error: &str) {
        lock(&self.shared.runtime_config_faults).insert(name.to_owned(), error.to_owned());
    }

    pub fn clear_runtime_config_fault(&self, name: &str) {
        lock(&self.shared.runtime_config_faults).remove(name);
    }

    /// From now on the container-runtime-config controller gets to each
    /// ContainerRuntimeConfig change (a new generation, or a deletion) only
    /// `delay` after it first saw it, as a busy controller behind a long work
    /// queue does. The render waits for it meanwhile (a pending generation
    /// blocks it), so a caller that moves nodes before the generated config
    /// is rendered sends them through two rendered configs.
    pub fn slow_runtime_config_controller(&self, delay: Duration) {
        *lock(&self.shared.runtime_config_delay) = delay;
    }

    /// How many distinct rendered configs the node controller has sent the
    /// node to since the simulator started: each is a drain and a reboot.
    /// The config a new node is installed with does not count.
    pub fn rollouts(&self, node: &str) -> usize {
        lock(&self.shared.sent_to).get(node).map_or(0, Vec::len)
    }

    /// Those rendered configs, in order.
    pub fn rendered_configs_sent(&self, node: &str) -> Vec<String> {
        lock(&self.shared.sent_to)
            .get(node)
            .cloned()
            .unwrap_or_default()
    }

    /// The API requests the simulator made so far, keyed as the API
    /// server's `apiserver_request_total` is, so that a measurement can tell
    /// them from the coordinator's.
    pub fn requests(&self) -> Requests {
        lock(&self.shared.requests).clone()
    }

    pub async fn stop(mut self) {
        self.task.abort();
        // Waiting for the aborted task makes sure no write lands after `stop`.
        let _ = (&mut self.task).await;
    }
}

impl Drop for McoSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves the maps consistent: every write is one insert.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn ensure_stock_objects(client: &kube::Client) -> Result<(), Error> {
    let pools = Api::<DynamicObject>::all_with(client.clone(), &model::pool_resource());
    let configs = Api::<DynamicObject>::all_with(client.clone(), &model::machine_config_resource());
    for (role, node_label) in [
        ("master", "node-role.kubernetes.io/master"),
        ("worker", "node-role.kubernetes.io/worker"),
    ] {
        let pool = json!({
            "apiVersion": API_VERSION, "kind": "MachineConfigPool",
            "metadata": { "name": role, "labels": {
                "machineconfiguration.openshift.io/mco-built-in": "",
                format!("pools.operator.machineconfiguration.openshift.io/{role}"): "",
            } },
            "spec": {
                "machineConfigSelector": { "matchLabels": { ROLE_LABEL: role } },
                "nodeSelector": { "matchLabels": { node_label: "" } },
                "paused": false,
            }
        });
        create_if_absent(&pools, pool).await?;
        let base = json!({
            "apiVersion": API_VERSION, "kind": "MachineConfig",
            "metadata": { "name": format!("00-{role}"), "labels": { ROLE_LABEL: role } },
            "spec": { "config": { "ignition": { "version": render::IGNITION_VERSION } } }
        });
        create_if_absent(&configs, base).await?;
    }
    Ok(())
}

async fn create_if_absent(api: &Api<DynamicObject>, object: Value) -> Result<(), Error> {
    let object: DynamicObject =
        serde_json::from_value(object).map_err(|e| Error::Setup(format!("bad object: {e}")))?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::Setup(format!(
            "creating {:?}: the MachineConfig CRDs are missing; call ControlPlane::install_openshift_crds first",
            object.metadata.name
        ))),
        Err(error) => Err(Error::Kube(error)),
    }
}

struct Simulation {
    options: SimulatorOptions,
    shared: Arc<Shared>,
    pools: Api<DynamicObject>,
    configs: Api<DynamicObject>,
    runtime_configs: Api<DynamicObject>,
    nodes: Api<Node>,
    /// Node → (the config it is updating to, since when).
    working_since: BTreeMap<String, (String, Instant)>,
    /// ContainerRuntimeConfig uid → (the generation, when first seen at it).
    runtime_config_seen: BTreeMap<String, (i64, Instant)>,
    os: ClusterOs,
}

impl Simulation {
    fn count(&self, verb: &str, resource: &str, subresource: &str) {
        *lock(&self.shared.requests)
            .entry((verb.to_owned(), resource.to_owned(), subresource.to_owned()))
            .or_default() += 1.0;
    }

    fn new(
        client: kube::Client,
        options: SimulatorOptions,
        shared: Arc<Shared>,
        os: ClusterOs,
    ) -> Self {
        let all = |resource: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &resource);
        Simulation {
            options,
            shared,
            pools: all(model::pool_resource()),
            configs: all(model::machine_config_resource()),
            runtime_configs: all(model::runtime_config_resource()),
            nodes: Api::all(client.clone()),
            working_since: BTreeMap::new(),
            runtime_config_seen: BTreeMap::new(),
            os,
        }
    }

    async fn sync(&mut self) -> Result<(), Error> {
        for resource in [
            "machineconfigpools",
            "machineconfigs",
            "containerruntimeconfigs",
            "nodes",
        ] {
            self.count("LIST", resource, "");
        }
        // ContainerRuntimeConfigs before pools: one created after the pool it
        // selects (as ours are) is never seen without that pool, as the real
        // controller's informers, fed in the order of the writes, never see it.
        let runtime_configs: Vec<RuntimeConfig> = list(&self.runtime_configs).await?;
        let pools: Vec<Pool> = list(&self.pools).await?;
        let mut configs: Vec<MachineConfig> = list(&self.configs).await?;
        // The render's freeze check reads them again after the
        // MachineConfigs: one written before a config (the coordinator writes
        // its ContainerRuntimeConfig, then its MachineConfig) is then always
        // seen, so no pool renders that config without waiting for it, as
        // the real render controller, whose informers are fed in the order
        // of the writes, never does (`render_controller.go`).
        self.count("LIST", "containerruntimeconfigs", "");
        let render_view: Vec<RuntimeConfig> = list(&self.runtime_configs).await?;
        let mut nodes: Vec<NodeView> = self
            .nodes
            .list(&ListParams::default())
            .await
            .map_err(Error::Kube)?
            .iter()
            .map(NodeView::from_node)
            .collect();

        if self
            .sync_runtime_configs(&runtime_configs, &pools, &configs)
            .await?
        {
            // The pools' inputs changed under us: render from a fresh list.
            return Ok(());
        }
        self.collect_garbage(&pools, &configs).await?;
        self.track_working_nodes(&nodes);

        let membership = rollout::membership(&pools, &nodes);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for pool in &pools {
            let (target, render_error) = match crio::blocks_render(&render_view, pool) {
                // Frozen at its current target, and no pool condition says
                // why (`render_controller.go`).
                Some(runtime_config) => {
                    debug!(pool = pool.name(), runtime_config, "render waits");
                    (current_target(pool), None)
                }
                None => self.render(pool, &mut configs).await?,
            };
            if let Some(target) = &target {
                self.roll_out(pool, &target.name, &membership, &mut nodes, &configs)
                    .await?;
            }
            let pool_nodes = membership.nodes_of(pool.name(), &nodes);
            for (node, count) in membership.conflicts_of(pool.name()) {
                // The real MCO only logs this; no status or condition shows it.
                debug!(
                    node,
                    count, "node belongs to several custom roles, cannot proceed with this Node"
                );
            }
            let status = rollout::pool_status(&StatusInput {
                pool,
                target: target.as_ref(),
                nodes: &pool_nodes,
                render_error: render_error.as_deref(),
                now: &now,
            });
            if status != pool.status {
                debug!(pool = pool.name(), ?status, "writing pool status");
                self.count("PATCH", "machineconfigpools", "status");
                self.pools
                    .patch_status(
                        pool.name(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .map_err(Error::Kube)?;
            }
        }
        self.sync_host_roots(&nodes, &configs)
    }

    /// Renders the pool; creates the rendered config and points the pool at
    /// it. Returns the pool's target (kept from before when the render fails)
    /// and the render error.
    async fn render(
        &self,
        pool: &Pool,
        configs: &mut Vec<MachineConfig>,
    ) -> Result<(Option<PoolConfiguration>, Option<String>), Error> {
        let rendered = match render::render_pool(pool, configs, self.os) {
            Ok(rendered) => rendered,
            Err(error) => return Ok((current_target(pool), Some(error))),
        };
        if !configs.iter().any(|mc| mc.name() == rendered.name) {
            debug!(
                pool = pool.name(),
                config = rendered.name,
                "creating rendered config"
            );
            let owner = Owner {
                kind: "MachineConfigPool",
                name: pool.name(),
                uid: pool.uid(),
            };
            let object = controller_config(&rendered.name, json!({}), &owner, &rendered.spec);
            self.count("POST", "machineconfigs", "");
            create_if_absent(&self.configs, object).await?;
            let mut created = MachineConfig {
                spec: rendered.spec.clone(),
                ..Default::default()
            };
            created.metadata.name = Some(rendered.name.clone());
            configs.push(created);
        }
        let configuration = PoolConfiguration {
            name: rendered.name.clone(),
            source: rendered
                .sources
                .iter()
                .map(|name| ObjectReference {
                    api_version: Some(API_VERSION.to_owned()),
                    kind: Some("MachineConfig".to_owned()),
                    name: Some(name.clone()),
                    ..Default::default()
                })
                .collect(),
        };
        if pool.spec.configuration.as_ref() != Some(&configuration) {
            debug!(
                pool = pool.name(),
                config = configuration.name,
                "pointing pool at rendered config"
            );
            let patch = json!({ "spec": { "configuration": configuration } });
            self.count("PATCH", "machineconfigpools", "");
            self.pools
                .patch(pool.name(), &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(Error::Kube)?;
        }
        Ok((Some(configuration), None))
    }

    async fn roll_out(
        &mut self,
        pool: &Pool,
        target: &str,
        membership: &rollout::Membership,
        nodes: &mut [NodeView],
        configs: &[MachineConfig],
    ) -> Result<(), Error> {
        let pool_nodes = membership.nodes_of(pool.name(), nodes);
        let reboot_over = pool_nodes
            .iter()
            .filter(|node| {
                self.working_since
                    .get(&node.name)
                    .is_some_and(|(_, since)| since.elapsed() >= self.options.update_delay)
            })
            .map(|node| node.name.clone())
            .collect();
        let count = |verb: &str, resource: &str, subresource: &str| {
            self.count(verb, resource, subresource);
        };
        let reboot_over = rollout::hold_undrained(&self.nodes, reboot_over, &count)
            .await
            .map_err(Error::Kube)?;
        let faults = lock(&self.shared.faults).clone();
        let input = RolloutInput {
            target,
            max_unavailable: rollout::max_unavailable(
                pool.spec.max_unavailable.as_ref(),
                pool_nodes.len(),
            ),
            paused: pool.spec.paused,
            reboot_over: &reboot_over,
            faults: &faults,
        };
        let steps = rollout::plan_nodes(&pool_nodes, &input);
        for (name, step) in steps {
            debug!(pool = pool.name(), node = name, ?step, "node step");
            let annotations = self.perform(&name, &step, configs);
            self.count("PATCH", "nodes", "");
            self.nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
                )
                .await
                .map_err(Error::Kube)?;
            if let Some(node) = nodes.iter_mut().find(|n| n.name == name) {
                update_view(node, &annotations);
            }
        }
        Ok(())
    }

    /// Plays the daemon's part of `step` on the node's host root, and returns
    /// the annotations that report it.
    fn perform(
        &mut self,
        node: &str,
        step: &NodeStep,
        configs: &[MachineConfig],
    ) -> BTreeMap<&'static str, String> {
        let mut roots = lock(&self.shared.roots);
        let root = roots.get_mut(node);
        let report = |state: &str, reason: &str| {
            BTreeMap::from([(STATE, state.to_owned()), (REASON, reason.to_owned())])
        };
        match step {
            NodeStep::Target { config } => {
                let mut sent = lock(&self.shared.sent_to);
                let history = sent.entry(node.to_owned()).or_default();
                if history.last() != Some(config) {
                    history.push(config.clone());
                }
                BTreeMap::from([(DESIRED_CONFIG, config.clone())])
            }
            NodeStep::Adopt { config } | NodeStep::Finish { config } => {
                if let (Some(root), Some(spec)) = (root, spec_of(config, configs))
                    && let Err(error) = root.boot(config, spec)
                {
                    return report(
                        STATE_DEGRADED,
                        &format!("failed to apply {config}: {error}"),
                    );
                }
                let mut annotations = report(STATE_DONE, "");
                annotations.insert(CURRENT_CONFIG, config.clone());
                annotations.insert(DESIRED_CONFIG, config.clone());
                annotations
            }
            NodeStep::Start { config } | NodeStep::Retry { config } => {
                if let (Some(root), Some(spec)) = (root, spec_of(config, configs))
                    && let Err(error) = root.stage(spec)
                {
                    warn!(node, %error, "cannot stage the deployment in the host root");
                }
                self.working_since
                    .insert(node.to_owned(), (config.clone(), Instant::now()));
                let mut annotations = report(STATE_WORKING, "");
                annotations.insert(DESIRED_CONFIG, config.clone());
                annotations
            }
            NodeStep::Fail { state, reason } => report(state, reason),
        }
    }

    /// Starts the reboot clock of Working nodes we did not start ourselves
    /// (left Working by an earlier simulator) and forgets finished ones.
    fn track_working_nodes(&mut self, nodes: &[NodeView]) {
        let working: BTreeMap<&str, &str> = nodes
            .iter()
            .filter(|n| n.in_state(STATE_WORKING))
            .map(|n| {
                (
                    n.name.as_str(),
                    n.desired_config.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        self.working_since.retain(|node, (config, _)| {
            working
                .get(node.as_str())
                .is_some_and(|desired| desired == config)
        });
        for (node, desired) in working {
            self.working_since
                .entry(node.to_owned())
                .or_insert_with(|| (desired.to_owned(), Instant::now()));
        }
    }

    /// A host root registered after its node got its config catches up: it
    /// boots the node's current config, and stages the one it is updating to.
    fn sync_host_roots(&self, nodes: &[NodeView], configs: &[MachineConfig]) -> Result<(), Error> {
        let mut roots = lock(&self.shared.roots);
        for node in nodes {
            let (Some(root), Some(current)) =
                (roots.get_mut(&node.name), node.current_config.as_deref())
            else {
                continue;
            };
            if root.booted_config() == Some(current) {
                continue;
            }
            let Some(spec) = spec_of(current, configs) else {
                continue;
            };
            root.boot(current, spec)?;
            if let Some(desired) = node
                .desired_config
                .as_deref()
                .filter(|d| *d != current && node.in_state(STATE_WORKING))
                && let Some(spec) = spec_of(desired, configs)
            {
                root.stage(spec)?;
            }
        }
        Ok(())
    }

    /// The container-runtime-config controller
    /// (`pkg/controller/container-runtime-config/container_runtime_config_controller.go`):
    /// writes the generated config of each ContainerRuntimeConfig, puts a
    /// finalizer named after that config on the ContainerRuntimeConfig, and
    /// reports on it; a deleted one loses its generated configs, then its
    /// finalizers (`cascadeDelete`). Only the changes it has got to (see
    /// [`McoSimulator::slow_runtime_config_controller`]) are handled; the
    /// others keep what they generated before. Returns whether any
    /// MachineConfig changed.
    async fn sync_runtime_configs(
        &mut self,
        runtime_configs: &[RuntimeConfig],
        pools: &[Pool],
        configs: &[MachineConfig],
    ) -> Result<bool, Error> {
        let due = self.due_runtime_configs(runtime_configs);
        let mut changed = false;
        let mut live: Vec<RuntimeConfig> = Vec::new();
        for runtime_config in due {
            if runtime_config.metadata.deletion_timestamp.is_some() {
                changed |= self
                    .finalize_runtime_config(runtime_config, configs)
                    .await?;
            } else {
                live.push(runtime_config.clone());
            }
        }
        let faults = lock(&self.shared.runtime_config_faults).clone();
        let due: Vec<&RuntimeConfig> = live.iter().collect();
        let pass = crio::plan(&due, runtime_configs, pools, &faults);
        self.record_suffixes(&pass.suffixes).await?;
        let crio::ControllerPass {
            generated,
            statuses,
            ..
        } = pass;
        for wanted in &generated {
            let existing = configs.iter().find(|mc| mc.name() == wanted.name);
            let up_to_date = existing.is_some_and(|mc| {
                mc.spec == wanted.spec
                    && mc.labels().get(ROLE_LABEL) == Some(&wanted.role)
                    && mc.owner_uid("ContainerRuntimeConfig") == Some(wanted.owner_uid.as_str())
            });
            if up_to_date {
                continue;
            }
            debug!(
                config = wanted.name,
                owner = wanted.owner_name,
                "writing generated config"
            );
            let owner = Owner {
                kind: "ContainerRuntimeConfig",
                name: &wanted.owner_name,
                uid: &wanted.owner_uid,
            };
            let labels = json!({ ROLE_LABEL: wanted.role });
            let object = controller_config(&wanted.name, labels, &owner, &wanted.spec);
            self.count("APPLY", "machineconfigs", "");
            self.configs
                .patch(
                    &wanted.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(object),
                )
                .await
                .map_err(Error::Kube)?;
            changed = true;
        }
        self.add_finalizers(&live, &generated).await?;
        // A failing ContainerRuntimeConfig keeps what it generated before, so
        // does one the controller has not got to yet; a generated config
        // whose owner is gone goes (the garbage collector's part).
        let failing: Vec<&str> = live
            .iter()
            .filter(|rc| {
                statuses.iter().any(|(name, status)| {
                    name == rc.name()
                        && status
                            .conditions
                            .last()
                            .is_some_and(|c| c.type_ == "Failure")
                })
            })
            .filter_map(|rc| rc.metadata.uid.as_deref())
            .collect();
        let settled = |owner: &str| {
            let live_owner = live
                .iter()
                .any(|rc| rc.metadata.uid.as_deref() == Some(owner));
            let exists = runtime_configs
                .iter()
                .any(|rc| rc.metadata.uid.as_deref() == Some(owner));
            (live_owner && !failing.contains(&owner)) || !exists
        };
        for stale in configs
            .iter()
            .filter(|mc| mc.owner_uid("ContainerRuntimeConfig").is_some_and(&settled))
        {
            if !generated.iter().any(|g| g.name == stale.name()) {
                self.count("DELETE", "machineconfigs", "");
                delete(&self.configs, stale.name()).await?;
                changed = true;
            }
        }
        for (name, status) in statuses {
            let Some(runtime_config) = live.iter().find(|rc| rc.name() == name) else {
                continue;
            };
            let mut status = status;
            model::stamp_transitions(
                &mut status.conditions,
                &runtime_config.status.conditions,
                &Time(k8s_openapi::jiff::Timestamp::now()),
            );
            if status != runtime_config.status {
                self.count("PATCH", "containerruntimeconfigs", "status");
                self.runtime_configs
                    .patch_status(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "status": status })),
                    )
                    .await
                    .map_err(Error::Kube)?;
            }
        }
        Ok(changed)
    }

    /// The ContainerRuntimeConfigs whose current generation the controller
    /// has got to: all of them unless it was made slow. Deleting one bumps
    /// its generation (the API server does), so a deletion waits as long.
    fn due_runtime_configs<'a>(
        &mut self,
        runtime_configs: &'a [RuntimeConfig],
    ) -> Vec<&'a RuntimeConfig> {
        let delay = *lock(&self.shared.runtime_config_delay);
        let now = Instant::now();
        self.runtime_config_seen.retain(|uid, _| {
            runtime_configs
                .iter()
                .any(|rc| rc.metadata.uid.as_deref() == Some(uid.as_str()))
        });
        runtime_configs
            .iter()
            .filter(|rc| {
                let generation = rc.metadata.generation.unwrap_or_default();
                let uid = rc.metadata.uid.clone().unwrap_or_default();
                let seen = self
                    .runtime_config_seen
                    .entry(uid)
                    .or_insert((generation, now));
                if seen.0 != generation {
                    *seen = (generation, now);
                }
                seen.1.elapsed() >= delay
            })
            .collect()
    }

    /// Records on each ContainerRuntimeConfig the suffix of the config it
    /// generates (`addAnnotation` in `container_runtime_config_controller.go`,
    /// before the config is written). The real controller replaces the
    /// object's annotations with this one; a merge keeps the others, which
    /// nothing here reads.
    async fn record_suffixes(&self, suffixes: &[(String, String)]) -> Result<(), Error> {
        for (name, suffix) in suffixes {
            self.count("PATCH", "containerruntimeconfigs", "");
            let patch = json!({ "metadata": { "annotations": { crio::MC_NAME_SUFFIX: suffix } } });
            self.runtime_configs
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map_err(Error::Kube)?;
        }
        Ok(())
    }

    /// Each ContainerRuntimeConfig carries the names of the configs it
    /// generated as finalizers (`addFinalizerToContainerRuntimeConfig`), so
    /// that deleting it waits until they are gone — and the render with it,
    /// since the pending deletion is a generation without a verdict.
    async fn add_finalizers(
        &self,
        live: &[RuntimeConfig],
        generated: &[crio::GeneratedConfig],
    ) -> Result<(), Error> {
        for runtime_config in live {
            let uid = runtime_config.metadata.uid.as_deref().unwrap_or_default();
            let mut finalizers = runtime_config
                .metadata
                .finalizers
                .clone()
                .unwrap_or_default();
            let before = finalizers.len();
            for config in generated.iter().filter(|g| g.owner_uid == uid) {
                if !finalizers.contains(&config.name) {
                    finalizers.push(config.name.clone());
                }
            }
            if finalizers.len() != before {
                self.count("PATCH", "containerruntimeconfigs", "");
                self.runtime_configs
                    .patch(
                        runtime_config.name(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({ "metadata": { "finalizers": finalizers } })),
                    )
                    .await
                    .map_err(Error::Kube)?;
            }
        }
        Ok(())
    }

    /// A deleted ContainerRuntimeConfig: the configs its finalizers name are
    /// deleted, then the finalizers go and with them the object. The real
    /// controller pops one finalizer per sync and is called again at once;
    /// the end is the same. Returns whether a MachineConfig went.
    async fn finalize_runtime_config(
        &self,
        runtime_config: &RuntimeConfig,
        configs: &[MachineConfig],
    ) -> Result<bool, Error> {
        let finalizers = runtime_config
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default();
        if finalizers.is_empty() {
            return Ok(false);
        }
        let mut changed = false;
        for name in &finalizers {
            if configs.iter().any(|mc| mc.name() == name) {
                self.count("DELETE", "machineconfigs", "");
                delete(&self.configs, name).await?;
                changed = true;
            }
        }
        debug!(
            runtime_config = runtime_config.name(),
            "removing finalizers of a deleted ContainerRuntimeConfig"
        );
        let patch = json!({ "metadata": { "finalizers": null } });
        self.count("PATCH", "containerruntimeconfigs", "");
        match self
            .runtime_configs
            .patch(
                runtime_config.name(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(Error::Kube(error)),
            Ok(_) => {}
        }
        Ok(changed)
    }

    /// Stands in for the garbage collector, which a bare API server lacks:
    /// rendered configs go with their pool.
    async fn collect_garbage(
        &self,
        pools: &[Pool],
        configs: &[MachineConfig],
    ) -> Result<(), Error> {
        for config in configs {
            if let Some(owner) = config.owner_uid("MachineConfigPool")
                && !pools.iter().any(|pool| pool.uid() == owner)
            {
                debug!(
                    config = config.name(),
                    "deleting rendered config of a deleted pool"
                );
                self.count("DELETE", "machineconfigs", "");
                delete(&self.configs, config.name()).await?;
            }
        }
        Ok(())
    }
}

/// The object that owns a MachineConfig the controller writes.
struct Owner<'a> {
    kind: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// A MachineConfig written by the (simulated) MCO controllers, owned by the
/// object it was made from, as on a real cluster.
fn controller_config(name: &str, labels: Value, owner: &Owner, spec: &MachineConfigSpec) -> Value {
    json!({
        "apiVersion": API_VERSION, "kind": "MachineConfig",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": { GENERATED_BY: CONTROLLER_VERSION },
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

/// The pool's rendered config as it stands, when it has one.
fn current_target(pool: &Pool) -> Option<PoolConfiguration> {
    pool.spec
        .configuration
        .clone()
        .filter(|c| !c.name.is_empty())
}

fn spec_of<'a>(config: &str, configs: &'a [MachineConfig]) -> Option<&'a MachineConfigSpec> {
    configs
        .iter()
        .find(|mc| mc.name() == config)
        .map(|mc| &mc.spec)
}

fn update_view(node: &mut NodeView, annotations: &BTreeMap<&'static str, String>) {
    for (key, value) in annotations {
        let field = match *key {
            CURRENT_CONFIG => &mut node.current_config,
            DESIRED_CONFIG => &mut node.desired_config,
            STATE => &mut node.state,
            _ => &mut node.reason,
        };
        *field = Some(value.clone());
    }
}

/// What the render controller would render for `pool` from the pools and
/// MachineConfigs the API server holds now, without running the
/// simulation: for a node that is not one of the simulator's (the real
/// node), whose daemon is played by hand with [`host::write_config_files`].
/// `None` while the pool does not exist yet.
pub async fn render_from_api(
    client: &kube::Client,
    pool: &str,
    os: ClusterOs,
) -> Result<Option<render::Rendered>, Error> {
    let all = |resource: ApiResource| Api::<DynamicObject>::all_with(client.clone(), &resource);
    let pools: Vec<Pool> = list(&all(model::pool_resource())).await?;
    let configs: Vec<MachineConfig> = list(&all(model::machine_config_resource())).await?;
    let Some(pool) = pools.iter().find(|p| p.name() == pool) else {
        return Ok(None);
    };
    render::render_pool(pool, &configs, os)
        .map(Some)
        .map_err(|e| Error::Setup(format!("rendering pool {}: {e}", pool.name())))
}

/// The spec of the MachineConfig `name` (a rendered config the simulator
/// wrote), if it exists: what the daemon of a node sent to it writes.
pub async fn machine_config_spec(
    client: &kube::Client,
    name: &str,
) -> Result<Option<MachineConfigSpec>, Error> {
    let configs = Api::<DynamicObject>::all_with(client.clone(), &model::machine_config_resource());
    let Some(object) = configs.get_opt(name).await.map_err(Error::Kube)? else {
        return Ok(None);
    };
    let config: MachineConfig = serde_json::to_value(object)
        .and_then(serde_json::from_value)
        .map_err(|e| Error::Setup(format!("cannot read {name}: {e}")))?;
    Ok(Some(config.spec))
}

async fn list<T: DeserializeOwned>(api: &Api<DynamicObject>) -> Result<Vec<T>, Error> {
    let objects = api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    objects
        .items
        .into_iter()
        .map(|object| {
            let name = object.metadata.name.clone().unwrap_or_default();
            serde_json::to_value(object)
                .and_then(serde_json::from_value)
                .map_err(|e| Error::Setup(format!("cannot read {name}: {e}")))
        })
        .collect()
}

async fn delete(api: &Api<DynamicObject>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(Error::Kube(error)),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::model::{MachineConfig, NodeView, Pool, ROLE_LABEL};

    pub fn machine_config(
        name: &str,
        role: &str,
        files: &[(&str, &str)],
        extensions: &[&str],
    ) -> MachineConfig {
        let files: Vec<Value> = files
            .iter()
            .map(|(path, source)| json!({ "path": path, "contents": { "source": source } }))
            .collect();
        serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { ROLE_LABEL: role } },
            "spec": { "config": { "ignition": { "version": "3.2.0" }, "storage": { "files": files } }, "extensions": extensions }
        }))
        .unwrap()
    }

    pub fn pool(name: &str, machine_config_selector: Value, node_selector: Value) -> Pool {
        serde_json::from_value(json!({
            "metadata": { "name": name, "uid": format!("uid-{name}") },
            "spec": { "machineConfigSelector": machine_config_selector, "nodeSelector": node_selector }
        }))
        .unwrap()
    }

    pub fn node(
        name: &str,
        labels: &[&str],
        current: Option<&str>,
        desired: Option<&str>,
        state: Option<&str>,
    ) -> NodeView {
        NodeView {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|l| ((*l).to_owned(), String::new()))
                .collect(),
            current_config: current.map(str::to_owned),
            desired_config: desired.map(str::to_owned),
            state: state.map(str::to_owned),
            reason: None,
            ready: true,
        }
    }
}
