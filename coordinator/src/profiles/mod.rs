//! Runtime profiles: more Kata RuntimeClasses than `kata`, each with its
//! own VM shape (docs/runtime-profiles.md).
//!
//! The `KataRuntimeProfile` custom resource,
//! `kataconfiguration.openshift.io/v1alpha1`, cluster-scoped, is a second
//! CRD rather than new KataConfig fields: the KataConfig stays as the
//! OpenShift sandboxed containers operator's clients know it (its Go types
//! would drop new fields on its next update), and an install with no
//! profile has nothing new to read. What the schema can judge is refused at
//! admission; [`render`] turns valid profiles into the files of the
//! operator's MachineConfig.

pub mod render;

use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::node::v1::RuntimeClass;

use kata_proto::health::v1::RuntimeProfile as WireProfile;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The longest profile name: its readiness label,
/// `katacontainers.io/kata-runtime.<name>`, has a name part of at most 63
/// characters, 13 of them `kata-runtime.`.
pub const NAME_MAX: usize = kata_proto::contract::RUNTIME_PROFILE_NAME_MAX;

/// The smallest VM Kata starts (`MinHypervisorMemory`,
/// kata-containers `src/runtime/virtcontainers/hypervisor.go`).
pub const MEMORY_MIB_MIN: u32 = 256;

/// A Kata RuntimeClass of its own: the VM's size, debug, and the per-pod
/// annotations tenants may set. Its name is the RuntimeClass's and the CRI-O
/// handler's.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kataconfiguration.openshift.io",
    version = "v1alpha1",
    kind = "KataRuntimeProfile",
    plural = "kataruntimeprofiles",
    singular = "kataruntimeprofile",
    doc = "KataRuntimeProfile offers a Kata RuntimeClass of its own name, whose pods run in VMs of the size it gives, on the nodes the KataConfig installs Kata on.",
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 50").message("a profile's name is its RuntimeClass's and CRI-O handler's: lower-case letters, digits and '-', at most 50 characters, no dots"),
    validation = Rule::new("!(self.metadata.name in ['kata', 'kata-remote', 'runc', 'crun'])").message("this name is taken: 'kata' is the built-in profile, 'kata-remote' the peer-pods class, 'runc' and 'crun' CRI-O's own handlers"),
    printcolumn = r#"{"name":"vCPUs","type":"integer","jsonPath":".spec.vm.vcpus"}"#,
    printcolumn = r#"{"name":"MemoryMiB","type":"integer","jsonPath":".spec.vm.memoryMiB"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct KataRuntimeProfileSpec {
    /// The VM each pod of this class runs in.
    pub vm: VmShape,

    /// The RuntimeClass's pod overhead. Absent: 250m CPU, and 350Mi plus
    /// whatever `vm.memoryMiB` exceeds Kata's default of 2048 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overhead: Option<ProfileOverhead>,

    /// Kata's debug output (the runtime's and the hypervisor's logs).
    #[serde(default)]
    pub debug: bool,

    /// The per-pod hypervisor annotations
    /// (`io.katacontainers.config.hypervisor.<name>`) tenants may set on
    /// pods of this class. None by default: a pod with one not listed fails
    /// to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b == a))").message("allowedAnnotations lists an annotation twice"))]
    pub allowed_annotations: Vec<TenantAnnotation>,
}

/// The VM of a profile: Kata's `[hypervisor.qemu]` settings an admin sets
/// (`src/runtime/config/configuration-qemu.toml.in`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxVcpus) || self.maxVcpus >= self.vcpus").message("vm.maxVcpus must be at least vm.vcpus"))]
pub struct VmShape {
    /// vCPUs the VM boots with (`default_vcpus`); a container's CPU limit
    /// adds to them.
    #[schemars(range(min = 1, max = 240))]
    pub vcpus: u32,

    /// The most vCPUs the VM may grow to (`default_maxvcpus`). Absent: the
    /// host's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 240))]
    pub max_vcpus: Option<u32>,

