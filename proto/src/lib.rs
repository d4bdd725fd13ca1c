//! Generated protocol types.
//!
//! * [`contract`]: the values coordinator and agent must agree on.
//! * [`metrics_text`]: the classic Prometheus text both serve.
//! * [`health::v1`]: the stream every node-agent keeps open to the coordinator.
//! * [`cri::v1`]: the subset of the CRI `RuntimeService` the agent uses to ask
//!   CRI-O which runtime handlers it really serves. Field numbers match the
//!   upstream `k8s.io/cri-api` `runtime.v1` package, so it is wire-compatible.

pub mod codec;
pub mod contract;
pub mod metrics_text;

pub mod health {
    pub mod v1 {
        tonic::include_proto!("kata.health.v1");
    }
}

pub mod cri {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
