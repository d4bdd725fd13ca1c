//! The shipped deployment manifests on a real API server: both kustomizations
//! render and pass a server-side dry run, and the coordinator's generated
//! RBAC is exactly enough: a full install and uninstall run on a token of its
//! own ServiceAccount, verbs outside the table are refused, and the
//! node-agent's ServiceAccount can do nothing at all.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::io::Write;
use std::process::{Command, Stdio};

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SelfSubjectAccessReview,
    SelfSubjectAccessReviewSpec, SelfSubjectRulesReview, SelfSubjectRulesReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kata_coordinator::controller::Options;
use kata_coordinator::health::{AgentAuthenticator, AuthError};
use kata_coordinator::leader::{LeaderElector, LeaseOptions};
use kata_coordinator::mco::names as mco;
use kata_coordinator::metrics::{
    Metrics, OutcomeLabel, REVIEW_AUTHENTICATED, TOKEN_REFUSED_UNREVIEWED,
};
use kata_coordinator::names;
use kata_coordinator::rbac::{
    AGENT_SERVICE_ACCOUNT, CLUSTER_URL_PERMISSIONS, LEASE_NAME, NAMESPACE, NAMESPACE_PERMISSIONS,
    SERVICE_ACCOUNT,
};
use kata_tests::ControlPlane;
use kata_tests::api_objects::{pod_bound_token, service_account_token};
use kata_tests::cluster::{Cluster, WORKER};
use kata_tests::control_plane::binary_dir;
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::manifests::apply_objects;
use kata_tests::manifests::deploy_dir;
use kata_tests::manifests::read_manifests;
use kata_tests::pki;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;
use serde_json::json;

const AGENT_AUDIENCE: &str = "kata-operator.openshift.io/node-agent";

fn kubectl(plane: &ControlPlane, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(binary_dir().unwrap().join("kubectl"))
        .arg("--kubeconfig")
        .arg(plane.kubeconfig())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn documents(yaml: &str) -> Vec<DynamicObject> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| serde_yaml::from_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .collect()
}

/// SecurityContextConstraints are a CRD on every OpenShift 4 cluster, absent
/// from a bare API server. This stand-in accepts any content, so the dry run
/// checks everything but the SCC's own schema.
fn scc_stand_in_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "securitycontextconstraints.security.openshift.io" },
        "spec": {
            "group": "security.openshift.io",
            "scope": "Cluster",
            "names": {
                "plural": "securitycontextconstraints",
                "singular": "securitycontextconstraint",
                "kind": "SecurityContextConstraints",
                "listKind": "SecurityContextConstraintsList",
            },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                }},
            }],
        },
    }))
    .unwrap()
}

#[kata_test]
async fn base_and_openshift_overlay_pass_a_server_side_dry_run() {
    let plane = ControlPlane::start().await.unwrap();
    plane.install_openshift_crds().await.unwrap();
    plane.install_crds(&[scc_stand_in_crd()]).await.unwrap();
    for overlay in ["base", "openshift"] {
        let dir = deploy_dir().join(overlay);
        let (ok, rendered, stderr) = kubectl(&plane, &["kustomize", dir.to_str().unwrap()], None);
        assert!(ok, "kubectl kustomize deploy/{overlay}: {stderr}");
        let objects = documents(&rendered);

        // A dry run creates no namespace, so everything in it would be
        // refused as "namespace not found": create the namespace for real.
        let namespaces: Vec<DynamicObject> = objects
            .iter()
            .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "Namespace"))
            .cloned()
            .collect();
        assert_eq!(namespaces.len(), 1, "deploy/{overlay} has one Namespace");
        apply_objects(&plane, &namespaces).await.unwrap();

        let (ok, stdout, stderr) = kubectl(
            &plane,
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&rendered),
        );
        assert!(
            ok,
            "dry run of deploy/{overlay} refused:\n{stdout}\n{stderr}"
        );
        // The coordinator's node affinity names the deprecated master role
        // on purpose: OpenShift clusters installed before 4.12 label their
        // control-plane nodes with it alone.
        let master_role = "node-role.kubernetes.io/master is use \"node-role.kubernetes.io/control-plane\" instead";
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("Warning") && !l.contains(master_role))
            .collect();
        assert!(
            warnings.is_empty(),
            "deploy/{overlay} draws warnings:\n{stderr}"
        );
        println!("deploy/{overlay}:\n{stdout}");

        // Whatever binds roles, it must never bind the agent's account.
        for binding in objects.iter().filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind.ends_with("RoleBinding"))
        }) {
            let subjects = binding.data["subjects"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(
                subjects
                    .iter()
                    .all(|s| s["name"].as_str() != Some(AGENT_SERVICE_ACCOUNT)),
                "{} binds the node-agent's ServiceAccount",
                binding.name_any()
            );
        }
    }
}

