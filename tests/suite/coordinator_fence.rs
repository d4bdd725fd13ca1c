//! deploy/base/coordinator-fence.yaml on a real API server: requests made
//! as the coordinator's ServiceAccount (the admin impersonating it, with the
//! ClusterRole of deploy/base/rbac-coordinator.yaml bound) are refused with
//! the policy's message whenever they reach past our labels, our condition
//! and the Machine Config Operator objects the coordinator's own builders
//! make, and those builders' objects are admitted; a full install and
//! uninstall on that identity, through both the kata-oc and the master
//! pool, passes the fence. Refusals are dry runs, which run admission in
//! full and store nothing.
#![allow(clippy::unwrap_used)]

mod refusals;
use refusals::{
    changed, machine_config, machine_config_refusals, pool_and_runtime_config_refusals,
};

use kata_test_harness::kata_test;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::api::LogLevel;
use kata_coordinator::controller::Options;
use kata_coordinator::mco::names::{self as mco, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL};
use kata_coordinator::mco::objects;
use kata_coordinator::mco::placement::Role;
use kata_coordinator::names;
use kata_coordinator::objects::CrioRuntimeHandler;
use kata_coordinator::profiles::KataRuntimeProfile;
use kata_coordinator::rbac::{NAMESPACE, SERVICE_ACCOUNT};
use kata_tests::ControlPlane;
use kata_tests::api_objects::create_node;
use kata_tests::cluster::{Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kata_tests::manifests::{
    apply_objects, control_plane_with_operator_api, deploy_dir, read_manifests,
};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const FENCE: &str = "kata-operator-coordinator-fence-v1";
const MASTER: (&str, &str) = ("node-role.kubernetes.io/master", "");

/// The namespace, the ServiceAccounts, the coordinator's RBAC and the fence,
/// as deploy/base ships them.
async fn install_fence(plane: &ControlPlane) {
    let base = deploy_dir().join("base");
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "rbac-coordinator.yaml",
        "coordinator-fence.yaml",
    ] {
        apply_objects(plane, &read_manifests(&base.join(file)).unwrap())
            .await
            .unwrap();
    }
}

/// The admin impersonating the coordinator's ServiceAccount: the requests
/// carry its username, as its own token's do.
async fn as_coordinator(plane: &ControlPlane) -> Client {
    let mut config = plane.config().await.unwrap();
    config.auth_info.impersonate = Some(format!(
        "system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"
    ));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{NAMESPACE}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).unwrap()
}

/// Why the API server refused a write, or `None` if it admitted it.
pub(super) fn refusal<T>(result: Result<T, kube::Error>) -> Option<String> {
    match result {
        Ok(_) => None,
        Err(kube::Error::Api(status)) => Some(status.message),
        Err(other) => panic!("{other}"),
    }
}

fn dry_run() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..PatchParams::default()
    }
}

/// Server-side apply as the coordinator's applier does (which is also what
/// lets RBAC limit `create` to our names).
fn apply_params(dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        ..PatchParams::apply(names::MANAGER).force()
    }
}

/// Asserts each write was refused by the fence with `message`.
pub(super) fn assert_fenced(what: &str, refused: Option<String>, message: &str) {
    let refused = refused.unwrap_or_else(|| panic!("{what}: admitted"));
    assert!(
        refused.contains(FENCE) && refused.contains(message),
        "{what}: {refused}"
    );
}

