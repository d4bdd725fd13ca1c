//! This version takes over a cluster each release installed, with no
//! rollout: the release's fixture (`tests/fixtures/releases/`, what its
//! coordinator left: every apply of its field managers, see
//! `kata_tests::release_fixture`) is loaded into a real API server with the
//! MCO simulator, then this version's coordinator starts. It must leave the
//! MachineConfigs, pools and ContainerRuntimeConfigs unwritten (their content
//! has not changed since), send no node to another rendered config, and
//! bring the status up to date in at most one write.
//!
//! Not covered here: the node-agents of that release (its health protocol)
//! and the Lease; the KataConfig's status history beyond its last write.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::Node;
use kata_coordinator::kind;
use kata_coordinator::mco::names as mco;
use kata_test_harness::kata_test;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER, reconcile_rounds};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::release_fixture::{self, ReleaseFixture};
use kube::ResourceExt;
use kube::api::Api;

const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");
/// Every release with a fixture; each later release adds its own.
pub(crate) const RELEASES: [&str; 1] = ["v0.1.0"];

/// Loads the fixture as its release wrote it: the MCO objects first, then
/// (once the pool renders them) the node labels that move nodes into the
/// pool, then the RuntimeClass and the KataConfig. Returns once every node
/// runs its pool's rendered config.
async fn load(cluster: &Cluster, fixture: &ReleaseFixture) {
    for kind in [
        mco::MACHINE_CONFIG,
        mco::CONTAINER_RUNTIME_CONFIG,
        mco::POOL,
    ] {
        release_fixture::apply(&cluster.client, &fixture.of(kind))
            .await
            .unwrap();
    }
    eventually("the release's pool rendered", CONVERGE, || async {
        let pool = cluster
            .get_dynamic(&mco::POOL.api_resource(), mco::POOL_NAME)
            .await;
        Ok(pool.is_some_and(|p| {
            p.data["spec"]["configuration"]["source"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == mco::MACHINE_CONFIG_NAME)
        }))
    })
    .await
    .unwrap();
    for kind in [kind::NODE, kind::RUNTIME_CLASS, kind::KATA_CONFIG] {
        release_fixture::apply(&cluster.client, &fixture.of(kind))
            .await
            .unwrap();
    }
    eventually(
        "the labelled nodes on the pool's config",
        CONVERGE,
        || async {
            let Some(pool) = cluster
                .get_dynamic(&mco::POOL.api_resource(), mco::POOL_NAME)
                .await
            else {
                return Ok(false);
            };
            let rendered = pool.data["spec"]["configuration"]["name"].as_str();
            let api = Api::<Node>::all(cluster.client.clone());
            for name in fixture.nodes() {
                let node = api.get(&name).await.map_err(|e| e.to_string())?;
                let a = node.annotations();
                if a.get(mco::STATE).map(String::as_str) != Some(mco::STATE_DONE)
                    || a.get(mco::CURRENT_CONFIG).map(String::as_str) != rendered
                {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )
    .await
    .unwrap();
}

async fn takes_over(release: &str) {
    let fixture = release_fixture::read(release).unwrap();
    let nodes = fixture.nodes();
    assert!(!nodes.is_empty(), "{release}'s fixture labels no node");
    let cluster = Cluster::start(&[("m0", &[MASTER]), ("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    load(&cluster, &fixture).await;
    let config = fixture.of(kind::KATA_CONFIG)[0].name.clone();
    let all = ["m0", "w0", "w1"];
    let before = cluster.rollouts(&all);

    let (_coordinator, metrics) = RunningCoordinator::with_metrics(cluster.client.clone());
    cluster
        .wait_condition(&config, "Ready", "True", "Installed")
        .await;
    reconcile_rounds(&cluster.client, &metrics, 3).await;

    let writes = |kind: &str| metrics.api_writes.get_kind(kind);
    assert_eq!(
        (
            writes(mco::MACHINE_CONFIG.kind),
            writes(mco::POOL.kind),
            writes(mco::CONTAINER_RUNTIME_CONFIG.kind),
        ),
        (0, 0, 0),
        "{release}: the MCO's inputs are unchanged, so unwritten"
    );
    assert!(
        writes(kind::KATA_CONFIG.kind) <= 1,
        "{release}: the status migrated in at most one write, not {}",
        writes(kind::KATA_CONFIG.kind)
    );
    let after = cluster.rollouts(&all);
    assert_eq!(after, before, "{release}: no node sent anywhere");
    let installed = cluster
        .configs()
        .get(&config)
        .await
        .unwrap()
        .status
        .unwrap()
        .kata_nodes
        .installed;
    assert_eq!(installed, ["w0", "w1"], "{release}");
}

#[kata_test]
async fn each_release_with_a_fixture_is_taken_over_with_no_rollout() {
    for release in RELEASES {
        takes_over(release).await;
    }
}
