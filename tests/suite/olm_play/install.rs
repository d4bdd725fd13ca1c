//! What OLM writes for a CSV, played from the bundle's files: the CSV with
//! the phases OLM gives it, the ServiceAccounts and generated RBAC of its
//! permissions, the Deployment of its install strategy (updated in place on
//! an upgrade) and the bundle's other manifests. docs/testing.md ("OLM")
//! names the OLM code each step follows.

use std::hash::{Hash, Hasher};

use kata_tests::cluster::Cluster;
use kata_tests::manifests::{apply_objects, deploy_dir, read_manifests};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::csv::{bundle_manifests, csv_resource, strategy_deployments};

pub const NAMESPACE: &str = kata_coordinator::rbac::NAMESPACE;
/// Groups whose CRDs a bare API server lacks (the Prometheus operator's):
/// OLM would refuse the bundle there too, so they are left out.
pub const SKIPPED_GROUPS: &[&str] = &["monitoring.coreos.com"];

pub fn csvs(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), NAMESPACE, &csv_resource())
}

/// Writes the CSV's phase through the status subresource, as the OLM
/// operator does.
pub async fn set_phase(cluster: &Cluster, name: &str, phase: &str, reason: &str) {
    let status = json!({"status": {"phase": phase, "reason": reason}});
    csvs(cluster)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Deletes the CSV: `Err` with the API server's message when refused.
pub async fn delete_csv(cluster: &Cluster, name: &str) -> Result<(), String> {
    csvs(cluster)
        .delete(name, &Default::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn apply(cluster: &Cluster, objects: Vec<Value>) {
    let objects: Vec<DynamicObject> = objects
        .into_iter()
        .map(|o| serde_json::from_value(o).unwrap())
        .collect();
    apply_objects(&cluster.plane, &objects).await.unwrap();
}

/// The namespace the admin creates before subscribing (as the install
/// guide's), the bundle's CRD and other manifests, then the CSV itself.
pub async fn install(cluster: &Cluster, csv: &Value) {
    let namespace = read_manifests(&deploy_dir().join("base/namespace.yaml")).unwrap();
    apply_objects(&cluster.plane, &namespace).await.unwrap();
    let mut others = Vec::new();
    for mut manifest in bundle_manifests() {
        let group = manifest["apiVersion"].as_str().unwrap_or_default();
        let group = group.split_once('/').map_or("", |(group, _)| group);
        if manifest["kind"] == "ClusterServiceVersion" || SKIPPED_GROUPS.contains(&group) {
            continue;
        }
        // The bundle's namespaced manifests carry no namespace; OLM puts
        // them in the CSV's.
        if manifest["kind"] != "CustomResourceDefinition" {
            manifest["metadata"]["namespace"] = json!(NAMESPACE);
        }
        others.push(manifest);
    }
    apply(cluster, others).await;
    run_csv(cluster, csv).await;
}

/// What OLM does for one CSV: create it (the one it replaces moved to
/// Replacing), its ServiceAccounts and RBAC, then create or update its
/// Deployments in place; phase Succeeded.
pub async fn run_csv(cluster: &Cluster, csv: &Value) {
    let name = csv["metadata"]["name"].as_str().unwrap();
    let mut object = csv.clone();
    object["metadata"]["namespace"] = json!(NAMESPACE);
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    let created = csvs(cluster)
        .create(&PostParams::default(), &object)
        .await
        .unwrap();
    // A successor waits in Pending until the CSV it replaces, seeing it,
    // moves to Replacing; then it installs.
    if let Some(replaced) = csv["spec"]["replaces"].as_str() {
        set_phase(cluster, name, "Pending", "RequirementsUnknown").await;
        set_phase(cluster, replaced, "Replacing", "BeingReplaced").await;
    }
    set_phase(cluster, name, "InstallReady", "InstallWaiting").await;
    let owner = json!({
        "apiVersion": "operators.coreos.com/v1alpha1",
        "kind": "ClusterServiceVersion",
        "name": name,
        "uid": created.metadata.uid.unwrap(),
        "controller": false,
        "blockOwnerDeletion": false,
    });
    for account in accounts(csv) {
        own_service_account(cluster, &account, &owner).await;
    }
    apply(cluster, permissions(csv, &owner)).await;
    set_phase(cluster, name, "Installing", "InstallSucceeded").await;
    let deployments = strategy_deployments(csv)
        .iter()
        .map(|d| deployment(name, d, &owner))
        .collect();
    apply(cluster, deployments).await;
    set_phase(cluster, name, "Succeeded", "InstallSucceeded").await;
}

/// The ServiceAccounts the CSV's permissions name.
fn accounts(csv: &Value) -> std::collections::BTreeSet<String> {
    ["clusterPermissions", "permissions"]
        .iter()
        .flat_map(|field| csv["spec"]["install"]["spec"][field].as_array().unwrap())
        .map(|entry| entry["serviceAccountName"].as_str().unwrap().to_owned())
        .collect()
}

/// `EnsureServiceAccount`: created if missing, else this CSV added to its
/// owners (a bundle may ship the account too, as ours does for the agent's).
/// Applied under OLM's own field manager, so the bundle's copy keeps its
/// fields; owner references merge by uid.
async fn own_service_account(cluster: &Cluster, account: &str, owner: &Value) {
    let patch = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": account, "namespace": NAMESPACE, "ownerReferences": [owner]},
    });
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        cluster.client.clone(),
        NAMESPACE,
    )
    .patch(account, &PatchParams::apply("olm"), &Patch::Apply(&patch))
    .await
    .unwrap();
}

