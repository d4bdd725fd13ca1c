//! The MCO backend's I/O: reading our MachineConfigs, ContainerRuntimeConfigs
//! and the pools, and the pool watch that wakes the reconciler when the MCO moves.

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use std::collections::BTreeSet;

use super::names::{self, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL};
use super::{MachineConfigRollout, ObservedPool, observe};
use crate::kind::Kind;
use crate::plan::ObservedNode;

/// Why a read failed, naming what was read.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}: {source}")]
pub struct ReadError {
    pub what: String,
    pub source: kube::Error,
}

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

/// The MCO side of the snapshot: the pools from the watch's cache, our
/// MachineConfigs and ContainerRuntimeConfigs read fresh, and the rendered
/// configs that master-pool nodes able to get Kata run (one read per
/// distinct config; none on a cluster whose masters are not workers).
pub async fn observe(
    client: &Client,
    pools: &Store<DynamicObject>,
    nodes: &[ObservedNode],
) -> Result<MachineConfigRollout, ReadError> {
    let pool_object = pools
        .get(&ObjectRef::new_with(names::POOL_NAME, POOL.api_resource()))
        .and_then(|p| serde_json::to_value(p.as_ref()).ok());
    let mut observed_pools: Vec<ObservedPool> = pools
        .state()
        .iter()
        .filter_map(|p| serde_json::to_value(p.as_ref()).ok())
        .map(|p| ObservedPool::from_object(&p))
        .collect();
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
    Ok(MachineConfigRollout {
        pools: observed_pools,
        pool_object,
        machine_config: get(client, MACHINE_CONFIG, names::MACHINE_CONFIG_NAME).await?,
        container_runtime_config: get(
            client,
            CONTAINER_RUNTIME_CONFIG,
            names::CONTAINER_RUNTIME_CONFIG_NAME,
        )
        .await?,
        master_machine_config: get(client, MACHINE_CONFIG, names::MASTER_MACHINE_CONFIG_NAME)
            .await?,
        master_container_runtime_config: get(
            client,
            CONTAINER_RUNTIME_CONFIG,
            names::MASTER_CONTAINER_RUNTIME_CONFIG_NAME,
        )
        .await?,
        rendered_with_kata,
    })
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
