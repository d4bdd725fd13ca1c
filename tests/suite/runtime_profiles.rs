//! Runtime profiles on the real API server with the MCO simulator: each
//! change of the profiles costs each Kata node exactly one rollout and the
//! other nodes none, a change the nodes do not see (the overhead) costs no
//! MachineConfig write, and the API server refuses a bad profile naming its
//! field. Profiles applied one after the other (a file of them, a GitOps
//! sync) land in one rendered config: the coordinator waits for the
//! profiles to settle (`controller::profile_settle`).
//!
//! An install upgraded from a release without profiles is left unwritten
//! (`upgrade_from_release`, whose clusters carry the profile CRD); OSC's
//! MachineConfig is replaced by the first profile's rollout
//! (`osc_takeover`). Not covered here: per-profile readiness on the nodes
//! and the profiles' RuntimeClasses (not built yet), and Kata itself, which
//! cannot run here.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;

use k8s_openapi::api::node::v1::RuntimeClass;
use kata_coordinator::controller::Options;
use kata_coordinator::mco::names as mco;
use kata_coordinator::profiles::KataRuntimeProfile;
use kata_coordinator::profiles::render::{HANDLERS_DROP_IN_PATH, config_path};
use kata_tests::api_objects::listed_names;
use kata_tests::cluster::{CONVERGE, Cluster, WORKER};
use kata_tests::coordinator::RunningCoordinator;
use kata_tests::eventually;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::rollout_counts::{counts, expect, since, wait_installed_on};

/// Longer than the profiles' settle time and a reconcile after it, so that
/// a change that (wrongly) wrote or rolled out would have done so.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(8);

/// The VM memory each profile's configuration on `node` gives (None: no
/// such file), read as Kata reads it.
fn memory_on(cluster: &Cluster, node: &str, profile: &str) -> Option<i64> {
    let path = cluster
        .root(node)
        .join(config_path(profile).trim_start_matches('/'));
    let text = std::fs::read_to_string(path).ok()?;
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    doc["hypervisor"]["qemu"]["default_memory"].as_integer()
}

/// Waits until each of `nodes` has exactly `profiles` (name, memory) and
/// every node is at rest on its pool's configuration.
async fn wait_profiles_on(cluster: &Cluster, nodes: &[&str], profiles: &[(&str, Option<i64>)]) {
    eventually(&format!("{profiles:?} on {nodes:?}"), CONVERGE, || async {
        for node in nodes {
            for (profile, memory) in profiles {
                let found = memory_on(cluster, node, profile);
                if found != *memory {
                    return Err(format!("{node} {profile}: {found:?}"));
                }
            }
        }
        crate::rollout_counts::nodes_at_rest(cluster).await
    })
    .await
    .unwrap();
}

/// Waits until exactly `expected` (name, memory overhead) are the profiles'
/// RuntimeClasses, each selecting its own profile's nodes, and the
/// KataConfig's status lists them after `kata`.
async fn wait_profile_classes(cluster: &Cluster, expected: &[(&str, &str)]) {
    let classes: Api<RuntimeClass> = Api::all(cluster.client.clone());
    eventually(
        &format!("RuntimeClasses {expected:?}"),
        CONVERGE,
        || async {
            let listed = classes
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut found: Vec<(String, String)> = Vec::new();
            for rc in listed.items.iter().filter(|rc| rc.name_any() != "kata") {
                let name = rc.name_any();
                let selector = rc.scheduling.as_ref().and_then(|s| s.node_selector.clone());
                let label = kata_coordinator::profiles::runtime_label(&name);
                if rc.handler != name
                    || selector.unwrap_or_default().get(&label).map(String::as_str) != Some("true")
                {
                    return Err(format!("{name}: {rc:?}"));
                }
                let fixed = rc.overhead.as_ref().and_then(|o| o.pod_fixed.clone());
                let memory = fixed.unwrap_or_default().get("memory").map(|q| q.0.clone());
                found.push((name, memory.unwrap_or_default()));
            }
            found.sort();
            let mut wanted: Vec<(String, String)> = expected
                .iter()
                .map(|(n, m)| ((*n).to_owned(), (*m).to_owned()))
                .collect();
            wanted.sort();
            let listed_in_status = cluster
                .configs()
                .get("kc")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default()
                .runtime_classes;
            // `kata`, then the profiles in name order.
            let mut status_wanted = vec!["kata".to_owned()];
            status_wanted.extend(wanted.iter().map(|(n, _)| n.clone()));
            if found != wanted || listed_in_status != status_wanted {
                return Err(format!("{found:?}, status {listed_in_status:?}"));
            }
            Ok(true)
        },
    )
    .await
    .unwrap();
}

