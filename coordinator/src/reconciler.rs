//! The KataConfig controller: gathers an [`Observed`] snapshot from watches
//! and a few reads, asks [`plan::plan`] what to do, performs the steps with
//! server-side apply, and writes the status only when it changed.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{info, instrument, warn};

use crate::api::{KataConfig, KataConfigStatus, condition};
use crate::names::{self, mco};
use crate::plan::{self, ConditionState, Observed, ObservedNode, ObservedPool, Step};
use crate::status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} failed: {source}")]
    Api { step: String, source: kube::Error },
    #[error("stopped after {0} writes, as configured")]
    WriteBudgetSpent(u64),
}

fn api_error(step: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let step = step.into();
    move |source| Error::Api { step, source }
}

pub fn pool_resource() -> ApiResource {
    mco_resource("MachineConfigPool", "machineconfigpools")
}

pub fn machine_config_resource() -> ApiResource {
    mco_resource("MachineConfig", "machineconfigs")
}

pub fn container_runtime_config_resource() -> ApiResource {
    mco_resource("ContainerRuntimeConfig", "containerruntimeconfigs")
}

fn mco_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: mco::GROUP.into(),
        version: mco::VERSION.into(),
        api_version: format!("{}/{}", mco::GROUP, mco::VERSION),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// How the coordinator runs; the defaults are production's.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Stop (as if the process died) once this many writes were made. The
    /// restart tests use it to interrupt install and uninstall at every step.
    pub stop_after_writes: Option<u64>,
    pub metrics: crate::metrics::Metrics,
}

/// Counts every mutating API request the coordinator makes; exported as
/// the `kata_operator_api_writes` metric.
#[derive(Debug, Default)]
pub struct WriteCounter {
    count: prometheus_client::metrics::counter::Counter,
}

impl WriteCounter {
    pub fn get(&self) -> u64 {
        self.count.get()
    }

    /// Counts a write made outside the reconciler (the node labeller).
    pub fn record(&self) {
        self.count.inc();
    }

    /// The counter, for registering with the metrics registry.
    pub fn counter(&self) -> prometheus_client::metrics::counter::Counter {
        self.count.clone()
    }
}

struct Context {
    client: Client,
    nodes: Store<Node>,
    pools: Store<DynamicObject>,
    configs: Store<KataConfig>,
    recorder: Recorder,
    writes: Arc<WriteCounter>,
    options: Options,
    stop: Arc<Notify>,
}

impl Context {
    /// Accounts for one write, or refuses it when the configured budget is spent.
    fn spend_write(&self) -> Result<(), Error> {
        let done = self.writes.get();
        if let Some(limit) = self.options.stop_after_writes
            && done >= limit
        {
            self.stop.notify_one();
            return Err(Error::WriteBudgetSpent(limit));
        }
        self.writes.record();
        Ok(())
    }

