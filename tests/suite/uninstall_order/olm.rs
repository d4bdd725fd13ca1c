//! The operator's OLM ClusterServiceVersion and the uninstall-order policy:
//! while a KataConfig exists, deleting the CSV that runs the operator (an
//! uninstall) is refused, while OLM may delete the CSV it replaced at the end
//! of an upgrade (phase Replacing, then Deleting) and its copies in other
//! namespaces. On a real API server with deploy/base's namespace and policy
//! applied and a CSV CRD standing in for OLM's; no OLM runs: the test writes
//! each CSV's phase as OLM does, through the status subresource
//! (docs/testing.md, "OLM").

use kata_test_harness::kata_test;

use super::{DELETE_FIRST, NAMESPACE, wait_in_force};
use crate::olm_play::csv::{csv_crd, csv_resource};
use kata_coordinator::api::KataConfig;
use kata_tests::ControlPlane;
use kata_tests::cluster::CONVERGE;
use kata_tests::eventually;
use kata_tests::manifests::{
    apply_objects, control_plane_with_operator_api, deploy_dir, read_manifests,
};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The CSV that runs the operator after an upgrade.
const INSTALLED: &str = "kata-operator.v0.2.0";
/// The CSV it replaced (`spec.replaces`).
const REPLACED: &str = "kata-operator.v0.1.0";
/// Another namespace, where OLM copies the CSV (AllNamespaces install mode).
const TENANT: &str = "tenant";

/// A control plane with the KataConfig CRD, OLM's CSV CRD, the namespaces
/// and the uninstall-order policy, and a KataConfig `kc`; no coordinator
/// runs, so nothing holds `kc` when it is deleted.
struct OlmInstall {
    _plane: ControlPlane,
    client: kube::Client,
}

impl OlmInstall {
    async fn start() -> OlmInstall {
        let plane = control_plane_with_operator_api().await.unwrap();
        plane.install_crds(&[csv_crd()]).await.unwrap();
        let mut objects = read_manifests(&deploy_dir().join("base/namespace.yaml")).unwrap();
        objects.push(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TENANT},
            }))
            .unwrap(),
        );
        objects.extend(read_manifests(&deploy_dir().join("base/uninstall-order.yaml")).unwrap());
        apply_objects(&plane, &objects).await.unwrap();
        let client = plane.client().await.unwrap();
        let kataconfig = serde_json::from_value(json!({
            "apiVersion": "kataconfiguration.openshift.io/v1",
            "kind": "KataConfig",
            "metadata": {"name": "kc"},
            "spec": {},
        }))
        .unwrap();
        Api::<DynamicObject>::all_with(client.clone(), &ApiResource::erase::<KataConfig>(&()))
            .create(&PostParams::default(), &kataconfig)
            .await
            .unwrap();
        OlmInstall {
            _plane: plane,
            client,
        }
    }

    fn csvs(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &csv_resource())
    }

    /// Creates a CSV with `fields` (`{"metadata": {..}, "spec": {..}}`)
    /// merged in, then writes its status (`None`: none, as before OLM first
    /// looks at it).
    async fn create_csv(&self, namespace: &str, name: &str, fields: Value, status: Option<Value>) {
        let mut object = json!({
            "apiVersion": "operators.coreos.com/v1alpha1",
            "kind": "ClusterServiceVersion",
            "metadata": {"name": name},
            "spec": {"displayName": "Kata Operator"},
        });
        for (part, entries) in fields.as_object().into_iter().flatten() {
            for (key, value) in entries.as_object().into_iter().flatten() {
                object[part][key] = value.clone();
            }
        }
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        self.csvs(namespace)
            .create(&PostParams::default(), &object)
            .await
            .unwrap();
        if let Some(status) = status {
            self.set_status(namespace, name, status).await;
        }
    }

    async fn set_status(&self, namespace: &str, name: &str, status: Value) {
        self.csvs(namespace)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .unwrap();
    }

    /// Deletes it: `Err` with the API server's message when refused.
    async fn delete_csv(&self, namespace: &str, name: &str) -> Result<(), String> {
        self.csvs(namespace)
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn csv_exists(&self, namespace: &str, name: &str) -> bool {
        self.csvs(namespace).get_opt(name).await.unwrap().is_some()
    }

    /// The installed CSV (replacing `REPLACED`, phase Succeeded), and the
    /// policy in force: deleting it is refused.
    async fn with_installed_csv(self) -> OlmInstall {
        self.create_csv(
            NAMESPACE,
            INSTALLED,
            json!({"spec": {"replaces": REPLACED}}),
            Some(json!({"phase": "Succeeded", "reason": "InstallSucceeded"})),
        )
        .await;
        wait_in_force(&self.csvs(NAMESPACE), INSTALLED).await;
        self
    }
}

