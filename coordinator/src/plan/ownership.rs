//! Who else writes the fields we set: read from an object's
//! `metadata.managedFields`, pure.
//!
//! Every object we own is written by server-side apply. When another field
//! manager (a GitOps tool, OSC left installed, an admin's `kubectl apply`)
//! sets one of our fields to a different value, applying ours again would
//! take it back, the other side would take it back in turn, and on a
//! MachineConfig each turn rolls the pool. So the plan does not write such
//! an object: it says who holds which fields, and writes again once they
//! let go.
//!
//! A field counts only when the other manager owns it *and* its value
//! differs from ours. Sharing a field at the same value is no fight (the
//! API server itself reports no conflict then), and it is how an admin who
//! edited a field (an `Update`, whose ownership cannot be given up by
//! applying) settles it: setting our value back. Entries of the status
//! subresource are ignored (the API server's and the MCO's controllers
//! write status), as are fields we do not set: the MCO's controllers write
//! a pool's `spec.configuration`, a ContainerRuntimeConfig's finalizer and
//! annotations, none of which we apply.

use serde_json::Value;

use crate::names;

/// One field path, as the segments of `metadata.labels.<key>` or `spec.x`.
type Path = Vec<String>;

/// Another manager holding fields we set, at values that differ from ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `Kind/name` of the object.
    pub object: String,
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// The fields, dotted (`spec.extensions`), in our object's order.
    pub fields: Vec<String>,
}

impl Conflict {
    /// For a person: which manager holds what, and what we do about it.
    pub fn message(&self) -> String {
        format!(
            "field manager {:?} ({}) owns {} of {}, which the operator sets; the operator \
             does not overwrite it while it does (remove those fields from that manager, \
             or set them back to the operator's values)",
            self.manager,
            self.operation,
            self.fields.join(", "),
            self.object
        )
    }
}

/// The managers that are ours: never a conflict.
pub fn is_ours(manager: &str) -> bool {
    [
        names::MANAGER,
        names::MANAGER_TARGETING,
        names::MANAGER_HEALTH,
    ]
    .contains(&manager)
}

/// The operator this one takes over from: what it wrote is ours to
/// change, not a fight (our forced apply takes those fields over once, and
/// it writes no more).
fn is_predecessor(manager: &str, operation: &str) -> bool {
    manager == names::PREDECESSOR_MANAGER && operation == "Update"
}

/// The leaves of what we apply, each with its value: objects are walked,
/// anything else (lists included: ours are atomic) is one field. The
/// identity (`apiVersion`, `kind`, `metadata.name`) is no field anyone owns.
fn our_fields<'a>(value: &'a Value, path: &mut Path, out: &mut Vec<(Path, &'a Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let identity = match path.as_slice() {
                    [] => key == "apiVersion" || key == "kind",
                    [meta] => meta == "metadata" && key == "name",
                    _ => false,
                };
                if identity {
                    continue;
                }
                path.push(key.clone());
                our_fields(child, path, out);
                path.pop();
            }
        }
        _ => out.push((path.clone(), value)),
    }
}

/// What one manager's `fieldsV1` owns: `(path, whole)`, `whole` when it
/// owns the value at `path` with everything under it (a leaf `{}`), else
/// only something inside it (a list element, `k:`/`v:`/`i:`) or the map's
/// existence (`.`), which the path of one of our fields may still pass through.
fn owned_fields(fields: &Value, path: &mut Path, out: &mut Vec<(Path, bool)>) {
    let Some(map) = fields.as_object() else {
        return;
    };
    if map.is_empty() {
        out.push((path.clone(), true));
        return;
    }
    for (key, child) in map {
        if let Some(field) = key.strip_prefix("f:") {
            path.push(field.to_string());
            owned_fields(child, path, out);
            path.pop();
        } else if key != "." {
            // An element of the list at `path`: the manager owns part of it.
            out.push((path.clone(), false));
        }
    }
}

fn at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// Whether the other manager's `owned` covers our field at `ours`: the same
/// field, something inside it, or a whole value it is inside.
fn covers(owned: &(Path, bool), ours: &[String]) -> bool {
    let (path, whole) = owned;
    path.starts_with(ours) || (*whole && ours.starts_with(path))
}

/// The managers other than ours that own fields of `desired` (what we
/// apply) in `observed` (the object as read, with its managedFields) at
/// values other than ours, in the order of the managedFields.
pub fn conflicts(kind: &str, desired: &Value, observed: &Value) -> Vec<Conflict> {
    held_by(kind, desired, observed, |manager, operation| {
        !is_ours(manager) && !is_predecessor(manager, operation)
    })
}

