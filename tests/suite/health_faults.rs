//! The health channel under faults of the API server it depends on, with the
//! whole coordinator (reconciler, gRPC server, labeller) and real agents:
//! TokenReviews failing for half a minute cost no node its label, and an
//! agent is refused once the Pod its token is bound to is deleted; a deleted
//! Node is forgotten.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::metrics::REVIEW_ERROR;
use kata_coordinator::{names, rbac};
use kata_tests::api_objects::create_node;
use kata_tests::api_objects::pod_bound_token;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::control_plane::SERVICE_ACCOUNT_ISSUER;
use kata_tests::demo_world::{
    Agent, Coordinator, NAMESPACE, create_agent_identity, free_addr, nodes_labelled,
};
use kata_tests::eventually;
use kata_tests::host_root::FakeHost;
use kata_tests::manifests::control_plane_with_operator_api;
use kata_tests::pki::TlsFiles;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// How long the TokenReview API fails: longer than the grace, so a node
/// whose agent were dropped for it would lose its label meanwhile.
const OUTAGE: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(10);

fn policy() -> MarkPolicy {
    MarkPolicy {
        grace: GRACE,
        hold_down: Duration::from_secs(5),
        join_dwell: Duration::from_secs(2),
        leave_dwell: Duration::from_secs(2),
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    }
}

async fn runtime_ready(client: &Client) -> Result<Vec<String>, String> {
    nodes_labelled(client, names::KATA_RUNTIME_LABEL)
        .await
        .map_err(|e| e.to_string())
}

fn apply() -> PatchParams {
    PatchParams::apply("kata-tests").force()
}

/// The coordinator's ClusterRole, with or without the right to review
/// tokens: what an administrator's mistake, or an API server that fails
/// the reviews, looks like to the coordinator.
async fn grant_token_reviews(admin: &Client, granted: bool) {
    let mut role = kata_coordinator::app::cluster_role();
    if !granted {
        role.rules
            .get_or_insert_default()
            .retain(|rule| !rule.resources.iter().flatten().any(|r| r == "tokenreviews"));
    }
    Api::<ClusterRole>::all(admin.clone())
        .patch(rbac::ROLE_NAME, &apply(), &Patch::Apply(&role))
        .await
        .unwrap();
}

/// A client on the coordinator's own ServiceAccount, bound to the RBAC the
/// deployment ships, with a token as its Pod would have it projected.
async fn coordinator_client(cluster: &Cluster) -> Client {
    let admin = &cluster.client;
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": rbac::SERVICE_ACCOUNT, "namespace": NAMESPACE}
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .patch(rbac::SERVICE_ACCOUNT, &apply(), &Patch::Apply(&account))
        .await
        .unwrap();
    grant_token_reviews(admin, true).await;
    let binding = rbac::cluster_role_binding();
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .patch(rbac::ROLE_NAME, &apply(), &Patch::Apply(&binding))
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), NAMESPACE)
        .patch(rbac::ROLE_NAME, &apply(), &Patch::Apply(&rbac::role()))
        .await
        .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), NAMESPACE)
        .patch(
            rbac::ROLE_NAME,
            &apply(),
            &Patch::Apply(&rbac::role_binding()),
        )
        .await
        .unwrap();
    // The API server's own audience (its issuer, as no --api-audiences is set).
    let token = pod_bound_token(
        admin,
        NAMESPACE,
        rbac::SERVICE_ACCOUNT,
        "kata-coordinator-0",
        "w0",
        SERVICE_ACCOUNT_ISSUER,
    )
    .await
    .unwrap();
    cluster.plane.client_with_token(&token).await.unwrap()
}

