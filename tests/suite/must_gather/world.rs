//! The cluster the gather reads: the operator's objects as an OpenShift
//! cluster holds them, nodes, pods and Events, with no kubelet.

use super::*;

fn dynamic(client: &Client, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

async fn create(api: &Api<DynamicObject>, object: Value) -> DynamicObject {
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

async fn patch_status(api: &Api<DynamicObject>, name: &str, status: Value) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// The world the gather reads: what an OpenShift cluster with the operator
/// installed holds, minus the kubelets.
pub(super) async fn populate(plane: &ControlPlane) -> Client {
    plane.install_openshift_crds().await.unwrap();
    let crds: Vec<CustomResourceDefinition> =
        ["kataconfig-crd.yaml", "kataruntimeprofile-crd.yaml"]
            .iter()
            .map(|file| serde_yaml::from_str(&read(&deploy_dir().join("base").join(file))).unwrap())
            .collect();
    plane.install_crds(&crds).await.unwrap();
    // The real namespace, ServiceAccounts, Deployment, Service and
    // DaemonSet; no controller runs, so they make no pods.
    for file in [
        "namespace.yaml",
        "service-accounts.yaml",
        "coordinator.yaml",
        "node-agent.yaml",
    ] {
        apply_objects(
            plane,
            &read_manifests(&deploy_dir().join("base").join(file)).unwrap(),
        )
        .await
        .unwrap();
    }
    let client = plane.client().await.unwrap();

    // No controller-manager creates the default ServiceAccount, which a pod
    // without one of its own needs.
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap(),
        )
        .await
        .unwrap();

    let configs = dynamic(&client, &KATA_CONFIG.api_resource(), None);
    create(
        &configs,
        json!({
            "apiVersion": KATA_CONFIG.api_version(), "kind": KATA_CONFIG.kind,
            "metadata": {"name": KATACONFIG},
            "spec": {"checkNodeEligibility": true},
        }),
    )
    .await;
    // worker-b is only in the status (it lost its kata-oc label while
    // uninstalling): the gather must still treat it as targeted.
    patch_status(
        &configs,
        KATACONFIG,
        json!({
            "runtimeClasses": [names::RUNTIME_CLASS_NAME],
            "kataNodes": {"nodeCount": 2, "readyNodeCount": 1,
                          "installed": [NODE_A], "uninstalling": [NODE_B]},
        }),
    )
    .await;

    let pools = dynamic(&client, &mco::POOL.api_resource(), None);
    create(
        &pools,
        kata_coordinator::mco::objects::machine_config_pool(),
    )
    .await;
    create(
        &pools,
        json!({
            "apiVersion": mco::POOL.api_version(), "kind": mco::POOL.kind,
            "metadata": {"name": mco::WORKER_POOL},
            "spec": {"nodeSelector": {"matchLabels": {names::WORKER_ROLE_LABEL: ""}}},
        }),
    )
    .await;
    create(
        &dynamic(&client, &mco::MACHINE_CONFIG.api_resource(), None),
        kata_coordinator::mco::objects::machine_config(&CrioRuntimeHandler::default()),
    )
    .await;
    // No ContainerRuntimeConfig: the operator makes one only for a
    // non-default logLevel, and the gather must call it absent, not failed.
    Api::<RuntimeClass>::all(client.clone())
        .create(&PostParams::default(), &runtime_class())
        .await
        .unwrap();

    let worker = (names::WORKER_ROLE_LABEL, "");
    create_node(
        &client,
        NODE_A,
        &[
            worker,
            (mco::KATA_POOL_ROLE_LABEL, ""),
            (names::KATA_CAPABLE_LABEL, "true"),
            (names::KATA_RUNTIME_LABEL, "true"),
        ],
    )
    .await
    .unwrap();
    create_node(
        &client,
        NODE_B,
        &[worker, (names::KATA_CAPABLE_LABEL, "true")],
    )
    .await
    .unwrap();
    create_node(&client, NODE_C, &[worker]).await.unwrap();
    let nodes = dynamic(&client, &kata_coordinator::kind::NODE.api_resource(), None);
    nodes
        .patch(
            NODE_A,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                mco::CURRENT_CONFIG: "rendered-kata-oc-1234",
                mco::DESIRED_CONFIG: "rendered-kata-oc-1234",
                mco::STATE: mco::STATE_DONE,
            }}})),
        )
        .await
        .unwrap();
    let condition = |status: &str, reason: &str, message: &str| {
        json!({"conditions": [
            {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "no kubelet"},
            {"type": names::NODE_CONDITION, "status": status, "reason": reason, "message": message,
             "lastTransitionTime": "2026-01-02T03:04:05Z", "lastHeartbeatTime": "2026-01-02T03:04:06Z"},
        ]})
    };
    patch_status(
        &nodes,
        NODE_A,
        condition("True", "RuntimeReady", "runtime ready"),
    )
    .await;
    patch_status(
        &nodes,
        NODE_B,
        condition("False", "KvmDeviceMissing", TRICKY_MESSAGE),
    )
    .await;

    let pods = Api::<Pod>::namespaced(client.clone(), contract::DEFAULT_NAMESPACE);
    let pod = |name: &str, component: &str, account: &str, container: &str, node: &str| {
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/name": "kata-operator",
                "app.kubernetes.io/component": component,
            }},
            "spec": {"nodeName": node, "serviceAccountName": account,
                     "automountServiceAccountToken": false,
                     "containers": [{"name": container, "image": format!("quay.io/kata-operator/{component}:latest")}]},
        }))
        .unwrap()
    };
    let running = |container: &str, restarts: u32| {
        json!({"status": {"phase": "Running", "containerStatuses": [{
            "name": container, "ready": true, "restartCount": restarts,
            "image": "image", "imageID": "",
            "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}},
        }]}})
    };
    for (name, component, account, container, node, restarts) in [
        (
            COORDINATOR_POD,
            "coordinator",
            contract::COORDINATOR_SERVICE_ACCOUNT,
            "coordinator",
            NODE_C,
            1,
        ),
        (
            AGENT_POD,
            "node-agent",
            contract::AGENT_SERVICE_ACCOUNT,
            "node-agent",
            NODE_A,
            0,
        ),
    ] {
        pods.create(
            &PostParams::default(),
            &pod(name, component, account, container, node),
        )
        .await
        .unwrap();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(running(container, restarts)),
        )
        .await
        .unwrap();
    }
    // Those pods stand for what the workload controllers made; from here on
    // the pod policy holds the namespace, as on a cluster.
    pod_policy_in_force(plane, &pods).await;
    // A workload using the RuntimeClass, and one that does not.
    let workloads = Api::<Pod>::namespaced(client.clone(), "default");
    for (name, class) in [
        ("kata-workload", Some(names::RUNTIME_CLASS_NAME)),
        ("plain", None),
    ] {
        let mut spec = json!({"containers": [{"name": "app", "image": "app"}]});
        if let Some(class) = class {
            spec["runtimeClassName"] = json!(class);
        }
        workloads
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap(),
            )
            .await
            .unwrap();
    }

    // Events as the coordinator writes them (events.k8s.io, about the
    // cluster-scoped KataConfig, so in "default"), one in the operator's
    // namespace, and one about something else that must not be gathered as
    // a KataConfig's.
    let events_v1 = resource("events.k8s.io/v1", "Event", "events");
    create(
        &dynamic(&client, &events_v1, Some("default")),
        json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "kataconfig-installing"},
            "eventTime": "2026-01-02T03:04:05.000000Z",
            "reportingController": names::EVENT_REPORTER, "reportingInstance": COORDINATOR_POD,
            "action": "Reconciling", "reason": "Installing", "type": "Normal",
            "note": "labelled 1 node",
            "regarding": {"apiVersion": KATA_CONFIG.api_version(), "kind": KATA_CONFIG.kind, "name": KATACONFIG},
        }),
    )
    .await;
    let core_events = resource("v1", "Event", "events");
    for (namespace, name, kind, object, reason) in [
        (
            contract::DEFAULT_NAMESPACE,
            "agent-pull",
            "DaemonSet",
            "kata-node-agent",
            "FailedCreate",
        ),
        ("default", "node-c-reboot", "Node", NODE_C, "Rebooted"),
    ] {
        create(
            &dynamic(&client, &core_events, Some(namespace)),
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name},
                "involvedObject": {"kind": kind, "name": object, "namespace": namespace},
                "reason": reason, "message": "m", "type": "Warning",
                "firstTimestamp": "2026-01-02T03:04:05Z", "lastTimestamp": "2026-01-02T03:04:05Z",
                "count": 1, "source": {"component": "test"},
            }),
        )
        .await;
    }
    client
}

