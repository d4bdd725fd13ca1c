//! The MCO backend's I/O: the watches of the pools, of our MachineConfigs
//! and of every ContainerRuntimeConfig (which wake the reconciler when the
//! MCO, or anyone, changes them), and reading the rendered configs
//! master-pool nodes run.

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use std::collections::BTreeSet;

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::names::{self, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL};
use super::{MachineConfigRollout, ObservedPool, observe};
use crate::backend::{Backend, ObservedRollout, ReadError, RolloutSource};
use crate::kind::Kind;
use crate::plan::ObservedNode;

async fn get(client: &Client, kind: Kind, name: &str) -> Result<Option<Value>, ReadError> {
    let object = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource())
        .get_opt(name)
        .await
        .map_err(|source| ReadError {
            what: format!("{} {name}", kind.kind),
            source,
        })?;
    Ok(object.and_then(|o| serde_json::to_value(o).ok()))
}

/// The objects we own, each MachineConfig from a watch of its one name,
/// and every ContainerRuntimeConfig (ours and other admins': the MCO
/// renders no pool while one selecting it fails): a change by anyone wakes
/// the reconciler, and no reconcile reads them again.
#[derive(Clone)]
pub struct OwnedStores {
    /// One per name a MachineConfig of ours may have
    /// ([`names::OUR_MACHINE_CONFIG_NAMES`], in that order).
    pub machine_configs: Vec<Store<DynamicObject>>,
    pub runtime_configs: Store<DynamicObject>,
}

impl OwnedStores {
    /// Resolves once every watch has listed.
    pub async fn wait_until_ready(&self) {
        for store in self.machine_configs.iter().chain([&self.runtime_configs]) {
            let _ = store.wait_until_ready().await;
        }
    }

    /// Our MachineConfigs that exist, by name.
    fn machine_configs(&self) -> Vec<(&'static str, Value)> {
        names::OUR_MACHINE_CONFIG_NAMES
            .into_iter()
            .zip(&self.machine_configs)
            .filter_map(|(name, store)| held(store).map(|mc| (name, mc)))
            .collect()
    }
}

/// The object a one-name watch holds, as the API server returned it.
fn held(store: &Store<DynamicObject>) -> Option<Value> {
    store
        .state()
        .first()
        .and_then(|o| serde_json::to_value(o.as_ref()).ok())
}

/// A watch of the objects of `kind` that `config` selects, keeping a store
/// of them, and firing on every change of one.
fn watch_kind(
    client: &Client,
    kind: Kind,
    config: watcher::Config,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = ()> + Send + 'static,
) {
    let writer = reflector::store::Writer::new(kind.api_resource());
    let store = writer.as_reader();
    let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
    let events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .filter_map(|r| async move { r.ok().map(|_| ()) });
    (store, events)
}

/// A watch of the one object `name` of `kind` (a `metadata.name` field
/// selector: the RBAC limits list and watch to our names).
fn watch_named(
    client: &Client,
    kind: Kind,
    name: &str,
) -> (
    Store<DynamicObject>,
    impl Stream<Item = ()> + Send + 'static,
) {
    let selected = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watch_kind(client, kind, selected)
}

/// The watches of our MachineConfigs and of every ContainerRuntimeConfig,
/// their stores, and one stream of their changes.
pub fn owned_watches(client: &Client) -> (OwnedStores, impl Stream<Item = ()> + Send + 'static) {
    let (machine_configs, events): (Vec<_>, Vec<_>) = names::OUR_MACHINE_CONFIG_NAMES
        .into_iter()
        .map(|name| {
            let (store, events) = watch_named(client, MACHINE_CONFIG, name);
            (store, events.boxed())
        })
        .unzip();
    let (runtime_configs, c) =
        watch_kind(client, CONTAINER_RUNTIME_CONFIG, watcher::Config::default());
    let stores = OwnedStores {
        machine_configs,
        runtime_configs,
    };
    let events = futures::stream::select(futures::stream::select_all(events), c);
    (stores, events)
}