/// Whether the earlier operator ([`is_predecessor`]) holds fields of
/// `desired` at other values in `observed`: an apply must take them over
/// (force), since the API server refuses it as a conflict otherwise.
pub fn held_by_predecessor(kind: &str, desired: &Value, observed: &Value) -> bool {
    !held_by(kind, desired, observed, is_predecessor).is_empty()
}

/// The managers `counts` picks that own fields of `desired` in `observed`
/// at values other than ours.
fn held_by(
    kind: &str,
    desired: &Value,
    observed: &Value,
    counts: impl Fn(&str, &str) -> bool,
) -> Vec<Conflict> {
    let mut ours = Vec::new();
    our_fields(desired, &mut Vec::new(), &mut ours);
    // Only the fields whose value differs can be fought over.
    let differing: Vec<&Path> = ours
        .iter()
        .filter(|(path, want)| at(observed, path) != Some(*want))
        .map(|(path, _)| path)
        .collect();
    if differing.is_empty() {
        return Vec::new();
    }
    owners(kind, &differing, observed, counts)
}

/// The managers other than ours that own any of `fields` (each the
/// segments of a path, `metadata.labels.<key>`) in `observed`, whatever
/// their values: an apply of ours without such a field releases only our
/// share of it, and the field stays.
pub fn other_owners(kind: &str, fields: &[Vec<String>], observed: &Value) -> Vec<Conflict> {
    let fields: Vec<&Path> = fields.iter().collect();
    owners(kind, &fields, observed, |manager, _| !is_ours(manager))
}

