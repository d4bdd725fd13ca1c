//! Rendering: the MachineConfigs a pool selects, merged into one rendered
//! config named after a hash of its content, as the MCO's render controller
//! does. Pure.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use serde_json::{Value, json};

use super::model::{MachineConfig, MachineConfigSpec, Pool, ROLE_LABEL, WORKER_POOL};

/// Ignition version of the rendered config when every input is older.
pub const IGNITION_VERSION: &str = "3.4.0";
/// Ignition's default mode for a file that names none (0644).
const DEFAULT_FILE_MODE: u32 = 0o644;

/// The Ignition spec versions the MCO's parser accepts (`config/v3_*` of
/// github.com/coreos/ignition/v2).
pub const IGNITION_VERSIONS: [&str; 6] = ["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0"];

/// Whether `labels` satisfy `selector`, with the MCO's reading of its
/// selectors (`pkg/helpers/helpers.go`): an absent, an **empty** (`{}`) or a
/// malformed selector selects nothing — pools' nodeSelectors and
/// machineConfigSelectors and ContainerRuntimeConfig pool selectors alike.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .filter(|s| {
            s.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())
        })
        .and_then(|selector| Selector::try_from(selector.clone()).ok())
        .is_some_and(|selector| selector.matches(labels))
}

/// The OS the simulated cluster runs: it decides the extension names the
/// render accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClusterOs {
    /// Red Hat Enterprise Linux CoreOS (OpenShift).
    #[default]
    Rhcos,
    /// Fedora CoreOS / CentOS Stream CoreOS (OKD).
    Fcos,
}

impl ClusterOs {
    /// What a Node's `status.nodeInfo.osImage` says on this OS.
    pub fn os_image(self) -> &'static str {
        match self {
            ClusterOs::Rhcos => "Red Hat Enterprise Linux CoreOS 417.94.202408270355-0 (Plow)",
            ClusterOs::Fcos => "Fedora CoreOS 39.20240210.3.0",
        }
    }
}

/// A pool's rendered config: what the pool's nodes must run.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// `rendered-<pool>-<hash of spec>`.
    pub name: String,
    pub spec: MachineConfigSpec,
    /// The MachineConfigs merged into it, in merge order.
    pub sources: Vec<String>,
}

/// A file from an Ignition config, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnitionFile {
    pub path: String,
    pub mode: u32,
    pub contents: Vec<u8>,
}