/// Every ContainerRuntimeConfig, ours (any of our names) apart from the
/// others, as the API server returned them.
fn runtime_configs(store: &Store<DynamicObject>) -> (Vec<(&'static str, Value)>, Vec<Value>) {
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for crc in store.state() {
        let Ok(value) = serde_json::to_value(crc.as_ref()) else {
            continue;
        };
        let name = crc.metadata.name.as_deref().unwrap_or_default();
        match names::OUR_CONTAINER_RUNTIME_CONFIG_NAMES
            .into_iter()
            .find(|n| *n == name)
        {
            Some(ours_named) => ours.push((ours_named, value)),
            None => foreign.push(value),
        }
    }
    foreign.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    (ours, foreign)
}

/// The MCO side of the snapshot: the pools and our MachineConfigs and
/// ContainerRuntimeConfigs from the watches' caches, and the rendered
/// configs that master-pool nodes able to get Kata run (one read per
/// distinct config; none on a cluster whose masters are not workers).
pub async fn observe(
    client: &Client,
    pools: &Store<DynamicObject>,
    owned: &OwnedStores,
    nodes: &[ObservedNode],
) -> Result<MachineConfigRollout, ReadError> {
    let pool_object = pools
        .get(&ObjectRef::new_with(names::POOL_NAME, POOL.api_resource()))
        .and_then(|p| serde_json::to_value(p.as_ref()).ok());
    let mut observed_pools = observed_pools(pools);
    observed_pools.sort_by(|a, b| a.name.cmp(&b.name));
    let master_rendered_prefix = format!("rendered-{}-", names::MASTER_POOL);
    let master_configs: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.has_label(crate::names::WORKER_ROLE_LABEL))
        .filter_map(|n| observe::current_config(&n.annotations))
        .filter(|c| c.starts_with(&master_rendered_prefix))
        .collect();
    let mut rendered_with_kata = BTreeSet::new();
    for config in master_configs {
        if get(client, MACHINE_CONFIG, config)
            .await?
            .is_some_and(|rendered| observe::carries_kata(&rendered))
        {
            rendered_with_kata.insert(config.to_string());
        }
    }
    let (our_runtime_configs, foreign_runtime_configs) = runtime_configs(&owned.runtime_configs);
    let mut rollout = MachineConfigRollout {
        pools: observed_pools,
        pool_object,
        foreign_runtime_configs,
        rendered_with_kata,
        ..Default::default()
    };
    rollout.hold_ours(owned.machine_configs(), our_runtime_configs);
    Ok(rollout)
}

/// Every pool in the pool watch's cache, as the planner reads it.
fn observed_pools(pools: &Store<DynamicObject>) -> Vec<ObservedPool> {
    pools
        .state()
        .iter()
        .filter_map(|p| serde_json::to_value(p.as_ref()).ok())
        .map(|p| ObservedPool::from_object(&p))
        .collect()
}

/// A store for the pool watch.
pub fn pool_store() -> reflector::store::Writer<DynamicObject> {
    reflector::store::Writer::new(POOL.api_resource())
}

/// Fires whenever a pool changes (the MCO rendering or rolling), keeping
/// `writer` up to date.
pub fn pool_events(
    client: &Client,
    writer: reflector::store::Writer<DynamicObject>,
) -> impl Stream<Item = ()> + Send + 'static {
    let api = Api::<DynamicObject>::all_with(client.clone(), &POOL.api_resource());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .filter_map(|r| async move { r.ok().map(|_| ()) })
}

/// The MCO backend's caches: every pool, and our own objects by name.
struct MachineConfigSource {
    client: Client,
    pools: Store<DynamicObject>,
    owned: OwnedStores,
}

impl RolloutSource for MachineConfigSource {
    fn wait_until_ready(&self) -> BoxFuture<'_, ()> {
        async {
            let _ = self.pools.wait_until_ready().await;
            self.owned.wait_until_ready().await;
        }
        .boxed()
    }

    fn observe<'a>(
        &'a self,
        nodes: &'a [ObservedNode],
    ) -> BoxFuture<'a, Result<ObservedRollout, ReadError>> {
        async move {
            let rollout = observe(&self.client, &self.pools, &self.owned, nodes).await?;
            Ok(Box::new(rollout) as ObservedRollout)
        }
        .boxed()
    }

    /// Every pool's `nodeSelector` keys: which pool a node is in.
    fn node_label_keys(&self) -> Vec<String> {
        observed_pools(&self.pools)
            .iter()
            .flat_map(|pool| crate::selector::keys(pool.node_selector.as_ref()))
            .map(str::to_owned)
            .collect()
    }
}

/// The MCO backend: the pool watch, the watches of our objects, and the
/// reads of the rendered configs.
pub fn backend(client: &Client) -> Backend {
    let pool_writer = pool_store();
    let pools = pool_writer.as_reader();
    let (owned, owned_events) = owned_watches(client);
    let triggers = futures::stream::select(pool_events(client, pool_writer), owned_events);
    Backend {
        source: Arc::new(MachineConfigSource {
            client: client.clone(),
            pools,
            owned,
        }),
        triggers: triggers.boxed(),
        node_annotations: &names::NODE_ANNOTATIONS,
    }
}
