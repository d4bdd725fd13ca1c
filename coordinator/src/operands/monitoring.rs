//! The monitoring operands, pure: the node-agents' PodMonitor and the
//! OpenShift console's dashboard, each the manifest of `deploy/monitoring/`
//! compiled in, so a `kubectl apply -k deploy/monitoring` install and the
//! operator's own write the same object from one file.
//!
//! OLM cannot carry either: its InstallPlan refuses a PodMonitor, and the
//! dashboard lives in `openshift-config-managed`, outside the one namespace
//! OLM installs into. Each is written only where its place exists: the
//! PodMonitor where the API server serves the Prometheus Operator's
//! `monitoring.coreos.com/v1` podmonitors, the dashboard where the namespace
//! `openshift-config-managed` exists (OpenShift).
//!
//! Every field the manifest names is the operator's and is set back after a
//! hand edit (a PodMonitor with other limits or relabelings scrapes
//! something else than the agents' bounds were made for; a dashboard is
//! read as the operator's). Fields the manifest does not name (another
//! label, an annotation) are left to whoever adds them.

use serde_json::{Value, json};

use super::node_agent::{Owner, owner_references};
use crate::kind::{CONFIG_MAP, Kind, POD_MONITOR};

const POD_MONITOR_SOURCE: &str = "deploy/monitoring/pod-monitor.yaml";
const POD_MONITOR_MANIFEST: &str = include_str!("../../../deploy/monitoring/pod-monitor.yaml");
const DASHBOARD_SOURCE: &str = "deploy/monitoring/dashboard.yaml";
const DASHBOARD_MANIFEST: &str = include_str!("../../../deploy/monitoring/dashboard.yaml");

/// The PodMonitor's name (the shipped manifest's; the DaemonSet's too).
pub const POD_MONITOR_NAME: &str = "kata-node-agent";
/// The dashboard ConfigMap's name and namespace (the shipped manifest's):
/// the console reads dashboards from that namespace only.
pub const DASHBOARD_NAME: &str = "kata-operator-dashboard";
pub const DASHBOARD_NAMESPACE: &str = "openshift-config-managed";

/// One object to keep in shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub kind: Kind,
    pub namespace: String,
    pub name: &'static str,
    pub body: Value,
    /// The shipped file it comes from, for messages.
    pub source: &'static str,
}

fn parse(manifest: &str) -> Value {
    // Compiled in and parsed by a unit test, so this cannot fail at run
    // time.
    serde_yaml::from_str(manifest).unwrap_or(Value::Null)
}

/// The PodMonitor in the operator's `namespace`, owned by the coordinator's
/// Deployment when there is one (the garbage collector removes it with the
/// operator, as it does the DaemonSet it scrapes).
pub fn pod_monitor(namespace: &str, owner: Option<&Owner>) -> Desired {
    let mut body = parse(POD_MONITOR_MANIFEST);
    body["metadata"]["namespace"] = json!(namespace);
    if let Some(owner) = owner {
        body["metadata"]["ownerReferences"] = owner_references(owner);
    }
    Desired {
        kind: POD_MONITOR,
        namespace: namespace.to_owned(),
        name: POD_MONITOR_NAME,
        body,
        source: POD_MONITOR_SOURCE,
    }
}

/// The console dashboard. It carries no owner: a namespaced owner must be
/// in the dependent's namespace, and the garbage collector deletes a
/// dependent whose owner it cannot find there.
pub fn dashboard() -> Desired {
    Desired {
        kind: CONFIG_MAP,
        namespace: DASHBOARD_NAMESPACE.to_owned(),
        name: DASHBOARD_NAME,
        body: parse(DASHBOARD_MANIFEST),
        source: DASHBOARD_SOURCE,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn shipped(manifest: &str) -> Value {
        serde_yaml::from_str(manifest).unwrap()
    }

    #[test]
    fn the_names_are_the_shipped_manifests() {
        let monitor = shipped(POD_MONITOR_MANIFEST);
        assert_eq!(monitor["kind"], POD_MONITOR.kind);
        assert_eq!(monitor["apiVersion"], POD_MONITOR.api_version());
        assert_eq!(monitor["metadata"]["name"], POD_MONITOR_NAME);
        let dashboard = shipped(DASHBOARD_MANIFEST);
        assert_eq!(dashboard["kind"], CONFIG_MAP.kind);
        assert_eq!(dashboard["metadata"]["name"], DASHBOARD_NAME);
        assert_eq!(dashboard["metadata"]["namespace"], DASHBOARD_NAMESPACE);
        assert_eq!(
            dashboard["metadata"]["labels"]["console.openshift.io/dashboard"],
            "true"
        );
    }

    #[test]
    fn the_pod_monitor_goes_to_the_operators_namespace_owned_by_its_deployment() {
        let owner = Owner {
            name: "kata-coordinator".into(),
            uid: "u-1".into(),
        };
        let desired = pod_monitor("sandboxed", Some(&owner));
        assert_eq!(desired.namespace, "sandboxed");
        assert_eq!(desired.body["metadata"]["namespace"], "sandboxed");
        assert_eq!(desired.body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        // Everything else is the shipped manifest's.
        let mut body = desired.body.clone();
        let meta = body["metadata"].as_object_mut().unwrap();
        meta.remove("ownerReferences");
        meta.insert("namespace".into(), json!("kata-operator"));
        assert_eq!(body, shipped(POD_MONITOR_MANIFEST));
        assert!(
            pod_monitor("sandboxed", None).body["metadata"]
                .get("ownerReferences")
                .is_none()
        );
    }

    #[test]
    fn the_dashboard_is_the_shipped_manifest() {
        assert_eq!(dashboard().body, shipped(DASHBOARD_MANIFEST));
    }
}
