//! A `kata` pod on a real node (kubelet, CRI-O, kube-scheduler and
//! kube-controller-manager, see `kata_tests::real_node`): the RuntimeClass
//! the coordinator builds keeps it off a node without the runtime label,
//! the scheduler places it once the label is there, admission sets its
//! overhead, and the kubelet asks CRI-O's `kata` handler for its sandbox.
//! Kata's shim cannot be built here: the handler's shim is a stand-in that
//! refuses, so the pod's journey ends at sandbox creation, with the shim's
//! own message in the kubelet's event.
//!
//! One test function, so one node per run: the node is machine-global.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Event, Namespace, Node, Pod, PodSpec, ServiceAccount,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kata_coordinator::{names, objects};
use kata_test_harness::{kata_test, requirement};
use kata_tests::eventually;
use kata_tests::real_node::images::{ImageSpec, shared_libraries};
use kata_tests::real_node::{NODE_NAME, PAUSE_IMAGE, RealNode, SHIM_STAND_IN_ERROR, unavailable};
use kube::api::{Api, ListParams, LogParams, ObjectMeta, Patch, PatchParams, PostParams};

const NAMESPACE: &str = "kata-pods";
const POD: &str = "sandboxed";
/// The scheduler and the kubelet act within seconds; a loaded CI machine
/// gets more.
const SETTLE: Duration = Duration::from_secs(90);

fn kata_pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(POD.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: Some(names::RUNTIME_CLASS_NAME.into()),
            containers: vec![Container {
                name: "workload".into(),
                image: Some(PAUSE_IMAGE.into()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Labels the real node, as an admin would.
async fn label_node(client: &kube::Client, key: &str, value: &str) {
    let label = serde_json::json!({ "metadata": { "labels": { key: value } } });
    Api::<Node>::all(client.clone())
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
}

/// A wait's failure with the kubelet's and CRI-O's last words.
fn with_node_logs(node: &RealNode, failure: &kata_tests::Error) -> String {
    format!(
        "{failure}\n--- kubelet log (tail) ---\n{}\n--- crio log (tail) ---\n{}",
        node.log_tail("kubelet", 40),
        node.log_tail("crio", 20)
    )
}

/// The pod's PodScheduled condition, as (status, reason, message).
fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let condition = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    Some((
        condition.status.clone(),
        condition.reason.clone().unwrap_or_default(),
        condition.message.clone().unwrap_or_default(),
    ))
}

#[kata_test(
    requires(unavailable),
    exclusive(crio_socket),
    flavor = "multi_thread",
    worker_threads = 2
)]
async fn a_kata_pod_waits_for_the_runtime_label_and_fails_at_sandbox_creation() {
    let node = RealNode::start().await.unwrap();
    let client = node.client().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    node.wait_default_service_account(NAMESPACE).await.unwrap();

    // The RuntimeClass exactly as the coordinator applies it.
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    classes
        .create(&PostParams::default(), &objects::runtime_class())
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let created = pods
        .create(&PostParams::default(), &kata_pod())
        .await
        .unwrap();
    // RuntimeClass admission copied the class's overhead into the pod.
    let overhead = created.spec.as_ref().unwrap().overhead.clone().unwrap();
    assert_eq!(
        overhead,
        BTreeMap::from([
            ("cpu".to_owned(), Quantity("250m".into())),
            ("memory".to_owned(), Quantity("350Mi".into())),
        ])
    );

    // Without the runtime label the node does not match the class's
    // nodeSelector (merged into the pod by the same admission).
    eventually(
        "the scheduler to find the pod unschedulable",
        SETTLE,
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(POD).await.map_err(|e| e.to_string())?;
                Ok(
                    scheduled_condition(&pod).is_some_and(|(status, reason, _)| {
                        status == "False" && reason == "Unschedulable"
                    }),
                )
            }
        },
    )
    .await
    .unwrap();
    let pending = pods.get(POD).await.unwrap();
    let (_, _, message) = scheduled_condition(&pending).unwrap();
    assert!(message.contains("node affinity/selector"), "{message}");
    assert_eq!(pending.spec.as_ref().unwrap().node_name, None);
    assert_eq!(
        pending.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    assert_eq!(
        pending.spec.as_ref().unwrap().node_selector,
        Some(BTreeMap::from([(
            names::KATA_RUNTIME_LABEL.to_owned(),
            "true".to_owned()
        )]))
    );

    label_node(&client, names::KATA_RUNTIME_LABEL, "true").await;

    eventually("the pod to be bound to the labelled node", SETTLE, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(POD).await.map_err(|e| e.to_string())?;
            Ok(pod.spec.and_then(|s| s.node_name).as_deref() == Some(NODE_NAME))
        }
    })
    .await
    .unwrap();

    // The kubelet asked CRI-O for a sandbox with the `kata` handler, and
    // CRI-O started that handler's shim, whose refusal the kubelet reports.
    let events: Api<Event> = Api::namespaced(client.clone(), NAMESPACE);
    let failure = std::sync::Mutex::new(None::<Event>);
    let found = eventually("a FailedCreatePodSandBox event for the pod", SETTLE, || {
        let events = events.clone();
        let failure = &failure;
        async move {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={POD}")))
                .await
                .map_err(|e| e.to_string())?;
            let event = list
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"));
            let seen = event.is_some();
            *failure.lock().unwrap() = event;
            Ok(seen)
        }
    })
    .await;
    if let Err(e) = found {
        panic!("{}", with_node_logs(&node, &e));
    }
    let event = failure.into_inner().unwrap().unwrap();
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains(SHIM_STAND_IN_ERROR),
        "{message}\n--- crio log (tail) ---\n{}",
        node.log_tail("crio", 20)
    );
    assert_eq!(
        event.source.and_then(|s| s.component).as_deref(),
        Some("kubelet")
    );

    // Never further than its sandbox: no container of it started.
    let failed = pods.get(POD).await.unwrap();
    let status = failed.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let waiting = status.container_statuses.unwrap_or_default();
    assert!(
        waiting.iter().all(|c| c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("ContainerCreating")),
        "{waiting:?}"
    );
}

