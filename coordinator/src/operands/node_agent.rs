//! The node-agent DaemonSet as the coordinator writes it, pure: the shipped
//! manifest (`deploy/base/node-agent.yaml`, compiled in) with what differs
//! per cluster filled in from the coordinator's own settings, and which of
//! its fields an admin's hand edit keeps.
//!
//! Detect, don't fight, split by what a field is for:
//! - **Re-asserted** after a hand edit: what the agent *is* and what it may
//!   touch: the image, command and arguments, environment, the security
//!   context, volumes and mounts, the ServiceAccount and its token, the
//!   probes and ports, the selector and labels. An edit there is either a
//!   mistake or an escalation (a writable host root, another image running
//!   privileged on every worker), and a node vouched for by an agent that
//!   is not ours is a false verdict.
//! - **Left to the admin** once another manager owns them: where and how
//!   the agent runs: `nodeSelector`, `tolerations`, `priorityClassName`,
//!   and the `updateStrategy` of the roll. Our apply then omits them, so
//!   the API server keeps the admin's values instead of the two sides
//!   taking turns (each turn a roll of every agent).

use serde_json::{Value, json};

use crate::plan::ownership;

/// The shipped DaemonSet, the one `kubectl apply -k deploy/base` users read.
const TEMPLATE: &str = include_str!("../../../deploy/base/node-agent.yaml");

/// The DaemonSet's name (the shipped manifest's).
pub const NAME: &str = "kata-node-agent";
/// The agent's container in the pod template.
const CONTAINER: &str = "node-agent";
/// The volume that mounts the host's root.
const HOST_ROOT_VOLUME: &str = "host-root";
/// The flag that names the coordinator's address.
const COORDINATOR_FLAG: &str = "--coordinator=";
/// The coordinator version that last wrote the DaemonSet: a change of the
/// agent made by a new version is a roll, one made by anyone else a hand
/// edit set back.
pub const VERSION_ANNOTATION: &str = "kataconfiguration.openshift.io/operator-version";
/// This coordinator's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What differs per cluster, all from the coordinator's Deployment (its
/// flags and env), so an admin or a test overlay changes one object and
/// the DaemonSet follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    pub namespace: String,
    /// From `RELATED_IMAGE_NODE_AGENT`: OLM rewrites it to the mirror's
    /// digest on a disconnected cluster.
    pub image: String,
    /// Where the agents reach the coordinator's health channel.
    pub coordinator_url: String,
    /// The host directory mounted read-only at /host (`/` on a real node).
    pub host_root: String,
}

/// The coordinator's Deployment, owner of the DaemonSet: OLM deletes the
/// Deployment on uninstall, and the garbage collector then the DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

/// Fields an admin may take over, as paths from the object's root.
pub const ADMIN_FIELDS: &[&[&str]] = &[
    &["spec", "template", "spec", "nodeSelector"],
    &["spec", "template", "spec", "tolerations"],
    &["spec", "template", "spec", "priorityClassName"],
    &["spec", "updateStrategy"],
];

fn template() -> Value {
    // The manifest is compiled in and parsed by a unit test, so this
    // cannot fail at run time.
    serde_yaml::from_str(TEMPLATE).unwrap_or(Value::Null)
}

/// The ownerReferences that have the garbage collector delete an operand
/// in the operator's namespace once `owner` is deleted.
pub fn owner_references(owner: &Owner) -> Value {
    json!([{
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": owner.name,
        "uid": owner.uid,
    }])
}

/// The DaemonSet to apply. `live` is the object as read (with its
/// managedFields), when it exists: the admin fields another manager owns
/// there are left out.
pub fn daemon_set(settings: &AgentSettings, owner: Option<&Owner>, live: Option<&Value>) -> Value {
    let mut ds = template();
    ds["metadata"]["namespace"] = json!(settings.namespace);
    ds["metadata"]["annotations"] = json!({ VERSION_ANNOTATION: VERSION });
    if let Some(owner) = owner {
        ds["metadata"]["ownerReferences"] = owner_references(owner);
    }
    let pod = &mut ds["spec"]["template"]["spec"];
    if let Some(container) = named_mut(&mut pod["containers"], CONTAINER) {
        container["image"] = json!(settings.image);
        if let Some(args) = container["args"].as_array_mut() {
            for arg in args.iter_mut() {
                if arg
                    .as_str()
                    .is_some_and(|a| a.starts_with(COORDINATOR_FLAG))
                {
                    *arg = json!(format!("{COORDINATOR_FLAG}{}", settings.coordinator_url));
                }
            }
        }
    }
    if let Some(volume) = named_mut(&mut pod["volumes"], HOST_ROOT_VOLUME) {
        volume["hostPath"]["path"] = json!(settings.host_root);
    }
    if let Some(live) = live {
        for field in admin_fields_held_by_others(live) {
            remove(&mut ds, &field);
        }
    }
    ds
}

/// The admin fields another field manager owns in `live`.
pub fn admin_fields_held_by_others(live: &Value) -> Vec<Vec<String>> {
    ADMIN_FIELDS
        .iter()
        .map(|path| path.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .filter(|path| {
            !ownership::other_owners("DaemonSet", std::slice::from_ref(path), live).is_empty()
        })
        .collect()
}

fn named_mut<'a>(list: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    list.as_array_mut()?
        .iter_mut()
        .find(|item| item["name"] == name)
}

fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let parent = parents.iter().try_fold(value, |v, key| v.get_mut(key));
    if let Some(Value::Object(map)) = parent {
        map.remove(last);
    }
}

/// Whether `live` already holds every field of `desired`: objects compared
/// key by key, lists element by element (the API server adds defaults
/// inside containers and volumes), anything else by value.
pub fn holds(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want
            .iter()
            .all(|(k, v)| have.get(k).is_some_and(|h| holds(v, h))),
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| holds(w, h))
        }
        _ => desired == live,
    }
}

/// Whether `live` was last written by another version of the coordinator
/// (or by none: the shipped manifest applied by hand).
pub fn written_by_another_version(live: &Value) -> bool {
    live["metadata"]["annotations"][VERSION_ANNOTATION].as_str() != Some(VERSION)
}

/// The fields of `desired` that `live` does not hold, as dotted paths, for
/// the log line and Event that say what was set back.
pub fn drifted(desired: &Value, live: &Value) -> Vec<String> {
    let mut out = Vec::new();
    drifted_at(desired, live, &mut Vec::new(), &mut out);
    out
}

fn drifted_at(desired: &Value, live: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                path.push(key.clone());
                match have.get(key) {
                    Some(h) => drifted_at(value, h, path, out),
                    None => out.push(path.join(".")),
                }
                path.pop();
            }
        }
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => {
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                path.push(item_label(w, i));
                drifted_at(w, h, path, out);
                path.pop();
            }
        }
        _ if desired != live => out.push(path.join(".")),
        _ => {}
    }
}

/// `[name]` for a named list item (containers, volumes, env), else `[i]`.
fn item_label(item: &Value, index: usize) -> String {
    match item["name"].as_str() {
        Some(name) => format!("[{name}]"),
        None => format!("[{index}]"),
    }
}

#[cfg(test)]
mod tests;