async fn machine_config_generation(cluster: &Cluster) -> Option<i64> {
    let api: Api<DynamicObject> =
        Api::all_with(cluster.client.clone(), &mco::MACHINE_CONFIG.api_resource());
    api.get(mco::MACHINE_CONFIG_NAME)
        .await
        .unwrap()
        .metadata
        .generation
}

#[kata_test]
async fn each_profile_change_rolls_each_kata_node_once_and_the_overhead_none() {
    let all = ["w0", "w1", "w2"];
    let kata = ["w0", "w1"];
    let cluster = Cluster::start(&[
        ("w0", &[WORKER, ("zone", "a")]),
        ("w1", &[WORKER, ("zone", "a")]),
        ("w2", &[WORKER, ("zone", "b")]),
    ])
    .await;
    let _coordinator = RunningCoordinator::start(cluster.client.clone(), Options::default());
    let before = counts(&cluster, &all);
    cluster
        .create_kataconfig(
            "kc",
            json!({"kataConfigPoolSelector": {"matchLabels": {"zone": "a"}}}),
        )
        .await;
    wait_installed_on(&cluster, &kata).await;
    assert_eq!(since(&cluster, &before), expect(&all, &kata, 1), "install");

    // Two profiles applied a second apart, as a GitOps sync may: long
    // enough for the simulator to start rolling the first out, were it
    // written alone.
    let profiles: Api<KataRuntimeProfile> = Api::all(cluster.client.clone());
    let before = counts(&cluster, &all);
    for created in [
        KataRuntimeProfile::of_size("kata-small", 1, 1024),
        KataRuntimeProfile::of_size("kata-large", 4, 8192),
    ] {
        profiles
            .create(&PostParams::default(), &created)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    wait_profiles_on(
        &cluster,
        &kata,
        &[("kata-small", Some(1024)), ("kata-large", Some(8192))],
    )
    .await;
    wait_installed_on(&cluster, &kata).await;
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &kata, 1),
        "two profiles added"
    );
    let handlers = std::fs::read_to_string(
        cluster
            .root("w0")
            .join(HANDLERS_DROP_IN_PATH.trim_start_matches('/')),
    )
    .unwrap();
    for name in ["kata-small", "kata-large"] {
        assert!(
            handlers.contains(&format!("[crio.runtime.runtimes.{name}]")),
            "{handlers}"
        );
    }
    assert!(
        !cluster.root("w2").join("etc/kata-containers").exists(),
        "a node without Kata has no profile"
    );
    wait_profile_classes(
        &cluster,
        &[("kata-small", "350Mi"), ("kata-large", "6494Mi")],
    )
    .await;

    // One profile's VM memory.
    let before = counts(&cluster, &all);
    let merge = |spec: serde_json::Value| Patch::Merge(json!({ "spec": spec }));
    profiles
        .patch(
            "kata-large",
            &PatchParams::default(),
            &merge(json!({"vm": {"memoryMiB": 16384}})),
        )
        .await
        .unwrap();
    wait_profiles_on(&cluster, &kata, &[("kata-large", Some(16384))]).await;
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &kata, 1),
        "memory changed"
    );

    // Only its overhead: the nodes see nothing of it.
    let before = counts(&cluster, &all);
    let generation = machine_config_generation(&cluster).await;
    profiles
        .patch(
            "kata-large",
            &PatchParams::default(),
            &merge(json!({"overhead": {"cpu": "500m", "memory": "1Gi"}})),
        )
        .await
        .unwrap();
    wait_profile_classes(&cluster, &[("kata-small", "350Mi"), ("kata-large", "1Gi")]).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(machine_config_generation(&cluster).await, generation);
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &[], 0),
        "overhead changed"
    );

    // One removed.
    let before = counts(&cluster, &all);
    profiles
        .delete("kata-small", &DeleteParams::default())
        .await
        .unwrap();
    wait_profiles_on(
        &cluster,
        &kata,
        &[("kata-small", None), ("kata-large", Some(16384))],
    )
    .await;
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &kata, 1),
        "a profile removed"
    );
    wait_profile_classes(&cluster, &[("kata-large", "1Gi")]).await;

    // A profile named like an admin's RuntimeClass is refused, and nothing
    // of it is applied; deleted, the KataConfig is Ready again.
    let before = counts(&cluster, &all);
    let generation = machine_config_generation(&cluster).await;
    let admins: RuntimeClass = serde_json::from_value(json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "gvisor"}, "handler": "runsc",
    }))
    .unwrap();
    Api::<RuntimeClass>::all(cluster.client.clone())
        .create(&PostParams::default(), &admins)
        .await
        .unwrap();
    profiles
        .create(
            &PostParams::default(),
            &KataRuntimeProfile::of_size("gvisor", 1, 1024),
        )
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Degraded", "True", "InvalidRuntimeProfile")
        .await;
    let (_, _, message) = cluster.condition("kc", "Degraded").await.unwrap();
    assert!(message.contains("gvisor: metadata.name"), "{message}");
    profiles
        .delete("gvisor", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .wait_condition("kc", "Ready", "True", "Installed")
        .await;
    assert_eq!(machine_config_generation(&cluster).await, generation);
    assert_eq!(
        since(&cluster, &before),
        expect(&all, &[], 0),
        "a refused profile"
    );
    let handler = Api::<RuntimeClass>::all(cluster.client.clone())
        .get("gvisor")
        .await
        .unwrap()
        .handler;
    assert_eq!(
        handler, "runsc",
        "the admin's RuntimeClass is left as it was"
    );

    // The uninstall takes the profiles' classes and files away with Kata's.
    cluster.uninstall("kc").await;
    assert_eq!(cluster.operator_leftovers().await, Vec::<String>::new());
    let classes = Api::<RuntimeClass>::all(cluster.client.clone());
    let left = listed_names(&classes, &Default::default()).await.unwrap();
    assert_eq!(left, ["gvisor"]);
    assert_eq!(memory_on(&cluster, "w0", "kata-large"), None);
}