/// Merges the MachineConfigs `pool` selects in the MCO's order
/// (`pkg/controller/common/helpers.go`, MergeMachineConfigs): every
/// `role=worker` config first, then the others, each group by name — so a
/// pool's own config overrides a worker one whatever the names. A later
/// config's file (by path) or unit (by name) replaces an earlier one,
/// extensions and kernel arguments are appended in that order, duplicates
/// kept. Rendered configs of any
/// pool are never inputs. Each input is validated as Ignition first. Errors
/// are what the MCO reports as `RenderDegraded`.
pub fn render_pool(
    pool: &Pool,
    configs: &[MachineConfig],
    os: ClusterOs,
) -> Result<Rendered, String> {
    let mut selected: Vec<&MachineConfig> = configs
        .iter()
        .filter(|mc| mc.owner_uid("MachineConfigPool").is_none())
        .filter(|mc| selects(pool.spec.machine_config_selector.as_ref(), mc.labels()))
        .collect();
    if selected.is_empty() {
        return Err(format!(
            "no MachineConfigs found matching selector of pool {}",
            pool.name()
        ));
    }
    let is_worker =
        |mc: &MachineConfig| mc.labels().get(ROLE_LABEL).map(String::as_str) == Some(WORKER_POOL);
    selected.sort_by(|a, b| (!is_worker(a), a.name()).cmp(&(!is_worker(b), b.name())));

    let mut version = IGNITION_VERSION.to_owned();
    let mut files = BTreeMap::new();
    let mut units = BTreeMap::new();
    let mut extensions: Vec<String> = Vec::new();
    let mut kernel_arguments: Vec<String> = Vec::new();
    for mc in &selected {
        let config = &mc.spec.config;
        validate_ignition(config).map_err(|e| format!("MachineConfig {}: {e}", mc.name()))?;
        let mc_version =
            ignition_version(config).map_err(|e| format!("MachineConfig {}: {e}", mc.name()))?;
        if version_key(&mc_version) > version_key(&version) {
            version = mc_version;
        }
        for file in entries(config, "storage", "files") {
            // Validated now so that a bad file degrades the render, not the node.
            decode_file(file).map_err(|e| format!("MachineConfig {}: {e}", mc.name()))?;
            files.insert(
                file["path"].as_str().unwrap_or_default().to_owned(),
                file.clone(),
            );
        }
        for unit in entries(config, "systemd", "units") {
            let name = unit["name"].as_str().ok_or_else(|| {
                format!("MachineConfig {}: a systemd unit has no name", mc.name())
            })?;
            units.insert(name.to_owned(), unit.clone());
        }
        // Appended, duplicates kept: two configs that carry one extension
        // render differently from one that does.
        extensions.extend(mc.spec.extensions.iter().cloned());
        kernel_arguments.extend(mc.spec.kernel_arguments.iter().cloned());
    }
    packages_for(os, &extensions)?;

    let mut config = json!({ "ignition": { "version": version } });
    if !files.is_empty() {
        config["storage"] = json!({ "files": files.into_values().collect::<Vec<_>>() });
    }
    if !units.is_empty() {
        config["systemd"] = json!({ "units": units.into_values().collect::<Vec<_>>() });
    }
    let spec = MachineConfigSpec {
        config,
        extensions,
        kernel_arguments,
    };
    // The name hashes the merged spec and nothing else, as the render
    // controller's does (`pkg/controller/render/hash.go`,
    // getMachineConfigHashedName: a salted MD5 of the spec's YAML): the
    // names of the MachineConfigs merged into it do not count, so renaming
    // one, or another with the same content replacing it, renders the same
    // config and reboots no node. serde_json's maps are sorted, so equal
    // content serializes identically.
    let canonical =
        serde_json::to_vec(&spec).map_err(|e| format!("cannot serialize rendered config: {e}"))?;
    Ok(Rendered {
        name: format!("rendered-{}-{}", pool.name(), stable_hash(&canonical)),
        spec,
        sources: selected.iter().map(|mc| mc.name().to_owned()).collect(),
    })
}

/// The decoded files of a (rendered) config.
pub fn files_of(spec: &MachineConfigSpec) -> Result<Vec<IgnitionFile>, String> {
    entries(&spec.config, "storage", "files")
        .map(decode_file)
        .collect()
}

/// The RPM packages the MCO layers for each extension the OS supports
/// (`pkg/controller/common/helpers.go`, SupportedExtensions, for RHCOS; on
/// FCOS / SCOS the Kata extension is named after its package,
/// `kata-containers`); an unsupported extension fails the render with
/// "invalid extensions found", as on a real cluster.
pub fn packages_for(os: ClusterOs, extensions: &[String]) -> Result<Vec<String>, String> {
    let mut packages = Vec::new();
    let mut invalid = Vec::new();
    for extension in extensions {
        let names: &[&str] = match (os, extension.as_str()) {
            (ClusterOs::Rhcos, "sandboxed-containers") | (ClusterOs::Fcos, "kata-containers") => {
                &["kata-containers"]
            }
            (_, "usbguard") => &["usbguard"],
            (_, "kerberos") => &["krb5-workstation", "libkadm5"],
            (_, "kernel-devel") => &["kernel-devel", "kernel-headers"],
            (_, "ipsec") => &[
                "NetworkManager-libreswan",
                "libreswan",
                "openvswitch3.5-ipsec",
            ],
            (_, "two-node-ha") => &["pacemaker", "pcs", "fence-agents-all"],
            (_, "sysstat") => &["sysstat"],
            _ => {
                invalid.push(extension.as_str());
                continue;
            }
        };
        union_into(
            &mut packages,
            &names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        );
    }
    if invalid.is_empty() {
        Ok(packages)
    } else {
        Err(format!("invalid extensions found: {invalid:?}"))
    }
}

