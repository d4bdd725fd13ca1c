//! Support code shared by the integration tests: a real local control plane
//! (etcd + kube-apiserver), the Machine Config Operator simulator, and fake
//! host roots for the node-agent's probes.

pub mod api_requests;
pub mod bench_support;
pub mod child_process;
pub mod cluster;
pub mod control_plane;
pub mod crio;
pub mod demo_world;
pub mod health_fixture;
pub mod host_root;
pub mod ignition;
pub mod mco_simulator;
pub mod operator;
pub mod pki;
pub mod promtool;
pub mod stalling_proxy;

use std::path::Path;

pub use control_plane::ControlPlane;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("test set-up: {0}")]
    Setup(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error(
        "control plane: {what}\n--- etcd log (tail) ---\n{etcd_log}\n--- kube-apiserver log (tail) ---\n{api_server_log}"
    )]
    ControlPlane {
        what: String,
        etcd_log: String,
        api_server_log: String,
    },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