/// The node-agent built for release, which the image is made from.
fn release_agent() -> PathBuf {
    std::env::var_os("KATA_NODE_AGENT_RELEASE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/node-agent"),
        PathBuf::from,
    )
}

const BUSYBOX: &str = "/bin/busybox";

/// Why the node-agent's image cannot be built here, if it cannot.
fn agent_image_unavailable() -> Option<String> {
    if !release_agent().is_file() {
        return Some(format!(
            "{} is missing (cargo build --release -p kata-node-agent)",
            release_agent().display()
        ));
    }
    (!Path::new(BUSYBOX).is_file())
        .then(|| format!("{BUSYBOX} is missing (tests/scripts/install-packages.sh)"))
}

const AGENT_IMAGE: &str = "localhost/kata-tests/node-agent:release";
const AGENT_POD: &str = "node-agent-check";

/// The node-agent's image, FROM scratch: the release binary where the
/// Containerfile puts it, the shared libraries it loads as this machine
/// resolves them, and busybox's `chroot` for the probes that run host
/// binaries.
fn agent_image_files() -> Vec<(PathBuf, String)> {
    let binary = release_agent();
    let mut files = vec![
        (binary.clone(), "/usr/local/bin/node-agent".to_owned()),
        (PathBuf::from(BUSYBOX), "/usr/bin/chroot".to_owned()),
    ];
    for library in shared_libraries(&binary).unwrap() {
        // The loader's path is a link on Debian; the image gets the file.
        let file = std::fs::canonicalize(&library).unwrap();
        files.push((file, library.display().to_string()));
    }
    files
}

