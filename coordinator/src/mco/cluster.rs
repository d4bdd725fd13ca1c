//! The MCO backend's I/O: reading our MachineConfig, ContainerRuntimeConfig
//! and pool, and the pool watch that wakes the reconciler when the MCO moves.

use futures::{Stream, StreamExt};
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use super::names::{self, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL};
use super::{MachineConfigRollout, ObservedPool};
use crate::kind::Kind;

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

/// The MCO side of the snapshot: the pool from the watch's cache, our
/// MachineConfig and ContainerRuntimeConfig read fresh.
pub async fn observe(
    client: &Client,
    pools: &Store<DynamicObject>,
) -> Result<MachineConfigRollout, ReadError> {
    let pool_object = pools
        .get(&ObjectRef::new_with(names::POOL_NAME, POOL.api_resource()))
        .and_then(|p| serde_json::to_value(p.as_ref()).ok());
    Ok(MachineConfigRollout {
        pool: pool_object.as_ref().map(ObservedPool::from_object),
        pool_object,
        machine_config: get(client, MACHINE_CONFIG, names::MACHINE_CONFIG_NAME).await?,
        container_runtime_config: get(
            client,
            CONTAINER_RUNTIME_CONFIG,
            names::CONTAINER_RUNTIME_CONFIG_NAME,
        )
        .await?,
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
