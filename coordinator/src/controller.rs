//! The KataConfig controller: gathers an [`Observed`] snapshot (and the
//! host-configuration backend's, through [`RolloutSource`]) from watches and
//! a few reads, asks [`plan::plan`] what to do,
//! performs each step with one [`Applier`] call, and writes the status only
//! when it changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{info, instrument, warn};

use crate::api::{KataConfig, KataConfigStatus, condition, reason};
use crate::applier::{self, Applier, Subresource, WriteError};
use crate::backend::{Backend, ObservedRollout, ReadError, RolloutSource};
use crate::kata_pods;
use crate::kind;
use crate::names;
use crate::node::{kata_ready_condition, slim_node};
use crate::plan::events::{LastWrite, NodeTransition};
use crate::plan::rollout::HostConfigRollout;
use crate::plan::stuck::{DrainBlocker, StuckNode, WorkingClock};
use crate::plan::{self, ConfigId, Desired, Observed, ObservedNode, Requeue, Step};
use crate::status::{self, ConditionStatus};

/// Why a reconcile failed, by the phase that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("observing the cluster: {0}")]
    Observe(#[from] ReadError),
    #[error("{step} failed: {source}")]
    Apply { step: String, source: kube::Error },
    #[error("writing the status of KataConfig {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("stopped after {0} writes, as configured")]
    WriteBudgetSpent(u64),
}

impl Error {
    /// The category the errors metric counts.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Observe(_) => "observe",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::WriteBudgetSpent(_) => "stopped",
        }
    }

    /// A failed write: a spent budget, or an API failure in the phase
    /// `api_failure` names.
    fn write(error: WriteError, api_failure: impl FnOnce(kube::Error) -> Error) -> Error {
        match error {
            WriteError::BudgetSpent(limit) => Error::WriteBudgetSpent(limit),
            WriteError::Api(source) => api_failure(source),
        }
    }
}

fn observe_error(what: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| {
        Error::Observe(ReadError {
            what: what.to_owned(),
            source,
        })
    }
}

/// How the coordinator runs; the defaults are production's.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stop (as if the process died) once this many writes were made. The
    /// restart tests use it to interrupt install and uninstall at every step.
    pub stop_after_writes: Option<u64>,
    pub metrics: crate::metrics::Metrics,
    /// How long a node may stay updating (MCO state `Working`) before the
    /// KataConfig and an Event say it is stuck, and what holds its drain.
    pub stuck_after: Duration,
}

/// A drain and reboot take minutes; a quarter of an hour means something
/// holds the node.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// How often what holds a stuck node's drain is read again while it stays stuck.
const BLOCKERS_REFRESH: Duration = Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Self {
            stop_after_writes: None,
            metrics: crate::metrics::Metrics::default(),
            stuck_after: DEFAULT_STUCK_AFTER,
        }
    }
}

struct Context {
    client: Client,
    nodes: Store<Node>,
    /// The host-configuration backend's caches and reads.
    rollout: Arc<dyn RolloutSource>,
    configs: Store<KataConfig>,
    /// Our RuntimeClass, from its watch (the only object it holds).
    runtime_classes: Store<RuntimeClass>,
    /// The uninstall's last list of pods using our RuntimeClass.
    kata_pods: std::sync::Mutex<Option<kata_pods::Answer>>,
    /// When each node was first seen updating (see [`plan::stuck`]).
    working: std::sync::Mutex<WorkingClock>,
    /// Per KataConfig, the full node lists its status was last written
    /// from: the status holds them capped, and the Events of nodes past
    /// the cap are derived from these ([`plan::events::Previous`]).
    written_from: std::sync::Mutex<BTreeMap<String, LastWrite>>,
    applier: Applier,
    options: Options,
}

