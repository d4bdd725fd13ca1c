//! The objects the operator owns, built from the KataConfig: pure functions.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use serde_json::{Value, json};

use crate::api::LogLevel;
use crate::names::{self, mco};

/// CPU and memory a Kata pod costs beyond its containers: the VM.
pub const POD_OVERHEAD_CPU: &str = "250m";
pub const POD_OVERHEAD_MEMORY: &str = "350Mi";
const IGNITION_VERSION: &str = "3.2.0";
/// Label by which a ContainerRuntimeConfig selects the pool.
pub const POOL_SELECTOR_LABEL: &str = "pools.operator.machineconfiguration.openshift.io/kata-oc";

fn managed_labels(extra: &[(&str, &str)]) -> Value {
    let mut labels = serde_json::Map::new();
    labels.insert(
        names::MANAGED_BY_LABEL.into(),
        names::MANAGED_BY_VALUE.into(),
    );
    for (k, v) in extra {
        labels.insert((*k).into(), (*v).into());
    }
    Value::Object(labels)
}

/// The `kata-oc` MachineConfigPool: the worker configuration plus ours, on
/// the nodes we label.
pub fn machine_config_pool() -> Value {
    json!({
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfigPool",
        "metadata": {
            "name": names::POOL_NAME,
            "labels": managed_labels(&[(POOL_SELECTOR_LABEL, "")]),
        },
        "spec": {
            "machineConfigSelector": {
                "matchExpressions": [{
                    "key": mco::ROLE_LABEL,
                    "operator": "In",
                    "values": [names::POOL_NAME, mco::WORKER_POOL],
                }]
            },
            "nodeSelector": { "matchLabels": { names::KATA_POOL_ROLE_LABEL: "" } },
        }
    })
}

/// The CRI-O runtime handler the drop-in declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrioRuntimeHandler {
    pub name: String,
    pub runtime_path: String,
    pub runtime_type: String,
    pub runtime_root: String,
    pub runtime_config_path: String,
    pub privileged_without_host_devices: bool,
}

impl Default for CrioRuntimeHandler {
    fn default() -> Self {
        Self {
            name: names::RUNTIME_HANDLER.into(),
            runtime_path: "/usr/bin/containerd-shim-kata-v2".into(),
            runtime_type: "vm".into(),
            runtime_root: "/run/vc".into(),
            runtime_config_path: "/usr/share/kata-containers/defaults/configuration.toml".into(),
            privileged_without_host_devices: true,
        }
    }
}

impl CrioRuntimeHandler {
    /// The drop-in's TOML text: `[crio.runtime.runtimes.<name>]` and its keys.
    pub fn to_toml(&self) -> String {
        let mut handler = toml_edit::Table::new();
        handler["runtime_path"] = toml_edit::value(&self.runtime_path);
        handler["runtime_type"] = toml_edit::value(&self.runtime_type);
        handler["runtime_root"] = toml_edit::value(&self.runtime_root);
        handler["runtime_config_path"] = toml_edit::value(&self.runtime_config_path);
        handler["privileged_without_host_devices"] =
            toml_edit::value(self.privileged_without_host_devices);
        let mut runtimes = toml_edit::Table::new();
        runtimes.set_implicit(true);
        runtimes.insert(&self.name, toml_edit::Item::Table(handler));
        let mut runtime = toml_edit::Table::new();
        runtime.set_implicit(true);
        runtime.insert("runtimes", toml_edit::Item::Table(runtimes));
        let mut crio = toml_edit::Table::new();
        crio.set_implicit(true);
        crio.insert("runtime", toml_edit::Item::Table(runtime));
        let mut doc = toml_edit::DocumentMut::new();
        doc.insert("crio", toml_edit::Item::Table(crio));
        doc.to_string()
    }
}

/// An Ignition data URL for file contents.
pub fn data_url(contents: &str) -> String {
    format!(
        "data:text/plain;charset=utf-8;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(contents)
    )
}

/// `50-enable-sandboxed-containers-extension`: the RHCOS extension and the
/// CRI-O drop-in that registers the `kata` handler.
pub fn machine_config(handler: &CrioRuntimeHandler) -> Value {
    json!({
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {
            "name": names::MACHINE_CONFIG_NAME,
            "labels": managed_labels(&[(mco::ROLE_LABEL, names::POOL_NAME)]),
        },
        "spec": {
            "extensions": [names::EXTENSION],
            "config": {
                "ignition": { "version": IGNITION_VERSION },
                "storage": {
                    "files": [{
                        "path": names::DROP_IN_PATH,
                        "mode": 0o644,
                        "overwrite": true,
                        "contents": { "source": data_url(&handler.to_toml()) },
                    }]
                }
            }
        }
    })
}

