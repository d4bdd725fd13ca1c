//! OLM's ClusterServiceVersion as the tests meet it: its CRD standing in for
//! OLM's, the bundle's CSV, and the next version made from it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kata_tests::manifests::{deploy_dir, read_manifests};
use kube::api::ApiResource;
use serde_json::{Value, json};

/// The bundle's CSV: the version OLM installs first.
pub const FIRST: &str = "kata-operator.v0.1.0";
/// The next version's CSV, which replaces [`FIRST`].
pub const NEXT: &str = "kata-operator.v0.1.1";
/// The node-agent image the next version ships.
pub const NEXT_NODE_AGENT: &str = "quay.io/kata-operator/node-agent:v0.1.1";

/// OLM's ClusterServiceVersion CRD as far as the policy reads it: group,
/// version, names, scope, the status subresource and a string
/// `status.phase`. The rest of OLM's schema (800 KB) is left open.
pub fn csv_crd() -> CustomResourceDefinition {
    let open = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "clusterserviceversions.operators.coreos.com"},
        "spec": {
            "group": "operators.coreos.com",
            "names": {
                "kind": "ClusterServiceVersion",
                "listKind": "ClusterServiceVersionList",
                "plural": "clusterserviceversions",
                "singular": "clusterserviceversion",
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": open,
                    "status": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                        "properties": {"phase": {"type": "string"}, "reason": {"type": "string"}},
                    },
                }}},
            }],
        },
    }))
    .unwrap()
}

pub fn csv_resource() -> ApiResource {
    ApiResource {
        group: "operators.coreos.com".into(),
        version: "v1alpha1".into(),
        api_version: "operators.coreos.com/v1alpha1".into(),
        kind: "ClusterServiceVersion".into(),
        plural: "clusterserviceversions".into(),
    }
}

/// `bundle/manifests` and the bundle's files in it, each as JSON.
pub fn bundle_manifests() -> Vec<Value> {
    let dir = deploy_dir().join("../bundle/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| read_manifests(path).unwrap())
        .map(|object| serde_json::to_value(object).unwrap())
        .collect()
}

/// The bundle's CSV.
pub fn bundle_csv() -> Value {
    let csv = bundle_manifests()
        .into_iter()
        .find(|m| m["kind"] == "ClusterServiceVersion")
        .expect("a CSV in bundle/manifests");
    assert_eq!(csv["metadata"]["name"], FIRST);
    csv
}

/// The Deployment specs of the install strategy, with their names.
pub fn strategy_deployments(csv: &Value) -> &Vec<Value> {
    csv["spec"]["install"]["spec"]["deployments"]
        .as_array()
        .expect("spec.install.spec.deployments")
}

/// The coordinator's container in the install strategy's Deployment.
pub fn coordinator_container(csv: &mut Value) -> &mut Value {
    &mut csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"]["containers"]
        [0]
}

/// `relatedImages[name].image`.
pub fn related_image<'a>(csv: &'a Value, name: &str) -> &'a str {
    csv["spec"]["relatedImages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|image| image["name"] == name)
        .and_then(|image| image["image"].as_str())
        .unwrap_or_else(|| panic!("relatedImages {name}"))
}

/// The value of `name` in the container's env.
pub fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|entry| entry["name"] == name)
        .and_then(|entry| entry["value"].as_str())
}

/// The next version as a release would ship it: the same content under a
/// new name and version, replacing [`FIRST`], with a new node-agent image
/// in relatedImages and in the Deployment's env.
pub fn next_version(first: &Value) -> Value {
    let mut next = first.clone();
    next["metadata"]["name"] = json!(NEXT);
    next["spec"]["version"] = json!("0.1.1");
    next["spec"]["replaces"] = json!(FIRST);
    for image in next["spec"]["relatedImages"].as_array_mut().unwrap() {
        if image["name"] == "node-agent" {
            image["image"] = json!(NEXT_NODE_AGENT);
        }
    }
    let container = coordinator_container(&mut next);
    for entry in container["env"].as_array_mut().unwrap() {
        if entry["name"] == kata_coordinator::operands::NODE_AGENT_IMAGE_ENV {
            entry["value"] = json!(NEXT_NODE_AGENT);
        }
    }
    next
}
