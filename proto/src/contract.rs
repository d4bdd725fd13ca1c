//! What the coordinator and the node-agent must agree on, in one place.
//!
//! The coordinator renders these into the MachineConfig, the RuntimeClass and
//! the expected configuration it sends each agent; the agent uses them as its
//! defaults before the first message arrives and for `node-agent check`.
//! Changing one here changes both binaries together.

/// The CRI-O runtime handler the drop-in declares and the RuntimeClass names.
pub const RUNTIME_HANDLER: &str = "kata";
/// The RuntimeClass workloads opt in with. Same word as the handler, by the
/// convention OSC and kata-deploy follow.
pub const RUNTIME_CLASS_NAME: &str = RUNTIME_HANDLER;
/// Host path of the CRI-O drop-in that registers [`RUNTIME_HANDLER`].
pub const DROP_IN_PATH: &str = "/etc/crio/crio.conf.d/50-kata";
/// The CRI-O drop-in declaring the runtime profiles' handlers: after
/// [`DROP_IN_PATH`], so it can replace neither that nor the package's.
pub const PROFILES_DROP_IN_PATH: &str = "/etc/crio/crio.conf.d/51-kata-profiles";
/// The most runtime profiles an agent is told of, and reports ready.
pub const MAX_RUNTIME_PROFILES: usize = 32;
/// The longest runtime profile name (its node label's name part,
/// `kata-runtime.<name>`, is at most 63 characters).
pub const RUNTIME_PROFILE_NAME_MAX: usize = 50;
/// The RPM package the Kata extension installs (RHCOS, FCOS and SCOS alike).
pub const EXTENSION_PACKAGE: &str = "kata-containers";
/// Lowest QEMU accepted: Kata 3.x supports QEMU 6.2 and later; RHCOS ships 8.x.
pub const MINIMUM_QEMU_VERSION: &str = "6.2.0";

/// CPU a Kata pod costs beyond its containers (the VM), in millicores: the
/// RuntimeClass `overhead.podFixed.cpu`, and what the capacity probe plans for.
pub const POD_OVERHEAD_MILLICPU: u64 = 250;
/// Memory a Kata pod costs beyond its containers, in MiB.
pub const POD_OVERHEAD_MEMORY_MIB: u64 = 350;

/// The audience of the agents' projected ServiceAccount tokens, which the
/// coordinator's TokenReview asks for.
pub const TOKEN_AUDIENCE: &str = "kata-operator.openshift.io/node-agent";
/// The namespace both run in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "kata-operator";
/// The node-agent's ServiceAccount: the only identity the health channel accepts.
pub const AGENT_SERVICE_ACCOUNT: &str = "kata-node-agent";
/// The coordinator's ServiceAccount.
pub const COORDINATOR_SERVICE_ACCOUNT: &str = "kata-coordinator";

/// Where the host configuration writes a runtime profile's complete Kata
/// configuration (`/usr` is read-only on RHCOS), which its CRI-O handler's
/// `runtime_config_path` names.
pub fn runtime_profile_config_path(profile: &str) -> String {
    format!("/etc/kata-containers/{profile}/configuration.toml")
}

/// Whether `name` can be a runtime profile's: a DNS label of at most
/// [`RUNTIME_PROFILE_NAME_MAX`] characters. Both sides check what the
/// other sends against it.
pub fn is_runtime_profile_name(name: &str) -> bool {
    let label_safe = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    !name.is_empty()
        && name.len() <= RUNTIME_PROFILE_NAME_MAX
        && name.bytes().all(label_safe)
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The RuntimeClass overhead in Kubernetes quantity notation.
pub fn pod_overhead_cpu_quantity() -> String {
    format!("{POD_OVERHEAD_MILLICPU}m")
}

/// The RuntimeClass memory overhead in Kubernetes quantity notation.
pub fn pod_overhead_memory_quantity() -> String {
    format!("{POD_OVERHEAD_MEMORY_MIB}Mi")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_kubernetes_notation() {
        assert_eq!(pod_overhead_cpu_quantity(), "250m");
        assert_eq!(pod_overhead_memory_quantity(), "350Mi");
    }
}
