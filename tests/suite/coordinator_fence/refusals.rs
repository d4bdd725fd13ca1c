//! The writes the fence refuses to the Machine Config Operator's objects:
//! each a change to what the coordinator's builders make.

use kata_coordinator::api::LogLevel;
use kata_coordinator::mco::names::{self as mco, CONTAINER_RUNTIME_CONFIG, POOL};
use kata_coordinator::mco::objects;
use kata_coordinator::mco::placement::Role;
use kata_coordinator::objects::CrioRuntimeHandler;
use kata_tests::cluster::WORKER;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject};
use serde_json::{Value, json};

use super::{api, apply, assert_fenced, refusal};

/// Our kata-oc MachineConfig as the planner writes it.
pub(super) fn machine_config() -> Value {
    objects::machine_config(&CrioRuntimeHandler::default())
}

/// `machine_config()` with `change` made to it.
pub(super) fn changed(change: impl FnOnce(&mut Value)) -> Value {
    let mut mc = machine_config();
    change(&mut mc);
    mc
}

pub(super) async fn machine_config_refusals(configs: &Api<DynamicObject>) {
    let content = "no systemd units, passwd, or remote Ignition configs";
    let kernel = "may carry only Kata's extension";
    let files = "may write only files and directories under";
    let role = "each with the role of its pool";
    let file = |path: &str, source: &str, mode: i64| {
        changed(|mc| {
            mc["spec"]["config"]["storage"]["files"][0] =
                json!({"path": path, "mode": mode, "contents": {"source": source}})
        })
    };
    let inline = objects::data_url("x");
    let alternative = mco::RoleNames::settle(true, false);
    let master_role = objects::machine_config_for(
        Role::KataPool,
        &alternative,
        mco::EXTENSION,
        &CrioRuntimeHandler::default(),
        &[],
    );
    let cases = [
        (
            "a user",
            changed(|mc| mc["spec"]["config"]["passwd"] = json!({"users": [{"name": "core"}]})),
            content,
        ),
        (
            "a remote Ignition config",
            changed(|mc| {
                mc["spec"]["config"]["ignition"]["config"] =
                    json!({"merge": [{"source": "https://example.com/x"}]})
            }),
            content,
        ),
        (
            "kernel arguments",
            changed(|mc| mc["spec"]["kernelArguments"] = json!(["init=/bin/sh"])),
            kernel,
        ),
        (
            "an OS image",
            changed(|mc| mc["spec"]["osImageURL"] = json!("quay.io/x/os:1")),
            kernel,
        ),
        (
            "another extension",
            changed(|mc| mc["spec"]["extensions"] = json!(["usbguard"])),
            kernel,
        ),
        ("/etc/passwd", file("/etc/passwd", &inline, 420), files),
        (
            "a path climbing out",
            file("/etc/crio/crio.conf.d/../../shadow", &inline, 420),
            files,
        ),
        (
            "a remote file",
            file("/etc/kata-containers/x.toml", "https://example.com/x", 420),
            files,
        ),
        (
            "an executable",
            file("/etc/kata-containers/x", &inline, 0o755),
            files,
        ),
        (
            "a link",
            changed(|mc| {
                mc["spec"]["config"]["storage"]["links"] =
                    json!([{"path": "/etc/kata-containers/l", "target": "/etc/shadow"}])
            }),
            files,
        ),
        (
            "role master under the kata-oc name",
            {
                let mut mc = master_role;
                mc["metadata"]["labels"][mco::ROLE_LABEL] = json!("master");
                mc
            },
            role,
        ),
        (
            "role worker",
            changed(|mc| mc["metadata"]["labels"][mco::ROLE_LABEL] = json!("worker")),
            role,
        ),
    ];
    for (what, object, message) in cases {
        assert_fenced(what, apply(configs, &object, true).await, message);
    }
    // A foreign name is RBAC's to refuse, before admission.
    let foreign = changed(|mc| mc["metadata"]["name"] = json!("99-worker-ssh"));
    let refused = apply(configs, &foreign, true).await.unwrap();
    assert!(refused.contains("forbidden"), "{refused}");
    let params = DeleteParams::default().dry_run();
    let refused = refusal(configs.delete("99-worker-ssh", &params).await).unwrap();
    assert!(refused.contains("forbidden"), "{refused}");
}

pub(super) async fn pool_and_runtime_config_refusals(coordinator: &Client) {
    let mut pool = objects::machine_config_pool();
    pool["spec"]["nodeSelector"] = json!({"matchLabels": {WORKER.0: ""}});
    let mut pool_roles = objects::machine_config_pool();
    pool_roles["spec"]["machineConfigSelector"]["matchExpressions"][0]["values"] =
        json!(["kata-oc", "worker", "master"]);
    let naming = mco::RoleNames::default();
    let crc = || objects::container_runtime_config_for(Role::KataPool, &naming, LogLevel::Debug);
    let mut default_runtime = crc().unwrap();
    default_runtime["spec"]["containerRuntimeConfig"]["defaultRuntime"] = json!("runc");
    let mut other_pool =
        objects::container_runtime_config_for(Role::Master, &naming, LogLevel::Debug).unwrap();
    other_pool["spec"]["machineConfigPoolSelector"] =
        json!({"matchLabels": {mco::POOL_SELECTOR_LABEL: ""}});
    let pools = api(coordinator, POOL);
    let crcs = api(coordinator, CONTAINER_RUNTIME_CONFIG);
    let only_pool = "may write only the kata-oc pool";
    let only_crc = "each selecting its own pool and setting CRI-O's log level only";
    for (what, api, object, message) in [
        ("a pool of the workers", &pools, pool, only_pool),
        (
            "a pool of master MachineConfigs",
            &pools,
            pool_roles,
            only_pool,
        ),
        ("CRI-O's default runtime", &crcs, default_runtime, only_crc),
        ("the master name on kata-oc", &crcs, other_pool, only_crc),
    ] {
        assert_fenced(what, apply(api, &object, true).await, message);
    }
}
