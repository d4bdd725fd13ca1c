//! A KataConfig holding a value a newer version wrote (here: a `logLevel`
//! this version's schema does not list, stored through a CRD that does,
//! as after a downgrade) is read, not refused: the coordinator keeps
//! reconciling it, says which field, and changes nothing until it holds a
//! known value.
#![allow(clippy::unwrap_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kata_coordinator::mco::names as mco;
use kata_test_harness::kata_test;
use kata_tests::cluster::{Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::json;

const CRD: &str = "kataconfigs.kataconfiguration.openshift.io";

#[kata_test]
async fn a_newer_versions_value_holds_the_kataconfig_and_names_the_field() {
    let cluster = Cluster::start(&[("w0", &[WORKER])]).await;
    // The newer version's CRD lists one more log level.
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut crd = serde_json::to_value(crds.get(CRD).await.unwrap()).unwrap();
    let levels = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["logLevel"]["enum"];
    levels.as_array_mut().unwrap().push(json!("verbose"));
    crds.replace(
        CRD,
        &Default::default(),
        &serde_json::from_value(crd).unwrap(),
    )
    .await
    .unwrap();
    let (running, metrics) = RunningCoordinator::with_metrics(cluster.client.clone());
    // Untyped: this version's types would read the value as unknown.
    let configs: Api<DynamicObject> = Api::all_with(
        cluster.client.clone(),
        &kata_coordinator::kind::KATA_CONFIG.api_resource(),
    );
    kata_tests::eventually(
        "the CRD accepts the newer value",
        kata_tests::cluster::CONVERGE,
        || async {
            let created = configs
                .create(
                    &Default::default(),
                    &serde_json::from_value(json!({
                        "apiVersion": "kataconfiguration.openshift.io/v1",
                        "kind": "KataConfig",
                        "metadata": {"name": "kc"},
                        "spec": {"logLevel": "verbose"},
                    }))
                    .unwrap(),
                )
                .await;
            created.map(|_| true).map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "True", "InvalidSpec")
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    assert!(message.contains("logLevel"), "{message}");
    assert!(message.contains("does not know"), "{message}");
    // Nothing of the install was written: no pool, no MachineConfig.
    let writes = &metrics.api_writes;
    assert_eq!(writes.get_kind(mco::POOL.kind), 0);
    assert_eq!(writes.get_kind(mco::MACHINE_CONFIG.kind), 0);

    // Set to a known value, the same KataConfig installs.
    cluster
        .configs()
        .patch(
            "kc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"logLevel": "info"}})),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    running.stop().await;
}
