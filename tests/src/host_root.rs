//! Fake host roots for the node-agent probes: [`kata_node_agent::fixtures`].

pub use kata_node_agent::fixtures::*;
