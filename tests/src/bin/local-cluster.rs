//! `local-cluster DIR`: runs a local control plane (etcd + kube-apiserver, with
//! the OpenShift MachineConfig CRDs installed) until SIGTERM or SIGINT, keeping
//! its certificates, logs and kubeconfig in DIR. When it is ready it writes
//! the kubeconfig's path to `DIR/ready`. `make cluster-up` runs it in the
//! background; `make cluster-down` stops it.

use std::path::PathBuf;
use std::process::ExitCode;

use kata_tests::ControlPlane;
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: local-cluster DIR");
        return ExitCode::from(2);
    };
    match run(dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(dir: PathBuf) -> Result<(), Box<dyn std::error::Error>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let plane = ControlPlane::start_in_dir(dir.clone()).await?;
    plane.install_openshift_crds().await?;
    let kubeconfig = std::fs::canonicalize(plane.kubeconfig())?;
    std::fs::write(dir.join("ready"), kubeconfig.display().to_string())?;
    eprintln!(
        "local-cluster: API server at {} (kubeconfig {})",
        plane.api_server_url(),
        kubeconfig.display()
    );
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("local-cluster: stopping");
    drop(plane);
    Ok(())
}