/// The managers `counts` picks that own any of `fields` in `observed`.
fn owners(
    kind: &str,
    wanted: &[&Path],
    observed: &Value,
    counts: impl Fn(&str, &str) -> bool,
) -> Vec<Conflict> {
    let object = format!(
        "{kind}/{}",
        observed["metadata"]["name"].as_str().unwrap_or_default()
    );
    let entries = observed["metadata"]["managedFields"].as_array();
    let mut found = Vec::new();
    for entry in entries.into_iter().flatten() {
        let manager = entry["manager"].as_str().unwrap_or_default();
        let operation = entry["operation"].as_str().unwrap_or_default();
        let on_main = entry["subresource"].as_str().is_none_or(str::is_empty);
        if !counts(manager, operation) || !on_main || !matches!(operation, "Apply" | "Update") {
            continue;
        }
        let mut owned = Vec::new();
        owned_fields(&entry["fieldsV1"], &mut Vec::new(), &mut owned);
        let fields: Vec<String> = wanted
            .iter()
            .filter(|path| owned.iter().any(|o| covers(o, path)))
            .map(|path| path.join("."))
            .collect();
        if !fields.is_empty() {
            found.push(Conflict {
                object: object.clone(),
                manager: manager.to_string(),
                operation: operation.to_string(),
                fields,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desired() -> Value {
        json!({
            "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
            "metadata": { "name": "mc", "labels": { "app.kubernetes.io/managed-by": "kata-operator" } },
            "spec": { "extensions": ["sandboxed-containers"], "config": { "ignition": { "version": "3.2.0" } } }
        })
    }

    fn entry(manager: &str, operation: &str, fields: Value) -> Value {
        json!({ "manager": manager, "operation": operation, "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": fields })
    }

    fn observed(spec: Value, managed: Vec<Value>) -> Value {
        json!({
            "apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfig",
            "metadata": { "name": "mc", "labels": { "app.kubernetes.io/managed-by": "kata-operator" },
                          "managedFields": managed },
            "spec": spec,
        })
    }

    fn ours() -> Value {
        entry(
            names::MANAGER,
            "Apply",
            json!({"f:metadata": {"f:labels": {".": {}, "f:app.kubernetes.io/managed-by": {}}}}),
        )
    }

    #[test]
    fn another_appliers_different_spec_is_a_conflict_naming_it_and_the_fields() {
        let other = entry(
            "gitops",
            "Apply",
            json!({"f:spec": {"f:extensions": {}, "f:config": {"f:ignition": {"f:version": {}}}}}),
        );
        let found = conflicts(
            "MachineConfig",
            &desired(),
            &observed(
                json!({"extensions": [], "config": {"ignition": {"version": "3.2.0"}}}),
                vec![ours(), other],
            ),
        );
        assert_eq!(
            found,
            [Conflict {
                object: "MachineConfig/mc".into(),
                manager: "gitops".into(),
                operation: "Apply".into(),
                fields: vec!["spec.extensions".into()],
            }],
            "the version it shares at our value is no fight"
        );
        let message = found[0].message();
        assert!(message.contains("\"gitops\"") && message.contains("MachineConfig/mc"));
    }

    #[test]
    fn the_same_values_status_writers_and_our_own_managers_are_no_conflict() {
        let spec = json!({"extensions": ["sandboxed-containers"], "config": {"ignition": {"version": "3.2.0"}}});
        let sharing = entry("gitops", "Apply", json!({"f:spec": {"f:extensions": {}}}));
        assert_eq!(
            conflicts(
                "MachineConfig",
                &desired(),
                &observed(spec.clone(), vec![sharing])
            ),
            []
        );
        let mut status = entry(
            "kube-controller-manager",
            "Update",
            json!({"f:spec": {"f:extensions": {}}}),
        );
        status["subresource"] = json!("status");
        let targeting = entry(
            names::MANAGER_TARGETING,
            "Apply",
            json!({"f:spec": {"f:extensions": {}}}),
        );
        let drifted = json!({"extensions": [], "config": {"ignition": {"version": "3.2.0"}}});
        assert_eq!(
            conflicts(
                "MachineConfig",
                &desired(),
                &observed(drifted.clone(), vec![status, targeting])
            ),
            []
        );
        // A field nobody else owns (removed, or never set) is ours to write.
        assert_eq!(
            conflicts(
                "MachineConfig",
                &desired(),
                &observed(json!({}), vec![ours()])
            ),
            []
        );
    }

    #[test]
    fn fields_we_do_not_set_are_no_conflict_but_an_update_of_ours_is() {
        // The MCO's controllers point the pool at its rendered config and
        // add annotations: not ours.
        let controller = entry(
            "machine-config-controller",
            "Update",
            json!({"f:metadata": {"f:annotations": {"f:x": {}}}, "f:spec": {"f:configuration": {"f:name": {}}}}),
        );
        let drifted =
            json!({"extensions": ["other"], "config": {"ignition": {"version": "3.2.0"}}});
        assert_eq!(
            conflicts(
                "MachineConfig",
                &desired(),
                &observed(drifted.clone(), vec![controller])
            ),
            []
        );
        let admin = entry(
            "kubectl-edit",
            "Update",
            json!({"f:spec": {"f:extensions": {}}}),
        );
        let found = conflicts("MachineConfig", &desired(), &observed(drifted, vec![admin]));
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].manager.as_str(), found[0].operation.as_str()),
            ("kubectl-edit", "Update")
        );
    }

    #[test]
    fn owning_a_whole_parent_or_an_element_inside_ours_covers_our_field() {
        let desired = json!({"spec": {"config": {"storage": {"files": [{"path": "/a"}]}}}});
        let drifted = json!({"spec": {"config": {"storage": {"files": [{"path": "/b"}]}}},
        "metadata": {"managedFields": [
            entry("whole", "Apply", json!({"f:spec": {"f:config": {}}})),
            entry("element", "Apply", json!({"f:spec": {"f:config": {"f:storage": {"f:files": {"k:{\"path\":\"/b\"}": {}}}}}})),
            entry("existence", "Apply", json!({"f:spec": {".": {}, "f:other": {}}})),
        ]}});
        let managers: Vec<String> = conflicts("MachineConfig", &desired, &drifted)
            .into_iter()
            .map(|c| c.manager)
            .collect();
        assert_eq!(managers, ["whole", "element"]);
    }

    #[test]
    fn the_predecessors_updates_are_taken_over_but_its_applies_are_not() {
        let drifted = json!({"extensions": [], "config": {"ignition": {"version": "3.2.0"}}});
        let fields = json!({"f:spec": {"f:extensions": {}}});
        let update = entry(names::PREDECESSOR_MANAGER, "Update", fields.clone());
        assert_eq!(
            conflicts(
                "MachineConfig",
                &desired(),
                &observed(drifted.clone(), vec![update])
            ),
            []
        );
        assert!(held_by_predecessor(
            "MachineConfig",
            &desired(),
            &observed(
                drifted.clone(),
                vec![entry(names::PREDECESSOR_MANAGER, "Update", fields.clone())]
            )
        ));
        // Something else that applies under that name is not OSC.
        let apply = entry(names::PREDECESSOR_MANAGER, "Apply", fields);
        assert_eq!(
            conflicts("MachineConfig", &desired(), &observed(drifted, vec![apply])).len(),
            1
        );
    }
}
