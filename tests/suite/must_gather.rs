//! `deploy/must-gather/gather` against a real API server: the objects a
//! support case needs land in the documented tree under the names the code
//! gives them, the per-node files carry the labels and condition as set, and
//! what needs a kubelet (logs, exec, the metrics proxy, a check pod that
//! never starts) is recorded in gather-errors.log without stopping the rest.
//! The script's own copies of the operator's names are checked against the
//! code, and the script passes `bash -n` and, where installed, shellcheck.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kata_coordinator::kind::KATA_CONFIG;
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kata_coordinator::objects::{CrioRuntimeHandler, runtime_class};
use kata_proto::contract;
use kata_tests::ControlPlane;
use kata_tests::api_objects::create_node;
use kata_tests::control_plane::binary_dir;
use kata_tests::manifests::apply_objects;
use kata_tests::manifests::deploy_dir;
use kata_tests::manifests::read_manifests;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;

const KATACONFIG: &str = "cluster-kataconfig";
const COORDINATOR_POD: &str = "kata-coordinator-7d9f-abcde";
const AGENT_POD: &str = "kata-node-agent-x1y2z";
/// Exec path: an agent pod runs here.
const NODE_A: &str = "worker-a";
/// Check-pod path: no agent pod; targeted through the KataConfig's status only.
const NODE_B: &str = "worker-b";
/// Not targeted.
const NODE_C: &str = "worker-c";
/// Quotes, a backslash, a newline and a colon: what Go's %q must keep intact
/// through YAML.
const TRICKY_MESSAGE: &str =
    "kvm: open /dev/kvm: \"No such file\"\\ or\ndirectory: see node-agent check";
/// Seconds the gather waits for a check pod; none ever starts here.
const CHECK_TIMEOUT: &str = "6";