    /// Memory the VM boots with, in MiB (`default_memory`); a container's
    /// memory limit adds to it.
    #[serde(rename = "memoryMiB")]
    #[schemars(range(min = 256, max = 1048576))]
    pub memory_mib: u32,

    /// Memory hot-plug slots (`memory_slots`). Absent: Kata's 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub memory_slots: Option<u32>,

    /// Extra guest kernel parameters (`kernel_params`), space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 1024),
        regex(pattern = r"^[A-Za-z0-9_.,:=/+-]+( [A-Za-z0-9_.,:=/+-]+)*$")
    )]
    pub kernel_params: Option<String>,
}

/// A RuntimeClass's pod overhead.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("string(self.cpu).matches('^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$') && string(self.memory).matches('^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$')").message("overhead.cpu and overhead.memory must be plain quantities such as 500m, 2, 512Mi or 1Gi"))]
pub struct ProfileOverhead {
    /// CPU, as a quantity (`250m`).
    pub cpu: k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    /// Memory, as a quantity (`350Mi`).
    pub memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity,
}

/// The hypervisor annotations a profile may let tenants set: sizes and
/// switches of the VM. Annotations that name a host path (the kernel, the
/// image, the hypervisor binary, a hook directory) are not offered: with
/// one, a tenant chooses what runs on the host.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum TenantAnnotation {
    DefaultVcpus,
    DefaultMaxVcpus,
    DefaultMemory,
    MemorySlots,
    KernelParams,
    EnableIommu,
    EnableHugepages,
    EnableMemPrealloc,
    EnableIothreads,
    /// A value this version does not know (written by a newer one).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl TenantAnnotation {
    /// The annotation's name after `io.katacontainers.config.hypervisor.`
    /// (`src/runtime/virtcontainers/pkg/annotations/annotations.go`): the
    /// vCPU limit's is `default_max_vcpus`, though its TOML key is
    /// `default_maxvcpus`.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            TenantAnnotation::DefaultVcpus => "default_vcpus",
            TenantAnnotation::DefaultMaxVcpus => "default_max_vcpus",
            TenantAnnotation::DefaultMemory => "default_memory",
            TenantAnnotation::MemorySlots => "memory_slots",
            TenantAnnotation::KernelParams => "kernel_params",
            TenantAnnotation::EnableIommu => "enable_iommu",
            TenantAnnotation::EnableHugepages => "enable_hugepages",
            TenantAnnotation::EnableMemPrealloc => "enable_mem_prealloc",
            TenantAnnotation::EnableIothreads => "enable_iothreads",
            TenantAnnotation::Unknown => return None,
        })
    }
}

impl KataRuntimeProfile {
    /// A profile of a VM of `vcpus` and `memory_mib`, nothing else set.
    pub fn of_size(name: &str, vcpus: u32, memory_mib: u32) -> Self {
        Self::new(
            name,
            KataRuntimeProfileSpec {
                vm: VmShape {
                    vcpus,
                    memory_mib,
                    ..VmShape::default()
                },
                ..KataRuntimeProfileSpec::default()
            },
        )
    }

    /// The profile's RuntimeClass: its handler, its overhead, and the
    /// nodes that serve it. Like `kata`'s, its nodeSelector is never empty.
    pub fn runtime_class(&self) -> RuntimeClass {
        let name = self.profile_name();
        crate::objects::kata_runtime_class(
            name,
            name,
            render::overhead(&self.spec),
            runtime_label(name),
            None,
        )
    }

