#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn settings() -> AgentSettings {
    AgentSettings {
        namespace: "openshift-sandboxed".into(),
        image: "mirror.example/kata/node-agent@sha256:0123".into(),
        coordinator_url: "https://coordinator.example:8443".into(),
        host_root: "/".into(),
    }
}

fn container(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn the_shipped_manifest_is_the_daemon_set_we_write() {
    let ds = daemon_set(&settings(), None, None);
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(ds["metadata"]["name"], NAME);
    assert_eq!(container(&ds)["name"], CONTAINER);
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        kata_proto::contract::AGENT_SERVICE_ACCOUNT
    );
}

#[test]
fn settings_flow_into_the_pod_template() {
    let owner = Owner {
        name: "kata-coordinator".into(),
        uid: "u-1".into(),
    };
    let ds = daemon_set(&settings(), Some(&owner), None);
    assert_eq!(ds["metadata"]["namespace"], "openshift-sandboxed");
    assert_eq!(container(&ds)["image"], settings().image);
    let args: Vec<&str> = container(&ds)["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--coordinator=https://coordinator.example:8443"),
        "{args:?}"
    );
    assert_eq!(
        args.iter()
            .filter(|a| a.starts_with(COORDINATOR_FLAG))
            .count(),
        1
    );
    let volumes = &ds["spec"]["template"]["spec"]["volumes"];
    let host_root = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == HOST_ROOT_VOLUME)
        .unwrap();
    assert_eq!(host_root["hostPath"]["path"], "/");
    assert_eq!(ds["metadata"]["ownerReferences"][0]["uid"], "u-1");
    assert_eq!(ds["metadata"]["ownerReferences"][0]["kind"], "Deployment");
}

fn managed(manager: &str, operation: &str, fields: Value) -> Value {
    json!({"manager": manager, "operation": operation, "apiVersion": "apps/v1",
           "fieldsType": "FieldsV1", "fieldsV1": fields})
}

#[test]
fn an_admins_node_selector_is_left_to_the_admin_and_the_image_is_not() {
    let mut live = daemon_set(&settings(), None, None);
    live["metadata"]["managedFields"] = json!([
        managed(
            "kata-operator",
            "Apply",
            json!({"f:spec": {"f:template": {}}})
        ),
        managed(
            "kubectl-edit",
            "Update",
            json!({"f:spec": {"f:template": {"f:spec": {
                "f:nodeSelector": {"f:kata": {}},
                "f:containers": {"k:{\"name\":\"node-agent\"}": {"f:image": {}}}
            }}}})
        ),
    ]);
    let ds = daemon_set(&settings(), None, Some(&live));
    assert!(
        ds["spec"]["template"]["spec"].get("nodeSelector").is_none(),
        "{ds}"
    );
    assert!(ds["spec"]["template"]["spec"].get("tolerations").is_some());
    assert_eq!(container(&ds)["image"], settings().image);
}

#[test]
fn server_defaults_are_held_and_a_changed_image_is_drift() {
    let desired = daemon_set(&settings(), None, None);
    let mut live = desired.clone();
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    live["spec"]["revisionHistoryLimit"] = json!(10);
    assert!(holds(&desired, &live));
    assert!(drifted(&desired, &live).is_empty());

    live["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil/agent:1");
    assert!(!holds(&desired, &live));
    assert_eq!(
        drifted(&desired, &live),
        ["spec.template.spec.containers.[node-agent].image"]
    );
}

#[test]
fn a_writable_host_root_is_drift() {
    let desired = daemon_set(&settings(), None, None);
    let mut live = desired.clone();
    let mounts = &mut live["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    mounts[0]["readOnly"] = json!(false);
    let drift = drifted(&desired, &live);
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(
        drift[0].ends_with("volumeMounts.[host-root].readOnly"),
        "{drift:?}"
    );
}
