//! The monitoring operands on a real API server, the coordinator on its
//! own ServiceAccount's RBAC: the node-agents' PodMonitor (where the
//! `monitoring.coreos.com/v1` podmonitors are served; a stand-in CRD,
//! tests/monitoring/podmonitor-crd.yaml) and the console dashboard (where
//! the namespace `openshift-config-managed` exists), each equal to its file
//! in deploy/monitoring, set back after a hand edit, made again after a
//! deletion, and not written at all at steady state; where neither place
//! exists, that is logged once and nothing is written.

use kata_coordinator::kind::{CONFIG_MAP, POD_MONITOR};
use kata_coordinator::operands::monitoring::{
    DASHBOARD_NAME, DASHBOARD_NAMESPACE, POD_MONITOR_NAME,
};
use kata_coordinator::rbac::NAMESPACE;
use kata_test_harness::kata_test;
use kata_tests::manifests::{deploy_dir, read_manifests};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::support::{
    self, CapturedLog, IMAGE, Installed, console_dashboards_namespace, wait_object,
};

/// The shipped manifest, as JSON.
fn shipped(file: &str) -> Value {
    let objects = read_manifests(&deploy_dir().join("monitoring").join(file)).unwrap();
    assert_eq!(objects.len(), 1, "{file}");
    serde_json::to_value(&objects[0]).unwrap()
}

/// A merge patch by another field manager, as `kubectl edit` makes.
async fn edit(api: &Api<DynamicObject>, name: &str, patch: Value) {
    let params = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Every label of `want` is on `live`, with its value.
fn has_labels(live: &Value, want: &Value) -> bool {
    want["metadata"]["labels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| live["metadata"]["labels"][k] == *v)
}

#[kata_test]
async fn the_pod_monitor_and_dashboard_are_created_as_shipped_set_back_and_made_again() {
    let installed = Installed::start(Some(IMAGE)).await;
    installed.install_pod_monitor_api().await;
    kata_tests::manifests::apply_objects(
        &installed.cluster.plane,
        &[console_dashboards_namespace()],
    )
    .await
    .unwrap();
    let monitors = installed.namespaced_api(POD_MONITOR, NAMESPACE);
    let config_maps = installed.namespaced_api(CONFIG_MAP, DASHBOARD_NAMESPACE);
    let monitor_file = shipped("pod-monitor.yaml");
    let dashboard_file = shipped("dashboard.yaml");

    // Created with the shipped content: the PodMonitor's whole spec and
    // labels, owned by the coordinator's Deployment; the dashboard's data
    // and labels.
    let monitor = wait_object(&monitors, POD_MONITOR_NAME, |_| true).await;
    assert_eq!(monitor["spec"], monitor_file["spec"]);
    assert!(has_labels(&monitor, &monitor_file), "{monitor}");
    let owner = &monitor["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(
        owner["uid"].as_str(),
        Some(installed.deployment_uid.as_str())
    );
    let dashboard = wait_object(&config_maps, DASHBOARD_NAME, |_| true).await;
    assert_eq!(dashboard["data"], dashboard_file["data"]);
    assert!(has_labels(&dashboard, &dashboard_file), "{dashboard}");
    assert!(dashboard["metadata"].get("ownerReferences").is_none());
    // Steady state: nothing more is written through several resyncs.
    tokio::time::sleep(support::RESYNC * 4).await;
    assert_eq!(installed.writes("PodMonitor").await, 1.0);
    assert_eq!(installed.writes("ConfigMap").await, 1.0);

    // A hand edit of fields the operator ships is set back; a label of the
    // admin's own is kept.
    edit(
        &monitors,
        POD_MONITOR_NAME,
        json!({"metadata": {"labels": {"team": "obs"}}, "spec": {"sampleLimit": 10}}),
    )
    .await;
    edit(
        &config_maps,
        DASHBOARD_NAME,
        json!({"data": {"kata-operator.json": "{}"}}),
    )
    .await;
    let monitor = wait_object(&monitors, POD_MONITOR_NAME, |m| {
        m["spec"] == monitor_file["spec"]
    })
    .await;
    assert_eq!(monitor["metadata"]["labels"]["team"], "obs", "{monitor}");
    wait_object(&config_maps, DASHBOARD_NAME, |d| {
        d["data"] == dashboard_file["data"]
    })
    .await;
    installed
        .wait_event("OperandReasserted", "spec.sampleLimit")
        .await;
    installed
        .wait_event("OperandReasserted", "data.kata-operator.json")
        .await;
    tokio::time::sleep(support::RESYNC * 4).await;
    assert_eq!(installed.writes("PodMonitor").await, 2.0, "no fight");
    assert_eq!(installed.writes("ConfigMap").await, 2.0, "no fight");

    // Deleted: made again within a resync.
    monitors
        .delete(POD_MONITOR_NAME, &Default::default())
        .await
        .unwrap();
    config_maps
        .delete(DASHBOARD_NAME, &Default::default())
        .await
        .unwrap();
    let monitor = wait_object(&monitors, POD_MONITOR_NAME, |_| true).await;
    assert_eq!(monitor["spec"], monitor_file["spec"]);
    let dashboard = wait_object(&config_maps, DASHBOARD_NAME, |_| true).await;
    assert_eq!(dashboard["data"], dashboard_file["data"]);
    tokio::time::sleep(support::RESYNC * 4).await;
    assert_eq!(installed.writes("PodMonitor").await, 3.0);
    assert_eq!(installed.writes("ConfigMap").await, 3.0);
    installed.stop().await;
}

#[kata_test]
async fn without_the_monitoring_api_or_the_console_namespace_it_is_said_once_and_nothing_written() {
    let log = CapturedLog::install();
    let installed = Installed::start(Some(IMAGE)).await;
    installed
        .wait_daemon_set(|ds| ds["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE)
        .await;
    tokio::time::sleep(support::RESYNC * 6).await;
    assert_eq!(installed.writes("PodMonitor").await, 0.0);
    assert_eq!(installed.writes("ConfigMap").await, 0.0);
    let text = log.text();
    for said in [
        "the API server serves no monitoring.coreos.com/v1 podmonitors",
        "there is no namespace openshift-config-managed (not OpenShift)",
    ] {
        assert_eq!(text.matches(said).count(), 1, "{said:?} once in:\n{text}");
    }
    assert!(
        !text.contains("could not keep an operand in shape"),
        "not an error:\n{text}"
    );

    // The Prometheus Operator installed later: the PodMonitor follows
    // within a resync.
    installed.install_pod_monitor_api().await;
    let monitors = installed.namespaced_api(POD_MONITOR, NAMESPACE);
    wait_object(&monitors, POD_MONITOR_NAME, |_| true).await;
    assert_eq!(installed.writes("ConfigMap").await, 0.0);
    installed.stop().await;
}