/// The pod of the DaemonSet the coordinator creates (its own builder, with
/// the image built here as its `RELATED_IMAGE_NODE_AGENT`), as one pod that
/// runs `node-agent check` once instead of `run` (no coordinator runs here).
/// Everything else (privileged, the read-only host root, the projected
/// token with the agent's audience, the service account, the node
/// selector, tolerations, priority) is what the coordinator writes.
fn agent_pod() -> Pod {
    use kata_coordinator::operands::node_agent::{AgentSettings, daemon_set};
    let settings = AgentSettings {
        namespace: AGENT_NAMESPACE.into(),
        image: AGENT_IMAGE.into(),
        coordinator_url: "https://kata-coordinator.invalid:8443".into(),
        host_root: "/".into(),
    };
    let daemon_set = daemon_set(&settings, None, None);
    let mut template = daemon_set["spec"]["template"].clone();
    template["metadata"]["name"] = AGENT_POD.into();
    let spec = &mut template["spec"];
    spec["restartPolicy"] = "Never".into();
    let container = &mut spec["containers"][0];
    assert_eq!(
        container["image"], AGENT_IMAGE,
        "the image the settings name"
    );
    container["args"] = serde_json::json!(["check", "--host-root=/host", "--json"]);
    // Probes a long-running agent; `check` exits once it has printed.
    container.as_object_mut().unwrap().remove("livenessProbe");
    serde_json::from_value(template).unwrap()
}

/// What the node-agent's pod needs in its namespace besides itself.
async fn agent_namespace(node: &RealNode) {
    let client = node.client().await.unwrap();
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": AGENT_NAMESPACE }
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "kata-node-agent" }
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let ca: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "kata-coordinator-ca" },
        "data": { "service-ca.crt": node.control_plane().ca().cert_pem() },
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client, AGENT_NAMESPACE)
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
}

const AGENT_NAMESPACE: &str = "kata-operator";

#[kata_test(
    requires(unavailable, agent_image_unavailable, requirement::kvm),
    exclusive(crio_socket),
    flavor = "multi_thread",
    worker_threads = 2
)]
async fn the_node_agent_pod_the_coordinator_writes_runs_its_probes_on_the_node() {
    let node = RealNode::start().await.unwrap();
    node.build_image(&ImageSpec {
        reference: AGENT_IMAGE,
        files: agent_image_files(),
        entrypoint: "/usr/local/bin/node-agent",
    })
    .unwrap();
    let client = node.client().await.unwrap();
    // The manifest selects workers.
    label_node(&client, names::WORKER_ROLE_LABEL, "").await;
    agent_namespace(&node).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    pods.create(&PostParams::default(), &agent_pod())
        .await
        .unwrap();

    let finished = eventually("the node-agent's check to finish", SETTLE, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(AGENT_POD).await.map_err(|e| e.to_string())?;
            let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
            Ok(phase == "Succeeded" || phase == "Failed")
        }
    })
    .await;
    if let Err(e) = finished {
        panic!("{}", with_node_logs(&node, &e));
    }
    let pod = pods.get(AGENT_POD).await.unwrap();
    let status = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let terminated = status.state.as_ref().unwrap().terminated.as_ref().unwrap();
    // 0, 1 or 2 is a verdict (ready, capable, not capable); anything else
    // (64: usage, 127: not found, 139: a crash) is the image or the pod.
    assert!((0..=2).contains(&terminated.exit_code), "{terminated:?}");
    assert_eq!(status.image, AGENT_IMAGE);

    // Its output, read back through the API server and the kubelet.
    let output = pods.logs(AGENT_POD, &LogParams::default()).await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(report["host_root"], "/host", "{output}");
    let outcome = |name: &str| {
        report["outcomes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    // /dev/kvm opened through the read-only host root, in a privileged
    // container of crun's.
    let kvm = outcome("kvm");
    assert_eq!(
        (&kvm["status"], &kvm["reason"]),
        (&"OK".into(), &"KvmUsable".into()),
        "{output}"
    );
    // And it finds the node's CRI-O, its `kata` drop-in and the handler
    // CRI-O serves, from inside its pod.
    let drop_in = outcome("crio-drop-in");
    let handler = outcome("cri-handler");
    assert_eq!(drop_in["reason"], "HandlerConfigured", "{output}");
    assert_eq!(handler["reason"], "HandlerServed", "{output}");
    println!("node-agent check in its pod on {NODE_NAME}:\n{output}");
}