    /// The profile's name: its RuntimeClass's and its CRI-O handler's.
    pub fn profile_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// Names a profile cannot take: the built-in profile's, the peer-pods
/// class's, and CRI-O's own handlers'. The CRD's rule lists the same.
pub const RESERVED_NAMES: [&str; 4] = ["kata", "kata-remote", "runc", "crun"];

/// Why `profile` cannot be applied, naming the field; admission refuses
/// all of it, and it is checked again here for a CRD older than this
/// version or a profile a newer one wrote.
pub fn check(profile: &KataRuntimeProfile) -> Result<(), String> {
    let name = profile.profile_name();
    let refuse = |field: &str, why: &str| Err(format!("KataRuntimeProfile {name}: {field} {why}"));
    if !kata_proto::contract::is_runtime_profile_name(name) {
        return refuse(
            "metadata.name",
            "must be lower-case letters, digits and '-', at most 50 characters, no dots",
        );
    }
    if RESERVED_NAMES.contains(&name) {
        return refuse(
            "metadata.name",
            "is taken by a runtime the operator does not own as a profile",
        );
    }
    let vm = &profile.spec.vm;
    if vm.vcpus == 0 {
        return refuse("spec.vm.vcpus", "must be at least 1");
    }
    if vm.max_vcpus.is_some_and(|max| max < vm.vcpus) {
        return refuse("spec.vm.maxVcpus", "must be at least spec.vm.vcpus");
    }
    if vm.memory_mib < MEMORY_MIB_MIN {
        return refuse(
            "spec.vm.memoryMiB",
            "must be at least 256 (Kata's smallest VM)",
        );
    }
    if vm.memory_slots == Some(0) {
        return refuse("spec.vm.memorySlots", "must be at least 1");
    }
    let params_safe = |c: char| c.is_ascii_alphanumeric() || "_.,:=/+- ".contains(c);
    if vm
        .kernel_params
        .as_ref()
        .is_some_and(|p| !p.chars().all(params_safe))
    {
        return refuse(
            "spec.vm.kernelParams",
            "may hold only letters, digits, spaces and _.,:=/+-",
        );
    }
    if let Some(overhead) = &profile.spec.overhead {
        for (field, quantity) in [("cpu", &overhead.cpu), ("memory", &overhead.memory)] {
            if quantity_millis(&quantity.0).is_none() {
                return refuse(
                    &format!("spec.overhead.{field}"),
                    "must be a plain quantity such as 500m, 2, 512Mi or 1Gi",
                );
            }
        }
    }
    let allowed = &profile.spec.allowed_annotations;
    if let Some(index) = allowed.iter().position(|a| a.name().is_none()) {
        return refuse(
            &format!("spec.allowedAnnotations[{index}]"),
            "is not an annotation this version of the operator knows",
        );
    }
    Ok(())
}

/// The first profile of `profiles` that cannot be applied, and why; more
/// than an agent checks ([`kata_proto::contract::MAX_RUNTIME_PROFILES`])
/// are refused together.
pub fn check_all(profiles: &[KataRuntimeProfile]) -> Result<(), String> {
    let most = kata_proto::contract::MAX_RUNTIME_PROFILES;
    if profiles.len() > most {
        return Err(format!(
            "{} KataRuntimeProfiles: at most {most} are supported; delete some",
            profiles.len()
        ));
    }
    profiles.iter().try_for_each(check)
}

/// The runtime profiles in force: those the operator's MachineConfig
/// carries, published by the controller once they are settled and valid.
/// The health side reads them: the agents are told to check each one (its
/// name and the digest of its Kata configuration), and the labeller gives a
/// profile's label only for a profile in force. Shared by handle.
#[derive(Clone, Debug, Default)]
pub struct InForce(Arc<RwLock<Option<Arc<[WireProfile]>>>>);

impl InForce {
    /// Publishes `profiles` (valid ones, as the MachineConfig renders them).
    pub fn set(&self, profiles: &[KataRuntimeProfile]) {
        let wire: Arc<[WireProfile]> = profiles
            .iter()
            .map(|profile| WireProfile {
                name: profile.profile_name().to_owned(),
                config_sha256: sha256_hex(render::kata_configuration(&profile.spec).as_bytes()),
            })
            .collect();
        let mut current = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_deref() != Some(&*wire) {
            *current = Some(wire);
        }
    }

