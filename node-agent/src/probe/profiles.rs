//! Which runtime profiles this node serves as the host configuration
//! renders them. For each profile the coordinator names: the running CRI-O
//! serves its handler as a `vm` handler whose `runtime_config_path` is the
//! contract's path (read as the cri-handler probe reads the `kata` handler:
//! CRI-O's loaded configuration, or its handler list before 1.33), and the
//! file at that path is the one rendered (its SHA-256), with no `config.d`
//! beside it: Kata merges the files of `config.d` into the one it reads
//! (`decodeDropIns`, kata-containers `src/runtime/pkg/katautils/config.go`),
//! so anything there would change the profile's VM.
//!
//! Only asked of a node that is runtime-ready; one CRI Status call for all
//! the profiles. A profile that is not served is simply not reported ready
//! (its node loses the profile's label): the probe outcomes stay the
//! built-in handler's.

use super::host::HostRoot;
use super::{Budgets, ProbeName, blocking_within, cri};
use crate::config::RuntimeProfile;
use kata_proto::contract;
use kata_proto::cri::v1::StatusResponse;

/// The largest profile configuration read: the rendered ones are a few KiB.
const CONFIG_LIMIT: u64 = 256 * 1024;

/// The names of `expected` this node serves as rendered, in their order.
pub async fn ready(root: &HostRoot, expected: &[RuntimeProfile], budgets: &Budgets) -> Vec<String> {
    if expected.is_empty() {
        return Vec::new();
    }
    let Some(reply) = cri::status_of(root, budgets).await else {
        return Vec::new();
    };
    let served: Vec<RuntimeProfile> = expected
        .iter()
        .filter(|profile| served_as_rendered(&reply, &profile.name))
        .cloned()
        .collect();
    let files_root = root.clone();
    blocking_within(ProbeName::CriHandler, budgets.filesystem, move || {
        Ok(served
            .into_iter()
            .filter(|profile| file_as_rendered(&files_root, profile))
            .map(|profile| profile.name)
            .collect())
    })
    .await
    .unwrap_or_default()
}

/// Whether CRI-O's Status `reply` shows `name` served as a `vm` handler
/// with the contract's configuration path. Pure.
pub fn served_as_rendered(reply: &StatusResponse, name: &str) -> bool {
    match cri::loaded_config(&reply.info, name) {
        Ok(cri::LoadedConfig::Reported {
            handler: Some(loaded),
            ..
        }) => {
            loaded.runtime_type == "vm"
                && loaded.runtime_config_path == contract::runtime_profile_config_path(name)
        }
        // Before 1.33 CRI-O does not show its loaded handlers: served is
        // what its list says, and the file is checked all the same.
        Ok(cri::LoadedConfig::NotReported) => reply.runtime_handlers.iter().any(|h| h.name == name),
        Ok(cri::LoadedConfig::Reported { handler: None, .. }) | Err(_) => false,
    }
}

/// Whether the profile's configuration on the host is the rendered one,
/// with nothing in a `config.d` beside it.
fn file_as_rendered(root: &HostRoot, profile: &RuntimeProfile) -> bool {
    let path = contract::runtime_profile_config_path(&profile.name);
    let Ok(text) = root.read_file(&path, CONFIG_LIMIT) else {
        return false;
    };
    let drop_ins = path.replace("configuration.toml", "config.d");
    let no_drop_ins = root
        .read_dir_sorted(&drop_ins)
        .map_or(true, |entries| entries.is_empty());
    sha256_hex(&text) == profile.config_sha256 && no_drop_ins
}

/// SHA-256 of `bytes`, lower-case hex, as the coordinator sends it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kata_proto::cri::v1::RuntimeHandler;
    use serde_json::json;

    fn reply(runtimes: serde_json::Value, listed: &[&str]) -> StatusResponse {
        let mut reply = StatusResponse::default();
        if !runtimes.is_null() {
            let config = json!({ "crio": { "Runtimes": runtimes } });
            reply.info.insert("config".into(), config.to_string());
        }
        reply.runtime_handlers = listed
            .iter()
            .map(|name| RuntimeHandler {
                name: (*name).to_owned(),
                ..Default::default()
            })
            .collect();
        reply
    }

    #[test]
    fn a_profile_is_served_as_a_vm_handler_with_its_own_configuration() {
        let path = contract::runtime_profile_config_path("small");
        let handler = |type_: &str, path: &str| json!({ "RuntimeType": type_, "RuntimePath": "/usr/bin/containerd-shim-kata-v2", "RuntimeConfigPath": path });
        let loaded = reply(
            json!({
                "small": handler("vm", &path),
                "oci": handler("oci", &contract::runtime_profile_config_path("oci")),
                "elsewhere": handler("vm", "/tmp/configuration.toml"),
            }),
            &[],
        );
        assert!(served_as_rendered(&loaded, "small"));
        assert!(!served_as_rendered(&loaded, "oci"));
        assert!(!served_as_rendered(&loaded, "elsewhere"));
        assert!(!served_as_rendered(&loaded, "absent"));
        // CRI-O before 1.33: the list says it.
        let listed = reply(serde_json::Value::Null, &["small"]);
        assert!(served_as_rendered(&listed, "small"));
        assert!(!served_as_rendered(&listed, "large"));
    }

    #[test]
    fn the_file_must_be_the_rendered_one_with_no_drop_ins() {
        let host = tempfile::tempdir().unwrap();
        let root = HostRoot::new(host.path());
        let text = "[hypervisor.qemu]\ndefault_memory = 1024\n";
        let profile = RuntimeProfile {
            name: "small".into(),
            config_sha256: sha256_hex(text.as_bytes()),
        };
        let dir = host.path().join("etc/kata-containers/small");
        assert!(!file_as_rendered(&root, &profile), "no file");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("configuration.toml"), "[hypervisor.qemu]\n").unwrap();
        assert!(!file_as_rendered(&root, &profile), "another file");
        std::fs::write(dir.join("configuration.toml"), text).unwrap();
        assert!(file_as_rendered(&root, &profile));
        std::fs::create_dir_all(dir.join("config.d")).unwrap();
        assert!(file_as_rendered(&root, &profile), "an empty config.d");
        std::fs::write(dir.join("config.d/10-more"), "[hypervisor.qemu]\n").unwrap();
        assert!(!file_as_rendered(&root, &profile), "a drop-in beside it");
    }
}
