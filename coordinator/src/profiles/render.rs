//! The host files of runtime profiles, for the operator's MachineConfig:
//! pure functions.
//!
//! Each profile is a CRI-O handler of its own name whose
//! `runtime_config_path` names a complete Kata configuration under
//! `/etc/kata-containers/<profile>/` (`/usr` is read-only on RHCOS). A
//! complete file rather than a Kata drop-in: the shim reads `config.d` next
//! to the base file's resolved path (`decodeDropIns`,
//! `src/runtime/pkg/katautils/config.go`), so handlers sharing the package's
//! base would share its drop-ins too.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use toml_edit::{Array, DocumentMut, value};

use super::{KataRuntimeProfile, KataRuntimeProfileSpec};
use crate::objects::{CrioRuntimeHandler, handlers_toml};

pub use kata_proto::contract::PROFILES_DROP_IN_PATH as HANDLERS_DROP_IN_PATH;

/// Kata's QEMU configuration as the `kata-containers` package of RHCOS
/// ships it, which each profile's file starts from.
const TEMPLATE: &str = include_str!("configuration-qemu.toml");

/// Kata's default VM memory, in MiB (`DEFMEMSZ`, `src/runtime/Makefile`),
/// which the built-in `kata` class's 350Mi overhead was measured against.
const KATA_DEFAULT_MEMORY_MIB: u32 = 2048;

/// One file the MachineConfig writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    pub path: String,
    pub contents: String,
}

pub use kata_proto::contract::runtime_profile_config_path as config_path;

/// The CRI-O handler of a profile: the package's shim and runtime root, and
/// the profile's own configuration.
pub fn handler(profile: &str) -> CrioRuntimeHandler {
    CrioRuntimeHandler {
        name: profile.to_owned(),
        runtime_config_path: config_path(profile),
        ..CrioRuntimeHandler::default()
    }
}

/// The files of `profiles`, in name order: the drop-in declaring their
/// handlers, then each one's Kata configuration. None without a profile, so
/// an install with none writes exactly what it did before profiles.
pub fn files(profiles: &[KataRuntimeProfile]) -> Vec<HostFile> {
    let by_name: BTreeMap<&str, &KataRuntimeProfileSpec> = profiles
        .iter()
        .map(|p| (p.profile_name(), &p.spec))
        .collect();
    if by_name.is_empty() {
        return Vec::new();
    }
    let handlers: Vec<CrioRuntimeHandler> = by_name.keys().map(|name| handler(name)).collect();
    let drop_in = HostFile {
        path: HANDLERS_DROP_IN_PATH.into(),
        contents: handlers_toml(&handlers),
    };
    let configurations = by_name.iter().map(|(name, spec)| HostFile {
        path: config_path(name),
        contents: kata_configuration(spec),
    });
    std::iter::once(drop_in).chain(configurations).collect()
}

/// The profile's Kata configuration: the template with the profile's VM,
/// debug switches and tenant annotations set.
pub fn kata_configuration(spec: &KataRuntimeProfileSpec) -> String {
    // The template is ours and checked by a test: it always parses.
    let mut doc: DocumentMut = TEMPLATE.parse().unwrap_or_default();
    let vm = &spec.vm;
    let qemu = &mut doc["hypervisor"]["qemu"];
    qemu["default_vcpus"] = value(i64::from(vm.vcpus));
    qemu["default_maxvcpus"] = value(i64::from(vm.max_vcpus.unwrap_or(0)));
    qemu["default_memory"] = value(i64::from(vm.memory_mib));
    if let Some(slots) = vm.memory_slots {
        qemu["memory_slots"] = value(i64::from(slots));
    }
    if let Some(params) = &vm.kernel_params {
        qemu["kernel_params"] = value(params.as_str());
    }
    qemu["enable_debug"] = value(spec.debug);
    qemu["enable_annotations"] = value(enable_annotations(spec));
    doc["agent"]["kata"]["enable_debug"] = value(spec.debug);
    doc["runtime"]["enable_debug"] = value(spec.debug);
    doc.to_string()
}

/// Kata's `enable_annotations` for the profile: each entry a regular
/// expression that Kata matches unanchored against the annotation's name
/// (`regexpContains`, `src/runtime/pkg/oci/utils.go`), so anchored here:
/// allowing `default_memory` must not allow every name containing it.
fn enable_annotations(spec: &KataRuntimeProfileSpec) -> Array {
    let mut names: Vec<&str> = spec
        .allowed_annotations
        .iter()
        .filter_map(|a| a.name())
        .collect();
    names.sort_unstable();
    names.dedup();
    names.iter().map(|name| format!("^{name}$")).collect()
}

