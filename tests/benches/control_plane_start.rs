//! How long one local control plane takes to start (etcd + kube-apiserver to
//! `/readyz`) and to install the OpenShift and KataConfig CRDs. Prints figures;
//! asserts nothing. `cargo bench -p kata-tests --bench control_plane_start`

use std::time::{Duration, Instant};

use kata_tests::ControlPlane;
use kata_tests::manifests::kata_coordinator_crd;

const RUNS: u32 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ready = Duration::ZERO;
    let mut with_crds = Duration::ZERO;
    for _ in 0..RUNS {
        let start = Instant::now();
        let plane = ControlPlane::start().await?;
        ready += start.elapsed();
        plane.install_openshift_crds().await?;
        plane.install_crds(&[kata_coordinator_crd()]).await?;
        with_crds += start.elapsed();
        drop(plane);
    }
    println!(
        "control plane ready (etcd + kube-apiserver /readyz): {:.2} s mean of {RUNS}",
        ready.as_secs_f64() / f64::from(RUNS)
    );
    println!(
        "ready with the 4 CRDs served:                        {:.2} s mean of {RUNS}",
        with_crds.as_secs_f64() / f64::from(RUNS)
    );
    Ok(())
}