    fn dynamic(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), resource)
    }

    async fn get_value(&self, resource: &ApiResource, name: &str) -> Result<Option<Value>, Error> {
        let object = self
            .dynamic(resource)
            .get_opt(name)
            .await
            .map_err(api_error(format!("reading {} {name}", resource.kind)))?;
        Ok(object.and_then(|o| serde_json::to_value(o).ok()))
    }

    async fn observe(&self, config: &KataConfig) -> Result<Observed, Error> {
        // Plan only from complete caches: an empty node list would unlabel every node.
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pools.wait_until_ready().await;
        let deleting = config.meta().deletion_timestamp.is_some();
        let mut nodes: Vec<ObservedNode> = self
            .nodes
            .state()
            .iter()
            .map(|n| ObservedNode {
                name: n.name_any(),
                labels: n.labels().clone(),
                annotations: n.annotations().clone(),
                has_ready_condition: ready_condition(n).is_some(),
                not_ready_reason: ready_condition(n).filter(|c| c.status == "False").map(|c| {
                    format!(
                        "{}: {}",
                        c.reason.as_deref().unwrap_or_default(),
                        c.message.as_deref().unwrap_or_default()
                    )
                }),
            })
            .collect();
        // The cache has no order; the status lists must, or they would
        // change (and be written) on every reconcile.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let pool_object = self
            .pools
            .get(&ObjectRef::new_with(names::POOL_NAME, pool_resource()))
            .and_then(|p| serde_json::to_value(p.as_ref()).ok());
        let pool = pool_object.as_ref().map(observed_pool);
        let runtime_class = Api::<RuntimeClass>::all(self.client.clone())
            .get_opt(names::RUNTIME_CLASS_NAME)
            .await
            .map_err(api_error("reading RuntimeClass kata"))?
            .and_then(|rc| serde_json::to_value(rc).ok());
        let pods_using_kata = if deleting {
            self.pods_using_kata(config).await?
        } else {
            Vec::new()
        };
        Ok(Observed {
            spec: config.spec.clone(),
            deleting,
            has_finalizer: config.finalizers().iter().any(|f| f == names::FINALIZER),
            nodes,
            pool_object,
            pool,
            machine_config: self
                .get_value(&machine_config_resource(), names::MACHINE_CONFIG_NAME)
                .await?,
            runtime_class,
            container_runtime_config: self
                .get_value(
                    &container_runtime_config_resource(),
                    names::CONTAINER_RUNTIME_CONFIG_NAME,
                )
                .await?,
            pods_using_kata,
        })
    }

    /// Pods, in any namespace, that are not finished and use a RuntimeClass
    /// we own.
    async fn pods_using_kata(&self, config: &KataConfig) -> Result<Vec<String>, Error> {
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
            let page = pods
                .list(&params)
                .await
                .map_err(api_error("listing pods"))?;
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

    async fn apply_dynamic(&self, resource: &ApiResource, object: &Value) -> Result<(), Error> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        self.spend_write()?;
        self.dynamic(resource)
            .patch(
                name,
                &PatchParams::apply(names::MANAGER).force(),
                &Patch::Apply(object),
            )
            .await
            .map_err(api_error(format!("applying {} {name}", resource.kind)))?;
        Ok(())
    }

    async fn delete_dynamic(&self, resource: &ApiResource, name: &str) -> Result<(), Error> {
        self.spend_write()?;
        let result = self
            .dynamic(resource)
            .delete(name, &DeleteParams::default())
            .await;
        ignore_not_found(result).map_err(api_error(format!("deleting {} {name}", resource.kind)))
    }

    async fn apply_node(&self, node: &str, manager: &str, metadata: Value) -> Result<(), Error> {
        let mut body = json!({ "apiVersion": "v1", "kind": "Node", "metadata": metadata });
        body["metadata"]["name"] = json!(node);
        self.spend_write()?;
        Api::<Node>::all(self.client.clone())
            .patch(
                node,
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(api_error(format!("labelling node {node}")))?;
        Ok(())
    }

    async fn apply_config_metadata(
        &self,
        config: &KataConfig,
        metadata: Value,
    ) -> Result<(), Error> {
        let name = config.name_any();
        let mut body = json!({ "apiVersion": KataConfig::api_version(&()), "kind": KataConfig::kind(&()), "metadata": metadata });
        body["metadata"]["name"] = json!(name);
        self.spend_write()?;
        Api::<KataConfig>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply(names::MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(api_error(format!(
                "updating finalizers of KataConfig {name}"
            )))?;
        Ok(())
    }

    #[instrument(skip_all, fields(step = ?step_name(step)))]
    async fn execute(&self, config: &KataConfig, step: &Step) -> Result<(), Error> {
        info!(kataconfig = %config.name_any(), "executing step");
        match step {
            Step::AddFinalizer => {
                self.apply_config_metadata(config, json!({ "finalizers": [names::FINALIZER] }))
                    .await
            }
            // Applying without the finalizer releases our ownership, which removes it.
            Step::RemoveFinalizer => self.apply_config_metadata(config, json!({})).await,
            Step::ApplyPool(pool) => self.apply_dynamic(&pool_resource(), pool).await,
            Step::ApplyMachineConfig(mc) => {
                self.apply_dynamic(&machine_config_resource(), mc).await
            }
            Step::ApplyContainerRuntimeConfig(crc) => {
                self.apply_dynamic(&container_runtime_config_resource(), crc)
                    .await
            }
            Step::DeleteContainerRuntimeConfig => {
                self.delete_dynamic(
                    &container_runtime_config_resource(),
                    names::CONTAINER_RUNTIME_CONFIG_NAME,
                )
                .await
            }
            Step::DeleteMachineConfig => {
                self.delete_dynamic(&machine_config_resource(), names::MACHINE_CONFIG_NAME)
                    .await
            }
            Step::DeletePool => {
                self.delete_dynamic(&pool_resource(), names::POOL_NAME)
                    .await
            }
            Step::SetPoolRole {
                node,
                targeted: true,
            } => {
                self.apply_node(
                    node,
                    names::MANAGER_TARGETING,
                    json!({ "labels": { names::KATA_POOL_ROLE_LABEL: "" } }),
                )
                .await
            }
            // Removal is unconditional: the selector decides, whoever set the label.
            Step::SetPoolRole {
                node,
                targeted: false,
            } => {
                self.spend_write()?;
                let patch =
                    json!({ "metadata": { "labels": { names::KATA_POOL_ROLE_LABEL: null } } });
                Api::<Node>::all(self.client.clone())
                    .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_error(format!("unlabelling node {node}")))?;
                Ok(())
            }
            // Releasing the health manager's fields removes the labels only
            // we set; the same release on the status subresource removes our
            // condition.
            Step::ClearNode { node } => {
                self.apply_node(node, names::MANAGER_HEALTH, json!({}))
                    .await?;
                let body = json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": node }, "status": {} });
                self.spend_write()?;
                Api::<Node>::all(self.client.clone())
                    .patch_status(
                        node,
                        &PatchParams::apply(names::MANAGER_HEALTH).force(),
                        &Patch::Apply(&body),
                    )
                    .await
                    .map_err(api_error(format!(
                        "removing the KataRuntimeReady condition of node {node}"
                    )))?;
                Ok(())
            }
            Step::ApplyRuntimeClass(rc) => {
                self.spend_write()?;
                let rc: RuntimeClass = serde_json::from_value(rc.clone()).unwrap_or_default();
                Api::<RuntimeClass>::all(self.client.clone())
                    .patch(
                        names::RUNTIME_CLASS_NAME,
                        &PatchParams::apply(names::MANAGER).force(),
                        &Patch::Apply(&rc),
                    )
                    .await
                    .map_err(api_error("applying RuntimeClass kata"))?;
                Ok(())
            }
            Step::DeleteRuntimeClass => {
                self.spend_write()?;
                let result = Api::<RuntimeClass>::all(self.client.clone())
                    .delete(names::RUNTIME_CLASS_NAME, &DeleteParams::default())
                    .await;
                ignore_not_found(result).map_err(api_error("deleting RuntimeClass kata"))
            }
        }
    }

    async fn write_status(&self, config: &KataConfig, new: &KataConfigStatus) -> Result<(), Error> {
        let name = config.name_any();
        let body = json!({
            "apiVersion": KataConfig::api_version(&()),
            "kind": KataConfig::kind(&()),
            "status": new,
        });
        self.spend_write()?;
        Api::<KataConfig>::all(self.client.clone())
            .patch_status(
                &name,
                &PatchParams::apply(names::MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(api_error(format!("writing status of KataConfig {name}")))?;
        let old = config
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for changed in status::changed(old, &new.conditions) {
            // Only the condition that says what is happening becomes an Event.
            if changed.type_ == condition::READY
                || (changed.type_ == condition::DEGRADED && changed.status == "True")
            {
                self.publish(
                    config,
                    changed.type_ == condition::DEGRADED,
                    &changed.reason,
                    &changed.message,
                )
                .await;
            }
        }
        Ok(())
    }

    async fn publish(&self, config: &KataConfig, warning: bool, reason: &str, message: &str) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if self.spend_write().is_err() {
            return;
        }
        if let Err(e) = self
            .recorder
            .publish(&event, &object_reference(config))
            .await
        {
            warn!(error = %e, "could not publish an Event");
        }
    }
}

/// The node's `KataRuntimeReady` condition, written by the labeller.
pub(crate) fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == names::NODE_CONDITION)
}

