//! The API reference (`docs/api-reference.md`), generated from the
//! KataConfig CRD's OpenAPI v3 schema so it cannot say anything the API
//! server does not enforce. `coordinator/tests/generated/api_reference.rs` keeps
//! the checked-in file equal to [`markdown`]; regenerate it with
//! `UPDATE_DOCS=1 cargo test -p kata-coordinator --test generated api_reference`.

use std::fmt::Write as _;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::api::KataConfig;

/// The whole reference, as Markdown.
pub fn markdown() -> String {
    let crd = serde_json::to_value(KataConfig::crd()).unwrap_or(Value::Null);
    render(&crd)
}

/// Renders the reference for any CRD given as JSON (the shape of
/// `apiextensions.k8s.io/v1` `CustomResourceDefinition`).
#[expect(
    clippy::too_many_lines,
    reason = "prints one generated document top to bottom, each line of the page one call"
)]
pub fn render(crd: &Value) -> String {
    let spec = &crd["spec"];
    let group = text(&spec["group"]);
    let kind = text(&spec["names"]["kind"]);
    let plural = text(&spec["names"]["plural"]);
    let scope = text(&spec["scope"]);

    let mut out = String::new();
    line(&mut out, "# API reference");
    line(&mut out, "");
    line(
        &mut out,
        "<!-- Generated from the CRD by coordinator/src/api_reference.rs; do not edit.",
    );
    line(
        &mut out,
        "     Regenerate: UPDATE_DOCS=1 cargo test -p kata-coordinator --test generated api_reference -->",
    );
    line(&mut out, "");
    line(&mut out, &format!("## {kind}"));
    line(&mut out, "");
    line(&mut out, "| | |");
    line(&mut out, "|---|---|");
    line(&mut out, &format!("| CRD | `{plural}.{group}` |"));
    line(&mut out, &format!("| group | `{group}` |"));
    line(&mut out, &format!("| kind | `{kind}` |"));
    line(&mut out, &format!("| plural | `{plural}` |"));
    line(&mut out, &format!("| scope | {scope} |"));
    line(&mut out, "");
    line(
        &mut out,
        "Field paths are relative to the object; `[]` is an element of a list, \
         `{}` a value of a map. Constraints are enforced by the API server at \
         admission (OpenAPI schema and CEL rules).",
    );

    for version in array(&spec["versions"]) {
        let name = text(&version["name"]);
        line(&mut out, "");
        line(&mut out, &format!("### Version `{name}`"));
        line(&mut out, "");
        let served = version["served"].as_bool().unwrap_or(false);
        let storage = version["storage"].as_bool().unwrap_or(false);
        let subresources: Vec<String> = version["subresources"]
            .as_object()
            .map(|s| s.keys().map(|k| format!("`{k}`")).collect())
            .unwrap_or_default();
        line(
            &mut out,
            &format!(
                "`apiVersion: {group}/{name}` — served: {}, storage: {}, subresources: {}.",
                yes_no(served),
                yes_no(storage),
                if subresources.is_empty() {
                    "none".to_owned()
                } else {
                    subresources.join(", ")
                }
            ),
        );

        let schema = &version["schema"]["openAPIV3Schema"];
        let required = required_set(schema);
        for top in ["spec", "status"] {
            let field = &schema["properties"][top];
            if field.is_null() {
                continue;
            }
            line(&mut out, "");
            line(&mut out, &format!("#### `{top}`"));
            line(&mut out, "");
            if let Some(description) = field["description"].as_str() {
                line(&mut out, &one_line(description));
                line(&mut out, "");
            }
            line(&mut out, "| field | type | required | default | details |");
            line(&mut out, "|---|---|---|---|---|");
            let mut rows = Vec::new();
            let is_required = required.iter().any(|r| r == top);
            rows.push(row(top, field, is_required));
            walk(top, field, &mut rows);
            for r in rows {
                line(&mut out, &r);
            }
        }

        let columns = array(&version["additionalPrinterColumns"]);
        if !columns.is_empty() {
            line(&mut out, "");
            line(&mut out, "#### `kubectl get` columns");
            line(&mut out, "");
            line(&mut out, "| column | type | JSONPath | description |");
            line(&mut out, "|---|---|---|---|");
            for column in columns {
                line(
                    &mut out,
                    &format!(
                        "| {} | {} | `{}` | {} |",
                        text(&column["name"]),
                        text(&column["type"]),
                        cell(&text(&column["jsonPath"])),
                        cell(&one_line(column["description"].as_str().unwrap_or("")))
                    ),
                );
            }
        }
    }
    out
}

/// Rows for every field below `schema`, depth first, properties in the
/// schema's (alphabetical) order.
fn walk(path: &str, schema: &Value, rows: &mut Vec<String>) {
    if let Some(properties) = schema["properties"].as_object() {
        let required = required_set(schema);
        for (name, child) in properties {
            let child_path = format!("{path}.{name}");
            rows.push(row(&child_path, child, required.iter().any(|r| r == name)));
            walk(&child_path, child, rows);
        }
    }
    let items = &schema["items"];
    if items.is_object() && items["properties"].is_object() {
        walk(&format!("{path}[]"), items, rows);
    }
    let values = &schema["additionalProperties"];
    if values.is_object() && values["properties"].is_object() {
        walk(&format!("{path}{{}}"), values, rows);
    }
}