#[kata_test]
async fn node_writes_are_held_to_our_labels_and_condition() {
    let plane = ControlPlane::start().await.unwrap();
    let admin = plane.client().await.unwrap();
    install_fence(&plane).await;
    create_node(&admin, "w0", &[WORKER]).await.unwrap();
    let ready = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "ready"}]}});
    Api::<Node>::all(admin.clone())
        .patch_status("w0", &PatchParams::default(), &Patch::Strategic(ready))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(as_coordinator(&plane).await);
    let merge = |patch: Value| {
        let nodes = nodes.clone();
        async move { refusal(nodes.patch("w0", &dry_run(), &Patch::Merge(patch)).await) }
    };
    let status = |patch: Value| {
        let nodes = nodes.clone();
        async move {
            refusal(
                nodes
                    .patch_status("w0", &dry_run(), &Patch::Strategic(patch))
                    .await,
            )
        }
    };
    let taint = json!({"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}});
    // The policy takes effect once the API server has loaded it.
    eventually(
        "the fence to take effect",
        Duration::from_secs(30),
        || async { Ok(merge(taint.clone()).await.is_some()) },
    )
    .await
    .unwrap();

    let spec = "may not change a Node's spec";
    let metadata = "may not change a Node's annotations, owners or finalizers";
    let labels = "may change only Kata's labels on a Node";
    let condition = "may change only the KataRuntimeReady condition";
    let foreign_condition = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "Evicted", "message": "x"}]}});
    let addresses =
        json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.6.6.6"}]}});
    for (what, refused, message) in [
        ("a taint", merge(taint.clone()).await, spec),
        (
            "cordoned",
            merge(json!({"spec": {"unschedulable": true}})).await,
            spec,
        ),
        (
            "the MCO's desiredConfig",
            merge(json!({"metadata": {"annotations": {mco::DESIRED_CONFIG: "rendered-worker-x"}}}))
                .await,
            metadata,
        ),
        (
            "a finalizer",
            merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})).await,
            metadata,
        ),
        (
            "a foreign label",
            merge(json!({"metadata": {"labels": {MASTER.0: ""}}})).await,
            labels,
        ),
        (
            "a label removed",
            merge(json!({"metadata": {"labels": {WORKER.0: null}}})).await,
            labels,
        ),
        (
            "another condition",
            status(foreign_condition.clone()).await,
            condition,
        ),
        ("the node's addresses", status(addresses).await, condition),
    ] {
        assert_fenced(what, refused, message);
    }
    our_labels_and_condition_are_admitted(&nodes, &Api::all(admin)).await;
    assert_fenced(
        "another condition beside ours",
        status(foreign_condition).await,
        condition,
    );
}

/// Our labels (and one of Kata's domain, as a later profile's) added and
/// removed, our condition set as the labeller sets it, for real; `admin`
/// reads the result (the coordinator may only list Nodes).
async fn our_labels_and_condition_are_admitted(nodes: &Api<Node>, admin: &Api<Node>) {
    let ours = [
        names::KATA_CAPABLE_LABEL,
        names::KATA_RUNTIME_LABEL,
        names::KATA_POOL_ROLE_LABEL,
        "katacontainers.io/profile.example",
    ];
    let set: serde_json::Map<String, Value> = ours
        .iter()
        .map(|l| (l.to_string(), json!("true")))
        .collect();
    let unset: serde_json::Map<String, Value> =
        ours.iter().map(|l| (l.to_string(), Value::Null)).collect();
    for labels in [set, unset] {
        let patch = Patch::Merge(json!({"metadata": {"labels": labels}}));
        nodes
            .patch("w0", &PatchParams::default(), &patch)
            .await
            .unwrap();
    }
    let condition = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "w0"},
        "status": {"conditions": [{"type": names::NODE_CONDITION, "status": "True",
            "reason": "RuntimeHealthy", "message": "kata runs"}]}});
    let params = PatchParams::apply(names::MANAGER_HEALTH);
    nodes
        .patch_status("w0", &params, &Patch::Apply(condition))
        .await
        .unwrap();
    let node = admin.get("w0").await.unwrap();
    assert!(ours.iter().all(|l| !node.labels().contains_key(*l)));
    let conditions = node.status.unwrap().conditions.unwrap();
    let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", names::NODE_CONDITION]);
}

pub(super) fn api(client: &Client, kind: kata_coordinator::kind::Kind) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &kind.api_resource())
}

pub(super) async fn apply(
    api: &Api<DynamicObject>,
    object: &Value,
    dry_run: bool,
) -> Option<String> {
    let name = object["metadata"]["name"].as_str().unwrap();
    refusal(
        api.patch(name, &apply_params(dry_run), &Patch::Apply(object))
            .await,
    )
}

