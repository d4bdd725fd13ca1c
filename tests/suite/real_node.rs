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
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event, Namespace, Node, Pod, PodSpec};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kata_coordinator::{names, objects};
use kata_test_harness::kata_test;
use kata_tests::eventually;
use kata_tests::real_node::{NODE_NAME, PAUSE_IMAGE, RealNode, SHIM_STAND_IN_ERROR, unavailable};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};

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

    let label = serde_json::json!({
        "metadata": { "labels": { names::KATA_RUNTIME_LABEL: "true" } }
    });
    Api::<Node>::all(client.clone())
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();

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
        panic!(
            "{e}\n--- kubelet log (tail) ---\n{}\n--- crio log (tail) ---\n{}",
            node.log_tail("kubelet", 40),
            node.log_tail("crio", 20)
        );
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