/// The names the manifests and the code must agree on: a typo here would
/// only show on a real cluster, as an agent refused or a pod without rights.
#[kata_test]
fn manifests_agree_with_the_code() {
    let base = deploy_dir().join("base");
    let find = |file: &str, kind: &str| {
        read_manifests(&base.join(file))
            .unwrap()
            .into_iter()
            .find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
            .unwrap()
    };
    let namespace = find("namespace.yaml", "Namespace");
    assert_eq!(namespace.name_any(), NAMESPACE);
    // The agent is privileged (node-agent.yaml), so is the namespace's
    // Pod Security level; OpenShift's platform monitoring scrapes it.
    let labels = namespace.labels();
    for (key, value) in [
        ("pod-security.kubernetes.io/enforce", "privileged"),
        ("openshift.io/cluster-monitoring", "true"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "namespace label {key}"
        );
    }
    let deployment = find("coordinator.yaml", "Deployment");
    let pod = &deployment.data["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], SERVICE_ACCOUNT);
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.contains(&format!("--agent-audience={AGENT_AUDIENCE}").as_str()));
    assert!(args.contains(&format!("--agent-service-account={AGENT_SERVICE_ACCOUNT}").as_str()));

    let daemon_set = find("node-agent.yaml", "DaemonSet");
    let pod = &daemon_set.data["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], AGENT_SERVICE_ACCOUNT);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let token = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0].get("serviceAccountToken"))
        .unwrap();
    assert_eq!(token["audience"], AGENT_AUDIENCE);
    for object in [&deployment, &daemon_set] {
        assert_eq!(object.metadata.namespace.as_deref(), Some(NAMESPACE));
    }
}

/// The HTTP status of an API error.
fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(e) => Some(e.code),
        _ => None,
    }
}

/// A token for a ServiceAccount with the API server's own audience, as the
/// kubelet mounts for a pod (no pod binding needed here).
#[derive(Debug, Clone, Copy)]
struct Access<'a> {
    verb: &'a str,
    group: &'a str,
    resource: &'a str,
    subresource: &'a str,
    name: &'a str,
    namespace: &'a str,
}

const fn access<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Access<'a> {
    Access {
        verb,
        group,
        resource,
        subresource: "",
        name: "",
        namespace: "",
    }
}

impl<'a> Access<'a> {
    const fn named(mut self, name: &'a str) -> Self {
        self.name = name;
        self
    }
    const fn sub(mut self, subresource: &'a str) -> Self {
        self.subresource = subresource;
        self
    }
    const fn in_namespace(mut self, namespace: &'a str) -> Self {
        self.namespace = namespace;
        self
    }
}

/// Asks the API server whether the client's own identity may do `a`.
async fn allowed(client: &Client, a: Access<'_>) -> bool {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: some(a.verb),
                group: Some(a.group.into()),
                resource: some(a.resource),
                subresource: some(a.subresource),
                name: some(a.name),
                namespace: some(a.namespace),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    review_allows(client, review).await
}