/// FNV-1a, 64 bits, in hex: stable across runs and Rust releases (std's
/// hasher promises neither), and plenty for naming rendered configs.
pub fn stable_hash(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Decodes an Ignition `contents.source` data URL: `data:,<percent-encoded>`
/// or `data:<mediatype>;base64,<base64>`.
pub fn decode_data_url(source: &str) -> Result<Vec<u8>, String> {
    let rest = source
        .strip_prefix("data:")
        .ok_or_else(|| format!("only data URLs are supported, got {source:?}"))?;
    let (header, data) = rest
        .split_once(',')
        .ok_or_else(|| format!("data URL without a comma: {source:?}"))?;
    if header.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("bad base64 in data URL: {e}"))
    } else {
        percent_decode(data)
    }
}

fn percent_decode(data: &str) -> Result<Vec<u8>, String> {
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn decode_file(file: &Value) -> Result<IgnitionFile, String> {
    let path = file["path"].as_str().ok_or("a storage file has no path")?;
    if !path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(format!(
            "file path {path:?} must be absolute, without \"..\""
        ));
    }
    let mode = match &file["mode"] {
        Value::Null => DEFAULT_FILE_MODE,
        mode => mode
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| format!("{path}: bad mode {mode}"))?,
    };
    let contents = match file["contents"]["source"].as_str() {
        Some(source) => decode_data_url(source).map_err(|e| format!("{path}: {e}"))?,
        None => Vec::new(),
    };
    Ok(IgnitionFile {
        path: path.to_owned(),
        mode,
        contents,
    })
}

fn ignition_version(config: &Value) -> Result<String, String> {
    let version = config["ignition"]["version"]
        .as_str()
        .ok_or("spec.config has no ignition.version")?;
    if IGNITION_VERSIONS.contains(&version) {
        Ok(version.to_owned())
    } else {
        Err(format!(
            "parsing Ignition config failed: unknown version {version}"
        ))
    }
}

/// What the Ignition validator (github.com/coreos/ignition/v2, which the
/// MCO's render controller runs on every input) refuses among what
/// MachineConfigs write: an unknown spec version, a relative path, two files
/// with one path, `overwrite: true` without a `contents.source`, a mode
/// outside 0..=07777.
pub fn validate_ignition(config: &Value) -> Result<(), String> {
    ignition_version(config)?;
    let mut paths = std::collections::BTreeSet::new();
    for file in entries(config, "storage", "files") {
        let path = file["path"].as_str().ok_or("a storage file has no path")?;
        if !path.starts_with('/') {
            return Err(format!("storage.files: path {path:?} must be absolute"));
        }
        if !paths.insert(path) {
            return Err(format!("storage.files: duplicate entry for path {path:?}"));
        }
        if file["overwrite"] == Value::Bool(true) && file["contents"]["source"].is_null() {
            return Err(format!(
                "storage.files {path:?}: overwrite must be false if source is unspecified"
            ));
        }
        if let Some(mode) = file["mode"].as_i64()
            && !(0..=0o7777).contains(&mode)
        {
            return Err(format!(
                "storage.files {path:?}: illegal file mode {mode:o}"
            ));
        }
    }
    Ok(())
}

fn version_key(version: &str) -> Vec<u64> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

fn entries<'a>(config: &'a Value, section: &str, list: &str) -> impl Iterator<Item = &'a Value> {
    config[section][list].as_array().into_iter().flatten()
}