// Without /dev/kvm no simulated node can be runtime-ready.
#[kata_test(requires(kata_test_harness::requirement::kvm))]
async fn token_reviews_failing_for_half_a_minute_cost_no_label() {
    let cluster = Cluster::start(&[("w0", &[WORKER]), ("w1", &[WORKER])]).await;
    let admin = cluster.client.clone();
    create_agent_identity(&admin).await.unwrap();
    let hosts = [
        ("w0", FakeHost::good().with_real_kvm().unwrap()),
        ("w1", FakeHost::good().with_real_kvm().unwrap()),
    ];
    for (node, host) in &hosts {
        cluster.simulator.register_host_root(node, host.path());
    }
    let tls = TlsFiles::generate().unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let grpc = free_addr().unwrap();
    let coordinator =
        Coordinator::start(coordinator_client(&cluster).await, &tls, grpc, policy()).unwrap();
    let first = Agent::start(&admin, "w0", hosts[0].1.path(), grpc, &tls, tokens.path())
        .await
        .unwrap();
    cluster.create_kataconfig("kc", json!({})).await;
    // The rollout first: the MCO simulator staging and booting w0's new
    // deployment changes what its agent sees, and so its label, whatever
    // the TokenReviews do.
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    eventually("w0 runtime-ready", CONVERGE, || async {
        Ok(runtime_ready(&admin).await? == ["w0"])
    })
    .await
    .unwrap();
    let failed_reviews = format!("kata_operator_token_reviews_total{{outcome=\"{REVIEW_ERROR}\"}}");
    let errors = || coordinator.metric(&failed_reviews);
    let errors_before = errors().await.unwrap_or(0.0);

    // The reviews fail from now on. An agent that was never admitted starts.
    grant_token_reviews(&admin, false).await;
    let second = Agent::start(&admin, "w1", hosts[1].1.path(), grpc, &tls, tokens.path())
        .await
        .unwrap();
    eventually("w1's review fails", CONVERGE, || async {
        Ok(errors().await? > errors_before)
    })
    .await
    .unwrap();
    // For the whole outage, longer than the grace: the connected agent keeps
    // checking in (its review is cached) and its node its label; the new
    // one stays out.
    let outage = std::time::Instant::now();
    while outage.elapsed() < OUTAGE {
        assert_eq!(
            runtime_ready(&admin).await.unwrap(),
            ["w0"],
            "a label changed while TokenReviews failed"
        );
        assert_eq!(
            coordinator
                .metric("kata_operator_connected_agents")
                .await
                .unwrap(),
            1.0,
            "only the agent admitted before the outage is connected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(errors().await.unwrap() > errors_before);

    // The reviews work again: the agent turned away gets in, on its own.
    grant_token_reviews(&admin, true).await;
    eventually(
        "both agents connected and runtime-ready",
        CONVERGE,
        || async {
            let connected = coordinator.metric("kata_operator_connected_agents").await?;
            let ready = nodes_labelled(&admin, names::KATA_RUNTIME_LABEL)
                .await
                .map_err(|e| e.to_string())?;
            Ok(connected == 2.0 && ready == ["w0", "w1"])
        },
    )
    .await
    .unwrap();
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    coordinator.stop().await.unwrap();
}

async fn connected_agents(coordinator: &Coordinator) -> Result<f64, String> {
    coordinator.metric("kata_operator_connected_agents").await
}

/// One worker `w0` with its agent checked in, and a coordinator under
/// `policy`; the fields keep the control plane and the files alive.
struct OneAgent {
    _plane: kata_tests::ControlPlane,
    admin: Client,
    coordinator: Coordinator,
    agent: Agent,
    _files: (FakeHost, TlsFiles, tempfile::TempDir),
}

impl OneAgent {
    async fn start(policy: MarkPolicy) -> Self {
        let plane = control_plane_with_operator_api().await.unwrap();
        let admin = plane.client().await.unwrap();
        create_agent_identity(&admin).await.unwrap();
        create_node(&admin, "w0", &[WORKER]).await.unwrap();
        let host = FakeHost::good();
        let tls = TlsFiles::generate().unwrap();
        let tokens = tempfile::tempdir().unwrap();
        let grpc = free_addr().unwrap();
        let coordinator = Coordinator::start(admin.clone(), &tls, grpc, policy).unwrap();
        let agent = Agent::start(&admin, "w0", host.path(), grpc, &tls, tokens.path())
            .await
            .unwrap();
        eventually("the agent connects", CONVERGE, || async {
            Ok(coordinator.metric("kata_operator_connected_agents").await? == 1.0)
        })
        .await
        .unwrap();
        Self {
            _plane: plane,
            admin,
            coordinator,
            agent,
            _files: (host, tls, tokens),
        }
    }
}

#[kata_test]
async fn check_ins_end_when_the_pod_their_token_is_bound_to_is_deleted() {
    let world = OneAgent::start(policy()).await;

    // At once, as the kubelet confirms a deletion (none runs here).
    Api::<Pod>::namespaced(world.admin.clone(), NAMESPACE)
        .delete("node-agent-w0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    // The agent's next check-in is refused, though its token's review is
    // cached: the node counts as reporting until its last check-in is a
    // grace old. Seconds, not the token's lifetime (a day): generous for a
    // loaded machine, far below what expiry would take.
    eventually(
        "the deleted pod's agent is refused and counts no more",
        GRACE + Duration::from_secs(20),
        || async { Ok(connected_agents(&world.coordinator).await? == 0.0) },
    )
    .await
    .unwrap();
    // The agent keeps trying with its dead token and is refused each time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        world
            .coordinator
            .metric("kata_operator_connected_agents")
            .await
            .unwrap(),
        0.0,
        "a deleted pod's token must not be let in again"
    );
    let _ = world.agent.stop().await;
    world.coordinator.stop().await.unwrap();
}

#[kata_test]
async fn a_deleted_node_is_forgotten_before_its_grace_runs_out() {
    // A grace far longer than the test: only forgetting the node can make
    // its agent stop counting.
    let world = OneAgent::start(MarkPolicy {
        grace: Duration::from_secs(600),
        ..policy()
    })
    .await;
    world.agent.stop().await.unwrap();

    Api::<Node>::all(world.admin.clone())
        .delete("w0", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted node's agent counts no more",
        CONVERGE,
        || async { Ok(connected_agents(&world.coordinator).await? == 0.0) },
    )
    .await
    .unwrap();
    world.coordinator.stop().await.unwrap();
}
