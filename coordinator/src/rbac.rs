//! The coordinator's RBAC, generated from one table of the API calls it
//! makes, so the shipped role grows and shrinks with the code. Checked in as
//! `deploy/base/rbac-coordinator.yaml` (`coordinator rbac`); a test keeps the
//! file equal, and `tests/suite/deploy_manifests.rs` runs a full install and
//! uninstall with a token of the ServiceAccount this binds, so a missing verb
//! fails there and verbs outside the table are shown to be refused.
//!
//! The node-agent's ServiceAccount is bound to nothing at all.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use kube::api::ObjectMeta;

use crate::names;
use kata_proto::contract;

/// Namespace the operator is deployed in (`deploy/base/namespace.yaml`).
pub const NAMESPACE: &str = contract::DEFAULT_NAMESPACE;
/// The coordinator's ServiceAccount.
pub const SERVICE_ACCOUNT: &str = contract::COORDINATOR_SERVICE_ACCOUNT;
/// The node-agent's ServiceAccount: authenticates to the coordinator, has no API rights.
pub const AGENT_SERVICE_ACCOUNT: &str = contract::AGENT_SERVICE_ACCOUNT;
/// Name of the ClusterRole, its binding, and the namespaced Role and binding.
pub const ROLE_NAME: &str = "kata-operator-coordinator";

/// One RBAC rule and the code path that needs it.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    /// Empty: every object of the resource. Otherwise the only names allowed;
    /// `list`/`watch` then need a `metadata.name` field selector. `create`
    /// limited by name works only because every object is created by
    /// server-side apply: the API server authorizes a PATCH that would create
    /// as `create` of the name in the URL (a POST carries no name, and is
    /// refused). Checked on the real API server by tests/suite/deploy_manifests.rs.
    pub resource_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// The code path that makes these calls.
    pub used_by: &'static str,
}

/// The coordinator's own cluster-wide permissions; the ClusterRole holds
/// these and those of the host-configuration backend ([`cluster_permissions`]).
pub const OWN_CLUSTER_PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: "kataconfiguration.openshift.io",
        resources: &["kataconfigs"],
        resource_names: &[],
        // list/watch: the Controller's watcher; patch: server-side apply of
        // metadata.finalizers (Step::AddFinalizer / Step::RemoveFinalizer).
        // get (and list): the API server requires them of whoever creates
        // an admission policy whose params are KataConfigs (operands).
        verbs: &["get", "list", "watch", "patch"],
        used_by: "controller::wiring (the KataConfig watch), controller::steps (finalizer add/remove)",
    },
    Permission {
        api_group: "kataconfiguration.openshift.io",
        resources: &["kataruntimeprofiles"],
        resource_names: &[],
        // list: each reconcile reads the profiles; watch: a change of one
        // triggers a reconcile.
        verbs: &["list", "watch"],
        used_by: "controller::observe (the profiles), controller::wiring (their watch)",
    },
    Permission {
        api_group: "kataconfiguration.openshift.io",
        resources: &["kataconfigs/status"],
        resource_names: &[],
        verbs: &["patch"],
        used_by: "controller::report::write_status (applier: server-side apply of status)",
    },
    Permission {
        api_group: "",
        resources: &["nodes"],
        resource_names: &[],
        // list/watch: node_events reflector; patch: the pool-role label by SSA
        // and its removal by JSON merge patch (Applier::label), the health
        // labels by SSA (labeller, Step::ReleaseNodeLabels).
        verbs: &["list", "watch", "patch"],
        used_by: "controller::wiring (node cache), controller::steps (node labels)",
    },
    Permission {
        api_group: "",
        resources: &["nodes/status"],
        resource_names: &[],
        verbs: &["patch"],
        used_by: "health::labeller (node condition KataRuntimeReady), Step::RemoveNodeCondition",
    },
    Permission {
        api_group: "node.k8s.io",
        resources: &["runtimeclasses"],
        // Not limited by name: each runtime profile has a RuntimeClass of its
        // own name, and a profile named like someone else's RuntimeClass is
        // refused, which takes seeing them all. Only classes carrying our
        // managed-by label, and `kata`, are ever written or deleted.
        resource_names: &[],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        used_by: "controller::observe, the RuntimeClass watch, Step::Apply / Step::Delete of the RuntimeClasses",
    },
    Permission {
        api_group: "",
        resources: &["pods"],
        resource_names: &[],
        verbs: &["list"],
        used_by: "controller::pod_gate::pods_using_kata (uninstall guard), controller::stuck::drain_blockers (pods on a stuck node)",
    },
    Permission {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        resource_names: &[],
        // Only while a node is stuck updating, in its pods' namespaces.
        verbs: &["list"],
        used_by: "controller::stuck::drain_blockers (what holds a stuck node's drain)",
    },
    Permission {
        api_group: "events.k8s.io",
        resources: &["events"],
        resource_names: &[],
        // kube-runtime's Recorder creates an Event, then patches its series.
        // Events of the cluster-scoped KataConfig land in `default`, so this
        // cannot be a Role in the operator's namespace.
        verbs: &["create", "patch"],
        used_by: "applier::Applier::publish (kube-runtime Recorder)",
    },
    Permission {
        api_group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        resource_names: &[],
        verbs: &["create"],
        used_by: "health::auth::AgentAuthenticator::authenticate",
    },
    Permission {
        api_group: "admissionregistration.k8s.io",
        resources: &[
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
        ],
        resource_names: crate::operands::policies::NAMES,
        verbs: &["get"],
        used_by: "operands::Operands::create_policy (is the policy there, as shipped?)",
    },
    Permission {
        api_group: "admissionregistration.k8s.io",
        resources: &[
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
        ],
        // Create only: a policy fences what these very grants could do, so
        // the coordinator can neither change nor delete one
        // (operands::policies). A POST carries no name, so RBAC cannot
        // narrow create to ours; a server-side apply would need patch.
        resource_names: &[],
        verbs: &["create"],
        used_by: "operands::Operands::create_policy (the admission policies OLM cannot install)",
    },
    Permission {
        api_group: "",
        resources: &["configmaps"],
        resource_names: &[crate::operands::monitoring::DASHBOARD_NAME],
        // The dashboard lives in openshift-config-managed, which neither a
        // Role in the operator's namespace nor OLM's `permissions` reach;
        // the name holds the ClusterRole to it, and the fence to that
        // namespace. create is a server-side apply to the name.
        verbs: &["get", "create", "patch"],
        used_by: "operands::Operands::keep_dashboard (the console dashboard OLM cannot install)",
    },
    Permission {
        api_group: "",
        resources: &["namespaces"],
        resource_names: &[crate::operands::monitoring::DASHBOARD_NAMESPACE],
        verbs: &["get"],
        used_by: "operands::Operands::keep_dashboard (is there a console to show it: OpenShift)",
    },
];