/// The RuntimeClass overhead of a profile: as given, or 250m and 350Mi plus
/// what the VM's memory exceeds Kata's default (a bigger guest costs the
/// node more; a smaller one is not charged less).
pub fn overhead(spec: &KataRuntimeProfileSpec) -> (Quantity, Quantity) {
    if let Some(given) = &spec.overhead {
        return (given.cpu.clone(), given.memory.clone());
    }
    let extra = spec.vm.memory_mib.saturating_sub(KATA_DEFAULT_MEMORY_MIB);
    let memory_mib = kata_proto::contract::POD_OVERHEAD_MEMORY_MIB + u64::from(extra);
    (
        Quantity(kata_proto::contract::pod_overhead_cpu_quantity()),
        Quantity(format!("{memory_mib}Mi")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{ProfileOverhead, TenantAnnotation, VmShape};

    fn parse(text: &str) -> DocumentMut {
        text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// A value's text, without its decoration.
    fn text(item: Option<&toml_edit::Item>) -> Option<String> {
        Some(item?.as_value()?.clone().decorated("", "").to_string())
    }

    #[test]
    fn no_profile_no_file() {
        assert_eq!(files(&[]), Vec::new());
    }

    #[test]
    fn each_profile_is_a_vm_handler_with_its_own_configuration() {
        let rendered = files(&[
            KataRuntimeProfile::of_size("kata-small", 1, 1024),
            KataRuntimeProfile::of_size("kata-large", 4, 8192),
        ]);
        let paths: Vec<&str> = rendered.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                HANDLERS_DROP_IN_PATH,
                "/etc/kata-containers/kata-large/configuration.toml",
                "/etc/kata-containers/kata-small/configuration.toml",
            ]
        );
        let drop_in = parse(&rendered[0].contents);
        let runtimes = &drop_in["crio"]["runtime"]["runtimes"];
        for name in ["kata-large", "kata-small"] {
            let handler = &runtimes[name];
            assert_eq!(handler["runtime_type"].as_str(), Some("vm"));
            assert_eq!(
                handler["runtime_path"].as_str(),
                Some("/usr/bin/containerd-shim-kata-v2")
            );
            assert_eq!(
                handler["runtime_config_path"].as_str(),
                Some(config_path(name).as_str())
            );
        }
        assert!(
            runtimes.get("kata").is_none(),
            "the package's kata handler is left alone"
        );
        let large = parse(&rendered[1].contents);
        assert_eq!(
            large["hypervisor"]["qemu"]["default_vcpus"].as_integer(),
            Some(4)
        );
        assert_eq!(
            large["hypervisor"]["qemu"]["default_memory"].as_integer(),
            Some(8192)
        );
    }

    #[test]
    fn the_profile_sets_its_values_over_the_template() {
        let spec = KataRuntimeProfileSpec {
            vm: VmShape {
                vcpus: 2,
                max_vcpus: Some(8),
                memory_mib: 4096,
                memory_slots: Some(4),
                kernel_params: Some("quiet agent.log=debug".into()),
            },
            debug: true,
            allowed_annotations: vec![
                TenantAnnotation::DefaultMemory,
                TenantAnnotation::DefaultMaxVcpus,
            ],
            overhead: None,
        };
        let config = parse(&kata_configuration(&spec));
        let qemu = &config["hypervisor"]["qemu"];
        assert_eq!(qemu["default_vcpus"].as_integer(), Some(2));
        assert_eq!(qemu["default_maxvcpus"].as_integer(), Some(8));
        assert_eq!(qemu["default_memory"].as_integer(), Some(4096));
        assert_eq!(qemu["memory_slots"].as_integer(), Some(4));
        assert_eq!(
            qemu["kernel_params"].as_str(),
            Some("quiet agent.log=debug")
        );
        assert_eq!(qemu["enable_debug"].as_bool(), Some(true));
        assert_eq!(config["runtime"]["enable_debug"].as_bool(), Some(true));
        assert_eq!(
            config["agent"]["kata"]["enable_debug"].as_bool(),
            Some(true)
        );
        let allowed: Vec<&str> = qemu["enable_annotations"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(allowed, ["^default_max_vcpus$", "^default_memory$"]);
        // The template's host paths are kept.
        let template = parse(TEMPLATE);
        for key in ["path", "kernel", "initrd", "valid_hypervisor_paths"] {
            let kept = text(template["hypervisor"]["qemu"].get(key));
            assert!(kept.is_some(), "the template sets {key}");
            assert_eq!(text(qemu.get(key)), kept, "{key}");
        }
    }

    #[test]
    fn no_tenant_annotation_by_default() {
        let config = parse(&kata_configuration(&KataRuntimeProfileSpec::default()));
        let allowed = config["hypervisor"]["qemu"]["enable_annotations"].as_array();
        assert_eq!(allowed.map(|a| a.len()), Some(0));
        assert_eq!(
            config["hypervisor"]["qemu"]["enable_debug"].as_bool(),
            Some(false)
        );
    }

    #[test]
    fn the_overhead_grows_with_the_vm_beyond_katas_default() {
        let mut spec = KataRuntimeProfile::of_size("p", 1, 1024).spec;
        assert_eq!(
            overhead(&spec),
            (Quantity("250m".into()), Quantity("350Mi".into()))
        );
        spec.vm.memory_mib = 6144;
        assert_eq!(
            overhead(&spec),
            (Quantity("250m".into()), Quantity("4446Mi".into()))
        );
        spec.overhead = Some(ProfileOverhead {
            cpu: Quantity("1".into()),
            memory: Quantity("1Gi".into()),
        });
        assert_eq!(
            overhead(&spec),
            (Quantity("1".into()), Quantity("1Gi".into()))
        );
    }
}