/// Whether `client` may `verb` the non-resource `path`.
async fn url_allowed(client: &Client, verb: &str, path: &str) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            non_resource_attributes: Some(NonResourceAttributes {
                verb: Some(verb.into()),
                path: Some(path.into()),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    review_allows(client, review).await
}

async fn review_allows(client: &Client, review: SelfSubjectAccessReview) -> bool {
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .unwrap()
        .allowed
}

const NODES: &str = "";
const MCO: &str = mco::GROUP;

/// What the coordinator must not be able to do: neighbours of what it may do
/// (another verb, another name, another namespace), and the usual ways to
/// escalate.
const DENIED: &[Access<'static>] = &[
    access("delete", NODES, "nodes"),
    access("update", NODES, "nodes"),
    access("get", NODES, "nodes").named("w0"),
    access("create", NODES, "pods").in_namespace("default"),
    access("delete", NODES, "pods").in_namespace("default"),
    access("create", NODES, "pods")
        .sub("eviction")
        .in_namespace("default"),
    access("create", NODES, "pods")
        .sub("exec")
        .in_namespace("default"),
    access("get", NODES, "secrets").in_namespace(NAMESPACE),
    access("list", NODES, "secrets"),
    access("get", NODES, "configmaps").in_namespace(NAMESPACE),
    access("create", NODES, "serviceaccounts")
        .sub("token")
        .in_namespace(NAMESPACE),
    access("impersonate", NODES, "serviceaccounts"),
    // The spec is the admin's: the coordinator writes finalizers and status only.
    access("update", "kataconfiguration.openshift.io", "kataconfigs"),
    access("create", "kataconfiguration.openshift.io", "kataconfigs"),
    access("delete", "kataconfiguration.openshift.io", "kataconfigs"),
    // Owned objects are created by server-side apply, which the API server
    // authorizes as `create` of that name: a POST (no name yet) is refused.
    access("create", MCO, "machineconfigs"),
    access("create", MCO, "machineconfigpools"),
    access("create", MCO, "containerruntimeconfigs"),
    // Only the objects it owns, by name. (RuntimeClasses are granted by any
    // name, for the runtime profiles': the fence holds the writes and
    // deletions to Kata's, coordinator_fence.rs.)
    access("patch", MCO, "machineconfigs").named("99-worker-ssh"),
    access("delete", MCO, "machineconfigs").named("00-worker"),
    access("list", MCO, "machineconfigs"),
    access("patch", MCO, "machineconfigpools").named("worker"),
    access("delete", MCO, "machineconfigpools").named("master"),
    // Leases only in its own namespace: not the kubelets' heartbeats.
    access("update", "coordination.k8s.io", "leases").in_namespace("kube-node-lease"),
    access("create", "coordination.k8s.io", "leases").in_namespace("kube-system"),
    access("delete", "coordination.k8s.io", "leases").in_namespace(NAMESPACE),
    access("update", "coordination.k8s.io", "leases")
        .named("someone-elses")
        .in_namespace(NAMESPACE),
    access("delete", "events.k8s.io", "events").in_namespace("default"),
    access("create", NODES, "events").in_namespace("default"),
    access("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
    access("escalate", "rbac.authorization.k8s.io", "clusterroles"),
    access("bind", "rbac.authorization.k8s.io", "clusterroles"),
    // Only the node-agent's DaemonSet, by name.
    access("patch", "apps", "daemonsets").in_namespace(NAMESPACE),
    // Its admission policies are created, never changed or deleted.
    access(
        "patch",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
    ),
    access(
        "delete",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicies",
    ),
    access(
        "update",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
    ),
    access(
        "delete",
        "admissionregistration.k8s.io",
        "validatingadmissionpolicybindings",
    ),
    access(
        "create",
        "certificates.k8s.io",
        "certificatesigningrequests",
    ),
];

#[kata_test]
async fn coordinator_runs_on_its_own_service_account_and_agent_has_no_rights() {
    let cluster = Cluster::start(&[
        ("w0", &[WORKER]),
        ("w1", &[WORKER]),
        ("m0", &[("node-role.kubernetes.io/master", "")]),
    ])
    .await;
    let admin = cluster.client.clone();
    let base = deploy_dir().join("base");
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "rbac-coordinator.yaml",
    ] {
        apply_objects(&cluster.plane, &read_manifests(&base.join(file)).unwrap())
            .await
            .unwrap();
    }
    let coordinator = cluster
        .plane
        .client_with_token(
            &service_account_token(&admin, NAMESPACE, SERVICE_ACCOUNT)
                .await
                .unwrap(),
        )
        .await
        .unwrap();

    // Every grant of the table reaches the coordinator's token through the
    // checked-in bindings (a Role without its binding would not).
    let cluster_permissions = kata_coordinator::app::cluster_permissions();
    for (permissions, namespace) in [
        (cluster_permissions.as_slice(), ""),
        (NAMESPACE_PERMISSIONS, NAMESPACE),
    ] {
        for p in permissions {
            for resource in p.resources {
                let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
                for verb in p.verbs {
                    let a = access(verb, p.api_group, resource)
                        .sub(sub)
                        .named(p.resource_names.first().copied().unwrap_or(""))
                        .in_namespace(namespace);
                    assert!(allowed(&coordinator, a).await, "not granted: {a:?}");
                }
            }
        }
    }
    for p in CLUSTER_URL_PERMISSIONS {
        for (url, verb) in p.urls.iter().zip(p.verbs) {
            assert!(
                url_allowed(&coordinator, verb, url).await,
                "not granted: {verb} {url}"
            );
        }
    }

    // The full install and uninstall, every API call on the coordinator's
    // token: a missing permission stalls it and the waits time out.
    let running = RunningCoordinator::start(coordinator.clone(), Options::default());
    cluster
        .create_kataconfig("kc", json!({"logLevel": "debug"}))
        .await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(
        cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await,
        ["w0", "w1"]
    );
    // Event publication failures are only logged, so look for the Event.
    let events = Api::<Event>::namespaced(admin.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(
                |e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("kc")
                    && e.reason.as_deref() == Some("Installed")
            ),
        "no Installed Event for kc: {:?}",
        events.items
    );

    // TokenReview, on the coordinator's token, of a token the kubelet would
    // project into the agent on w0.
    let agent_token = pod_bound_token(
        &admin,
        NAMESPACE,
        AGENT_SERVICE_ACCOUNT,
        "agent-w0",
        "w0",
        AGENT_AUDIENCE,
    )
    .await
    .unwrap();
    let metrics = Metrics::default();
    let authenticator = AgentAuthenticator::new(
        coordinator.clone(),
        AGENT_AUDIENCE,
        NAMESPACE,
        AGENT_SERVICE_ACCOUNT,
    )
    .with_metrics(metrics.clone());
    let identity = authenticator
        .authenticate(Some(&agent_token))
        .await
        .unwrap()
        .identity;
    assert_eq!(identity.node_name, "w0");
    // The same header and claims under a stranger's signature: refused
    // without a TokenReview, by the issuer's keys the coordinator read on
    // its own token.
    let forged = pki::forge(&agent_token).unwrap();
    let refused = authenticator.authenticate(Some(&forged)).await.unwrap_err();
    assert!(
        matches!(refused, AuthError::Unauthenticated(_)),
        "{refused:?}"
    );
    let count = |family: &Family<OutcomeLabel, Counter>, outcome: &str| {
        family
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    };
    assert_eq!(count(&metrics.token_reviews, REVIEW_AUTHENTICATED), 1);
    assert_eq!(
        count(&metrics.tokens_not_reviewed, TOKEN_REFUSED_UNREVIEWED),
        1
    );

    // Grants used by code the in-process reconciler does not run (the
    // health labeller's node condition, leader election) are used here as
    // that code uses them.
    let condition = json!({
        "apiVersion": "v1", "kind": "Node",
        "status": {"conditions": [{
            "type": names::NODE_CONDITION, "status": "False",
            "reason": "RbacCheck", "message": "written by the RBAC test",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }]},
    });
    Api::<Node>::all(coordinator.clone())
        .patch_status(
            "w1",
            &PatchParams::apply(names::MANAGER_HEALTH).force(),
            &Patch::Apply(&condition),
        )
        .await
        .unwrap();
    let elector = |identity: &str| {
        LeaderElector::new(
            coordinator.clone(),
            LeaseOptions {
                namespace: NAMESPACE.into(),
                name: LEASE_NAME.into(),
                identity: identity.into(),
                duration: std::time::Duration::from_secs(15),
                retry: std::time::Duration::from_secs(1),
            },
        )
    };
    // Acquiring creates the Lease; renewing reads and updates it; releasing
    // updates it again. Any refusal reads as "not the leader".
    let first = elector("replica-a");
    assert!(
        first.try_acquire_or_renew().await,
        "cannot create the Lease"
    );
    assert!(first.try_acquire_or_renew().await, "cannot renew the Lease");
    first.release().await;
    let holder = Api::<Lease>::namespaced(admin.clone(), NAMESPACE)
        .get(LEASE_NAME)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity;
    assert_eq!(holder, None, "the release was not written");

    // Server-side apply of an absent object is authorized twice, as `patch`
    // and then as `create`, both for the name in the URL (without `create`
    // the API server answers "cannot create"): the role's name-limited rules
    // let the coordinator create its own dashboard ConfigMap and no other.
    let other: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "kata-operator-other", "namespace": "default"}}),
    )
    .unwrap();
    let refused = Api::<ConfigMap>::namespaced(coordinator.clone(), "default")
        .patch(
            "kata-operator-other",
            &PatchParams::apply(names::MANAGER).force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), Some(403), "{refused:?}");

    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    running.stop().await;

    for a in DENIED {
        assert!(!allowed(&coordinator, *a).await, "excess permission: {a:?}");
    }
    let denied = Api::<Node>::all(coordinator.clone())
        .delete("m0", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&denied), Some(403), "{denied:?}");

    // The agent's token, even one made for the API server, opens nothing.
    let agent = cluster
        .plane
        .client_with_token(
            &service_account_token(&admin, NAMESPACE, AGENT_SERVICE_ACCOUNT)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    let refused = Api::<Node>::all(agent.clone())
        .list(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&refused), Some(403), "{refused:?}");
    for namespace in [NAMESPACE, "default", "kube-system"] {
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(namespace.into()),
            },
            ..Default::default()
        };
        let status = Api::<SelfSubjectRulesReview>::all(agent.clone())
            .create(&PostParams::default(), &review)
            .await
            .unwrap()
            .status
            .unwrap();
        // What every authenticated user has: reviewing its own access and identity.
        for rule in &status.resource_rules {
            let groups = rule.api_groups.clone().unwrap_or_default();
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(
                groups
                    .iter()
                    .all(|g| g == "authorization.k8s.io" || g == "authentication.k8s.io")
                    && resources.iter().all(|r| r.starts_with("self")),
                "the node-agent holds {rule:?} in {namespace}"
            );
        }
    }
    // And its projected token, made for the coordinator, is no API credential.
    let wrong_audience = cluster.plane.client_with_token(&agent_token).await.unwrap();
    let unauthenticated = Api::<Namespace>::all(wrong_audience)
        .list(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&unauthenticated), Some(401), "{unauthenticated:?}");
}

