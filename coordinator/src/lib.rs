//! The kata-operator coordinator: the `KataConfig` API, the decisions that
//! turn it into MachineConfig, MachineConfigPool, RuntimeClass and node
//! labels (pure: [`plan`], [`objects`], [`selector`], [`status`]), and the
//! controller that observes the cluster and applies them ([`reconciler`]).

pub mod api;
pub mod api_reference;
pub mod app;
pub mod health;
pub mod leader;
pub mod logging;
pub mod manifests;
pub mod metrics;
pub mod names;
pub mod objects;
pub mod plan;
pub mod rbac;
pub mod reconciler;
pub mod selector;
pub mod status;
