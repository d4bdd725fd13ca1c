//! The kata-operator coordinator.
//!
//! - Decides (pure): [`plan`] (targets, node phases, conditions, the steps),
//!   [`objects`] and [`mco::objects`] (the objects we own), [`selector`],
//!   [`status`].
//! - Observes: [`controller`] (watches and reads), [`mco::cluster`] behind
//!   [`backend::RolloutSource`].
//! - Writes: [`applier`], the one write path, for the controller and the
//!   health channel's [`health::labeller`] alike.
//! - Serves: [`endpoints`] (`/metrics`, `/healthz`, `/readyz`,
//!   `/log-level`) the families of [`metrics`]; [`health`] the agents.
//! - The Machine Config Operator backend lives in [`mco`], behind
//!   [`plan::rollout::HostConfigRollout`] and [`backend::RolloutSource`];
//!   [`app`] picks it.

#![warn(clippy::too_many_lines)]

pub mod api;
pub mod api_reference;
pub mod app;
pub mod applier;
pub mod backend;
pub mod controller;
pub mod endpoints;
pub mod health;
pub mod kata_pods;
pub mod kind;
pub mod leader;
pub mod logging;
pub mod manifests;
pub mod mco;
pub mod metrics;
pub mod names;
pub mod node;
pub mod objects;
pub mod operands;
pub mod plan;
pub mod prerequisites;
pub mod profiles;
pub mod rbac;

/// The KataConfig controller under the name the integration tests use.
pub mod selector;
pub mod status;

#[cfg(test)]
mod boundaries;
