//! The objects the operator owns whatever installs the host configuration,
//! built from the KataConfig: pure functions. The Machine Config Operator's
//! objects are in [`crate::mco::objects`].

use std::collections::BTreeMap;

use k8s_openapi::api::node::v1::{Overhead, RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kata_proto::contract;
use kube::api::ObjectMeta;
use serde_json::Value;

use crate::names;

/// The labels every object of ours carries, plus `extra`.
pub fn managed_labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    std::iter::once((names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE))
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
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
            name: contract::RUNTIME_HANDLER.into(),
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
        handlers_toml(std::slice::from_ref(self))
    }

    /// The handler's table.
    fn table(&self) -> toml_edit::Table {
        let mut handler = toml_edit::Table::new();
        handler["runtime_path"] = toml_edit::value(&self.runtime_path);
        handler["runtime_type"] = toml_edit::value(&self.runtime_type);
        handler["runtime_root"] = toml_edit::value(&self.runtime_root);
        handler["runtime_config_path"] = toml_edit::value(&self.runtime_config_path);
        handler["privileged_without_host_devices"] =
            toml_edit::value(self.privileged_without_host_devices);
        handler
    }
}

/// A CRI-O drop-in declaring `handlers`, one `[crio.runtime.runtimes.<name>]`
/// table each, in their order.
pub fn handlers_toml(handlers: &[CrioRuntimeHandler]) -> String {
    let mut runtimes = toml_edit::Table::new();
    runtimes.set_implicit(true);
    for handler in handlers {
        runtimes.insert(&handler.name, toml_edit::Item::Table(handler.table()));
    }
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

/// The `kata` RuntimeClass. Its nodeSelector is the runtime-ready label and
/// never anything derived from the pool selector: an empty selector would let
/// Kata pods land on nodes without Kata.
pub fn runtime_class() -> RuntimeClass {
    kata_runtime_class(
        names::RUNTIME_CLASS_NAME,
        names::RUNTIME_HANDLER,
        (
            Quantity(contract::pod_overhead_cpu_quantity()),
            Quantity(contract::pod_overhead_memory_quantity()),
        ),
        names::KATA_RUNTIME_LABEL.into(),
        Some(vec![names::RUNTIME_CLASS_FINALIZER.into()]),
    )
}

/// A RuntimeClass of ours named `name`, running pods with `handler` at a
/// fixed overhead of `cpu` and `memory`, only on nodes labelled
/// `node_label=true` (`kata`'s and each runtime profile's).
pub fn kata_runtime_class(
    name: &str,
    handler: &str,
    (cpu, memory): (Quantity, Quantity),
    node_label: String,
    finalizers: Option<Vec<String>>,
) -> RuntimeClass {
    RuntimeClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(managed_labels(&[])),
            finalizers,
            ..Default::default()
        },
        handler: handler.into(),
        overhead: Some(Overhead {
            pod_fixed: Some(BTreeMap::from([
                ("cpu".into(), cpu),
                ("memory".into(), memory),
            ])),
        }),
        scheduling: Some(Scheduling {
            node_selector: Some(BTreeMap::from([(node_label, "true".into())])),
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
    use serde_json::json;

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
    fn runtime_class_overhead_is_the_contracts() {
        let fixed = runtime_class()
            .overhead
            .and_then(|o| o.pod_fixed)
            .unwrap_or_default();
        assert_eq!(fixed.get("cpu"), Some(&Quantity("250m".into())));
        assert_eq!(fixed.get("memory"), Some(&Quantity("350Mi".into())));
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