    /// The profiles in force, as agents are told of them; `None` until the
    /// controller first published them (the labeller then leaves every
    /// profile label as it is).
    pub fn get(&self) -> Option<Arc<[WireProfile]>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// SHA-256 of `bytes`, lower-case hex: the digest agents compare the
/// profile's file with.
fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The pattern of the quantities a profile's overhead may take (the CRD's
/// rule says the same): digits, an optional fraction and one suffix, no
/// sign or exponent.
pub const QUANTITY_PATTERN: &str = "^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$";

/// A quantity's value in thousandths of its unit (a plain one of
/// [`QUANTITY_PATTERN`]; `None` otherwise): the API server rewrites
/// quantities to its own spelling (`1024Mi` to `1Gi`), so ours are
/// compared by value.
pub fn quantity_millis(text: &str) -> Option<u128> {
    let suffixes: [(&str, u128); 13] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
        ("m", 0),
    ];
    let (number, times) = suffixes
        .iter()
        .find_map(|(suffix, times)| text.strip_suffix(suffix).map(|n| (n, *times)))
        .unwrap_or((text, 1));
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.len() <= 24 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return None;
    }
    // In thousandths: `m` is one, no suffix a thousand.
    let scale: u128 = if times == 0 {
        1
    } else {
        times.checked_mul(1000)?
    };
    let whole: u128 = whole.parse().ok()?;
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let denominator = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    whole
        .checked_mul(scale)?
        .checked_add(fraction_value.checked_mul(scale)? / denominator)
}

