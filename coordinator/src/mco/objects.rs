//! The Machine Config Operator objects the operator owns, built from the
//! KataConfig: pure functions.

use base64::Engine;
use serde_json::{Value, json};

use super::names::{self, CONTAINER_RUNTIME_CONFIG, MACHINE_CONFIG, POOL, RoleNames};
use super::placement::Role;
use crate::api::LogLevel;
use crate::objects::{CrioRuntimeHandler, managed_labels};
use crate::profiles::render::HostFile;

const IGNITION_VERSION: &str = "3.2.0";

/// The `kata-oc` MachineConfigPool: the worker configuration plus ours, on
/// the nodes we label.
pub fn machine_config_pool() -> Value {
    json!({
        "apiVersion": POOL.api_version(),
        "kind": POOL.kind,
        "metadata": {
            "name": names::POOL_NAME,
            "labels": managed_labels(&[(names::POOL_SELECTOR_LABEL, "")]),
        },
        "spec": {
            "machineConfigSelector": {
                "matchExpressions": [{
                    "key": names::ROLE_LABEL,
                    "operator": "In",
                    "values": [names::POOL_NAME, names::WORKER_POOL],
                }]
            },
            "nodeSelector": { "matchLabels": { names::KATA_POOL_ROLE_LABEL: "" } },
        }
    })
}

/// An Ignition data URL for file contents.
pub fn data_url(contents: &str) -> String {
    format!(
        "data:text/plain;charset=utf-8;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(contents)
    )
}

/// `50-enable-sandboxed-containers-extension`: the RHCOS extension and the
/// CRI-O drop-in that registers the `kata` handler, for our pool.
pub fn machine_config(handler: &CrioRuntimeHandler) -> Value {
    machine_config_for(
        Role::KataPool,
        &RoleNames::default(),
        names::EXTENSION,
        handler,
        &[],
    )
}

/// Our MachineConfig for the pool of `role` (named as `naming` says),
/// installing `extension` (the name the nodes' OS knows), the CRI-O
/// drop-in, and the runtime profiles' files after it, all in one rendered
/// config: one reboot per node for any change of them.
pub fn machine_config_for(
    role: Role,
    naming: &RoleNames,
    extension: &str,
    handler: &CrioRuntimeHandler,
    profile_files: &[HostFile],
) -> Value {
    let drop_in = HostFile {
        path: kata_proto::contract::DROP_IN_PATH.into(),
        contents: handler.to_toml(),
    };
    let files: Vec<Value> = std::iter::once(&drop_in)
        .chain(profile_files)
        .map(|file| {
            json!({
                "path": file.path,
                "mode": 0o644,
                "overwrite": true,
                "contents": { "source": data_url(&file.contents) },
            })
        })
        .collect();
    json!({
        "apiVersion": MACHINE_CONFIG.api_version(),
        "kind": MACHINE_CONFIG.kind,
        "metadata": {
            "name": role.objects(naming).machine_config,
            "labels": managed_labels(&[(names::ROLE_LABEL, role.pool())]),
        },
        "spec": {
            "extensions": [extension],
            "config": {
                "ignition": { "version": IGNITION_VERSION },
                "storage": { "files": files }
            }
        }
    })
}

/// `kata-crio-config`: CRI-O's log level on our pool, only when not `info`.
pub fn container_runtime_config(level: LogLevel) -> Option<Value> {
    container_runtime_config_for(Role::KataPool, &RoleNames::default(), level)
}

/// CRI-O's log level on the pool of `role` (named as `naming` says), only
/// when not `info`.
pub fn container_runtime_config_for(
    role: Role,
    naming: &RoleNames,
    level: LogLevel,
) -> Option<Value> {
    (level != LogLevel::Info).then(|| {
        json!({
            "apiVersion": CONTAINER_RUNTIME_CONFIG.api_version(),
            "kind": CONTAINER_RUNTIME_CONFIG.kind,
            "metadata": {
                "name": role.objects(naming).runtime_config,
                "labels": managed_labels(&[]),
            },
            "spec": {
                "machineConfigPoolSelector": { "matchLabels": { role.pool_selector_label(): "" } },
                "containerRuntimeConfig": { "logLevel": level.as_str() },
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_carries_extension_and_encoded_drop_in() {
        let mc = machine_config(&CrioRuntimeHandler::default());
        assert_eq!(mc["spec"]["extensions"], json!(["sandboxed-containers"]));
        let file = &mc["spec"]["config"]["storage"]["files"][0];
        assert_eq!(file["path"], kata_proto::contract::DROP_IN_PATH);
        assert_eq!(file["mode"], 420);
        let source = file["contents"]["source"].as_str().unwrap_or_default();
        let encoded = source
            .strip_prefix("data:text/plain;charset=utf-8;base64,")
            .unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&decoded),
            CrioRuntimeHandler::default().to_toml()
        );
    }

    #[test]
    fn the_master_pool_gets_its_own_objects_with_the_nodes_extension() {
        let mc = machine_config_for(
            Role::Master,
            &RoleNames::default(),
            names::EXTENSION_FCOS,
            &CrioRuntimeHandler::default(),
            &[],
        );
        assert_eq!(
            mc["metadata"]["name"],
            "50-enable-sandboxed-containers-extension-master"
        );
        assert_eq!(mc["metadata"]["labels"][names::ROLE_LABEL], "master");
        assert_eq!(mc["spec"]["extensions"], json!(["kata-containers"]));
        let crc = container_runtime_config_for(Role::Master, &RoleNames::default(), LogLevel::Warn)
            .unwrap_or_default();
        assert_eq!(
            crc["spec"]["machineConfigPoolSelector"]["matchLabels"],
            json!({"pools.operator.machineconfiguration.openshift.io/master": ""})
        );
    }

    #[test]
    fn container_runtime_config_only_for_non_info_levels() {
        assert!(container_runtime_config(LogLevel::Info).is_none());
        let crc = container_runtime_config(LogLevel::Debug).unwrap_or_default();
        assert_eq!(crc["spec"]["containerRuntimeConfig"]["logLevel"], "debug");
    }

    #[test]
    fn objects_name_their_kind() {
        let pool = machine_config_pool();
        assert_eq!(
            (pool["apiVersion"].as_str(), pool["kind"].as_str()),
            (
                Some("machineconfiguration.openshift.io/v1"),
                Some("MachineConfigPool")
            )
        );
    }
}
