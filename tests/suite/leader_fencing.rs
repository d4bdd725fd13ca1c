//! Leader election fences itself on a real Lease: a leader whose renewals
//! hang stops acting before the lease can expire for a standby, and no
//! standby takes a live lease when its clock, or the holder's, is minutes
//! off.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::SignedDuration;
use kata_coordinator::app::{AppError, RunOptions};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::leader::{LeaderElector, LeaseOptions, OffsetClock};
use kata_tests::ControlPlane;
use kata_tests::cluster::CONVERGE;
use kata_tests::demo_world::{NAMESPACE, create_agent_identity, free_addr};
use kata_tests::eventually;
use kata_tests::http::http_get;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::stalling_proxy::StallingProxy;
use kube::Client;
use kube::api::Api;
use tokio::task::JoinHandle;

const LEASE_NAME: &str = "kata-operator-coordinator";
/// Short, so the tests wait seconds; the renew deadline is two thirds of it.
const LEASE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(300);

fn lease_options(identity: &str) -> LeaseOptions {
    LeaseOptions {
        namespace: NAMESPACE.into(),
        name: LEASE_NAME.into(),
        identity: identity.into(),
        duration: LEASE,
        retry: RETRY,
    }
}

struct Replica {
    task: JoinHandle<Result<(), AppError>>,
    metrics: SocketAddr,
}

/// A whole coordinator (no agents' channel) competing for the lease.
fn start_replica(client: Client, identity: &str) -> Replica {
    let metrics = free_addr().unwrap();
    let options = RunOptions {
        log_filter: None,
        heap: None,
        agents: None,
        metrics_listen: metrics,
        operands: None,
        mark_policy: MarkPolicy::default(),
        leader_election: Some(lease_options(identity)),
    };
    Replica {
        task: tokio::spawn(kata_coordinator::app::run(client, options)),
        metrics,
    }
}

/// A replica that has started and, another holding the lease, reports
/// not ready.
async fn start_standby(client: Client, identity: &str) -> Replica {
    let standby = start_replica(client, identity);
    eventually(
        &format!("{identity} runs as a standby"),
        CONVERGE,
        || async {
            Ok(matches!(
                http_get(standby.metrics, "/readyz").await,
                Ok((503, _))
            ))
        },
    )
    .await
    .unwrap();
    standby
}