#[kata_test]
async fn the_api_server_refuses_a_bad_profile_naming_its_field() {
    let cluster = Cluster::start(&[]).await;
    let profiles: Api<KataRuntimeProfile> = Api::all(cluster.client.clone());
    let refused = |mut bad: serde_json::Value, says: &'static str| {
        let profiles = profiles.clone();
        async move {
            bad["apiVersion"] = "kataconfiguration.openshift.io/v1alpha1".into();
            bad["kind"] = "KataRuntimeProfile".into();
            let object: KataRuntimeProfile = match serde_json::from_value(bad.clone()) {
                Ok(object) => object,
                // A value our own types cannot even hold goes in untyped.
                Err(_) => {
                    let api: Api<DynamicObject> = Api::all_with(
                        profiles.clone().into_client(),
                        &kube::discovery::ApiResource::erase::<KataRuntimeProfile>(&()),
                    );
                    let object: DynamicObject = serde_json::from_value(bad.clone()).unwrap();
                    let error = api
                        .create(&PostParams::default(), &object)
                        .await
                        .unwrap_err();
                    assert!(error.to_string().contains(says), "{bad}: {error}");
                    return;
                }
            };
            let error = profiles
                .create(&PostParams::default(), &object)
                .await
                .unwrap_err();
            assert!(error.to_string().contains(says), "{bad}: {error}");
        }
    };
    let vm = json!({"vcpus": 1, "memoryMiB": 1024});
    for (name, says) in [
        ("Kata-Big", "no dots"),
        ("kata.big", "no dots"),
        ("kata", "this name is taken"),
        ("runc", "this name is taken"),
    ] {
        refused(
            json!({"metadata": {"name": name}, "spec": {"vm": vm}}),
            says,
        )
        .await;
    }
    for (spec, says) in [
        (
            json!({"vm": {"vcpus": 0, "memoryMiB": 1024}}),
            "spec.vm.vcpus",
        ),
        (
            json!({"vm": {"vcpus": 1, "memoryMiB": 100}}),
            "spec.vm.memoryMiB",
        ),
        (
            json!({"vm": {"vcpus": 4, "maxVcpus": 2, "memoryMiB": 1024}}),
            "vm.maxVcpus must be at least vm.vcpus",
        ),
        (
            json!({"vm": vm, "allowedAnnotations": ["kernel"]}),
            "spec.allowedAnnotations[0]",
        ),
        (
            json!({"vm": vm, "allowedAnnotations": ["default_memory", "default_memory"]}),
            "lists an annotation twice",
        ),
        (
            json!({"vm": vm, "overhead": {"cpu": "250m", "memory": "banana"}}),
            "must be plain quantities",
        ),
    ] {
        refused(json!({"metadata": {"name": "p"}, "spec": spec}), says).await;
    }
    assert!(
        profiles
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing of them was stored"
    );
}
