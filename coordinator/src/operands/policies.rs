//! The admission policies the coordinator creates, pure: the shipped
//! manifests (compiled in) with the operator's namespace put in.
//!
//! OLM cannot install a ValidatingAdmissionPolicy from a bundle, so the
//! coordinator creates them. It may only **create** them, each by its name
//! (RBAC `create` with resourceNames, which holds because creation is a
//! server-side apply to that name) and read them: no `patch`, `update` or
//! `delete`. A policy is a fence on what the coordinator's own grants
//! could otherwise do (the pod shape in its namespace, its own writes),
//! and a fence the fenced may edit is none. So a policy's content never
//! changes under its name: a release that changes one ships it under a new
//! name (`-v2`, ...), and the old one, left in place, is only ever stricter
//! or equal (every policy only denies). A policy deleted under a running
//! coordinator is created again; one edited by hand is reported and left.

use serde::Deserialize;
use serde_json::Value;

use crate::kind::Kind;
pub use crate::kind::{POLICY_BINDING as BINDING, VALIDATING_ADMISSION_POLICY as POLICY};

/// The shipped manifests, each a policy and its binding.
const SOURCES: &[(&str, &str)] = &[
    (
        "kataconfig-singleton.yaml",
        include_str!("../../../deploy/base/kataconfig-singleton.yaml"),
    ),
    (
        "uninstall-order.yaml",
        include_str!("../../../deploy/base/uninstall-order.yaml"),
    ),
    (
        "node-agent-pod-policy.yaml",
        include_str!("../../../deploy/base/node-agent-pod-policy.yaml"),
    ),
    (
        "coordinator-fence.yaml",
        include_str!("../../../deploy/base/coordinator-fence.yaml"),
    ),
];

/// The namespace the shipped manifests name; every mention of it that
/// stands for the operator's namespace is quoted (a CEL string or a
/// resourceNames entry) or a ServiceAccount's user name.
const SHIPPED_NAMESPACE: &str = kata_proto::contract::DEFAULT_NAMESPACE;

/// One object to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub kind: Kind,
    pub name: String,
    /// The manifest, the namespace put in.
    pub body: Value,
    /// The shipped file it comes from, for messages.
    pub source: &'static str,
}

/// Every policy and binding, in the order to create them (a binding after
/// its policy: a binding to a missing policy is accepted but denies
/// nothing, and so is harmless, but says nothing either).
pub fn desired(namespace: &str) -> Vec<Desired> {
    SOURCES
        .iter()
        .flat_map(|(source, text)| documents(source, &in_namespace(text, namespace)))
        .collect()
}

/// The names of the policies and their bindings (each binding is named
/// after its policy): what RBAC grants `create` and `get` on. A unit test
/// keeps it equal to the shipped manifests.
pub const NAMES: &[&str] = &[
    "kataconfig-singleton",
    "kata-operator-uninstall-order",
    // v0.1.0 shipped a weaker policy as `kata-operator-node-agent-pods`;
    // a cluster that applied it keeps it, and both apply.
    "kata-operator-node-agent-pods-v2",
    "kata-operator-coordinator-fence-v1",
];

/// The names of the objects of `kind` in [`desired`].
pub fn names(kind: Kind) -> Vec<String> {
    desired(SHIPPED_NAMESPACE)
        .into_iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.name)
        .collect()
}

/// `text` with the operator's namespace in place of the shipped one.
pub fn in_namespace(text: &str, namespace: &str) -> String {
    [
        (format!("'{SHIPPED_NAMESPACE}'"), format!("'{namespace}'")),
        (
            format!("\"{SHIPPED_NAMESPACE}\""),
            format!("\"{namespace}\""),
        ),
        (
            format!("system:serviceaccount:{SHIPPED_NAMESPACE}:"),
            format!("system:serviceaccount:{namespace}:"),
        ),
    ]
    .iter()
    .fold(text.to_owned(), |text, (from, to)| text.replace(from, to))
}

fn documents(source: &'static str, text: &str) -> Vec<Desired> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|document| Value::deserialize(document).ok())
        .filter_map(|body| {
            let kind = match body["kind"].as_str()? {
                "ValidatingAdmissionPolicy" => POLICY,
                "ValidatingAdmissionPolicyBinding" => BINDING,
                _ => return None,
            };
            let name = body["metadata"]["name"].as_str()?.to_owned();
            Some(Desired {
                kind,
                name,
                body,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_shipped_policy_has_its_binding() {
        let all = desired(SHIPPED_NAMESPACE);
        let policies = names(POLICY);
        assert_eq!(policies.len(), SOURCES.len(), "{all:?}");
        for d in all.iter().filter(|d| d.kind == BINDING) {
            let bound = d.body["spec"]["policyName"].as_str().unwrap();
            assert!(policies.iter().any(|p| p == bound), "{bound}");
        }
        assert_eq!(all.len(), 2 * SOURCES.len());
    }

    #[test]
    fn rbac_names_every_shipped_policy_and_binding() {
        assert_eq!(names(POLICY), NAMES);
        assert_eq!(names(BINDING), NAMES);
    }

    #[test]
    fn the_namespace_is_put_in_where_it_stands_for_the_operators() {
        let text = "a: \"request.namespace == 'kata-operator'\"\n\
                    b: [\"kata-operator\"]\n\
                    c: system:serviceaccount:kata-operator:kata-coordinator\n\
                    d: \"request.name.startsWith('kata-operator.')\"\n\
                    e: kata-operator-coordinator\n";
        let out = in_namespace(text, "sandboxed");
        assert!(out.contains("== 'sandboxed'"), "{out}");
        assert!(out.contains("[\"sandboxed\"]"), "{out}");
        assert!(
            out.contains("system:serviceaccount:sandboxed:kata-coordinator"),
            "{out}"
        );
        // A CSV name and our object names keep the product's name.
        assert!(out.contains("startsWith('kata-operator.')"), "{out}");
        assert!(out.contains("e: kata-operator-coordinator"), "{out}");
    }

    #[test]
    fn the_uninstall_order_guards_the_operators_own_namespace() {
        let all = desired("sandboxed");
        let order = all
            .iter()
            .find(|d| d.kind == POLICY && d.source == "uninstall-order.yaml")
            .unwrap();
        let text = order.body.to_string();
        assert!(text.contains("\"sandboxed\""), "{text}");
        assert!(!text.contains("'kata-operator'"), "{text}");
    }
}
