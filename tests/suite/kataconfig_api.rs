//! The KataConfig API on a real API server: the generated CRD, validation at
//! admission, the singleton policy, printer columns and `kubectl explain`.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::process::Command;
use std::time::{Duration, Instant};

use kata_coordinator::api::KataConfig;
use kata_tests::control_plane::binary_dir;
use kata_tests::manifests::control_plane_with_operator_api;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

fn kataconfig(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kataconfiguration.openshift.io/v1",
        "kind": "KataConfig",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

async fn create(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    dry_run: bool,
) -> Result<(), String> {
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    api.create(&params, object)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[kata_test]
async fn admission_refuses_bad_input_with_clear_messages() {
    let plane = control_plane_with_operator_api().await.unwrap();
    let api: Api<DynamicObject> = Api::all_with(
        plane.client().await.unwrap(),
        &ApiResource::erase::<KataConfig>(&()),
    );

    let cases = [
        (
            json!({"kataConfigPoolSelector": {"matchExpressions": [{"key": "a", "operator": "Maybe", "values": ["x"]}]}}),
            "Unsupported value: \"Maybe\"",
        ),
        (
            json!({"kataConfigPoolSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            "operators In and NotIn need at least one value",
        ),
        (
            json!({"kataConfigPoolSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}}),
            "operators In and NotIn need at least one value",
        ),
        (
            json!({"kataConfigPoolSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
            "Exists and DoesNotExist take no values",
        ),
        (
            json!({"logLevel": "verbose"}),
            "Unsupported value: \"verbose\"",
        ),
        (
            json!({"enablePeerPods": true}),
            "enablePeerPods is not supported yet",
        ),
    ];
    for (i, (spec, expected)) in cases.iter().enumerate() {
        let error = create(&api, &kataconfig(&format!("bad-{i}"), spec.clone()), false)
            .await
            .expect_err("must be refused");
        assert!(
            error.contains(expected),
            "spec {spec} refused with {error:?}, expected it to mention {expected:?}"
        );
    }
    assert!(
        api.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was stored"
    );

    let good = json!({
        "kataConfigPoolSelector": {"matchLabels": {"zone": "a"}, "matchExpressions": [{"key": "kata", "operator": "Exists"}]},
        "checkNodeEligibility": true,
        "logLevel": "debug",
    });
    create(&api, &kataconfig("cluster-kataconfig", good), false)
        .await
        .unwrap();
    let stored = api.get("cluster-kataconfig").await.unwrap();
    assert_eq!(
        stored.data["spec"]["enablePeerPods"],
        json!(false),
        "defaults are filled in"
    );
}

#[kata_test]
async fn a_second_kataconfig_is_refused_at_admission() {
    let plane = control_plane_with_operator_api().await.unwrap();
    let api: Api<DynamicObject> = Api::all_with(
        plane.client().await.unwrap(),
        &ApiResource::erase::<KataConfig>(&()),
    );
    create(&api, &kataconfig("first", json!({})), false)
        .await
        .unwrap();

    // The policy reads existing KataConfigs through an informer: wait (with a
    // dry run, which stores nothing) until it has seen the first one.
    let second = kataconfig("second", json!({}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while create(&api, &second, true).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the singleton policy never refused a second KataConfig"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = create(&api, &second, false)
        .await
        .expect_err("second KataConfig refused");
    assert!(
        error.contains("only one KataConfig is allowed per cluster, and first already exists"),
        "{error}"
    );
    // Updating the existing one is still allowed.
    let mut first = api.get("first").await.unwrap();
    first.data["spec"]["logLevel"] = json!("debug");
    api.replace("first", &PostParams::default(), &first)
        .await
        .unwrap();
}

fn try_kubectl(plane: &kata_tests::ControlPlane, args: &[&str]) -> Result<String, String> {
    let output = Command::new(binary_dir().unwrap().join("kubectl"))
        .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
        .args(args)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn kubectl(plane: &kata_tests::ControlPlane, args: &[&str]) -> String {
    try_kubectl(plane, args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

#[kata_test]
async fn kubectl_explains_the_fields_and_prints_the_columns() {
    let plane = control_plane_with_operator_api().await.unwrap();
    // The API server publishes a new CRD's OpenAPI schema a moment after the
    // CRD is served; `kubectl explain` reads that schema.
    let deadline = Instant::now() + Duration::from_secs(60);
    let explained = loop {
        match try_kubectl(&plane, &["explain", "kataconfig.spec"]) {
            Ok(out) => break out,
            Err(e) if Instant::now() < deadline && e.contains("couldn't find resource") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("kubectl explain: {e}"),
        }
    };
    for text in [
        "kataConfigPoolSelector",
        "Selects the worker nodes",
        "checkNodeEligibility",
        "enablePeerPods",
        "logLevel",
    ] {
        assert!(
            explained.contains(text),
            "kubectl explain lacks {text:?}:\n{explained}"
        );
    }
    let api: Api<DynamicObject> = Api::all_with(
        plane.client().await.unwrap(),
        &ApiResource::erase::<KataConfig>(&()),
    );
    create(&api, &kataconfig("example", json!({})), false)
        .await
        .unwrap();
    let table = kubectl(&plane, &["get", "kataconfig"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "INPROGRESS", "COMPLETED", "TOTAL", "READY", "AGE"]
    );
}