fn row(path: &str, schema: &Value, required: bool) -> String {
    let default = match &schema["default"] {
        Value::Null => String::new(),
        value => format!("`{}`", cell(&value.to_string())),
    };
    format!(
        "| `{}` | {} | {} | {} | {} |",
        cell(path),
        type_name(schema),
        if required { "yes" } else { "" },
        default,
        details(schema)
    )
}

fn type_name(schema: &Value) -> String {
    let base = schema["type"].as_str().unwrap_or("any");
    let with_format = |t: &str, s: &Value| match s["format"].as_str() {
        Some(format) => format!("{t} ({format})"),
        None => t.to_owned(),
    };
    match base {
        "array" => {
            let items = &schema["items"];
            let inner = if items.is_object() {
                type_name(items)
            } else {
                "any".to_owned()
            };
            format!("list of {inner}")
        }
        "object" if schema["additionalProperties"].is_object() => {
            format!("map of {}", type_name(&schema["additionalProperties"]))
        }
        other => with_format(other, schema),
    }
}

/// Description, allowed values, limits and CEL rules of one field, for a
/// table cell.
fn details(schema: &Value) -> String {
    let mut parts = Vec::new();
    // A list without a description of its own is described by its items.
    if let Some(description) = schema["description"]
        .as_str()
        .or_else(|| schema["items"]["description"].as_str())
    {
        parts.push(cell(&one_line(description)));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("`{}`", cell(v.as_str().unwrap_or(&v.to_string()))))
            .collect();
        parts.push(format!("One of: {}.", values.join(", ")));
    }
    let limits: Vec<String> = [
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
        ("minimum", "minimum"),
        ("maximum", "maximum"),
    ]
    .iter()
    .filter_map(|(key, label)| {
        schema[*key]
            .as_i64()
            .or_else(|| schema[*key].as_f64().map(|f| f as i64))
            .map(|n| format!("{label} {n}"))
    })
    .collect();
    if !limits.is_empty() {
        parts.push(format!("Limits: {}.", limits.join(", ")));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        parts.push(format!("Pattern: `{}`.", cell(pattern)));
    }
    if schema["items"].is_object() {
        let item = &schema["items"];
        if let Some(max) = item["maxLength"].as_i64() {
            parts.push(format!("Each item: max length {max}."));
        }
    }
    if schema["nullable"].as_bool() == Some(true) {
        parts.push("May be null.".to_owned());
    }
    for rule in array(&schema["x-kubernetes-validations"])
        .iter()
        .chain(array(&schema["items"]["x-kubernetes-validations"]).iter())
    {
        let message = rule["message"].as_str().unwrap_or("");
        parts.push(format!(
            "Rule: `{}` — “{}”.",
            cell(&text(&rule["rule"])),
            cell(message)
        ));
    }
    parts.join(" ")
}

fn required_set(schema: &Value) -> Vec<String> {
    array(&schema["required"])
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn array(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Joins a multi-line description into one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Escapes what would break a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn line(out: &mut String, text: &str) {
    let _ = writeln!(out, "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_lists_maps_enums_and_rules_are_rendered() {
        let crd = json!({
            "spec": {
                "group": "example.com",
                "scope": "Cluster",
                "names": { "kind": "Thing", "plural": "things" },
                "versions": [{
                    "name": "v1", "served": true, "storage": true,
                    "subresources": { "status": {} },
                    "schema": { "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": { "spec": {
                            "type": "object",
                            "required": ["mode"],
                            "properties": {
                                "mode": { "type": "string", "enum": ["a", "b"], "default": "a",
                                          "description": "The\nmode." },
                                "items": { "type": "array", "maxItems": 3, "items": {
                                    "type": "object",
                                    "x-kubernetes-validations": [{ "rule": "a || b", "message": "say a or b" }],
                                    "properties": { "n": { "type": "integer", "format": "int32" } }
                                }},
                                "labels": { "type": "object", "additionalProperties": { "type": "string" } }
                            }
                        }}
                    }}
                }]
            }
        });
        let md = render(&crd);
        assert!(md.contains("| `spec` | object | yes |"), "{md}");
        assert!(
            md.contains("| `spec.mode` | string | yes | `\"a\"` | The mode. One of: `a`, `b`. |"),
            "{md}"
        );
        assert!(md.contains("| `spec.items` | list of object |"), "{md}");
        assert!(md.contains("Limits: max items 3."), "{md}");
        assert!(md.contains("`a \\|\\| b` — “say a or b”"), "{md}");
        assert!(
            md.contains("| `spec.items[].n` | integer (int32) |"),
            "{md}"
        );
        assert!(md.contains("| `spec.labels` | map of string |"), "{md}");
        assert!(md.contains("subresources: `status`"), "{md}");
    }
}