/// Applies the operator's pod policy and returns once it refuses what the
/// gather's check pod once was: privileged, as the agent's account, in the
/// operator's namespace, created by an admin rather than the DaemonSet
/// controller.
async fn pod_policy_in_force(plane: &ControlPlane, pods: &Api<Pod>) {
    apply_objects(
        plane,
        &read_manifests(&deploy_dir().join("base/node-agent-pod-policy.yaml")).unwrap(),
    )
    .await
    .unwrap();
    let in_the_operators_namespace: Pod = serde_json::from_value(json!({
        "metadata": {"name": "kata-must-gather-check-in-namespace"},
        "spec": {
            "nodeName": NODE_B,
            "serviceAccountName": contract::AGENT_SERVICE_ACCOUNT,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "check", "image": "quay.io/kata-operator/node-agent:latest",
                "args": ["check", "--json", "--host-root=/host"],
                "securityContext": {"privileged": true, "readOnlyRootFilesystem": true},
                "volumeMounts": [{"name": "host-root", "mountPath": "/host", "readOnly": true}],
            }],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}}],
        },
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the pod policy to refuse a check pod in the operator's namespace",
        Duration::from_secs(30),
        || async {
            Ok(pods
                .create(&dry_run, &in_the_operators_namespace)
                .await
                .is_err_and(|e| e.to_string().contains("kata-operator-node-agent-pods-v2")))
        },
    )
    .await
    .unwrap();
}