#[kata_test]
async fn machine_config_operator_writes_are_held_to_kata_shape() {
    let plane = control_plane_with_operator_api().await.unwrap();
    install_fence(&plane).await;
    let coordinator = as_coordinator(&plane).await;
    let configs = api(&coordinator, MACHINE_CONFIG);
    let unit = changed(|mc| {
        mc["spec"]["config"]["systemd"] =
            json!({"units": [{"name": "x.service", "enabled": true, "contents": "[Service]"}]})
    });
    eventually(
        "the fence to take effect",
        Duration::from_secs(30),
        || async { Ok(apply(&configs, &unit, true).await.is_some()) },
    )
    .await
    .unwrap();
    assert_fenced(
        "a systemd unit",
        apply(&configs, &unit, true).await,
        "no systemd units",
    );
    machine_config_refusals(&configs).await;
    pool_and_runtime_config_refusals(&coordinator).await;

    // What the coordinator's builders make is admitted, for both pools.
    let naming = mco::RoleNames::default();
    let handler = CrioRuntimeHandler::default();
    for object in [
        objects::machine_config_for(Role::KataPool, &naming, mco::EXTENSION, &handler, &[]),
        objects::machine_config_for(Role::Master, &naming, mco::EXTENSION_FCOS, &handler, &[]),
    ] {
        assert_eq!(apply(&configs, &object, false).await, None, "{object}");
    }
    let pools = api(&coordinator, POOL);
    assert_eq!(
        apply(&pools, &objects::machine_config_pool(), false).await,
        None
    );
    let runtime_configs = api(&coordinator, CONTAINER_RUNTIME_CONFIG);
    for role in Role::ALL {
        let crc = objects::container_runtime_config_for(role, &naming, LogLevel::Debug).unwrap();
        assert_eq!(apply(&runtime_configs, &crc, false).await, None, "{crc}");
    }
    let runtime_class = serde_json::to_value(kata_coordinator::objects::runtime_class()).unwrap();
    let runtime_classes: Api<RuntimeClass> = Api::all(coordinator.clone());
    let mut runc = runtime_class.clone();
    runc["handler"] = json!("runc");
    // A runtime profile's class, and the same turned to another handler or
    // selecting every node.
    let profile = KataRuntimeProfile::of_size("kata-large", 4, 8192);
    let profiles_class = serde_json::to_value(profile.runtime_class()).unwrap();
    let mut other_handler = profiles_class.clone();
    other_handler["handler"] = json!("runc");
    let mut everywhere = profiles_class.clone();
    everywhere["scheduling"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    for (object, refused) in [
        (&runc, true),
        (&runtime_class, false),
        (&other_handler, true),
        (&everywhere, true),
        (&profiles_class, false),
    ] {
        let name = object["metadata"]["name"].as_str().unwrap();
        let result = runtime_classes
            .patch(name, &apply_params(refused), &Patch::Apply(object))
            .await;
        match refusal(result) {
            Some(m) if refused => assert_fenced("another handler", Some(m), "keep Kata's handler"),
            verdict => assert_eq!(verdict, None, "{object}"),
        }
    }
    // Deleted: Kata's classes, never someone else's.
    let admins: RuntimeClass =
        serde_json::from_value(json!({"metadata": {"name": "gvisor"}, "handler": "runsc"}))
            .unwrap();
    Api::<RuntimeClass>::all(plane.client().await.unwrap())
        .create(&Default::default(), &admins)
        .await
        .unwrap();
    let deleted = |name: &'static str| {
        let runtime_classes = runtime_classes.clone();
        async move {
            refusal(
                runtime_classes
                    .delete(name, &DeleteParams::default().dry_run())
                    .await,
            )
        }
    };
    assert_fenced(
        "someone else's RuntimeClass deleted",
        deleted("gvisor").await,
        "change or delete only Kata's RuntimeClasses",
    );
    // Nor is someone else's class made ours, even one shaped as a profile's.
    let nvidia: RuntimeClass =
        serde_json::from_value(json!({"metadata": {"name": "nvidia"}, "handler": "nvidia"}))
            .unwrap();
    Api::<RuntimeClass>::all(plane.client().await.unwrap())
        .create(&Default::default(), &nvidia)
        .await
        .unwrap();
    let taken_over =
        serde_json::to_value(KataRuntimeProfile::of_size("nvidia", 1, 1024).runtime_class())
            .unwrap();
    assert_fenced(
        "someone else's RuntimeClass made a profile's",
        refusal(
            runtime_classes
                .patch("nvidia", &apply_params(true), &Patch::Apply(&taken_over))
                .await,
        ),
        "change or delete only Kata's RuntimeClasses",
    );
    assert_eq!(deleted("kata-large").await, None);
    assert_eq!(deleted(names::RUNTIME_CLASS_NAME).await, None);
    an_admins_addition_holds_our_writes(&plane.client().await.unwrap(), &configs).await;
    // And deleted by their names.
    configs
        .delete(mco::MACHINE_CONFIG_NAME, &DeleteParams::default())
        .await
        .unwrap();
    fence_is_out_of_reach(&coordinator).await;
}