fn assert_refused(result: Result<(), String>, what: &str) {
    let message = result.expect_err(what);
    let said = message.split(": Forbidden (").next().unwrap_or_default();
    println!("deleting {what}: {said}");
    assert!(
        message.contains(DELETE_FIRST)
            && message.contains("KataConfig kc")
            && message.contains("ClusterServiceVersion"),
        "{what}: {message}"
    );
}

/// With a KataConfig: the CSV OLM replaced goes, in phase Replacing and in
/// phase Deleting, and so does a copy in another namespace; the CSV that
/// runs the operator stays, in every phase OLM gives a CSV that is not
/// being replaced, and without a status.
#[kata_test]
async fn a_replaced_csv_may_go_while_a_kataconfig_exists_the_running_one_may_not() {
    let olm = OlmInstall::start().await.with_installed_csv().await;

    for (phase, reason) in [("Replacing", "BeingReplaced"), ("Deleting", "Replaced")] {
        let status = json!({"phase": phase, "reason": reason});
        olm.create_csv(NAMESPACE, REPLACED, json!({}), Some(status))
            .await;
        olm.delete_csv(NAMESPACE, REPLACED)
            .await
            .unwrap_or_else(|e| panic!("the replaced CSV in phase {phase}: {e}"));
        assert!(!olm.csv_exists(NAMESPACE, REPLACED).await, "{phase}: gone");
    }

    // OLM's copy: the original's status with reason Copied, and the label
    // naming the operator's namespace.
    let copied = json!({"metadata": {"labels": {"olm.copiedFrom": NAMESPACE}}});
    let status = json!({"phase": "Succeeded", "reason": "Copied"});
    olm.create_csv(TENANT, INSTALLED, copied, Some(status))
        .await;
    olm.delete_csv(TENANT, INSTALLED)
        .await
        .unwrap_or_else(|e| panic!("the copied CSV: {e}"));
    assert!(!olm.csv_exists(TENANT, INSTALLED).await, "the copy gone");

    for phase in [
        "Succeeded",
        "Failed",
        "Installing",
        "InstallReady",
        "Pending",
        "Unknown",
    ] {
        olm.set_status(NAMESPACE, INSTALLED, json!({"phase": phase}))
            .await;
        let result = olm.delete_csv(NAMESPACE, INSTALLED).await;
        assert_refused(result, &format!("the installed CSV in phase {phase}"));
        assert!(olm.csv_exists(NAMESPACE, INSTALLED).await, "{phase}: stays");
    }
    let fresh = "kata-operator.v0.3.0";
    olm.create_csv(NAMESPACE, fresh, json!({}), None).await;
    assert_refused(
        olm.delete_csv(NAMESPACE, fresh).await,
        "a CSV without a status",
    );
    assert!(
        olm.csv_exists(NAMESPACE, fresh).await,
        "without a status: stays"
    );
}

/// Once the KataConfig is gone, the CSV that ran the operator may go too
/// (the uninstall is done; the policy has no params left).
#[kata_test]
async fn the_running_csv_may_go_once_no_kataconfig_exists() {
    let olm = OlmInstall::start().await.with_installed_csv().await;
    Api::<KataConfig>::all(olm.client.clone())
        .delete("kc", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the installed CSV deleted", CONVERGE, || async {
        olm.delete_csv(NAMESPACE, INSTALLED).await.map(|()| true)
    })
    .await
    .unwrap();
    assert!(!olm.csv_exists(NAMESPACE, INSTALLED).await, "gone");
}