fn script() -> PathBuf {
    deploy_dir().join("must-gather/gather")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

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
async fn populate(plane: &ControlPlane) -> Client {
    plane.install_openshift_crds().await.unwrap();
    let crd: CustomResourceDefinition =
        serde_yaml::from_str(&read(&deploy_dir().join("base/kataconfig-crd.yaml"))).unwrap();
    plane.install_crds(&[crd]).await.unwrap();
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

/// Every file under `root`, as relative paths.
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.insert(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn items(list: &Yaml) -> &Vec<Yaml> {
    assert_eq!(list["kind"], "List", "{list:?}");
    list["items"].as_sequence().unwrap()
}

fn names_of(list: &Yaml) -> BTreeSet<String> {
    items(list)
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

fn check_pods(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| {
            p.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("must-gather")
        })
        .collect()
}

/// What one run of the gather left.
struct Run {
    _work: tempfile::TempDir,
    out: PathBuf,
    stdout: String,
    /// The first check pod seen while it ran.
    check_pod: Option<Pod>,
}

/// Runs the script with `kubectl_dir` first on PATH; `on_check_pod` is
/// called once with the first check pod seen while it waits for it.
async fn run_gather<F, Fut>(
    plane: &ControlPlane,
    client: &Client,
    kubectl_dir: &Path,
    on_check_pod: F,
) -> Run
where
    F: FnOnce(Pod) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("must-gather");
    let log = std::fs::File::create(work.path().join("stdout")).unwrap();
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(script())
        .arg(&out)
        .env("PATH", &path)
        .env("KUBECONFIG", plane.kubeconfig())
        .env("KATA_GATHER_CHECK_TIMEOUT", CHECK_TIMEOUT)
        .env("KATA_GATHER_STEP_TIMEOUT", "30")
        .env_remove("KATA_NAMESPACE")
        .env_remove("KATA_NODE_AGENT_IMAGE")
        .env_remove("KUBECTL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    // Where an `oc` is installed the script would prefer it; these tests
    // are about the kubectl put first on PATH.
    if std::env::split_paths(&path).any(|d| d.join("oc").is_file()) {
        command.env("KUBECTL", "kubectl");
    }
    let mut child = command.spawn().unwrap();

    // A check pod lives only while the gather waits for it: catch it meanwhile.
    let pods = Api::<Pod>::namespaced(client.clone(), contract::DEFAULT_NAMESPACE);
    let mut check_pod: Option<Pod> = None;
    let mut on_check_pod = Some(on_check_pod);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if check_pod.is_none() {
            let list = pods.list(&ListParams::default()).await.unwrap();
            check_pod = check_pods(&list.items).first().map(|p| (*p).clone());
            if let Some(pod) = &check_pod
                && let Some(hook) = on_check_pod.take()
            {
                hook(pod.clone()).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stdout = read(&work.path().join("stdout"));
    assert!(status.success(), "gather failed ({status}):\n{stdout}");
    println!("{stdout}");
    Run {
        _work: work,
        out,
        stdout,
        check_pod,
    }
}

/// The tree every run writes, whatever a kubelet would add.
fn base_tree() -> BTreeSet<String> {
    let kataconfig_resource = format!("{}.{}", KATA_CONFIG.plural, KATA_CONFIG.group);
    [
        "gather-summary.txt".to_owned(),
        "gather-errors.log".into(),
        "version.yaml".into(),
        format!("crds/{kataconfig_resource}.yaml"),
        format!("kataconfigs/{KATACONFIG}.yaml"),
        format!("machineconfigs/{}.yaml", mco::MACHINE_CONFIG_NAME),
        format!("machineconfigpools/{}.yaml", mco::POOL_NAME),
        format!("machineconfigpools/{}.yaml", mco::WORKER_POOL),
        format!("runtimeclasses/{}.yaml", names::RUNTIME_CLASS_NAME),
        "nodes/nodes.txt".into(),
        "nodes/targeted.txt".into(),
        format!("nodes/{NODE_A}.yaml"),
        format!("nodes/{NODE_B}.yaml"),
        format!("nodes/{NODE_C}.yaml"),
        "kata-pods.txt".into(),
        "events/namespace.yaml".into(),
        "events/kataconfig.yaml".into(),
        "namespace/deployments.yaml".into(),
        "namespace/daemonsets.yaml".into(),
        "namespace/pods.yaml".into(),
        "namespace/services.yaml".into(),
        "namespace/leases.yaml".into(),
        "namespace/pods.txt".into(),
        "node-check/summary.txt".into(),
    ]
    .into_iter()
    .collect()
}

#[kata_test]
async fn gather_collects_the_documented_tree_and_records_what_needs_a_kubelet() {
    let plane = ControlPlane::start().await.unwrap();
    let client = populate(&plane).await;
    // The control plane's kubectl first, as `oc` or `kubectl` is in the image.
    let run = run_gather(&plane, &client, &binary_dir().unwrap(), |_| async {}).await;
    let (out, stdout, seen) = (&run.out, &run.stdout, run.check_pod.clone());
    let pods = Api::<Pod>::namespaced(client.clone(), contract::DEFAULT_NAMESPACE);

    // --- the tree, exactly ---------------------------------------------
    let kataconfig_resource = format!("{}.{}", KATA_CONFIG.plural, KATA_CONFIG.group);
    assert_eq!(files(out), base_tree(), "the output tree");

    // --- the objects, by the code's names ------------------------------
    let named = |file: &str, kind: &str, name: &str| {
        let doc = yaml(&out.join(file));
        assert_eq!(doc["kind"], kind, "{file}");
        assert_eq!(doc["metadata"]["name"], name, "{file}");
        doc
    };
    let crd = named(
        &format!("crds/{kataconfig_resource}.yaml"),
        "CustomResourceDefinition",
        &kataconfig_resource,
    );
    assert_eq!(crd["spec"]["group"], KATA_CONFIG.group);
    let config = named(
        &format!("kataconfigs/{KATACONFIG}.yaml"),
        KATA_CONFIG.kind,
        KATACONFIG,
    );
    assert_eq!(config["spec"]["checkNodeEligibility"], true);
    assert_eq!(config["status"]["kataNodes"]["installed"][0], NODE_A);
    let mc = named(
        &format!("machineconfigs/{}.yaml", mco::MACHINE_CONFIG_NAME),
        mco::MACHINE_CONFIG.kind,
        mco::MACHINE_CONFIG_NAME,
    );
    assert_eq!(mc["spec"]["extensions"][0], mco::EXTENSION);
    for pool in [mco::POOL_NAME, mco::WORKER_POOL] {
        named(
            &format!("machineconfigpools/{pool}.yaml"),
            mco::POOL.kind,
            pool,
        );
    }
    let rc = named(
        &format!("runtimeclasses/{}.yaml", names::RUNTIME_CLASS_NAME),
        "RuntimeClass",
        names::RUNTIME_CLASS_NAME,
    );
    assert_eq!(rc["handler"], names::RUNTIME_HANDLER);
    let version = yaml(&out.join("version.yaml"));
    assert!(
        version["serverVersion"]["gitVersion"].is_string(),
        "{version:?}"
    );

    // --- nodes ---------------------------------------------------------
    assert_eq!(
        read(&out.join("nodes/targeted.txt")),
        format!("{NODE_A}\n{NODE_B}\n")
    );
    let table = read(&out.join("nodes/nodes.txt"));
    for node in [NODE_A, NODE_B, NODE_C] {
        assert!(table.contains(node), "{table}");
    }
    assert!(table.to_uppercase().contains("KATA-RUNTIME"), "{table}");
    let node_file = |node: &str| {
        let doc = yaml(&out.join(format!("nodes/{node}.yaml")));
        assert_eq!(doc["name"], node);
        doc
    };
    let labels = |doc: &Yaml| -> BTreeMap<String, Option<String>> {
        doc["labels"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    let expect_labels = |worker: Option<&str>,
                         kata_oc: Option<&str>,
                         capable: Option<&str>,
                         runtime: Option<&str>| {
        BTreeMap::from([
            (
                names::WORKER_ROLE_LABEL.to_owned(),
                worker.map(str::to_owned),
            ),
            (
                mco::KATA_POOL_ROLE_LABEL.to_owned(),
                kata_oc.map(str::to_owned),
            ),
            (
                names::KATA_CAPABLE_LABEL.to_owned(),
                capable.map(str::to_owned),
            ),
            (
                names::KATA_RUNTIME_LABEL.to_owned(),
                runtime.map(str::to_owned),
            ),
        ])
    };

    let a = node_file(NODE_A);
    assert_eq!(a["targeted"], true);
    assert_eq!(
        labels(&a),
        expect_labels(Some(""), Some(""), Some("true"), Some("true"))
    );
    assert_eq!(
        a["annotations"][mco::CURRENT_CONFIG],
        "rendered-kata-oc-1234"
    );
    assert_eq!(a["annotations"][mco::STATE], mco::STATE_DONE);
    assert!(a["annotations"][mco::REASON].is_null());
    assert_eq!(a["condition"]["type"], names::NODE_CONDITION);
    assert_eq!(a["condition"]["status"], "True");
    assert_eq!(a["condition"]["reason"], "RuntimeReady");
    assert_eq!(a["condition"]["lastTransitionTime"], "2026-01-02T03:04:05Z");

    let b = node_file(NODE_B);
    assert_eq!(b["targeted"], true, "targeted through the status alone");
    assert_eq!(
        labels(&b),
        expect_labels(Some(""), None, Some("true"), None)
    );
    assert!(b["annotations"][mco::CURRENT_CONFIG].is_null());
    assert_eq!(b["condition"]["status"], "False");
    assert_eq!(b["condition"]["reason"], "KvmDeviceMissing");
    assert_eq!(b["condition"]["message"], TRICKY_MESSAGE);

    let c = node_file(NODE_C);
    assert_eq!(c["targeted"], false);
    assert_eq!(labels(&c), expect_labels(Some(""), None, None, None));
    assert!(c["condition"].is_null(), "{c:?}");

    // --- pods, events, the namespace -----------------------------------
    assert_eq!(read(&out.join("kata-pods.txt")), "default/kata-workload\n");
    let kataconfig_events = yaml(&out.join("events/kataconfig.yaml"));
    let reasons: Vec<&str> = items(&kataconfig_events)
        .iter()
        .map(|e| {
            assert_eq!(e["involvedObject"]["kind"], KATA_CONFIG.kind);
            assert_eq!(e["involvedObject"]["name"], KATACONFIG);
            e["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(reasons, ["Installing"]);
    assert_eq!(
        names_of(&yaml(&out.join("events/namespace.yaml"))),
        BTreeSet::from(["agent-pull".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/deployments.yaml"))),
        BTreeSet::from(["kata-coordinator".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/daemonsets.yaml"))),
        BTreeSet::from(["kata-node-agent".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/services.yaml"))),
        BTreeSet::from(["kata-coordinator".to_owned()])
    );
    let gathered_pods = names_of(&yaml(&out.join("namespace/pods.yaml")));
    assert!(gathered_pods.contains(COORDINATOR_POD) && gathered_pods.contains(AGENT_POD));
    assert!(items(&yaml(&out.join("namespace/leases.yaml"))).is_empty());

    // --- what needs a kubelet: recorded, one line each ------------------
    let errors = read(&out.join("gather-errors.log"));
    println!(
        "--- gather-errors.log ---\n{errors}\n--- nodes/{NODE_B}.yaml ---\n{}",
        read(&out.join(format!("nodes/{NODE_B}.yaml")))
    );
    let failed: Vec<&str> = errors
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let (_, rest) = l.split_once(" FAILED ").unwrap_or_else(|| panic!("{l}"));
            rest
        })
        .collect();
    let expected_failures = [
        format!("coordinator-logs: logs pod/{COORDINATOR_POD} -c coordinator"),
        // It restarted once, so its previous run's logs are asked for too.
        format!("coordinator-logs: previous logs pod/{COORDINATOR_POD} -c coordinator"),
        format!("coordinator-metrics: metrics of pod/{COORDINATOR_POD}"),
        format!("agent-logs: logs pod/{AGENT_POD} -c node-agent"),
        // worker-a has a running agent: exec into it, no new pod.
        format!("node-check: node-agent check in pod/{AGENT_POD} on node {NODE_A}"),
        // worker-b has none: a check pod, which no kubelet ever runs.
        format!("node-check: node-agent check on node {NODE_B}"),
    ];
    assert_eq!(
        failed.len(),
        expected_failures.len(),
        "exactly the kubelet-bound steps fail:\n{errors}"
    );
    for (line, want) in failed.iter().zip(&expected_failures) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} is not {want:?}\n{errors}"
        );
    }
    assert!(
        failed[5].contains("exit 124, timed out"),
        "the check pod is bounded: {}",
        failed[5]
    );
    assert!(
        errors.contains(&format!(
            "did not finish within {CHECK_TIMEOUT}s (phase: Pending)"
        )),
        "{errors}"
    );
    assert_eq!(read(&out.join("node-check/summary.txt")), "");

    let summary = read(&out.join("gather-summary.txt"));
    assert!(stdout.contains(&summary), "the summary ends the output");
    assert!(summary.contains("client:     kubectl"), "{summary}");
    assert!(summary.contains(&format!("namespace:  {}", contract::DEFAULT_NAMESPACE)));
    assert!(summary.contains("6 failed"), "{summary}");
    assert!(summary.contains("2 node(s), checked: 0"), "{summary}");
    let absent = format!(
        "absent:\n  {}.{}/{}\nfailed",
        mco::CONTAINER_RUNTIME_CONFIG.plural,
        mco::GROUP,
        mco::CONTAINER_RUNTIME_CONFIG_NAME
    );
    assert!(summary.contains(&absent), "{summary}");

    // --- the check pod: as the DaemonSet runs the agent, then deleted ----
    let seen = seen.expect("the gather created a check pod for worker-b");
    let spec = seen.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE_B));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(contract::AGENT_SERVICE_ACCOUNT)
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(spec.active_deadline_seconds.is_some());
    let daemonset = read_manifests(&deploy_dir().join("base/node-agent.yaml")).unwrap();
    let agent = &daemonset[0].data["spec"]["template"]["spec"]["containers"][0];
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), agent["image"].as_str());
    assert_eq!(
        container.args.as_deref(),
        Some(
            &[
                "check".to_owned(),
                "--json".into(),
                "--host-root=/host".into()
            ][..]
        )
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/host", Some(true))
    );
    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.name, mount.name);
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/");
    // Deleted; with no kubelet to confirm, a bound pod stays Terminating.
    let after = pods.list(&ListParams::default()).await.unwrap();
    for pod in check_pods(&after.items) {
        assert!(
            pod.metadata.deletion_timestamp.is_some(),
            "{} was left behind",
            pod.name_any()
        );
    }
}

/// `NAME="value"` assignments at the top of the script.
fn script_constants() -> BTreeMap<String, String> {
    read(&script())
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            name.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[kata_test]
fn the_scripts_names_are_the_codes() {
    let constants = script_constants();
    let get = |name: &str| {
        constants
            .get(name)
            .unwrap_or_else(|| panic!("the script defines {name}"))
            .as_str()
    };
    let qualified = |kind: &kata_coordinator::kind::Kind| format!("{}.{}", kind.plural, kind.group);
    assert_eq!(get("KATACONFIG_RESOURCE"), qualified(&KATA_CONFIG));
    assert_eq!(
        get("MACHINE_CONFIG_RESOURCE"),
        qualified(&mco::MACHINE_CONFIG)
    );
    assert_eq!(get("POOL_RESOURCE"), qualified(&mco::POOL));
    assert_eq!(
        get("CONTAINER_RUNTIME_CONFIG_RESOURCE"),
        qualified(&mco::CONTAINER_RUNTIME_CONFIG)
    );
    assert_eq!(get("MACHINE_CONFIG_NAME"), mco::MACHINE_CONFIG_NAME);
    assert_eq!(
        get("CONTAINER_RUNTIME_CONFIG_NAME"),
        mco::CONTAINER_RUNTIME_CONFIG_NAME
    );
    assert_eq!(get("RUNTIME_CLASS_NAME"), names::RUNTIME_CLASS_NAME);
    assert_eq!(get("WORKER_ROLE_LABEL"), names::WORKER_ROLE_LABEL);
    assert_eq!(get("KATA_POOL_ROLE_LABEL"), mco::KATA_POOL_ROLE_LABEL);
    assert_eq!(get("KATA_CAPABLE_LABEL"), names::KATA_CAPABLE_LABEL);
    assert_eq!(get("KATA_RUNTIME_LABEL"), names::KATA_RUNTIME_LABEL);
    assert_eq!(get("NODE_CONDITION"), names::NODE_CONDITION);
    assert_eq!(get("LEASE_NAME"), kata_coordinator::rbac::LEASE_NAME);
    assert_eq!(
        get("AGENT_SERVICE_ACCOUNT"),
        contract::AGENT_SERVICE_ACCOUNT
    );
    let text = read(&script());
    assert!(
        text.contains(&format!(
            "NAMESPACE=\"${{KATA_NAMESPACE:-{}}}\"",
            contract::DEFAULT_NAMESPACE
        )),
        "the default namespace is the operator's"
    );
    for annotation in [
        mco::CURRENT_CONFIG,
        mco::DESIRED_CONFIG,
        mco::STATE,
        mco::REASON,
    ] {
        assert!(
            text.contains(&format!("    \"{annotation}\"\n")),
            "MCO_ANNOTATIONS lists {annotation}"
        );
    }

    // What the manifests name: the workloads, their selectors, the ports.
    // A selector's order does not matter: compare sorted.
    let sorted = |selector: &str| {
        let mut pairs: Vec<&str> = selector.split(',').collect();
        pairs.sort();
        pairs.join(",")
    };
    let labels = |pairs: &Yaml| {
        let mut pairs: Vec<String> = pairs
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()))
            .collect();
        pairs.sort();
        pairs.join(",")
    };
    let manifest = |file: &str, kind: &str| -> Yaml {
        let text = read(&deploy_dir().join("base").join(file));
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Yaml::deserialize(d).unwrap())
            .find(|d| d["kind"] == kind)
            .unwrap()
    };
    let daemonset = manifest("node-agent.yaml", "DaemonSet");
    assert_eq!(daemonset["metadata"]["name"], get("AGENT_DAEMONSET"));
    assert_eq!(
        sorted(get("AGENT_SELECTOR")),
        labels(&daemonset["spec"]["selector"]["matchLabels"])
    );
    let agent = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["name"], get("AGENT_CONTAINER"));
    assert!(
        agent["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--host-root=/host"),
        "the agent sees the host at /host, where the check looks"
    );
    assert_ne!(
        daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        get("CHECK_POD_COMPONENT"),
        "check pods must not match the DaemonSet's selector"
    );
    let deployment = manifest("coordinator.yaml", "Deployment");
    assert_eq!(
        sorted(get("COORDINATOR_SELECTOR")),
        labels(&deployment["spec"]["selector"]["matchLabels"])
    );
    let ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap();
    let metrics = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(
        get("METRICS_PORT"),
        metrics["containerPort"].as_u64().unwrap().to_string()
    );
}

#[kata_test]
fn the_script_is_valid_bash_and_passes_shellcheck() {
    let script = script();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(read(&script).starts_with("#!/usr/bin/env bash\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "gather is executable");
    }
    match std::process::Command::new("shellcheck")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            let lint = std::process::Command::new("shellcheck")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                lint.status.success(),
                "shellcheck:\n{}",
                String::from_utf8_lossy(&lint.stdout)
            );
        }
        Err(e) => kata_test_harness::skip(format!(
            "the shellcheck lint of {} (the other checks passed): shellcheck is not installed \
             ({e}); tests/scripts/install-packages.sh installs it",
            script.display()
        )),
    }
}

/// A `kubectl` that answers, as a kubelet would, what only a kubelet can
/// (logs, exec, port-forward, here to `forward_port`) and hands everything
/// else to the real one. It refuses an exec or a port-forward other than
/// the ones the gather must make, and refuses the metrics proxy as a
/// NetworkPolicy would. A port-forward writes its pid to `pid_file`.
fn kubelet_standing_kubectl(dir: &Path, forward_port: u16, pid_file: &Path) {
    let real = binary_dir().unwrap().join("kubectl");
    let script = format!(
        r#"#!/usr/bin/env bash
set -euo pipefail
case "${{3:-}}" in
exec)
    want="-n {ns} exec {agent} -c node-agent -- node-agent check --json --host-root /host"
    [[ "$*" == "$want" ]] || {{ echo "unexpected exec: $*" >&2; exit 99; }}
    echo '{{"hostRoot":"/host","via":"exec"}}'
    exit 1 ;;
logs)
    case "$4" in
    kata-must-gather-check-*) echo '{{"hostRoot":"/host","via":"pod"}}' ;;
    *) if [[ " $* " == *" --previous "* ]]; then echo "previous run of $4/$6"; else echo "log of $4/$6"; fi ;;
    esac
    exit 0 ;;