/// A field the fence forbids, added to our MachineConfig by an admin, is
/// kept by the coordinator's apply (it owns no such field), so its writes to
/// that object are refused from then on (docs/security.md).
async fn an_admins_addition_holds_our_writes(admin: &Client, configs: &Api<DynamicObject>) {
    let addition = Patch::Merge(json!({"spec": {"kernelArguments": ["nosmt"]}}));
    api(admin, MACHINE_CONFIG)
        .patch(mco::MACHINE_CONFIG_NAME, &PatchParams::default(), &addition)
        .await
        .unwrap();
    assert_fenced(
        "our apply over an admin's kernel argument",
        apply(configs, &machine_config(), true).await,
        "may carry only Kata's extension",
    );
}

/// The coordinator can neither change nor remove the fence: RBAC gives it
/// no verb on admission policies at all.
async fn fence_is_out_of_reach(coordinator: &Client) {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(coordinator.clone());
    let patch = Patch::Merge(json!({"spec": {"failurePolicy": "Ignore"}}));
    for refused in [
        refusal(policies.patch(FENCE, &dry_run(), &patch).await),
        refusal(
            policies
                .delete(FENCE, &DeleteParams::default().dry_run())
                .await,
        ),
    ] {
        let refused = refused.unwrap();
        assert!(refused.contains("forbidden"), "{refused}");
    }
}