/// A delete that finds nothing has done its job.
fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

fn object_reference(config: &KataConfig) -> ObjectReference {
    config.object_ref(&())
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::AddFinalizer => "AddFinalizer",
        Step::ApplyPool(_) => "ApplyPool",
        Step::ApplyMachineConfig(_) => "ApplyMachineConfig",
        Step::ApplyContainerRuntimeConfig(_) => "ApplyContainerRuntimeConfig",
        Step::DeleteContainerRuntimeConfig => "DeleteContainerRuntimeConfig",
        Step::SetPoolRole { .. } => "SetPoolRole",
        Step::ApplyRuntimeClass(_) => "ApplyRuntimeClass",
        Step::DeleteRuntimeClass => "DeleteRuntimeClass",
        Step::DeleteMachineConfig => "DeleteMachineConfig",
        Step::DeletePool => "DeletePool",
        Step::ClearNode { .. } => "ClearNode",
        Step::RemoveFinalizer => "RemoveFinalizer",
    }
}

fn observed_pool(pool: &Value) -> ObservedPool {
    ObservedPool {
        rendered_config: pool["spec"]["configuration"]["name"]
            .as_str()
            .map(str::to_string),
        sources: pool["spec"]["configuration"]["source"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_string))
            .collect(),
        machine_count: pool["status"]["machineCount"].as_i64().unwrap_or(0),
    }
}

