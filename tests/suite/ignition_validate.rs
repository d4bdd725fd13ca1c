//! Every MachineConfig the coordinator renders, checked by the real Ignition
//! validator (github.com/coreos/ignition/v2's `ignition-validate`, the
//! library the Machine Config Operator validates with), for each pool it
//! goes to and each OS extension; and the MCO simulator refuses what the
//! validator refuses, so a config the simulator accepts is one the real MCO
//! would accept.
#![allow(clippy::unwrap_used)]

use kata_coordinator::api::LogLevel;
use kata_coordinator::mco::names as mco;
use kata_coordinator::mco::objects::{container_runtime_config_for, machine_config_for};
use kata_coordinator::mco::placement::Role;
use kata_coordinator::objects::CrioRuntimeHandler;
use kata_coordinator::profiles::{KataRuntimeProfile, TenantAnnotation, render};
use kata_test_harness::kata_test;
use kata_tests::ignition;
use kata_tests::mco_simulator::crio;
use kata_tests::mco_simulator::model::{Pool, RuntimeConfig};
use kata_tests::mco_simulator::render::validate_ignition;
use serde_json::{Value, json};

/// A small, a large and a debug profile, as docs/operations.md shows them.
fn three_profiles() -> Vec<KataRuntimeProfile> {
    ["kata-small", "kata-large", "kata-debug"]
        .into_iter()
        .zip([(1, 1024, false), (8, 16384, false), (2, 2048, true)])
        .map(|(name, (vcpus, memory_mib, debug))| {
            let mut profile = KataRuntimeProfile::of_size(name, vcpus, memory_mib);
            profile.spec.debug = debug;
            profile.spec.allowed_annotations = vec![TenantAnnotation::DefaultMemory];
            profile
        })
        .collect()
}

/// Every MachineConfig spec.config the coordinator renders, named.
fn our_configs() -> Vec<(String, Value)> {
    let mut configs = Vec::new();
    let naming = mco::RoleNames::default();
    for role in Role::ALL {
        for extension in [mco::EXTENSION, mco::EXTENSION_FCOS] {
            let mc = machine_config_for(
                role,
                &naming,
                extension,
                &CrioRuntimeHandler::default(),
                &[],
            );
            configs.push((
                format!("{} ({extension})", role.objects(&naming).machine_config),
                mc["spec"]["config"].clone(),
            ));
        }
        let with_profiles = machine_config_for(
            role,
            &naming,
            mco::EXTENSION,
            &CrioRuntimeHandler::default(),
            &render::files(&three_profiles()),
        );
        configs.push((
            format!(
                "{} with three runtime profiles",
                role.objects(&naming).machine_config
            ),
            with_profiles["spec"]["config"].clone(),
        ));
        // With a log level, the MCO generates one more MachineConfig from our
        // ContainerRuntimeConfig; the simulator's rendering of it is checked too.
        let crc = container_runtime_config_for(role, &naming, LogLevel::Debug).unwrap();
        let runtime_config: RuntimeConfig = serde_json::from_value(crc).unwrap();
        let pool: Pool = serde_json::from_value(json!({
            "metadata": { "name": role.pool(), "labels": { role.pool_selector_label(): "" } },
            "spec": {}
        }))
        .unwrap();
        let generated = crio::plan(
            &[&runtime_config],
            std::slice::from_ref(&runtime_config),
            &[pool],
            &Default::default(),
        )
        .generated;
        assert_eq!(
            generated.len(),
            1,
            "{}",
            role.objects(&naming).runtime_config
        );
        configs.push((generated[0].name.clone(), generated[0].spec.config.clone()));
    }
    configs
}

#[kata_test(requires(ignition::unavailable))]
fn every_machine_config_we_render_is_valid_ignition() {
    for (name, config) in our_configs() {
        let (ok, said) = ignition::validate(&config).unwrap();
        assert!(ok, "ignition-validate refused {name}:\n{said}\n{config:#}");
        assert_eq!(
            validate_ignition(&config),
            Ok(()),
            "the simulator refused {name}"
        );
    }
}

#[kata_test(requires(ignition::unavailable))]
fn the_simulator_refuses_what_ignition_refuses() {
    let file =
        |file: Value| json!({ "ignition": { "version": "3.2.0" }, "storage": { "files": [file] } });
    let source = json!({ "source": "data:,x" });
    let invalid = [
        (
            "unknown version",
            json!({ "ignition": { "version": "3.9.0" } }),
        ),
        (
            "relative path",
            file(json!({ "path": "etc/crio/crio.conf.d/50-kata", "contents": source })),
        ),
        (
            "overwrite without a source",
            file(json!({ "path": "/etc/x", "overwrite": true })),
        ),
        (
            "duplicate path",
            json!({ "ignition": { "version": "3.2.0" }, "storage": { "files": [
                { "path": "/etc/x", "contents": source },
                { "path": "/etc/x", "contents": source },
            ] } }),
        ),
    ];
    for (what, config) in invalid {
        let (ok, said) = ignition::validate(&config).unwrap();
        assert!(
            !ok,
            "ignition-validate accepted a config with {what}: {said}"
        );
        assert!(
            validate_ignition(&config).is_err(),
            "the simulator accepted a config with {what}, which Ignition refuses: {said}"
        );
    }
    let valid =
        file(json!({ "path": "/etc/x", "mode": 420, "overwrite": true, "contents": source }));
    assert!(ignition::validate(&valid).unwrap().0);
    assert_eq!(validate_ignition(&valid), Ok(()));
}
