//! Support code shared by the integration tests: a real local control plane
//! (etcd + kube-apiserver), the Machine Config Operator simulator, and fake
//! host roots for the node-agent's probes.

pub mod api_objects;
pub mod api_requests;
pub mod bench_support;
pub mod child_process;
pub mod cluster;
pub mod control_plane;
pub mod coordinator;
pub mod crio;
pub mod demo_world;
pub mod health_fixture;
pub mod host_root;
pub mod http;
pub mod ignition;
pub mod manifests;
pub mod mco_simulator;
pub mod pki;
pub mod promtool;
pub mod real_node;
pub mod release_fixture;
pub mod stalling_proxy;
pub mod workspace_binary;

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

/// Polls `check` until it returns true, or fails naming `what` and the last
/// thing `check` said.
pub async fn eventually<F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Setup(format!(
                "timed out after {timeout:?} waiting for {what}; last: {last}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