/// `kata-crio-config`: CRI-O's log level on the pool, only when not `info`.
pub fn container_runtime_config(level: LogLevel) -> Option<Value> {
    (level != LogLevel::Info).then(|| {
        json!({
            "apiVersion": "machineconfiguration.openshift.io/v1",
            "kind": "ContainerRuntimeConfig",
            "metadata": {
                "name": names::CONTAINER_RUNTIME_CONFIG_NAME,
                "labels": managed_labels(&[]),
            },
            "spec": {
                "machineConfigPoolSelector": { "matchLabels": { POOL_SELECTOR_LABEL: "" } },
                "containerRuntimeConfig": { "logLevel": level.as_str() },
            }
        })
    })
}

/// The `kata` RuntimeClass. Its nodeSelector is the runtime-ready label and
/// never anything derived from the pool selector: an empty selector would let
/// Kata pods land on nodes without Kata.
pub fn runtime_class() -> RuntimeClass {
    RuntimeClass {
        metadata: ObjectMeta {
            name: Some(names::RUNTIME_CLASS_NAME.into()),
            labels: Some(BTreeMap::from([(
                names::MANAGED_BY_LABEL.into(),
                names::MANAGED_BY_VALUE.into(),
            )])),
            ..Default::default()
        },
        handler: names::RUNTIME_HANDLER.into(),
        overhead: Some(Overhead {
            pod_fixed: Some(BTreeMap::from([
                ("cpu".into(), Quantity(POD_OVERHEAD_CPU.into())),
                ("memory".into(), Quantity(POD_OVERHEAD_MEMORY.into())),
            ])),
        }),
        scheduling: Some(Scheduling {
            node_selector: Some(BTreeMap::from([(
                names::KATA_RUNTIME_LABEL.into(),
                "true".into(),
            )])),
            tolerations: None,
        }),
    }
}

/// Whether every field of `desired` is present in `observed` with the same
/// value: server-added fields are ignored, our fields drifting is not.
/// Arrays must be equal.
pub fn is_subset(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(k, v)| have.get(k).is_some_and(|h| is_subset(v, h))),
        _ => desired == observed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_in_is_valid_toml_declaring_the_handler() {
        let text = CrioRuntimeHandler::default().to_toml();
        let doc: toml_edit::DocumentMut = text.parse().expect("valid TOML");
        let kata = &doc["crio"]["runtime"]["runtimes"]["kata"];
        assert_eq!(
            kata["runtime_path"].as_str(),
            Some("/usr/bin/containerd-shim-kata-v2")
        );
        assert_eq!(kata["runtime_type"].as_str(), Some("vm"));
        assert_eq!(kata["runtime_root"].as_str(), Some("/run/vc"));
        assert_eq!(
            kata["privileged_without_host_devices"].as_bool(),
            Some(true)
        );
        assert!(
            text.starts_with("[crio.runtime.runtimes.kata]"),
            "only the handler table is written:\n{text}"
        );
    }

    #[test]
    fn machine_config_carries_extension_and_encoded_drop_in() {
        let mc = machine_config(&CrioRuntimeHandler::default());
        assert_eq!(mc["spec"]["extensions"], json!(["sandboxed-containers"]));
        let file = &mc["spec"]["config"]["storage"]["files"][0];
        assert_eq!(file["path"], "/etc/crio/crio.conf.d/50-kata");
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
    fn runtime_class_selector_is_never_empty() {
        let rc = runtime_class();
        let selector = rc
            .scheduling
            .and_then(|s| s.node_selector)
            .unwrap_or_default();
        assert_eq!(
            selector
                .get("katacontainers.io/kata-runtime")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(rc.handler, "kata");
    }

    #[test]
    fn container_runtime_config_only_for_non_info_levels() {
        assert!(container_runtime_config(LogLevel::Info).is_none());
        let crc = container_runtime_config(LogLevel::Debug).unwrap_or_default();
        assert_eq!(crc["spec"]["containerRuntimeConfig"]["logLevel"], "debug");
    }

    #[test]
    fn subset_ignores_server_fields_but_not_drift() {
        let desired = json!({"spec": {"a": 1, "list": [1, 2]}});
        assert!(is_subset(
            &desired,
            &json!({"spec": {"a": 1, "b": 2, "list": [1, 2]}, "status": {}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"a": 2, "list": [1, 2]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"a": 1, "list": [1]}})
        ));
        assert!(!is_subset(&desired, &json!({})));
    }
}