fn monitoring(file: &str) -> Vec<DynamicObject> {
    read_manifests(&deploy_dir().join("monitoring").join(file)).unwrap()
}

fn one_of_kind(objects: &[DynamicObject], kind: &str) -> DynamicObject {
    let found: Vec<&DynamicObject> = objects
        .iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0].clone()
}

/// The ServiceMonitor and PodMonitor find what deploy/base runs: their
/// selectors match the Service's and the DaemonSet pods' labels, and the
/// ports they scrape are named ports of those.
#[kata_test]
fn monitors_select_the_coordinator_service_and_the_agent_pods() {
    let base = deploy_dir().join("base");
    let coordinator = read_manifests(&base.join("coordinator.yaml")).unwrap();
    let service = one_of_kind(&coordinator, "Service");
    let service_monitor = one_of_kind(&monitoring("service-monitor.yaml"), "ServiceMonitor");
    let pod_monitor = one_of_kind(&monitoring("pod-monitor.yaml"), "PodMonitor");
    let daemon_set = one_of_kind(
        &read_manifests(&base.join("node-agent.yaml")).unwrap(),
        "DaemonSet",
    );
    for monitor in [&service_monitor, &pod_monitor] {
        assert_eq!(monitor.metadata.namespace.as_deref(), Some(NAMESPACE));
    }

    let matches = |selector: &serde_json::Value, labels: &serde_json::Value| {
        let wanted = selector["matchLabels"].as_object().unwrap();
        assert!(!wanted.is_empty() && selector.get("matchExpressions").is_none());
        wanted.iter().all(|(k, v)| labels[k] == *v)
    };
    assert!(matches(
        &service_monitor.data["spec"]["selector"],
        &serde_json::to_value(&service.metadata.labels).unwrap()
    ));
    let service_ports: Vec<&str> = service.data["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for endpoint in service_monitor.data["spec"]["endpoints"]
        .as_array()
        .unwrap()
    {
        let port = endpoint["port"].as_str().unwrap();
        assert!(service_ports.contains(&port), "Service port {port}");
    }

    let template = &daemon_set.data["spec"]["template"];
    assert!(matches(
        &pod_monitor.data["spec"]["selector"],
        &template["metadata"]["labels"]
    ));
    // Not the coordinator's pods, which the ServiceMonitor scrapes.
    assert!(!matches(
        &pod_monitor.data["spec"]["selector"],
        &coordinator
            .iter()
            .find(|o| o.types.as_ref().unwrap().kind == "Deployment")
            .unwrap()
            .data["spec"]["template"]["metadata"]["labels"]
    ));
    let container_ports: Vec<&str> = template["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["name"].as_str())
        .collect();
    let endpoints = pod_monitor.data["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap();
    assert_eq!(endpoints.len(), 1);
    let port = endpoints[0]["port"].as_str().unwrap();
    assert!(
        container_ports.contains(&port),
        "the PodMonitor scrapes port {port}, which no node-agent container names \
         (deploy/base/node-agent.yaml has {container_ports:?})"
    );
    // Every agent series says which node it speaks for.
    let relabelings = endpoints[0]["relabelings"].as_array().unwrap();
    assert!(
        relabelings.iter().any(
            |r| r["sourceLabels"] == json!(["__meta_kubernetes_pod_node_name"])
                && r["targetLabel"] == "node"
                && r.get("action").is_none_or(|a| a == "replace")
        ),
        "{relabelings:?}"
    );
}

/// The PodMonitor's limits stay above the most the agent serves
/// (`kata_node_agent::sandbox_metrics`): past any of them Prometheus fails
/// the agent's whole scrape, which a hostile guest could then cause.
#[kata_test]
fn the_pod_monitors_limits_hold_what_the_agent_relays() {
    use kata_node_agent::sandbox_metrics::{
        MAX_LABEL_NAME_LEN, MAX_LABEL_VALUE_LEN, MAX_LABELS, MAX_NAME_LEN, ScrapeLimits,
        max_relayed_series,
    };
    let pod_monitor = one_of_kind(&monitoring("pod-monitor.yaml"), "PodMonitor");
    let limit = |field: &str| -> usize {
        let value = pod_monitor.data["spec"][field].as_u64();
        usize::try_from(value.unwrap_or_else(|| panic!("no spec.{field}"))).unwrap()
    };
    let own_series = 1_000;
    assert!(limit("sampleLimit") >= max_relayed_series(&ScrapeLimits::default()) + own_series);
    // __name__, 7 target labels (the node's among them), sandbox_id.
    assert!(limit("labelLimit") >= 1 + 7 + 1 + MAX_LABELS);
    assert!(limit("labelNameLengthLimit") >= MAX_LABEL_NAME_LEN);
    // A node's name is a DNS subdomain, up to 253 bytes.
    assert!(limit("labelValueLengthLimit") >= MAX_LABEL_VALUE_LEN.max(MAX_NAME_LEN).max(253));
}

/// Platform Prometheus (openshift-monitoring/prometheus-k8s) may discover
/// targets in the operator's namespace through the Role in
/// deploy/monitoring, and read nothing more: checked by the API server's
/// own RBAC authorizer.
#[kata_test]
async fn platform_prometheus_may_discover_targets_and_nothing_more() {
    let plane = ControlPlane::start().await.unwrap();
    apply_objects(
        &plane,
        &read_manifests(&deploy_dir().join("base/namespace.yaml")).unwrap(),
    )
    .await
    .unwrap();
    let rbac: Vec<DynamicObject> = monitoring("service-monitor.yaml")
        .into_iter()
        .filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.api_version.starts_with("rbac.authorization.k8s.io/"))
        })
        .collect();
    assert_eq!(rbac.len(), 2, "a Role and its RoleBinding");
    apply_objects(&plane, &rbac).await.unwrap();
    let admin = plane.client().await.unwrap();

    use k8s_openapi::api::authorization::v1::{SubjectAccessReview, SubjectAccessReviewSpec};
    let may = |verb: &'static str,
               group: &'static str,
               resource: &'static str,
               namespace: &'static str| {
        let admin = admin.clone();
        async move {
            let review = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some("system:serviceaccount:openshift-monitoring:prometheus-k8s".into()),
                    groups: Some(vec![
                        "system:serviceaccounts".into(),
                        "system:serviceaccounts:openshift-monitoring".into(),
                        "system:authenticated".into(),
                    ]),
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        namespace: Some(namespace.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            Api::<SubjectAccessReview>::all(admin)
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .unwrap()
                .allowed
        }
    };
    for verb in ["get", "list", "watch"] {
        for (group, resource) in [
            ("", "services"),
            ("", "endpoints"),
            ("", "pods"),
            ("discovery.k8s.io", "endpointslices"),
        ] {
            assert!(
                may(verb, group, resource, NAMESPACE).await,
                "prometheus-k8s cannot {verb} {resource}"
            );
            assert!(
                !may(verb, group, resource, "default").await,
                "prometheus-k8s may {verb} {resource} outside {NAMESPACE}"
            );
        }
    }
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("list", "", "configmaps"),
        ("delete", "", "pods"),
        ("create", "", "pods"),
        ("update", "", "services"),
    ] {
        assert!(
            !may(verb, group, resource, NAMESPACE).await,
            "prometheus-k8s may {verb} {resource}"
        );
    }
}
