//! Which OS extension installs Kata, from the nodes' OS: pure.
//!
//! The MCO accepts only the extension names its OS knows
//! (`pkg/controller/common/helpers.go`): `sandboxed-containers` on Red Hat
//! Enterprise Linux CoreOS, `kata-containers` on Fedora CoreOS and CentOS
//! Stream CoreOS (OKD). A wrong name degrades the pool with "invalid
//! extensions found", so an OS we do not recognize is refused rather than
//! guessed.

use super::names;
use crate::api::ExtensionChoice;

/// The node operating systems the MCO manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOs {
    /// Red Hat Enterprise Linux CoreOS (OpenShift).
    Rhcos,
    /// Fedora CoreOS (OKD up to 4.15).
    Fcos,
    /// CentOS Stream CoreOS (OKD from 4.16).
    Scos,
}

impl NodeOs {
    /// The OS, from a Node's `status.nodeInfo.osImage` (for example
    /// `Red Hat Enterprise Linux CoreOS 417.94.202408270355-0 (Plow)`).
    pub fn from_os_image(os_image: &str) -> Option<NodeOs> {
        let image = os_image.to_ascii_lowercase();
        if image.contains("red hat enterprise linux coreos") || image.starts_with("rhcos") {
            Some(NodeOs::Rhcos)
        } else if image.contains("fedora coreos") || image.starts_with("fcos") {
            Some(NodeOs::Fcos)
        } else if image.contains("centos stream coreos") || image.starts_with("scos") {
            Some(NodeOs::Scos)
        } else {
            None
        }
    }

    /// The name of the Kata extension on this OS.
    pub fn extension(self) -> &'static str {
        match self {
            NodeOs::Rhcos => names::EXTENSION,
            NodeOs::Fcos | NodeOs::Scos => names::EXTENSION_FCOS,
        }
    }
}

/// The package either extension installs, which the agent's rpm-ostree probe
/// looks for: the same on every OS, so the agents' expectation does not
/// depend on the extension chosen.
pub fn package_of(extension: &str) -> Option<&'static str> {
    (extension == names::EXTENSION || extension == names::EXTENSION_FCOS)
        .then_some(kata_proto::contract::EXTENSION_PACKAGE)
}

/// Why no one extension fits the nodes a MachineConfig reaches; the
/// message says what to do, for the KataConfig's status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    #[error(
        "node {node} runs an OS the operator does not know ({image:?}); set spec.extension to sandboxed-containers (RHCOS) or kata-containers (FCOS, SCOS)"
    )]
    UnknownOs { node: String, image: String },
    #[error(
        "nodes {first_node} and {node} need different extensions ({first}, {extension}) but share one MachineConfig; select nodes of one OS"
    )]
    MixedOs {
        first_node: String,
        node: String,
        first: &'static str,
        extension: &'static str,
    },
}

/// The extension for a MachineConfig that reaches `nodes` (name, osImage):
/// the override when set, else the one extension of their OS. A node that
/// has not reported its OS yet is taken as RHCOS, OpenShift's OS. Errors say
/// what to do, for the KataConfig's status.
pub fn extension_for<'a>(
    choice: ExtensionChoice,
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<&'static str, ExtensionError> {
    match choice {
        ExtensionChoice::SandboxedContainers => return Ok(names::EXTENSION),
        ExtensionChoice::KataContainers => return Ok(names::EXTENSION_FCOS),
        // Unknown: the planner holds such a spec before asking.
        ExtensionChoice::Auto | ExtensionChoice::Unknown => {}
    }
    let mut chosen: Option<(&'static str, &str)> = None;
    for (node, os_image) in nodes {
        let image = os_image.filter(|i| !i.is_empty());
        let extension = match image {
            None => NodeOs::Rhcos.extension(),
            Some(image) => NodeOs::from_os_image(image)
                .ok_or_else(|| ExtensionError::UnknownOs {
                    node: node.to_owned(),
                    image: image.to_owned(),
                })?
                .extension(),
        };
        match chosen {
            Some((first, first_node)) if first != extension => {
                return Err(ExtensionError::MixedOs {
                    first_node: first_node.to_owned(),
                    node: node.to_owned(),
                    first,
                    extension,
                });
            }
            Some(_) => {}
            None => chosen = Some((extension, node)),
        }
    }
    Ok(chosen.map_or(names::EXTENSION, |(extension, _)| extension))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_images_map_to_their_extension() {
        let cases = [
            (
                "Red Hat Enterprise Linux CoreOS 417.94.202408270355-0 (Plow)",
                Some("sandboxed-containers"),
            ),
            (
                "Red Hat Enterprise Linux CoreOS 48.84.202109241901-0 (Ootpa)",
                Some("sandboxed-containers"),
            ),
            ("Fedora CoreOS 39.20240210.3.0", Some("kata-containers")),
            (
                "CentOS Stream CoreOS 417.9.202408260901-0",
                Some("kata-containers"),
            ),
            ("Ubuntu 24.04.1 LTS", None),
        ];
        for (image, extension) in cases {
            assert_eq!(
                NodeOs::from_os_image(image).map(NodeOs::extension),
                extension,
                "{image}"
            );
        }
    }

    #[test]
    fn one_extension_per_machine_config_or_a_reason() {
        let rhcos = Some("Red Hat Enterprise Linux CoreOS 417.94");
        let fcos = Some("Fedora CoreOS 39");
        let auto = ExtensionChoice::Auto;
        assert_eq!(
            extension_for(auto, [("a", fcos), ("b", fcos)]),
            Ok("kata-containers")
        );
        assert_eq!(
            extension_for(auto, [("a", None), ("b", rhcos)]),
            Ok("sandboxed-containers"),
            "a node without nodeInfo yet is taken as RHCOS"
        );
        let mixed = extension_for(auto, [("a", rhcos), ("b", fcos)])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(mixed.contains("nodes a and b"), "{mixed}");
        let unknown = extension_for(auto, [("a", Some("Ubuntu 24.04"))])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            unknown.contains("node a") && unknown.contains("spec.extension"),
            "{unknown}"
        );
        assert_eq!(
            extension_for(
                ExtensionChoice::KataContainers,
                [("a", Some("Ubuntu 24.04"))]
            ),
            Ok("kata-containers"),
            "the override wins"
        );
    }

    #[test]
    fn both_extensions_install_the_package_the_agents_expect() {
        for extension in [names::EXTENSION, names::EXTENSION_FCOS] {
            assert_eq!(
                package_of(extension),
                Some(kata_proto::contract::EXTENSION_PACKAGE)
            );
        }
        assert_eq!(package_of("usbguard"), None);
    }
}