async fn is_ready(replica: &Replica) -> bool {
    matches!(http_get(replica.metrics, "/readyz").await, Ok((200, _)))
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>, String> {
    leases
        .get_opt(LEASE_NAME)
        .await
        .map_err(|e| e.to_string())
        .map(|lease| lease.and_then(|l| l.spec?.holder_identity))
}

/// A control plane with the operator's API and namespace, an admin client,
/// and the namespace's Leases.
async fn control_plane() -> (ControlPlane, Client, Api<Lease>) {
    let plane = control_plane_with_operator_api().await.unwrap();
    let client = plane.client().await.unwrap();
    create_agent_identity(&client).await.unwrap();
    let leases = Api::<Lease>::namespaced(client.clone(), NAMESPACE);
    (plane, client, leases)
}

#[kata_test]
async fn a_leader_whose_renewals_hang_stops_before_the_standby_takes_over() {
    let (plane, client, leases) = control_plane().await;
    // The leader reaches the API server through a proxy that can stall; the
    // standby directly.
    let proxy = StallingProxy::in_front_of(&plane).await.unwrap();
    let leader = start_replica(proxy.client(&plane).await.unwrap(), "replica-a");
    eventually("replica-a leads and is ready", CONVERGE, || async {
        Ok(is_ready(&leader).await
            && scrape_metric(leader.metrics, "kata_operator_leader").await? == 1.0
            && holder(&leases).await?.as_deref() == Some("replica-a"))
    })
    .await
    .unwrap();
    let standby = start_standby(client.clone(), "replica-b").await;

    // Every request of the leader's now hangs, its next lease PUT among them,
    // and keeps hanging: the proxy is never resumed.
    proxy.stall();
    let mut leader_stopped = false;
    eventually("replica-b takes the lease over", CONVERGE, || {
        // Read before the lease: if replica-b holds it, replica-a had
        // already stopped when we looked (its stop comes a whole
        // lease duration minus the renew deadline earlier).
        leader_stopped = leader.task.is_finished();
        let stopped = leader_stopped;
        let leases = leases.clone();
        async move {
            let holder = holder(&leases).await?;
            if holder.as_deref() == Some("replica-b") {
                assert!(
                    stopped,
                    "replica-b took the lease while replica-a still acted"
                );
                return Ok(true);
            }
            Ok(false)
        }
    })
    .await
    .unwrap();
    assert!(leader_stopped);
    let outcome = leader.task.await.unwrap();
    assert!(
        matches!(outcome, Err(AppError::LostLeadership)),
        "replica-a must stop for the lost lease, not {outcome:?}"
    );
    eventually("replica-b is ready", CONVERGE, || async {
        Ok(is_ready(&standby).await
            && scrape_metric(standby.metrics, "kata_operator_leader").await? == 1.0)
    })
    .await
    .unwrap();
    let spec = leases.get(LEASE_NAME).await.unwrap().spec.unwrap();
    assert_eq!(spec.lease_transitions, Some(1), "one hand-over: a to b");
    standby.task.abort();
}

#[kata_test]
async fn a_standby_with_a_skewed_clock_does_not_take_a_live_lease() {
    // Kept to the end: dropping the control plane stops the API server.
    let (_plane, client, leases) = control_plane().await;
    let leader = start_replica(client.clone(), "replica-a");
    eventually("replica-a leads and is ready", CONVERGE, || async {
        Ok(is_ready(&leader).await && holder(&leases).await?.as_deref() == Some("replica-a"))
    })
    .await
    .unwrap();

    // Two standbys, clocks ten minutes ahead and behind: compared with
    // replica-a's renewTime, one would find the lease long expired.
    let skewed = |identity: &str, minutes: i64| {
        LeaderElector::new(client.clone(), lease_options(identity))
            .with_clock(Arc::new(OffsetClock(SignedDuration::from_mins(minutes))))
    };
    let ahead = skewed("replica-ahead", 10);
    let behind = skewed("replica-behind", -10);
    // Several lease durations of trying: neither may win.
    let tries = async {
        tokio::join!(ahead.acquire(), behind.acquire());
    };
    assert!(
        tokio::time::timeout(LEASE * 4, tries).await.is_err(),
        "a standby with a skewed clock took a live lease"
    );
    assert_eq!(holder(&leases).await.unwrap().as_deref(), Some("replica-a"));
    assert!(is_ready(&leader).await, "replica-a must still lead");

    // Once replica-a is gone the record stops changing, and a skewed standby
    // takes the lease after a lease duration on its own clock.
    leader.task.abort();
    let _ = leader.task.await;
    tokio::time::timeout(CONVERGE, behind.acquire())
        .await
        .expect("the standby takes the lease once it expired");
    let spec = leases.get(LEASE_NAME).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-behind"));
    assert_eq!(spec.lease_transitions, Some(1));

    // Now the holder's clock is the skewed one: every renewTime it writes
    // looks ten minutes old. A whole coordinator standing by must still wait.
    // replica-behind renews all along: its hold() runs beside the standby.
    let stand_by = async {
        let standby = start_standby(client.clone(), "replica-b").await;
        tokio::time::sleep(LEASE * 4).await;
        standby
    };
    let standby = tokio::select! {
        () = behind.hold() => panic!("replica-behind lost a lease it renews"),
        standby = stand_by => standby,
    };
    assert!(
        !is_ready(&standby).await,
        "a coordinator took a live lease whose holder's clock is behind"
    );
    assert_eq!(
        holder(&leases).await.unwrap().as_deref(),
        Some("replica-behind")
    );
    standby.task.abort();
}