/// Permissions in the operator's namespace only (the Role): a ClusterRole
/// would also let the coordinator rewrite the kubelets' heartbeat Leases in
/// kube-node-lease.
pub const NAMESPACE_PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        resource_names: &[],
        // leader::LeaderElector creates the Lease with a POST, which carries
        // no name to limit.
        verbs: &["create"],
        used_by: "leader::LeaderElector (first replica to run)",
    },
    Permission {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        resource_names: &[LEASE_NAME],
        verbs: &["get", "update"],
        used_by: "leader::LeaderElector (acquire, renew, release)",
    },
    Permission {
        api_group: "",
        resources: &["pods"],
        resource_names: &[],
        // The agents run in the operator's namespace: their Pods' deletions
        // end the streams their tokens opened.
        verbs: &["list", "watch"],
        used_by: "health::pods::BoundPods (agent Pods, by ServiceAccount)",
    },
    Permission {
        api_group: "apps",
        resources: &["daemonsets"],
        resource_names: &[crate::operands::node_agent::NAME],
        // The watch selects metadata.name, which lets list/watch be
        // limited by name; create is a server-side apply to the name.
        verbs: &["get", "list", "watch", "create", "patch"],
        used_by: "operands::run (the node-agent DaemonSet: watched, created, kept in shape)",
    },
    Permission {
        api_group: "apps",
        resources: &["deployments"],
        resource_names: &[crate::operands::OWNER_DEPLOYMENT],
        verbs: &["get"],
        used_by: "operands::Operands::owner (the coordinator's Deployment, owner of the DaemonSet and PodMonitor)",
    },
    Permission {
        api_group: "monitoring.coreos.com",
        resources: &["podmonitors"],
        resource_names: &[crate::operands::monitoring::POD_MONITOR_NAME],
        // create is a server-side apply to the name; no watch: a resync
        // brings a deleted one back.
        verbs: &["get", "create", "patch"],
        used_by: "operands::Operands::keep_pod_monitor (the node-agents' PodMonitor, where the Prometheus Operator's API is served)",
    },
];

/// A non-resource URL the coordinator reads, and the code that reads it.
#[derive(Debug, Clone, Copy)]
pub struct UrlPermission {
    pub urls: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub used_by: &'static str,
}

/// Non-resource URLs (in the ClusterRole). Kubernetes's default
/// `system:service-account-issuer-discovery` binding grants this to every
/// ServiceAccount too, but a cluster may have removed it.
pub const CLUSTER_URL_PERMISSIONS: &[UrlPermission] = &[UrlPermission {
    urls: &[crate::health::issuer_keys::JWKS_PATH],
    verbs: &["get"],
    used_by: "health::issuer_keys::IssuerKeySource (forged tokens refused before any TokenReview)",
}];

