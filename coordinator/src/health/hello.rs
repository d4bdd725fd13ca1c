//! What a Hello may say. Its fields come from the peer, so they are checked
//! before anything stores or logs them: the registry keeps them for every
//! node of the cluster, and a log line must not be forged by a newline.

use kata_proto::health::v1::Hello;
use tonic::Status;

/// The longest node name Kubernetes accepts (a DNS-1123 subdomain).
pub const MAX_NODE_NAME_BYTES: usize = 253;
/// The longest agent version kept: a semantic version with a pre-release
/// and build suffix is well under it.
pub const MAX_AGENT_VERSION_BYTES: usize = 64;
/// The longest boot id: the kernel's is a 36-character UUID.
pub const MAX_BOOT_ID_BYTES: usize = 64;

/// Refuses a Hello whose node name is not a Kubernetes node name, whose
/// agent version is not a short version string, or whose boot id is neither
/// a UUID nor empty (an agent that cannot read the kernel's sends none).
/// The status names the field and never repeats the value. Pure.
pub fn validate_hello(hello: &Hello) -> Result<(), Status> {
    if !is_dns1123_subdomain(&hello.node_name) {
        return Err(invalid(
            "node_name",
            "a Kubernetes node name (DNS-1123 subdomain of at most 253 bytes)",
        ));
    }
    if !is_version(&hello.agent_version) {
        return Err(invalid(
            "agent_version",
            "at most 64 bytes of letters, digits and . - + _ ~",
        ));
    }
    if !(hello.boot_id.is_empty() || is_uuid(&hello.boot_id)) {
        return Err(invalid(
            "boot_id",
            "a UUID (8-4-4-4-12 hex digits) or empty",
        ));
    }
    Ok(())
}

fn invalid(field: &str, expected: &str) -> Status {
    Status::invalid_argument(format!("Hello.{field} must be {expected}"))
}

/// Kubernetes' `IsDNS1123Subdomain`: dot-separated labels of lowercase
/// letters, digits and hyphens, each beginning and ending alphanumeric.
fn is_dns1123_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= MAX_NODE_NAME_BYTES
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            matches!((bytes.first(), bytes.last()), (Some(&a), Some(&z)) if alnum(a) && alnum(z))
                && bytes.iter().all(|&b| alnum(b) || b == b'-')
        })
}

fn is_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= MAX_AGENT_VERSION_BYTES
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+~".contains(&b))
}

fn is_uuid(id: &str) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    id.len() <= MAX_BOOT_ID_BYTES
        && id.split('-').count() == GROUPS.len()
        && id
            .split('-')
            .zip(GROUPS)
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT_ID: &str = "6f1c8a7e-2b1d-4a57-9d4c-0e6a3c1b2d3f";

    fn hello() -> Hello {
        Hello {
            node_name: "worker-0.example.com".into(),
            agent_version: "0.1.0".into(),
            boot_id: BOOT_ID.into(),
        }
    }

    /// The field the refusal names, or None when the Hello is accepted.
    fn refused_field(hello: &Hello) -> Option<String> {
        let status = validate_hello(hello).err()?;
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().len() < 200, "the value is not echoed");
        let field = status.message().strip_prefix("Hello.")?;
        Some(field.split(' ').next()?.to_owned())
    }

    #[test]
    fn an_agents_hello_is_accepted() {
        assert_eq!(refused_field(&hello()), None);
        let no_boot_id = Hello {
            boot_id: String::new(),
            ..hello()
        };
        assert_eq!(
            refused_field(&no_boot_id),
            None,
            "the agent could not read it"
        );
        let longest = Hello {
            node_name: [
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(61),
            ]
            .join("."),
            agent_version: "1.2.3-rc.1+build.5".into(),
            ..hello()
        };
        assert_eq!(longest.node_name.len(), 253);
        assert_eq!(refused_field(&longest), None);
    }

    #[test]
    fn hostile_node_names_are_refused() {
        for name in [
            "a".repeat(1024 * 1024),
            "a".repeat(254),
            String::new(),
            "Worker-0".into(),
            "worker-0\ninjected log line".into(),
            "-worker".into(),
            "worker-".into(),
            "worker..0".into(),
            "worker_0".into(),
        ] {
            let hello = Hello {
                node_name: name,
                ..hello()
            };
            assert_eq!(refused_field(&hello).as_deref(), Some("node_name"));
        }
    }

    #[test]
    fn hostile_agent_versions_are_refused() {
        for version in ["0.1.0\nlevel=ERROR forged", "", "0.1 0", &"1".repeat(65)] {
            let hello = Hello {
                agent_version: version.into(),
                ..hello()
            };
            assert_eq!(refused_field(&hello).as_deref(), Some("agent_version"));
        }
    }

    #[test]
    fn boot_ids_must_be_uuids() {
        for boot_id in [
            "boot-1".to_owned(),
            format!("{BOOT_ID}-0"),
            BOOT_ID.replace('a', "g"),
            BOOT_ID.replace('-', ""),
            format!("{BOOT_ID}\n"),
            "x".repeat(1024 * 1024),
        ] {
            let hello = Hello { boot_id, ..hello() };
            assert_eq!(refused_field(&hello).as_deref(), Some("boot_id"));
        }
    }
}
