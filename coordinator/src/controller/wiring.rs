//! The controller's watches and its run loop.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::node::v1::RuntimeClass;

use super::throttle;
use crate::profiles::KataRuntimeProfile;
use kube::Client;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{Context, Options, error_policy, reconcile};
use crate::api::KataConfig;
use crate::applier::{self, Applier};
use crate::backend::Backend;
use crate::node::{CachedNode, KeptLabels, kata_ready_condition, slim_node};

/// A watch of every RuntimeClass (`kata`, the runtime profiles', and any a
/// profile's name would collide with: a cluster has a handful), kept in
/// `writer`, that fires on every change.
fn runtime_class_changes(
    client: &Client,
    writer: reflector::store::Writer<RuntimeClass>,
) -> impl Stream<Item = ()> + Send + 'static {
    watcher(
        Api::<RuntimeClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// A watch that fires on every change of a runtime profile. Where their CRD
/// is not installed it only backs off, and the reconcile reads none.
fn profile_changes(client: &Client) -> impl Stream<Item = ()> + Send + 'static {
    watcher(
        Api::<KataRuntimeProfile>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// A watch that fires when a node's labels, the annotations the backend
/// reads (`annotations_read`) or its `KataRuntimeReady` condition change
/// (not on status heartbeats, nor on others' annotations), and when the
/// cache has been listed again with new label keys, keeping `writer` up to
/// date with nodes cut down to what is read ([`slim_node`]). Each change of
/// the keys `kept` wants ends the watch and starts another, which lists
/// every node with them.
fn node_events(
    client: &Client,
    writer: reflector::store::Writer<CachedNode>,
    annotations_read: &'static [&'static str],
    kept: KeptLabels,
) -> impl Stream<Item = ()> + Send + 'static {
    let label_or_annotation = |n: &CachedNode| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        predicates::labels(n).hash(&mut hasher);
        n.annotations().hash(&mut hasher);
        if let Some(c) = kata_ready_condition(n) {
            (&c.status, &c.reason, &c.message).hash(&mut hasher);
        }
        Some(hasher.finish())
    };
    let (client, listing) = (client.clone(), kept.clone());
    let watches = futures::stream::repeat_with(move || {
        let mut wanted = listing.subscribe();
        let keys = wanted.borrow_and_update().clone();
        listing.list_started(keys.clone());
        let keys_changed = async move {
            if wanted.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        watcher(Api::<CachedNode>::all(client.clone()), node_list_config())
            .default_backoff()
            .modify(move |node| slim_node(node, annotations_read, &keys))
            .take_until(keys_changed)
    })
    .flatten();
    let lists = kept.lists();
    let changes = watches
        .reflect(writer)
        .inspect_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                kept.list_done();
            }
        })
        .applied_objects()
        .predicate_filter(label_or_annotation, Default::default())
        .filter_map(|r| async move { r.ok().map(|_| ()) });
    futures::stream::select(changes, lists)
}

/// Nodes per page of the node watch's (re)list.
const NODE_LIST_PAGE: u32 = 100;

/// How the node watch lists: in pages of [`NODE_LIST_PAGE`], read at the
/// latest version. kube's client reads a whole page into memory, then the
/// full Nodes of it, before [`slim_node`] cuts each down; at a few tens of
/// KiB a real Node, a page of 100 is some 2 MiB of text. The "any version"
/// list would be served from the API server's watch cache, which ignores
/// the page size and sends every node at once (5,000 nodes: some 90 MiB of
/// JSON to hold). Streaming lists would avoid pages altogether, but need the
/// API server's WatchList feature, which the Kubernetes releases OpenShift
/// 4.x ships do not all enable.
fn node_list_config() -> watcher::Config {
    watcher::Config::default().page_size(NODE_LIST_PAGE)
}

/// The KataConfig controller, built but not yet running: its KataConfig
/// cache can be handed to other parts (the labeller) first.
pub struct KataConfigController {
    client: Client,
    options: Options,
    node_writer: reflector::store::Writer<CachedNode>,
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
        node_writer: reflector::store::Writer<CachedNode>,
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

    /// Where the controller publishes the runtime profiles it renders, for
    /// the agents' side.
    pub fn profiles_in_force(&self) -> crate::profiles::InForce {
        self.options.profiles_in_force.clone()
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
        let kept_labels = KeptLabels::default();
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
            kept_labels: kept_labels.clone(),
            rollout: backend.source,
            configs: controller.store(),
            runtime_classes: runtime_class_writer.as_reader(),
            profiles: std::sync::Mutex::default(),
            kata_pods: std::sync::Mutex::default(),
            working: std::sync::Mutex::default(),
            written_from: std::sync::Mutex::default(),
            options,
        });
        let triggers = futures::stream::select(
            node_events(
                &client,
                node_writer,
                backend.node_annotations,
                kept_labels.clone(),
            ),
            backend.triggers,
        );
        let others = futures::stream::select(
            runtime_class_changes(&client, runtime_class_writer),
            profile_changes(&client),
        );
        let controller = controller
            .reconcile_all_on(throttle::throttled(
                futures::stream::select(triggers, others).boxed(),
                throttle::PERIOD,
            ))
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