#[kata_test]
async fn an_install_and_uninstall_through_both_pools_passes_the_fence() {
    let cluster = Cluster::start(&[("m0", &[MASTER, WORKER]), ("w0", &[WORKER])]).await;
    install_fence(&cluster.plane).await;
    let coordinator = as_coordinator(&cluster.plane).await;
    let probe = changed(|mc| mc["spec"]["kernelArguments"] = json!(["x"]));
    eventually(
        "the fence to take effect",
        Duration::from_secs(30),
        || async {
            Ok(apply(&api(&coordinator, MACHINE_CONFIG), &probe, true)
                .await
                .is_some())
        },
    )
    .await
    .unwrap();
    let running = RunningCoordinator::start(coordinator, Options::default());
    cluster
        .create_kataconfig("kc", json!({"logLevel": "debug"}))
        .await;
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    let configs = api(&cluster.client, MACHINE_CONFIG);
    for name in [mco::MACHINE_CONFIG_NAME, mco::MASTER_MACHINE_CONFIG_NAME] {
        assert!(configs.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    assert_eq!(cluster.nodes_with(mco::KATA_POOL_ROLE_LABEL).await, ["w0"]);
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    running.stop().await;
}

/// The ConfigMap grant reaches every namespace (a ClusterRole, the only
/// grant OLM can give outside the operator's namespace), limited to the
/// dashboard's name; the fence holds it to `openshift-config-managed`.
#[kata_test]
async fn config_map_writes_are_held_to_the_console_dashboard() {
    use kata_coordinator::kind::{CONFIG_MAP, NAMESPACE as NAMESPACE_KIND};
    use kata_coordinator::operands::monitoring::{self, DASHBOARD_NAMESPACE};
    let plane = ControlPlane::start().await.unwrap();
    let admin = plane.client().await.unwrap();
    install_fence(&plane).await;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": DASHBOARD_NAMESPACE}});
    api(&admin, NAMESPACE_KIND)
        .patch(
            DASHBOARD_NAMESPACE,
            &PatchParams::apply("kata-tests"),
            &Patch::Apply(&namespace),
        )
        .await
        .unwrap();
    let coordinator = as_coordinator(&plane).await;
    let config_maps = |ns: &str| {
        Api::<DynamicObject>::namespaced_with(coordinator.clone(), ns, &CONFIG_MAP.api_resource())
    };
    let dashboard = monitoring::dashboard().body;
    let elsewhere = {
        let mut d = dashboard.clone();
        d["metadata"]["namespace"] = json!(NAMESPACE);
        d
    };
    let another_name = {
        let mut d = dashboard.clone();
        d["metadata"]["name"] = json!("cluster-dashboard");
        d
    };
    let message =
        "may write only the ConfigMap kata-operator-dashboard in openshift-config-managed";
    eventually(
        "the fence to take effect",
        Duration::from_secs(30),
        || async {
            Ok(apply(&config_maps(NAMESPACE), &elsewhere, true)
                .await
                .is_some())
        },
    )
    .await
    .unwrap();
    assert_fenced(
        "the dashboard in another namespace",
        apply(&config_maps(NAMESPACE), &elsewhere, true).await,
        message,
    );
    // Another name: RBAC refuses it first.
    let refused = apply(&config_maps(DASHBOARD_NAMESPACE), &another_name, true)
        .await
        .unwrap();
    assert!(
        refused.contains(" cannot ") && !refused.contains(FENCE),
        "{refused}"
    );
    // And the fence too, were the coordinator granted more: a Role in that
    // namespace giving every ConfigMap.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "wider", "namespace": DASHBOARD_NAMESPACE},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "patch"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "wider", "namespace": DASHBOARD_NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wider"},
        "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]});
    apply_objects(
        &plane,
        &[
            serde_json::from_value(role).unwrap(),
            serde_json::from_value(binding).unwrap(),
        ],
    )
    .await
    .unwrap();
    eventually(
        "the wider grant to take effect",
        Duration::from_secs(30),
        || async {
            let refused = apply(&config_maps(DASHBOARD_NAMESPACE), &another_name, true).await;
            Ok(refused.is_some_and(|m| m.contains(FENCE)))
        },
    )
    .await
    .unwrap();
    assert_fenced(
        "a ConfigMap of another name",
        apply(&config_maps(DASHBOARD_NAMESPACE), &another_name, true).await,
        message,
    );
    // The dashboard itself is admitted, for real.
    assert_eq!(
        apply(&config_maps(DASHBOARD_NAMESPACE), &dashboard, false).await,
        None
    );
}

/// The PodMonitor as shipped is admitted; one that would have Prometheus
/// scrape elsewhere or send credentials is refused (a stand-in CRD,
/// tests/monitoring/podmonitor-crd.yaml, keeps whatever spec is written).
#[kata_test]
async fn pod_monitor_writes_are_held_to_its_own_namespace_without_credentials() {
    use kata_coordinator::kind::POD_MONITOR;
    use kata_coordinator::operands::monitoring;
    let plane = ControlPlane::start().await.unwrap();
    plane
        .install_crds(&[kata_tests::manifests::pod_monitor_crd().unwrap()])
        .await
        .unwrap();
    install_fence(&plane).await;
    let coordinator = as_coordinator(&plane).await;
    let monitors =
        Api::<DynamicObject>::namespaced_with(coordinator, NAMESPACE, &POD_MONITOR.api_resource());
    let shipped = monitoring::pod_monitor(NAMESPACE, None).body;
    let changed = |change: &dyn Fn(&mut Value)| {
        let mut m = shipped.clone();
        change(&mut m);
        m
    };
    let every_namespace = changed(&|m| m["spec"]["namespaceSelector"] = json!({"any": true}));
    eventually(
        "the fence to take effect",
        Duration::from_secs(30),
        || async { Ok(apply(&monitors, &every_namespace, true).await.is_some()) },
    )
    .await
    .unwrap();
    let message = "may write only the PodMonitor kata-node-agent";
    let endpoint = |field: &'static str, value: Value| {
        changed(&move |m| m["spec"]["podMetricsEndpoints"][0][field] = value.clone())
    };
    for (what, object) in [
        ("every namespace", every_namespace.clone()),
        (
            "a bearer token from a Secret",
            endpoint(
                "bearerTokenSecret",
                json!({"name": "kata-coordinator-tls", "key": "tls.key"}),
            ),
        ),
        ("another scheme", endpoint("scheme", json!("https"))),
        (
            "a rewritten address",
            changed(&|m| {
                m["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["targetLabel"] =
                    json!("__address__")
            }),
        ),
        (
            "another name",
            changed(&|m| m["metadata"]["name"] = json!("kata-node-agent-2")),
        ),
    ] {
        let refused = apply(&monitors, &object, true).await;
        if what == "another name" {
            // RBAC grants the one name: refused before admission.
            let refused = refused.unwrap_or_else(|| panic!("{what}: admitted"));
            assert!(refused.contains(" cannot "), "{what}: {refused}");
        } else {
            assert_fenced(what, refused, message);
        }
    }
    assert_eq!(apply(&monitors, &shipped, false).await, None);
}
