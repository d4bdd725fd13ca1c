//! `release-fixture RELEASE`: installs Kata with this build's coordinator on
//! a local cluster (a real control plane, the MCO simulator, a master and
//! two workers), waits until it is installed and settled, and writes what
//! it left to `tests/fixtures/releases/RELEASE.json` (see
//! `kata_tests::release_fixture`). Run at a release's commit
//! (`make release-fixture RELEASE=v0.1.0`): later versions are tested
//! taking that cluster over.

use std::process::ExitCode;
use std::time::Duration;

use kata_tests::cluster::{Cluster, WORKER, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::release_fixture;
use serde_json::json;

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(release) = std::env::args().nth(1) else {
        eprintln!("usage: release-fixture RELEASE (for example v0.1.0)");
        return ExitCode::from(2);
    };
    let cluster = Cluster::start(&[("m0", &[MASTER]), ("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    let (_coordinator, metrics) = RunningCoordinator::with_metrics(cluster.client.clone());
    cluster
        .create_kataconfig("example-kataconfig", json!({}))
        .await;
    cluster
        .wait_condition("example-kataconfig", "Ready", "True", "Installed")
        .await;
    // Whatever the coordinator still writes after Ready (the status's last
    // words) is part of what it leaves.
    reconcile_rounds(&cluster.client, &metrics, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fixture = match release_fixture::capture(&cluster.client, &release).await {
        Ok(fixture) => fixture,
        Err(error) => {
            eprintln!("capturing the cluster failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let path = release_fixture::path(&release);
    let written = std::fs::create_dir_all(path.parent().unwrap_or(&path)).and_then(|()| {
        let text = serde_json::to_string_pretty(&fixture).unwrap_or_default();
        std::fs::write(&path, text + "\n")
    });
    match written {
        Ok(()) => {
            println!(
                "{} writes captured in {}",
                fixture.writes.len(),
                path.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            ExitCode::FAILURE
        }
    }
}