fn union_into(into: &mut Vec<String>, more: &[String]) {
    for item in more {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::mco_simulator::fixtures::{machine_config, pool};

    #[test]
    fn data_urls_decode_in_both_encodings() {
        assert_eq!(decode_data_url("data:,a%20b%0A").unwrap(), b"a b\n");
        assert_eq!(
            decode_data_url("data:text/plain;charset=utf-8;base64,aGk=").unwrap(),
            b"hi"
        );
        assert!(decode_data_url("https://example.com/x").is_err());
        assert!(decode_data_url("data:,%zz").is_err());
        assert!(decode_data_url("data:,%4").is_err());
    }

    #[test]
    fn selector_semantics_follow_the_mco() {
        let labels = BTreeMap::from([("role".to_owned(), "kata-oc".to_owned())]);
        assert!(
            !selects(None, &labels),
            "an absent selector selects nothing"
        );
        assert!(
            !selects(Some(&LabelSelector::default()), &labels),
            "an empty selector selects nothing, as in the MCO"
        );
        let in_roles: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{ "key": "role", "operator": "In", "values": ["kata-oc", "worker"] }]
        }))
        .unwrap();
        assert!(selects(Some(&in_roles), &labels));
        let not_in: LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{ "key": "role", "operator": "NotIn", "values": ["kata-oc"] }, { "key": "x", "operator": "DoesNotExist" }]
        }))
        .unwrap();
        assert!(!selects(Some(&not_in), &labels));
        let bad: LabelSelector = serde_json::from_value(
            json!({ "matchExpressions": [{ "key": "role", "operator": "Near" }] }),
        )
        .unwrap();
        assert!(!selects(Some(&bad), &labels));
    }

    #[test]
    fn later_config_wins_per_path_and_extensions_are_appended() {
        let pool = pool(
            "kata-oc",
            json!({ "matchExpressions": [{ "key": ROLE, "operator": "In", "values": ["kata-oc", "worker"] }] }),
            json!({}),
        );
        let configs = vec![
            machine_config(
                "50-kata",
                "kata-oc",
                &[("/etc/a", "data:,new")],
                &["sandboxed-containers"],
            ),
            machine_config(
                "00-worker",
                "worker",
                &[("/etc/a", "data:,old"), ("/etc/b", "data:,b")],
                &["usbguard"],
            ),
            machine_config("00-master", "master", &[("/etc/m", "data:,m")], &[]),
        ];
        let rendered = render_pool(&pool, &configs, ClusterOs::Rhcos).unwrap();
        assert_eq!(rendered.sources, ["00-worker", "50-kata"]);
        assert_eq!(
            rendered.spec.extensions,
            ["usbguard", "sandboxed-containers"]
        );
        let files = files_of(&rendered.spec).unwrap();
        let by_path: Vec<(&str, &[u8])> = files
            .iter()
            .map(|f| (f.path.as_str(), f.contents.as_slice()))
            .collect();
        assert_eq!(
            by_path,
            [("/etc/a", b"new".as_slice()), ("/etc/b", b"b".as_slice())]
        );
        assert!(rendered.name.starts_with("rendered-kata-oc-"));

        let reordered: Vec<_> = configs.iter().rev().cloned().collect();
        assert_eq!(
            render_pool(&pool, &reordered, ClusterOs::Rhcos)
                .unwrap()
                .name,
            rendered.name,
            "the name depends on content only"
        );
        let changed = vec![
            configs[1].clone(),
            machine_config("50-kata", "kata-oc", &[("/etc/a", "data:,newer")], &[]),
        ];
        assert_ne!(
            render_pool(&pool, &changed, ClusterOs::Rhcos).unwrap().name,
            rendered.name
        );
    }

    #[test]
    fn names_are_not_hashed_but_a_second_copy_of_an_extension_is() {
        let pool = pool(
            "master",
            json!({ "matchLabels": { ROLE: "master" } }),
            json!({}),
        );
        let kata = |name: &str| machine_config(name, "master", &[], &["sandboxed-containers"]);
        let base = machine_config("00-master", "master", &[], &[]);
        let one = render_pool(&pool, &[base.clone(), kata("50-a")], ClusterOs::Rhcos).unwrap();
        let renamed = render_pool(&pool, &[base.clone(), kata("50-b")], ClusterOs::Rhcos).unwrap();
        assert_eq!(one.name, renamed.name, "a rename renders the same config");
        let both =
            render_pool(&pool, &[base, kata("50-a"), kata("50-b")], ClusterOs::Rhcos).unwrap();
        assert_eq!(
            both.spec.extensions,
            ["sandboxed-containers", "sandboxed-containers"]
        );
        assert_ne!(both.name, one.name, "two copies are another config");
    }

    #[test]
    fn rendered_configs_are_never_inputs() {
        let pool = pool(
            "worker",
            json!({ "matchLabels": { ROLE: "worker" } }),
            json!({}),
        );
        let mut rendered = machine_config("rendered-worker-1", "worker", &[], &[]);
        rendered.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "MachineConfigPool".into(),
                ..Default::default()
            },
        ]);
        let base = machine_config("00-worker", "worker", &[], &[]);
        assert_eq!(
            render_pool(&pool, &[rendered, base], ClusterOs::Rhcos)
                .unwrap()
                .sources,
            ["00-worker"]
        );
    }

    #[test]
    fn bad_inputs_degrade_the_render() {
        let pool = pool(
            "worker",
            json!({ "matchLabels": { ROLE: "worker" } }),
            json!({}),
        );
        assert!(
            render_pool(&pool, &[], ClusterOs::Rhcos)
                .unwrap_err()
                .contains("no MachineConfigs")
        );
        let unknown = machine_config("10-x", "worker", &[], &["not-an-extension"]);
        assert!(
            render_pool(&pool, &[unknown], ClusterOs::Rhcos)
                .unwrap_err()
                .contains("not-an-extension")
        );
        let relative = machine_config("10-x", "worker", &[("etc/x", "data:,x")], &[]);
        assert!(
            render_pool(&pool, &[relative], ClusterOs::Rhcos)
                .unwrap_err()
                .contains("absolute")
        );
        let mut old = machine_config("10-x", "worker", &[], &[]);
        old.spec.config = json!({ "ignition": { "version": "2.2.0" } });
        assert!(
            render_pool(&pool, &[old], ClusterOs::Rhcos)
                .unwrap_err()
                .contains("2.2.0")
        );
        let fcos_name = machine_config("10-x", "worker", &[], &["kata-containers"]);
        assert!(
            render_pool(&pool, std::slice::from_ref(&fcos_name), ClusterOs::Rhcos)
                .unwrap_err()
                .contains("invalid extensions found")
        );
        assert!(render_pool(&pool, &[fcos_name], ClusterOs::Fcos).is_ok());
    }

    #[test]
    fn worker_configs_merge_first_whatever_their_names() {
        let pool = pool(
            "kata-oc",
            json!({ "matchExpressions": [{ "key": ROLE, "operator": "In", "values": ["kata-oc", "worker"] }] }),
            json!({}),
        );
        let configs = [
            machine_config("10-kata", "kata-oc", &[("/etc/a", "data:,pool")], &[]),
            machine_config("99-worker", "worker", &[("/etc/a", "data:,worker")], &[]),
        ];
        let rendered = render_pool(&pool, &configs, ClusterOs::Rhcos).unwrap();
        assert_eq!(rendered.sources, ["99-worker", "10-kata"]);
        assert_eq!(files_of(&rendered.spec).unwrap()[0].contents, b"pool");
    }

    #[test]
    fn what_ignition_refuses_the_render_refuses() {
        let file = |extra: serde_json::Value| {
            let mut f = json!({ "path": "/etc/x", "contents": { "source": "data:,x" } });
            for (k, v) in extra.as_object().unwrap() {
                f[k] = v.clone();
            }
            json!({ "ignition": { "version": "3.2.0" }, "storage": { "files": [f] } })
        };
        assert!(validate_ignition(&file(json!({}))).is_ok());
        let refused = [
            json!({ "ignition": { "version": "3.9.0" } }),
            file(json!({ "path": "etc/x" })),
            file(json!({ "overwrite": true, "contents": {} })),
            file(json!({ "mode": 0o10000 })),
            json!({ "ignition": { "version": "3.2.0" }, "storage": { "files": [
                { "path": "/etc/x" }, { "path": "/etc/x" } ] } }),
        ];
        for config in refused {
            assert!(validate_ignition(&config).is_err(), "{config}");
        }
    }

    const ROLE: &str = super::super::model::ROLE_LABEL;
}