/// The readiness label of a profile's nodes, which its RuntimeClass
/// selects; `kata` keeps `katacontainers.io/kata-runtime`.
pub fn runtime_label(profile: &str) -> String {
    format!("{}.{profile}", crate::names::KATA_RUNTIME_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_longest_name_makes_a_valid_label() {
        let label = runtime_label(&"a".repeat(NAME_MAX));
        let name_part = label.split_once('/').map(|(_, n)| n).unwrap_or_default();
        assert_eq!(name_part.len(), 63);
    }

    #[test]
    fn the_schema_carries_the_name_rules_and_the_annotation_names() {
        let crd = serde_json::to_value(KataRuntimeProfile::crd()).unwrap_or_default();
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        let schema = &version["schema"]["openAPIV3Schema"];
        let rules = schema["x-kubernetes-validations"].to_string();
        assert!(rules.contains("size(self.metadata.name) <= 50"), "{rules}");
        assert!(rules.contains("'kata'"), "{rules}");
        let annotations =
            &schema["properties"]["spec"]["properties"]["allowedAnnotations"]["items"]["enum"];
        assert!(
            annotations
                .as_array()
                .is_some_and(|a| a.contains(&"default_max_vcpus".into())),
            "{annotations}"
        );
        assert_eq!(
            schema["properties"]["spec"]["properties"]["vm"]["properties"]["memoryMiB"]["minimum"]
                .as_f64(),
            Some(f64::from(MEMORY_MIB_MIN))
        );
    }

    fn valid(name: &str) -> KataRuntimeProfile {
        KataRuntimeProfile::of_size(name, 2, 2048)
    }

    #[test]
    fn a_bad_profile_is_refused_naming_its_field() {
        assert_eq!(check(&valid("kata-small")), Ok(()));
        let refused = |profile: KataRuntimeProfile, field: &str| {
            let message = check(&profile).err().unwrap_or_default();
            assert!(message.contains(field), "{message} should name {field}");
            assert_eq!(check_all(&[valid("ok"), profile]), Err(message));
        };
        for name in ["Kata-Big", "kata.big", "-kata", &"a".repeat(NAME_MAX + 1)] {
            refused(valid(name), "metadata.name");
        }
        for name in RESERVED_NAMES {
            refused(valid(name), "metadata.name");
        }
        type Breaks = fn(&mut KataRuntimeProfileSpec);
        let cases: [(Breaks, &str); 6] = [
            (|s| s.vm.vcpus = 0, "spec.vm.vcpus"),
            (|s| s.vm.max_vcpus = Some(1), "spec.vm.maxVcpus"),
            (|s| s.vm.memory_mib = 0, "spec.vm.memoryMiB"),
            (|s| s.vm.memory_slots = Some(0), "spec.vm.memorySlots"),
            (
                |s| s.vm.kernel_params = Some("quiet\"\n[runtime]".into()),
                "spec.vm.kernelParams",
            ),
            (
                |s| {
                    s.allowed_annotations =
                        vec![TenantAnnotation::DefaultMemory, TenantAnnotation::Unknown]
                },
                "spec.allowedAnnotations[1]",
            ),
        ];
        for (break_it, field) in cases {
            let mut profile = valid("p");
            break_it(&mut profile.spec);
            refused(profile, field);
        }
    }

    #[test]
    fn quantities_are_read_by_value_and_odd_ones_refused() {
        assert_eq!(quantity_millis("250m"), Some(250));
        assert_eq!(quantity_millis("1"), Some(1000));
        assert_eq!(quantity_millis("0.5"), Some(500));
        assert_eq!(quantity_millis("1Gi"), quantity_millis("1024Mi"));
        assert_eq!(quantity_millis("1k"), Some(1_000_000));
        for odd in ["", "banana", "-1", "1e3", "1.", ".5", "1Mi5", "5 Mi"] {
            assert_eq!(quantity_millis(odd), None, "{odd:?}");
        }
        let mut profile = valid("p");
        profile.spec.overhead = Some(ProfileOverhead {
            cpu: k8s_openapi::apimachinery::pkg::api::resource::Quantity("250m".into()),
            memory: k8s_openapi::apimachinery::pkg::api::resource::Quantity("banana".into()),
        });
        let refused = check(&profile).err().unwrap_or_default();
        assert!(refused.contains("spec.overhead.memory"), "{refused}");
    }

    #[test]
    fn more_profiles_than_an_agent_checks_are_refused() {
        let many: Vec<KataRuntimeProfile> = (0..=kata_proto::contract::MAX_RUNTIME_PROFILES)
            .map(|i| valid(&format!("p{i}")))
            .collect();
        let refused = check_all(&many).err().unwrap_or_default();
        assert!(refused.contains("at most 32"), "{refused}");
        assert_eq!(check_all(&many[1..]), Ok(()));
    }

    #[test]
    fn the_crd_reserves_the_same_names() {
        let crd = serde_json::to_value(KataRuntimeProfile::crd()).unwrap_or_default();
        let rules =
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
                .to_string();
        for name in RESERVED_NAMES {
            assert!(rules.contains(&format!("'{name}'")), "{name} in {rules}");
        }
    }

    #[test]
    fn every_known_annotation_is_one_kata_checks() {
        let known = [
            TenantAnnotation::DefaultVcpus,
            TenantAnnotation::DefaultMaxVcpus,
            TenantAnnotation::DefaultMemory,
            TenantAnnotation::MemorySlots,
            TenantAnnotation::KernelParams,
            TenantAnnotation::EnableIommu,
            TenantAnnotation::EnableHugepages,
            TenantAnnotation::EnableMemPrealloc,
            TenantAnnotation::EnableIothreads,
        ];
        for annotation in known {
            let name = annotation.name().unwrap_or_default();
            let wire = serde_json::to_value(annotation).unwrap_or_default();
            assert_eq!(wire, name, "the API's spelling is Kata's");
        }
        let unknown: TenantAnnotation =
            serde_json::from_value("kernel".into()).unwrap_or(TenantAnnotation::DefaultVcpus);
        assert_eq!(unknown.name(), None);
    }
}