/// OLM's labels on what it made for `csv`.
fn owner_labels(csv: &str) -> Value {
    json!({
        "olm.owner": csv,
        "olm.owner.namespace": NAMESPACE,
        "olm.owner.kind": "ClusterServiceVersion",
    })
}

/// `generateName`'s shape: the base cut so that `-<hash>` fits in 63
/// characters. The hash stands in for OLM's (a hash of the rules and the
/// CSV's name); only its being per version matters here.
fn generated_name(base: &str, hashed: &impl Hash) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hashed.hash(&mut hasher);
    let hash = format!("{:x}", hasher.finish());
    let base: String = base.chars().take(63 - hash.len() - 1).collect();
    format!("{base}-{hash}")
}

/// The (Cluster)Roles and bindings of the CSV's
/// `permissions` and `clusterPermissions`. Under the AllNamespaces
/// OperatorGroup OLM also lifts each Role and RoleBinding to a ClusterRole
/// and ClusterRoleBinding of the same name, which this plays too.
fn permissions(csv: &Value, owner: &Value) -> Vec<Value> {
    let name = csv["metadata"]["name"].as_str().unwrap();
    let mut objects = Vec::new();
    for (field, cluster_wide) in [("clusterPermissions", true), ("permissions", false)] {
        for entry in csv["spec"]["install"]["spec"][field].as_array().unwrap() {
            let account = entry["serviceAccountName"].as_str().unwrap();
            let rules = &entry["rules"];
            let subjects =
                json!([{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]);
            let role_name = if cluster_wide {
                generated_name(name, &(name, account, rules.to_string()))
            } else {
                generated_name(&format!("{name}-{account}"), &(name, rules.to_string()))
            };
            let mut kinds = vec![("ClusterRole", "ClusterRoleBinding", None)];
            if !cluster_wide {
                kinds.push(("Role", "RoleBinding", Some(NAMESPACE)));
            }
            for (role, binding, namespace) in kinds {
                let mut metadata = json!({"name": role_name, "labels": owner_labels(name)});
                if let Some(namespace) = namespace {
                    metadata["namespace"] = json!(namespace);
                    metadata["ownerReferences"] = json!([owner]);
                }
                objects.push(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": role,
                    "metadata": metadata, "rules": rules,
                }));
                objects.push(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding,
                    "metadata": metadata, "subjects": subjects,
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": role_name},
                }));
            }
        }
    }
    objects
}

/// `deploymentForSpec`: the strategy's name, labels and spec, owned by and
/// labelled for this CSV, one old ReplicaSet kept, and
/// `OPERATOR_CONDITION_NAME` added to each container's env.
fn deployment(csv: &str, strategy: &Value, owner: &Value) -> Value {
    let mut labels = strategy["label"].clone();
    for (key, value) in owner_labels(csv).as_object().unwrap() {
        labels[key] = value.clone();
    }
    let mut spec = strategy["spec"].clone();
    spec["revisionHistoryLimit"] = json!(1);
    for container in spec["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
    {
        container["env"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "OPERATOR_CONDITION_NAME", "value": csv}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": strategy["name"], "namespace": NAMESPACE,
                     "labels": labels, "ownerReferences": [owner]},
        "spec": spec,
    })
}
