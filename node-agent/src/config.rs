//! What the node is expected to look like. The defaults come from the
//! operator's contract ([`kata_proto::contract`]), the values its
//! MachineConfig installs: they serve `node-agent check` and a daemon stream
//! until the coordinator's own `ExpectedConfig` arrives, which it sends over
//! the health channel when a stream opens (see [`crate::daemon`]). Nothing
//! here is hard-wired into the probes.

use std::fmt;
use std::str::FromStr;

use kata_proto::contract;
use kata_proto::health::v1 as proto;

use crate::error::AgentError;

/// The expected configuration of a Kata-ready node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedConfig {
    /// CRI-O runtime handler, the RuntimeClass `handler`.
    pub runtime_handler: String,
    /// RPM packages the RHCOS extension installs.
    pub extension_packages: Vec<String>,
    /// Host path of the CRI-O drop-in the MachineConfig writes.
    pub drop_in_path: String,
    /// Lowest QEMU accepted.
    pub minimum_qemu_version: Version,
    /// The runtime profiles the host configuration carries, checked each
    /// cycle ([`crate::probe::profiles`]).
    pub runtime_profiles: Vec<RuntimeProfile>,
}

/// A runtime profile as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeProfile {
    /// The CRI-O handler's name.
    pub name: String,
    /// SHA-256 of its Kata configuration, lower-case hex.
    pub config_sha256: String,
}

impl RuntimeProfile {
    /// The profile, if its name and digest are well formed.
    fn from_wire(wire: &proto::RuntimeProfile) -> Option<Self> {
        let digest = &wire.config_sha256;
        let hex = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (contract::is_runtime_profile_name(&wire.name) && hex).then(|| Self {
            name: wire.name.clone(),
            config_sha256: digest.clone(),
        })
    }
}

/// [`contract::MINIMUM_QEMU_VERSION`] as a [`Version`]; a test pins the two
/// equal, so the contract's string stays the one source.
const MINIMUM_QEMU_VERSION: Version = Version::new(6, 2, 0);

impl Default for ExpectedConfig {
    fn default() -> Self {
        Self {
            runtime_handler: contract::RUNTIME_HANDLER.to_owned(),
            extension_packages: vec![contract::EXTENSION_PACKAGE.to_owned()],
            drop_in_path: contract::DROP_IN_PATH.to_owned(),
            minimum_qemu_version: MINIMUM_QEMU_VERSION,
            runtime_profiles: Vec::new(),
        }
    }
}

impl TryFrom<&proto::ExpectedConfig> for ExpectedConfig {
    type Error = AgentError;

    /// proto3 cannot tell an empty field from an absent one, so empty fields
    /// keep the defaults instead of expecting an empty handler name.
    fn try_from(wire: &proto::ExpectedConfig) -> Result<Self, Self::Error> {
        let mut config = Self::default();
        if !wire.runtime_handler.is_empty() {
            config.runtime_handler = wire.runtime_handler.clone();
        }
        if !wire.extension_packages.is_empty() {
            config.extension_packages = wire.extension_packages.clone();
        }
        if !wire.drop_in_path.is_empty() {
            config.drop_in_path = wire.drop_in_path.clone();
        }
        if !wire.minimum_qemu_version.is_empty() {
            config.minimum_qemu_version = wire.minimum_qemu_version.parse()?;
        }
        // A malformed entry is left out (and so never reported ready).
        config.runtime_profiles = (wire.runtime_profiles.iter())
            .filter_map(RuntimeProfile::from_wire)
            .take(contract::MAX_RUNTIME_PROFILES)
            .collect();
        Ok(config)
    }
}

/// A `MAJOR.MINOR.PATCH` version, compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
}

impl FromStr for Version {
    type Err = AgentError;

    /// Accepts `8.2.0` and `9.0` (patch 0); anything else is an error.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || AgentError::InvalidVersion(text.to_owned());
        let mut parts = text.trim().split('.');
        let mut next = |required: bool| match parts.next() {
            Some(part) => part.parse::<u32>().map_err(|_| invalid()),
            None if required => Err(invalid()),
            None => Ok(0),
        };
        let version = Version::new(next(true)?, next(true)?, next(false)?);
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn versions_parse_and_compare_numerically() {
        assert_eq!("8.2.0".parse::<Version>().unwrap(), Version::new(8, 2, 0));
        assert_eq!("9.0".parse::<Version>().unwrap(), Version::new(9, 0, 0));
        assert!(Version::new(10, 0, 0) > Version::new(9, 12, 3));
        for bad in ["", "8", "8.x", "8.2.0.1", "-1.0"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn the_minimum_qemu_version_is_the_contracts() {
        assert_eq!(
            contract::MINIMUM_QEMU_VERSION.parse::<Version>().unwrap(),
            MINIMUM_QEMU_VERSION
        );
    }

    #[test]
    fn only_well_formed_runtime_profiles_are_kept() {
        let profile = |name: &str, digest: &str| proto::RuntimeProfile {
            name: name.to_owned(),
            config_sha256: digest.to_owned(),
        };
        let good = "a".repeat(64);
        let wire = proto::ExpectedConfig {
            runtime_profiles: vec![
                profile("kata-small", &good),
                profile("Kata.Big", &good),
                profile("short-digest", "abc"),
                profile("upper-digest", &"A".repeat(64)),
                profile(&"x".repeat(51), &good),
            ],
            ..Default::default()
        };
        let config = ExpectedConfig::try_from(&wire).unwrap();
        let names: Vec<&str> = config
            .runtime_profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["kata-small"]);
        let many = proto::ExpectedConfig {
            runtime_profiles: (0..100).map(|i| profile(&format!("p{i}"), &good)).collect(),
            ..Default::default()
        };
        let config = ExpectedConfig::try_from(&many).unwrap();
        assert_eq!(
            config.runtime_profiles.len(),
            contract::MAX_RUNTIME_PROFILES
        );
    }

    #[test]
    fn empty_wire_fields_keep_the_defaults() {
        let wire = proto::ExpectedConfig {
            runtime_handler: "kata-qemu".to_owned(),
            minimum_qemu_version: "7.0".to_owned(),
            ..Default::default()
        };
        let config = ExpectedConfig::try_from(&wire).unwrap();
        assert_eq!(config.runtime_handler, "kata-qemu");
        assert_eq!(config.minimum_qemu_version, Version::new(7, 0, 0));
        assert_eq!(config.drop_in_path, ExpectedConfig::default().drop_in_path);
        let bad = proto::ExpectedConfig {
            minimum_qemu_version: "seven".to_owned(),
            ..Default::default()
        };
        assert!(ExpectedConfig::try_from(&bad).is_err());
    }
}