impl Context {
    async fn observe(&self, config: &KataConfig) -> Result<(Observed, ObservedRollout), Error> {
        // Plan only from complete caches: an empty node list would unlabel every node.
        let _ = self.nodes.wait_until_ready().await;
        self.rollout.wait_until_ready().await;
        let _ = self.runtime_classes.wait_until_ready().await;
        let deleting = config.meta().deletion_timestamp.is_some();
        let mut nodes: Vec<ObservedNode> = self
            .nodes
            .state()
            .iter()
            .map(|n| observed_node(n))
            .collect();
        // The cache has no order; the status lists must, or they would
        // change (and be written) on every reconcile.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let rollout = self.rollout.observe(&nodes).await?;
        let runtime_class = self
            .runtime_classes
            .get(&ObjectRef::new(names::RUNTIME_CLASS_NAME))
            .and_then(|rc| serde_json::to_value(rc.as_ref()).ok());
        let pods_using_kata = if deleting {
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
        let mut owned_objects = rollout.owned_objects();
        if let Some(runtime_class) = &runtime_class {
            owned_objects.push((kind::RUNTIME_CLASS, runtime_class.clone()));
        }
        let observed = Observed {
            name: config.name_any(),
            configs,
            spec: config.spec.clone(),
            deleting,
            has_finalizer: config.finalizers().iter().any(|f| f == names::FINALIZER),
            nodes,
            runtime_class,
            pods_using_kata,
            recorded_nodes: config
                .status
                .as_ref()
                .map(|s| s.kata_nodes.clone())
                .unwrap_or_default(),
            last_write: self.last_write(&config.name_any()),
            owned_objects,
            stuck_nodes,
        };
        Ok((observed, rollout))
    }

    /// Nodes updating longer than [`Options::stuck_after`], with what holds
    /// their drain: the pods on such a node and their namespaces'
    /// budgets are read only then, and again at most every
    /// [`BLOCKERS_REFRESH`].
    async fn stuck_nodes(
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
    async fn drain_blockers(&self, node: &str) -> Result<Vec<DrainBlocker>, kube::Error> {
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
    async fn announce_stuck(&self, config: &KataConfig, stuck: &[StuckNode]) {
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

    /// Pods, in any namespace, that are not finished and use a RuntimeClass
    /// we own: listed when [`kata_pods::check`] says the answer can have
    /// changed, else the last answer.
    async fn pods_using_kata(
        &self,
        config: &KataConfig,
        runtime_class_exists: bool,
    ) -> Result<Vec<String>, Error> {
        let uid = config.uid().unwrap_or_default();
        let now = std::time::Instant::now();
        {
            let last = self.kata_pods.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(answer) = last.as_ref()
                && kata_pods::check(Some(answer), &uid, runtime_class_exists, now)
                    == kata_pods::PodCheck::Reuse
            {
                return Ok(answer.pods.clone());
            }
        }
        let pods = self.list_pods_using_kata(config).await?;
        *self.kata_pods.lock().unwrap_or_else(|p| p.into_inner()) = Some(kata_pods::Answer {
            uid,
            listed_at: now,
            pods: pods.clone(),
        });
        Ok(pods)
    }

    fn forget_kata_pods(&self) {
        *self.kata_pods.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Lists every unfinished pod, a page at a time (so memory holds one
    /// page, not the cluster's pods), keeping those that name a
    /// RuntimeClass we own.
    async fn list_pods_using_kata(&self, config: &KataConfig) -> Result<Vec<String>, Error> {
        let mut owned: Vec<String> = config
            .status
            .iter()
            .flat_map(|s| s.runtime_classes.clone())
            .collect();
        owned.push(names::RUNTIME_CLASS_NAME.into());
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut params = ListParams::default()
            .fields("status.phase!=Succeeded,status.phase!=Failed")
            .limit(500);
        let mut found = Vec::new();
        loop {
            let page = pods.list(&params).await.map_err(observe_error("pods"))?;
            for pod in &page.items {
                let class = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.runtime_class_name.as_ref());
                if class.is_some_and(|c| owned.contains(c)) {
                    found.push(format!(
                        "{}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ));
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        Ok(found)
    }

    /// One step, one applier call.
    #[instrument(skip_all, fields(step = %step))]
    async fn execute(&self, config: &KataConfig, step: &Step) -> Result<(), Error> {
        info!(kataconfig = %config.name_any(), "executing step");
        let applier = &self.applier;
        let result = match step {
            // Applying without the finalizer releases our ownership, which removes it.
            Step::AddFinalizer | Step::RemoveFinalizer => {
                let finalizers: &[&str] = if matches!(step, Step::AddFinalizer) {
                    &[names::FINALIZER]
                } else {
                    &[]
                };
                let name = config.name_any();
                let mut metadata = json!({ "name": name });
                if !finalizers.is_empty() {
                    metadata["finalizers"] = json!(finalizers);
                }
                let body = json!({
                    "apiVersion": kind::KATA_CONFIG.api_version(),
                    "kind": kind::KATA_CONFIG.kind,
                    "metadata": metadata,
                });
                applier
                    .apply(
                        kind::KATA_CONFIG,
                        &name,
                        names::MANAGER,
                        &body,
                        Subresource::Main,
                    )
                    .await
            }
            // Objects others may write too: never taken over by force
            // (plan::ownership decides when to hold them).
            Step::Apply(desired @ Desired::Untyped { object, .. }) => {
                applier
                    .apply_unforced(desired.kind(), desired.name(), names::MANAGER, object)
                    .await
            }
            Step::Apply(desired @ Desired::RuntimeClass(rc)) => {
                applier
                    .apply_unforced(desired.kind(), desired.name(), names::MANAGER, rc)
                    .await
            }
            Step::Delete { kind, name } => applier.delete(*kind, name).await,
            Step::SetNodeLabel {
                node,
                label,
                present,
            } => applier.label(node, label, *present).await,
            // Releasing the health manager's fields removes the labels only
            // it set; the same release on the status subresource removes our
            // condition.
            Step::ReleaseNodeLabels { node } => {
                applier
                    .apply_node_labels(node, names::MANAGER_HEALTH, None)
                    .await
            }
            Step::RemoveNodeCondition { node } => {
                applier
                    .apply_node_conditions(node, names::MANAGER_HEALTH, &[])
                    .await
            }
        };
        result.map_err(|error| {
            Error::write(error, |source| Error::Apply {
                step: step.to_string(),
                source,
            })
        })
    }

    fn last_write(&self, config: &str) -> Option<LastWrite> {
        self.written_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(config)
            .cloned()
    }

    fn remember_write(&self, config: &str, last: Option<LastWrite>) {
        let mut written_from = self
            .written_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last {
            Some(last) => written_from.insert(config.to_owned(), last),
            None => written_from.remove(config),
        };
    }

    /// Writes the new status, then announces the conditions that changed
    /// and say what is happening. After the write, so a failed write
    /// (retried) announces nothing twice.
    async fn write_status(&self, config: &KataConfig, new: &KataConfigStatus) -> Result<(), Error> {
        let name = config.name_any();
        let body = json!({
            "apiVersion": kind::KATA_CONFIG.api_version(),
            "kind": kind::KATA_CONFIG.kind,
            "status": new,
        });
        self.applier
            .apply(
                kind::KATA_CONFIG,
                &name,
                names::MANAGER,
                &body,
                Subresource::Status,
            )
            .await
            .map_err(|error| {
                Error::write(error, |source| Error::Status {
                    name: name.clone(),
                    source,
                })
            })?;
        let old = config
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for changed in status::changed(old, &new.conditions) {
            // Only the condition that says what is happening becomes an Event.
            if changed.type_ == condition::READY
                || (changed.type_ == condition::DEGRADED
                    && ConditionStatus::parse(&changed.status) == ConditionStatus::True)
            {
                let event = Event {
                    type_: condition_event_type(&changed.type_, &changed.reason),
                    reason: changed.reason.clone(),
                    note: Some(changed.message.clone()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                self.applier.publish(event, &config.object_ref(&())).await;
            }
        }
        Ok(())
    }

    /// Announces the nodes' transitions, once the status that records them
    /// is written (or, when only nodes past the status's lists moved, was
    /// already as it should be).
    async fn announce_transitions(&self, config: &KataConfig, transitions: &[NodeTransition]) {
        let kata_config = config.object_ref(&());
        for transition in transitions {
            let event = Event {
                type_: if transition.is_warning() {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: transition.reason().into(),
                note: Some(transition.note()),
                action: "Install".into(),
                secondary: Some(kata_config.clone()),
            };
            self.applier
                .publish(event, &self.node_reference(transition.node()))
                .await;
        }
    }

    /// The node as an Event's subject, with its uid when the cache has it
    /// (`kubectl describe node` matches on it).
    fn node_reference(&self, name: &str) -> ObjectReference {
        self.nodes
            .get(&ObjectRef::new(name))
            .map(|node| node.object_ref(&()))
            .unwrap_or_else(|| ObjectReference {
                api_version: Some(kind::NODE.api_version()),
                kind: Some(kind::NODE.kind.into()),
                name: Some(name.into()),
                ..Default::default()
            })
    }
}

/// A condition's Event is a warning when it asks an admin to act: the
/// KataConfig degraded, or the uninstall waiting on pods only they can
/// delete.
fn condition_event_type(type_: &str, condition_reason: &str) -> EventType {
    if type_ == condition::DEGRADED || condition_reason == reason::BLOCKED_BY_EXISTING_KATA_PODS {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

fn observed_node(node: &Node) -> ObservedNode {
    let condition = kata_ready_condition(node);
    ObservedNode {
        name: node.name_any(),
        labels: node.labels().clone(),
        annotations: node.annotations().clone(),
        has_ready_condition: condition.is_some(),
        os_image: node
            .status
            .as_ref()
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.os_image.clone()),
        not_ready_reason: condition
            .filter(|c| ConditionStatus::parse(&c.status) == ConditionStatus::False)
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
            }),
    }
}

/// One reconcile, timed whatever its outcome.
async fn reconcile(config: Arc<KataConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let outcome = reconcile_once(config, &ctx).await;
    ctx.options
        .metrics
        .reconcile_duration
        .0
        .observe(started.elapsed());
    outcome
}

#[instrument(skip_all, fields(kataconfig = %config.name_any()))]
async fn reconcile_once(config: Arc<KataConfig>, ctx: &Context) -> Result<Action, Error> {
    ctx.options.metrics.reconciles.inc();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (observed, rollout) = ctx.observe(&config).await?;
    let plan = plan::plan(&observed, rollout.as_ref());
    for step in &plan.steps {
        ctx.execute(&config, step).await?;
    }
    let metrics = &ctx.options.metrics;
    if plan.steps.contains(&Step::RemoveFinalizer) {
        info!("uninstall complete; finalizer removed");
        metrics.clear_kataconfig();
        ctx.remember_write(&observed.name, None);
        return Ok(Action::await_change());
    }
    if plan::active_config(&observed.configs) == Some(observed.name.as_str()) {
        let conditions: Vec<(&str, bool)> = plan
            .conditions
            .iter()
            .map(|c| (c.type_, c.status))
            .collect();
        metrics.observe_kataconfig(&conditions, &plan.nodes);
    }
    let new = status::status(
        config.status.as_ref(),
        &plan.nodes,
        plan.runtime_classes,
        &plan.conditions,
        config.meta().generation,
        &now,
    );
    if config.status.as_ref() != Some(&new) {
        ctx.write_status(&config, &new).await?;
    }
    // The status observed now is `new` (written, or already so): the next
    // reconcile measures transitions against the full lists behind it.
    let last = LastWrite {
        full: plan.nodes,
        before: observed.recorded_nodes.clone(),
    };
    ctx.remember_write(&observed.name, Some(last));
    ctx.announce_transitions(&config, &plan.transitions).await;
    ctx.announce_stuck(&config, &observed.stuck_nodes).await;
    Ok(match plan.requeue {
        Requeue::After(after) => Action::requeue(after),
        Requeue::Resync => Action::requeue(Duration::from_secs(300)),
        Requeue::OnChange => Action::await_change(),
    })
}

fn error_policy(_config: Arc<KataConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.options
        .metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::CategoryLabel {
            category: error.category().into(),
        })
        .inc();
    warn!(%error, category = error.category(), "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// A watch that fires when a node's labels, annotations or
/// `KataRuntimeReady` condition change (not on status heartbeats), keeping
/// `writer` up to date.
fn node_events(
    client: &Client,
    writer: reflector::store::Writer<Node>,
) -> impl Stream<Item = ()> + Send + 'static {
    let label_or_annotation = |n: &Node| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        predicates::labels(n).hash(&mut hasher);
        predicates::annotations(n).hash(&mut hasher);
        if let Some(c) = kata_ready_condition(n) {
            (&c.status, &c.reason, &c.message).hash(&mut hasher);
        }
        Some(hasher.finish())
    };
    watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim_node)
    .reflect(writer)
    .applied_objects()
    .predicate_filter(label_or_annotation, Default::default())
    .filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// The KataConfig controller, built but not yet running: its KataConfig
/// cache can be handed to other parts (the labeller) first.
pub struct KataConfigController {
    client: Client,
    options: Options,
    node_writer: reflector::store::Writer<Node>,
    backend: Backend,
    controller: Controller<KataConfig>,
}

impl KataConfigController {
    /// Its node watch will keep `node_writer`'s cache, which the node
    /// labeller reads too: one copy of every Node in memory, not one per
    /// part. `backend` installs the host configuration.
    pub fn new(
        client: Client,
        options: Options,
        node_writer: reflector::store::Writer<Node>,
        backend: Backend,
    ) -> Self {
        let configs_api = Api::<KataConfig>::all(client.clone());
        let controller = Controller::new(configs_api, watcher::Config::default().any_semantic());
        Self {
            client,
            options,
            node_writer,
            backend,
            controller,
        }
    }

    /// The controller's KataConfig cache (filled once it runs).
    pub fn configs(&self) -> Store<KataConfig> {
        self.controller.store()
    }

    /// Runs until `shutdown` completes (or, with
    /// [`Options::stop_after_writes`], until the budget is spent), then lets a reconcile under way
    /// finish for at most [`SHUTDOWN_GRACE`]: one stuck on an API server
    /// that does not answer is dropped, which is safe because every step is
    /// derived from what is observed, so the next coordinator resumes it.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
        let shutdown = shutdown.boxed().shared();
        let Self {
            client,
            options,
            node_writer,
            backend,
            controller,
        } = self;
        let runtime_class_writer = reflector::store::Writer::<RuntimeClass>::default();
        let stopped = Arc::new(Notify::new());
        let recorder = applier::event_recorder(client.clone());
        let ctx = Arc::new(Context {
            applier: Applier::new(
                client.clone(),
                options.metrics.api_writes.clone(),
                options.stop_after_writes,
                stopped.clone(),
                recorder,
            ),
            client: client.clone(),
            nodes: node_writer.as_reader(),
            rollout: backend.source,
            configs: controller.store(),
            runtime_classes: runtime_class_writer.as_reader(),
            kata_pods: std::sync::Mutex::default(),
            working: std::sync::Mutex::default(),
            written_from: std::sync::Mutex::default(),
            options,
        });
        let triggers = futures::stream::select(node_events(&client, node_writer), backend.triggers);
        let runtime_classes = watcher(
            Api::<RuntimeClass>::all(client.clone()),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", names::RUNTIME_CLASS_NAME)),
        )
        .default_backoff()
        .reflect(runtime_class_writer)
        .touched_objects()
        .filter_map(|r| async move { r.ok().map(|_| ()) });
        let controller = controller
            .reconcile_all_on(futures::stream::select(triggers, runtime_classes))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(error) = result {
                    warn!(%error, "controller");
                }
            });
        let grace_spent = async {
            shutdown.await;
            info!("stopping: letting a reconcile under way finish");
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            warn!(
                grace = ?SHUTDOWN_GRACE,
                "a reconcile did not finish in time; dropping it (the next coordinator resumes it)"
            );
        };
        tokio::select! {
            () = controller => {}
            () = stopped.notified() => info!("write budget spent; stopping"),
            () = grace_spent => {}
        }
    }
}

/// How long a reconcile under way may take to finish once the coordinator
/// is asked to stop; well inside a pod's default 30 s termination grace.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_category_is_exported_from_the_start() {
        let errors = [
            Error::Observe(ReadError {
                what: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            }),
            Error::Apply {
                step: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::Status {
                name: String::new(),
                source: kube::Error::LinesCodecMaxLineLengthExceeded,
            },
            Error::WriteBudgetSpent(1),
        ];
        assert_eq!(
            errors.map(|e| e.category()),
            crate::metrics::RECONCILE_ERROR_CATEGORIES
        );
    }

    #[test]
    fn condition_events_warn_when_an_admin_must_act() {
        assert_eq!(
            condition_event_type(condition::DEGRADED, reason::NODE_DEGRADED),
            EventType::Warning
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::BLOCKED_BY_EXISTING_KATA_PODS),
            EventType::Warning,
            "only deleting the pods lets the uninstall go on"
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::INSTALLED),
            EventType::Normal
        );
        assert_eq!(
            condition_event_type(condition::READY, reason::UNINSTALLING),
            EventType::Normal
        );
    }
}
