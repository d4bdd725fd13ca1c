//! What a released coordinator leaves in a cluster, kept as a fixture so
//! that every later version is tested taking such a cluster over.
//!
//! A fixture is captured from a cluster that release installed
//! (`make release-fixture`, run at the release's commit): for each object
//! of ours, each server-side apply the operator's field managers made, cut
//! down to the fields that manager owns (read from `managedFields`), and
//! the KataConfig's spec as the admin wrote it. Loading applies the same
//! fields under the same managers, so the next coordinator finds the
//! objects, and their field ownership, as the release left them.

use std::path::{Path, PathBuf};

use kata_coordinator::kind::{self, Kind};
use kata_coordinator::mco::names as mco;
use kata_coordinator::names;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::Error;

/// The manager the fixture writes the admin's KataConfig spec under.
pub const ADMIN: &str = "admin";

/// The kinds a release leaves objects of, in the order they are loaded.
pub const KINDS: [Kind; 6] = [
    mco::MACHINE_CONFIG,
    mco::CONTAINER_RUNTIME_CONFIG,
    mco::POOL,
    kind::NODE,
    kind::RUNTIME_CLASS,
    kind::KATA_CONFIG,
];

/// One apply a release's field manager made.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Write {
    pub kind: String,
    pub name: String,
    pub manager: String,
    /// `status` for the status subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// What the manager applied: the fields it owns.
    pub fields: Value,
}

/// A release's fixture.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ReleaseFixture {
    pub release: String,
    pub writes: Vec<Write>,
}

/// `tests/fixtures/releases/<release>.json`.
pub fn path(release: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/releases")
        .join(format!("{release}.json"))
}

pub fn read(release: &str) -> Result<ReleaseFixture, Error> {
    let file = path(release);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::Setup(format!("{}: {e}", file.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Setup(format!("{}: {e}", file.display())))
}

fn kind_named(name: &str) -> Result<Kind, Error> {
    KINDS
        .into_iter()
        .find(|k| k.kind == name)
        .ok_or_else(|| Error::Setup(format!("a fixture names an unknown kind {name:?}")))
}

fn is_ours(manager: &str) -> bool {
    [
        names::MANAGER,
        names::MANAGER_TARGETING,
        names::MANAGER_HEALTH,
    ]
    .contains(&manager)
}

/// The part of `value` that `fields` (a `fieldsV1` entry) covers. Lists
/// are taken whole: the operator's are atomic or sets it wrote entirely.
fn owned_part(value: &Value, fields: &Value) -> Value {
    let Some(map) = fields.as_object() else {
        return value.clone();
    };
    let element = |k: &String| k.starts_with("k:") || k.starts_with("v:") || k.starts_with("i:");
    if map.is_empty() || map.keys().any(element) {
        return value.clone();
    }
    let mut out = Map::new();
    for (key, child) in map {
        if let Some(field) = key.strip_prefix("f:")
            && let Some(v) = value.get(field)
        {
            out.insert(field.to_owned(), owned_part(v, child));
        }
    }
    Value::Object(out)
}

/// The applies our managers made to `object` (as the API server returns
/// it, with `managedFields`).
pub fn writes_of(kind: Kind, object: &Value) -> Vec<Write> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let entries = object["metadata"]["managedFields"].as_array();
    entries
        .into_iter()
        .flatten()
        .filter(|e| e["operation"] == "Apply")
        .filter(|e| e["manager"].as_str().is_some_and(is_ours))
        .map(|entry| {
            let mut fields = owned_part(object, &entry["fieldsV1"]);
            fields["metadata"]["name"] = json!(name);
            Write {
                kind: kind.kind.to_owned(),
                name: name.clone(),
                manager: entry["manager"].as_str().unwrap_or_default().to_owned(),
                subresource: entry["subresource"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
                fields,
            }
        })
        .collect()
}

/// Every apply our managers made to the objects of the kinds a release
/// leaves, and the KataConfig's spec under [`ADMIN`].
pub async fn capture(client: &Client, release: &str) -> Result<ReleaseFixture, Error> {
    let mut writes = Vec::new();
    for kind in KINDS {
        let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
        let mut objects = api
            .list(&Default::default())
            .await
            .map_err(Error::Kube)?
            .items;
        objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for object in objects {
            let object = serde_json::to_value(&object).map_err(|e| Error::Setup(e.to_string()))?;
            if kind == kind::KATA_CONFIG {
                writes.push(Write {
                    kind: kind.kind.to_owned(),
                    name: object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    manager: ADMIN.to_owned(),
                    subresource: None,
                    fields: json!({ "metadata": { "name": object["metadata"]["name"] },
                                    "spec": object["spec"] }),
                });
            }
            writes.extend(writes_of(kind, &object));
        }
    }
    Ok(ReleaseFixture {
        release: release.to_owned(),
        writes,
    })
}

/// Applies `writes` as their managers made them.
pub async fn apply(client: &Client, writes: &[&Write]) -> Result<(), Error> {
    for write in writes {
        let kind = kind_named(&write.kind)?;
        let mut body = write.fields.clone();
        body["apiVersion"] = json!(kind.api_version());
        body["kind"] = json!(kind.kind);
        let api = Api::<DynamicObject>::all_with(client.clone(), &kind.api_resource());
        let params = PatchParams::apply(&write.manager).force();
        match write.subresource.as_deref() {
            Some("status") => {
                api.patch_status(&write.name, &params, &Patch::Apply(&body))
                    .await
            }
            _ => api.patch(&write.name, &params, &Patch::Apply(&body)).await,
        }
        .map_err(Error::Kube)?;
    }
    Ok(())
}

impl ReleaseFixture {
    /// The writes to objects of `kind`, in the fixture's order.
    pub fn of(&self, kind: Kind) -> Vec<&Write> {
        self.writes.iter().filter(|w| w.kind == kind.kind).collect()
    }

    /// The node names the fixture labels.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.of(kind::NODE).iter().map(|w| w.name.clone()).collect();
        nodes.dedup();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_managers_write_is_cut_down_to_what_it_owns() {
        let node = json!({
            "metadata": {
                "name": "w0",
                "labels": { "a": "1", names::KATA_POOL_ROLE_LABEL: "" },
                "managedFields": [
                    { "manager": names::MANAGER_TARGETING, "operation": "Apply",
                      "fieldsV1": { "f:metadata": { "f:labels": { format!("f:{}", names::KATA_POOL_ROLE_LABEL): {} } } } },
                    { "manager": "kubelet", "operation": "Update",
                      "fieldsV1": { "f:metadata": { "f:labels": { "f:a": {} } } } },
                ],
            },
        });
        let writes = writes_of(kind::NODE, &node);
        assert_eq!(
            writes,
            [Write {
                kind: "Node".into(),
                name: "w0".into(),
                manager: names::MANAGER_TARGETING.into(),
                subresource: None,
                fields: json!({ "metadata": { "name": "w0",
                    "labels": { names::KATA_POOL_ROLE_LABEL: "" } } }),
            }]
        );
    }
}
