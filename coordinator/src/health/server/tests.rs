#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn streams_end_a_little_before_their_token_does() {
    let now = SystemTime::now();
    let before = tokio::time::Instant::now();
    let deadline = stream_deadline(now + Duration::from_secs(3600), now);
    let after = tokio::time::Instant::now();
    assert!(deadline <= after + Duration::from_secs(3600));
    assert!(
        deadline >= before + Duration::from_secs(3540),
        "at most a minute early"
    );
    // A token with 100 s left ends within its last 10 s.
    let short = stream_deadline(now + Duration::from_secs(100), now);
    assert!(short >= before + Duration::from_secs(90));
    // An expired token (clock skew) ends the stream at once.
    assert!(stream_deadline(now - Duration::from_secs(5), now) <= tokio::time::Instant::now());
}

#[test]
fn hello_must_name_the_tokens_node() {
    let identity = AgentIdentity {
        node_name: "a".into(),
        pod_name: "p".into(),
        pod_uid: None,
    };
    let hello = |node: &str| Hello {
        node_name: node.into(),
        agent_version: "0.1.0".into(),
        ..Hello::default()
    };
    assert!(check_hello(&identity, &hello("a")).is_ok());
    let refused = check_hello(&identity, &hello("b")).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains('a') && refused.message().contains('b'));
    // Out of bounds is refused before the node is compared (or logged).
    let refused = check_hello(&identity, &hello(&"a".repeat(1024 * 1024))).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("node_name") && refused.message().len() < 200);
}

#[test]
fn expected_config_comes_from_names_and_options() {
    let options = HealthOptions {
        heartbeat_interval: Duration::from_millis(10),
        extension_name: "sandboxed-containers".into(),
        ..HealthOptions::default()
    };
    let registry = HealthRegistry::new();
    let config = expected_config(&options, &registry);
    assert_eq!(config.runtime_handler, contract::RUNTIME_HANDLER);
    assert_eq!(config.extension_name, "sandboxed-containers");
    assert_eq!(config.drop_in_path, contract::DROP_IN_PATH);
    assert_eq!(config.extension_packages, vec![contract::EXTENSION_PACKAGE]);
    assert_eq!(config.heartbeat_interval_seconds, 1);
    assert_eq!(config.minimum_qemu_version, "6.2.0");
    assert!(config.runtime_profiles.is_empty());

    // The profiles in force, each with the digest of its rendered file.
    let large = crate::profiles::KataRuntimeProfile::of_size("kata-large", 4, 8192);
    registry.profiles().set(std::slice::from_ref(&large));
    let config = expected_config(&options, &registry);
    let rendered = crate::profiles::render::kata_configuration(&large.spec);
    let digest = ring::digest::digest(&ring::digest::SHA256, rendered.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(config.runtime_profiles.len(), 1);
    assert_eq!(config.runtime_profiles[0].name, "kata-large");
    assert_eq!(config.runtime_profiles[0].config_sha256, hex);
}