/// The KataConfig that acts: the oldest (then the first by name). Admission
/// refuses a second one; this settles a race between two creations.
fn active_config(configs: &Store<KataConfig>) -> Option<String> {
    configs
        .state()
        .iter()
        .min_by_key(|c| (c.creation_timestamp().map(|t| t.0), c.name_any()))
        .map(|c| c.name_any())
}

#[instrument(skip_all, fields(kataconfig = %config.name_any()))]
async fn reconcile(config: Arc<KataConfig>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.options.metrics.reconciles.inc();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = config.meta().generation;
    if let Some(active) = active_config(&ctx.configs).filter(|a| *a != config.name_any()) {
        let message = format!(
            "only one KataConfig acts per cluster and {active} is the active one; delete this one"
        );
        let conditions = [
            ConditionState {
                type_: condition::READY,
                status: false,
                reason: "AnotherKataConfigExists".into(),
                message: message.clone(),
            },
            ConditionState {
                type_: condition::DEGRADED,
                status: true,
                reason: "AnotherKataConfigExists".into(),
                message,
            },
        ];
        let new = status::status(
            config.status.as_ref(),
            Default::default(),
            Vec::new(),
            &conditions,
            generation,
            &now,
        );
        if config.status.as_ref() != Some(&new) {
            ctx.write_status(&config, &new).await?;
        }
        return Ok(Action::await_change());
    }

    let observed = ctx.observe(&config).await?;
    let plan = plan::plan(&observed);
    for step in &plan.steps {
        ctx.execute(&config, step).await?;
    }
    if plan.steps.contains(&Step::RemoveFinalizer) {
        info!("uninstall complete; finalizer removed");
        return Ok(Action::await_change());
    }
    let new = status::status(
        config.status.as_ref(),
        plan.nodes,
        plan.runtime_classes,
        &plan.conditions,
        generation,
        &now,
    );
    if config.status.as_ref() != Some(&new) {
        ctx.write_status(&config, &new).await?;
    }
    Ok(Action::requeue(
        plan.requeue_after.unwrap_or(Duration::from_secs(300)),
    ))
}

fn error_policy(_config: Arc<KataConfig>, error: &Error, ctx: Arc<Context>) -> Action {
    let reason = match error {
        Error::Api { .. } => "ApiError",
        Error::WriteBudgetSpent(_) => "Stopped",
    };
    ctx.options
        .metrics
        .reconcile_errors
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: reason.into(),
        })
        .inc();
    warn!(%error, "reconcile failed; retrying");
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
        if let Some(c) = ready_condition(n) {
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

/// Drops what the coordinator never reads from its cached Nodes: the
/// managed-fields bookkeeping and the image list are most of a real Node's
/// size, and the caches hold every node of the cluster.
pub fn slim_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

fn pool_events(
    client: &Client,
    writer: reflector::store::Writer<DynamicObject>,
) -> impl Stream<Item = ()> + Send + 'static {
    let api = Api::<DynamicObject>::all_with(client.clone(), &pool_resource());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// Runs the KataConfig controller until the process ends (or, with
/// [`Options::stop_after_writes`], until the budget is spent). Its node watch
/// keeps `node_writer`'s cache, which the node labeller reads too: one copy
/// of every Node in memory, not one per part.
pub async fn run(
    client: Client,
    options: Options,
    writes: Arc<WriteCounter>,
    node_writer: reflector::store::Writer<Node>,
) {
    let nodes = node_writer.as_reader();
    let pool_writer = reflector::store::Writer::<DynamicObject>::new(pool_resource());
    let pools = pool_writer.as_reader();
    let configs_api = Api::<KataConfig>::all(client.clone());
    let controller = Controller::new(configs_api, watcher::Config::default().any_semantic());
    let configs = controller.store();
    let stop = Arc::new(Notify::new());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kata-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        nodes,
        pools,
        configs,
        writes,
        options,
        stop: stop.clone(),
    });
    let triggers = futures::stream::select(
        node_events(&client, node_writer),
        pool_events(&client, pool_writer),
    );
    let runtime_classes = watcher(
        Api::<RuntimeClass>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={}", names::RUNTIME_CLASS_NAME)),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) });
    let controller = controller
        .reconcile_all_on(futures::stream::select(triggers, runtime_classes))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "controller");
            }
        });
    tokio::select! {
        () = controller => {}
        () = stop.notified() => info!("write budget spent; stopping"),
    }
}