/// The leader-election Lease: the coordinator's `--lease-name` default.
pub const LEASE_NAME: &str = "kata-operator-coordinator";

/// Every cluster-wide permission (the ClusterRole): the coordinator's own,
/// then those of the backend that rolls the host configuration out.
pub fn cluster_permissions(backend: &[Permission]) -> Vec<Permission> {
    [OWN_CLUSTER_PERMISSIONS, backend].concat()
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn rules(permissions: &[Permission]) -> Vec<PolicyRule> {
    permissions
        .iter()
        .map(|p| PolicyRule {
            api_groups: Some(vec![p.api_group.to_string()]),
            resources: Some(strings(p.resources)),
            resource_names: (!p.resource_names.is_empty()).then(|| strings(p.resource_names)),
            verbs: strings(p.verbs),
            non_resource_urls: None,
        })
        .collect()
}

fn url_rules(permissions: &[UrlPermission]) -> Vec<PolicyRule> {
    permissions
        .iter()
        .map(|p| PolicyRule {
            non_resource_urls: Some(strings(p.urls)),
            verbs: strings(p.verbs),
            ..PolicyRule::default()
        })
        .collect()
}

fn labels() -> Option<std::collections::BTreeMap<String, String>> {
    Some(
        [(
            names::MANAGED_BY_LABEL.to_string(),
            names::MANAGED_BY_VALUE.to_string(),
        )]
        .into(),
    )
}

fn subjects() -> Option<Vec<Subject>> {
    Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: SERVICE_ACCOUNT.into(),
        namespace: Some(NAMESPACE.into()),
        api_group: None,
    }])
}

pub fn cluster_role(backend: &[Permission]) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            labels: labels(),
            ..Default::default()
        },
        rules: Some(
            [
                rules(&cluster_permissions(backend)),
                url_rules(CLUSTER_URL_PERMISSIONS),
            ]
            .concat(),
        ),
        aggregation_rule: None,
    }
}

pub fn cluster_role_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            labels: labels(),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: ROLE_NAME.into(),
        },
        subjects: subjects(),
    }
}

pub fn role() -> Role {
    Role {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: labels(),
            ..Default::default()
        },
        rules: Some(rules(NAMESPACE_PERMISSIONS)),
    }
}

pub fn role_binding() -> RoleBinding {
    RoleBinding {
        metadata: ObjectMeta {
            name: Some(ROLE_NAME.into()),
            namespace: Some(NAMESPACE.into()),
            labels: labels(),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: ROLE_NAME.into(),
        },
        subjects: subjects(),
    }
}

/// The ClusterRole, Role and their bindings as one multi-document YAML.
/// The four RBAC documents `coordinator rbac` prints, for a coordinator
/// with `backend`'s permissions.
pub fn rbac_yaml(backend: &[Permission]) -> String {
    let documents = [
        serde_yaml::to_string(&cluster_role(backend)),
        serde_yaml::to_string(&cluster_role_binding()),
        serde_yaml::to_string(&role()),
        serde_yaml::to_string(&role_binding()),
    ];
    let documents: Vec<String> = documents
        .into_iter()
        .map(Result::unwrap_or_default)
        .collect();
    format!(
        "# Generated by `coordinator rbac` from coordinator/src/rbac.rs; do not edit.\n{}",
        documents.join("---\n")
    )
}

/// What every rule of a permission table must hold: verbs and the code
/// path that needs them, and no `update`: every write is a patch (SSA or
/// merge), so a PUT that could overwrite an admin's spec is refused (the
/// Lease excepted). The backends' tables are checked with it too.
#[cfg(test)]
pub(crate) fn check_rules(permissions: &[Permission]) {
    for p in permissions {
        assert!(!p.verbs.is_empty() && !p.used_by.is_empty(), "{p:?}");
        assert!(
            !p.verbs.contains(&"update") || p.resources == ["leases"],
            "{p:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_verbs_and_a_reason() {
        check_rules(&cluster_permissions(&[]));
        check_rules(NAMESPACE_PERMISSIONS);
        for p in CLUSTER_URL_PERMISSIONS {
            assert!(p.verbs == ["get"] && !p.used_by.is_empty(), "{p:?}");
        }
    }

    #[test]
    fn yaml_holds_four_documents() {
        let yaml = rbac_yaml(&[]);
        assert_eq!(yaml.matches("\n---\n").count(), 3, "{yaml}");
        assert!(yaml.contains("kind: ClusterRoleBinding"));
    }
}