port-forward)
    # To the test's HTTP server, as the kubelet would to the pod's port.
    [[ "$4 $5" == "pod/{coordinator} :8080" ]] || {{ echo "unexpected port-forward: $*" >&2; exit 99; }}
    echo "Forwarding from 127.0.0.1:{forward_port} -> 8080"
    echo $$ >"{pid_file}"
    exec sleep 300 ;;
esac
if [[ "${{1:-}} ${{2:-}}" == "get --raw" && "${{3:-}}" == */proxy/metrics ]]; then
    # What a NetworkPolicy admitting only Prometheus makes of the proxy.
    echo 'Error from server (ServiceUnavailable): the server is currently unable to handle the request' >&2
    exit 1
fi
exec {real} "$@"
"#,
        ns = contract::DEFAULT_NAMESPACE,
        agent = AGENT_POD,
        coordinator = COORDINATOR_POD,
        forward_port = forward_port,
        pid_file = pid_file.display(),
        real = real.display(),
    );
    let path = dir.join("kubectl");
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[kata_test]
async fn with_kubelets_the_gather_keeps_logs_metrics_and_both_kinds_of_check() {
    let plane = ControlPlane::start().await.unwrap();
    let client = populate(&plane).await;
    let bin = tempfile::tempdir().unwrap();
    // The coordinator's metrics port, reached through port-forward.
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward_port = metrics.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = metrics.accept().await.unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            request.push(byte[0]);
        }
        stream
            .write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\r\n\
                  # TYPE kata_operator_leader gauge\nkata_operator_leader 1\n",
            )
            .await
            .unwrap();
        String::from_utf8(request).unwrap()
    });
    let pid_file = bin.path().join("port-forward.pid");
    kubelet_standing_kubectl(bin.path(), forward_port, &pid_file);
    let pods = Api::<Pod>::namespaced(client.clone(), contract::DEFAULT_NAMESPACE);
    // The check pod on worker-b ends as a kubelet would report a check that
    // found no KVM: Failed, exit status 2.
    let finish = |pod: Pod| {
        let pods = pods.clone();
        async move {
            let status = json!({"status": {"phase": "Failed", "containerStatuses": [{
                "name": "check", "ready": false, "restartCount": 0,
                "image": "image", "imageID": "",
                "state": {"terminated": {"exitCode": 2, "reason": "Error",
                    "startedAt": "2026-01-02T03:04:05Z", "finishedAt": "2026-01-02T03:04:06Z"}},
            }]}});
            pods.patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
            .unwrap();
        }
    };
    let run = run_gather(&plane, &client, bin.path(), finish).await;
    let out = &run.out;

    let errors = read(&out.join("gather-errors.log"));
    assert_eq!(errors, "", "nothing fails with kubelets");
    let mut expected = base_tree();
    for file in [
        format!("coordinator/{COORDINATOR_POD}/coordinator.log"),
        format!("coordinator/{COORDINATOR_POD}/coordinator.previous.log"),
        format!("coordinator/{COORDINATOR_POD}/metrics.txt"),
        format!("node-agent/{NODE_A}/node-agent.log"),
        format!("node-check/{NODE_A}.json"),
        format!("node-check/{NODE_B}.json"),
    ] {
        expected.insert(file);
    }
    assert_eq!(files(out), expected, "the output tree");
    assert_eq!(
        read(&out.join(format!("coordinator/{COORDINATOR_POD}/coordinator.log"))),
        format!("log of {COORDINATOR_POD}/coordinator\n")
    );
    assert_eq!(
        read(&out.join(format!(
            "coordinator/{COORDINATOR_POD}/coordinator.previous.log"
        ))),
        format!("previous run of {COORDINATOR_POD}/coordinator\n")
    );
    // The proxy refused, port-forward and bash's /dev/tcp fetched them.
    assert_eq!(
        read(&out.join(format!("coordinator/{COORDINATOR_POD}/metrics.txt"))),
        "# TYPE kata_operator_leader gauge\nkata_operator_leader 1\n"
    );
    let request = server.await.unwrap();
    assert!(
        request.starts_with("GET /metrics HTTP/1.0\r\n"),
        "{request}"
    );
    assert!(run.stdout.contains(&format!(
        "metrics of pod/{COORDINATOR_POD} through port-forward"
    )));
    let forwarder: i32 = read(&pid_file).trim().parse().unwrap();
    assert!(
        !Path::new(&format!("/proc/{forwarder}")).exists(),
        "the port-forward was stopped"
    );
    for (node, via) in [(NODE_A, "exec"), (NODE_B, "pod")] {
        let report: Value =
            serde_json::from_str(&read(&out.join(format!("node-check/{node}.json")))).unwrap();
        assert_eq!(report["via"], via, "{node}");
    }
    let check_pod = run.check_pod.expect("a check pod for worker-b").name_any();
    assert_eq!(
        read(&out.join("node-check/summary.txt")),
        format!(
            "{NODE_A} exit=1 (KVM-capable, runtime not ready) via exec pod/{AGENT_POD}\n\
             {NODE_B} exit=2 (not KVM-capable) via pod/{check_pod}\n"
        )
    );
    let summary = read(&out.join("gather-summary.txt"));
    assert!(summary.contains(", 0 failed"), "{summary}");
    assert!(summary.contains("2 node(s), checked: 2"), "{summary}");
    // A finished pod is deleted at once.
    let after = pods.list(&ListParams::default()).await.unwrap();
    for pod in check_pods(&after.items) {
        assert!(
            pod.metadata.deletion_timestamp.is_some(),
            "{} was left behind",
            pod.name_any()
        );
    }
}
