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

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
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
use kata_tests::eventually;
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
/// The labels of the gather's check pods and of their namespace.
const CHECK_POD_SELECTOR: &str =
    "app.kubernetes.io/name=kata-operator,app.kubernetes.io/component=must-gather";

fn script() -> PathBuf {
    deploy_dir().join("must-gather/gather")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

mod script_lint;
mod with_kubelets;
mod without_kubelets;
mod world;

use world::populate;

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

/// The gather's check pods, in every namespace.
async fn check_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(CHECK_POD_SELECTOR))
        .await
        .unwrap()
        .items
}

/// Everything the gather made for its checks is being deleted: with no
/// kubelet a bound pod stays Terminating, and with no namespace controller
/// so does its namespace.
async fn assert_checks_cleaned_up(client: &Client) {
    for pod in check_pods(client).await {
        assert!(
            pod.metadata.deletion_timestamp.is_some(),
            "{} was left behind",
            pod.name_any()
        );
    }
    let namespaces = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default().labels(CHECK_POD_SELECTOR))
        .await
        .unwrap()
        .items;
    assert_eq!(namespaces.len(), 1, "one namespace for the check pods");
    for namespace in namespaces {
        assert!(
            namespace.metadata.deletion_timestamp.is_some(),
            "namespace {} was left behind",
            namespace.name_any()
        );
    }
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

    // A check pod lives only while the gather waits for it: catch it
    // meanwhile, in whichever namespace the gather made for it.
    let mut check_pod: Option<Pod> = None;
    let mut on_check_pod = Some(on_check_pod);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if check_pod.is_none() {
            check_pod = check_pods(client).await.into_iter().next();
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
        "admission-policies.yaml".into(),
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
