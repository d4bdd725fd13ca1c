//! The API kinds the coordinator writes, as plain constants: a [`crate::plan::Step`]
//! names its object's kind with one, and the applier turns it into a request.

use kube::api::ApiResource;

/// An API kind: cluster-scoped, except where its constant says otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }
}

pub const NODE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
};

pub const RUNTIME_CLASS: Kind = Kind {
    group: "node.k8s.io",
    version: "v1",
    kind: "RuntimeClass",
    plural: "runtimeclasses",
};

pub const KATA_CONFIG: Kind = Kind {
    group: crate::api::GROUP,
    version: "v1",
    kind: "KataConfig",
    plural: "kataconfigs",
};

/// Namespaced: the node-agent's, in the operator's namespace.
pub const DAEMON_SET: Kind = Kind {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
};

/// Namespaced: the coordinator's own Deployment, read for its uid.
pub const DEPLOYMENT: Kind = Kind {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
};

/// The admission policies the coordinator creates (never changes).
pub const VALIDATING_ADMISSION_POLICY: Kind = Kind {
    group: "admissionregistration.k8s.io",
    version: "v1",
    kind: "ValidatingAdmissionPolicy",
    plural: "validatingadmissionpolicies",
};

pub const POLICY_BINDING: Kind = Kind {
    group: "admissionregistration.k8s.io",
    version: "v1",
    kind: "ValidatingAdmissionPolicyBinding",
    plural: "validatingadmissionpolicybindings",
};

/// Namespaced: the node-agents' PodMonitor, in the operator's namespace,
/// where the Prometheus Operator's CRDs are installed.
pub const POD_MONITOR: Kind = Kind {
    group: "monitoring.coreos.com",
    version: "v1",
    kind: "PodMonitor",
    plural: "podmonitors",
};

/// Namespaced: the console dashboard, in `openshift-config-managed`.
pub const CONFIG_MAP: Kind = Kind {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
};

/// Read only: whether the console's dashboard namespace exists.
pub const NAMESPACE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
};

/// The kind Events are counted under (they are written through the
/// recorder, not as a [`Kind`]).
pub const EVENT_KIND: &str = "Event";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn constants_match_the_typed_resources() {
        use k8s_openapi::api::core::v1::Node;
        use k8s_openapi::api::node::v1::RuntimeClass;
        assert_eq!(NODE.api_version(), Node::api_version(&()));
        assert_eq!(NODE.plural, Node::plural(&()));
        assert_eq!(RUNTIME_CLASS.api_version(), RuntimeClass::api_version(&()));
        assert_eq!(RUNTIME_CLASS.plural, RuntimeClass::plural(&()));
        use crate::api::KataConfig;
        assert_eq!(KATA_CONFIG.api_version(), KataConfig::api_version(&()));
        assert_eq!(KATA_CONFIG.plural, KataConfig::plural(&()));
        assert_eq!(KATA_CONFIG.kind, KataConfig::kind(&()));
    }
}
