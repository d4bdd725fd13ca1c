//! The script itself: its copies of the operator's names are the code's,
//! and it passes `bash -n` and shellcheck.

use super::*;

/// `NAME="value"` assignments at the top of the script.
fn script_constants() -> BTreeMap<String, String> {
    read(&script())
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            name.chars()
                .all(|c| c.is_ascii_uppercase() || c == '_')
                .then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

#[kata_test]
fn the_scripts_names_are_the_codes() {
    let constants = script_constants();
    let get = |name: &str| {
        constants
            .get(name)
            .unwrap_or_else(|| panic!("the script defines {name}"))
            .as_str()
    };
    let qualified = |kind: &kata_coordinator::kind::Kind| format!("{}.{}", kind.plural, kind.group);
    assert_eq!(get("KATACONFIG_RESOURCE"), qualified(&KATA_CONFIG));
    {
        use kata_coordinator::profiles::KataRuntimeProfile;
        use kube::Resource;
        let (plural, group) = (
            KataRuntimeProfile::plural(&()),
            KataRuntimeProfile::group(&()),
        );
        assert_eq!(get("PROFILE_RESOURCE"), format!("{plural}.{group}"));
    }
    assert_eq!(
        get("MACHINE_CONFIG_RESOURCE"),
        qualified(&mco::MACHINE_CONFIG)
    );
    assert_eq!(get("POOL_RESOURCE"), qualified(&mco::POOL));
    assert_eq!(
        get("CONTAINER_RUNTIME_CONFIG_RESOURCE"),
        qualified(&mco::CONTAINER_RUNTIME_CONFIG)
    );
    assert_eq!(get("MACHINE_CONFIG_NAME"), mco::MACHINE_CONFIG_NAME);
    assert_eq!(
        get("CONTAINER_RUNTIME_CONFIG_NAME"),
        mco::CONTAINER_RUNTIME_CONFIG_NAME
    );
    assert_eq!(get("RUNTIME_CLASS_NAME"), names::RUNTIME_CLASS_NAME);
    assert_eq!(get("WORKER_ROLE_LABEL"), names::WORKER_ROLE_LABEL);
    assert_eq!(get("KATA_POOL_ROLE_LABEL"), mco::KATA_POOL_ROLE_LABEL);
    assert_eq!(get("KATA_CAPABLE_LABEL"), names::KATA_CAPABLE_LABEL);
    assert_eq!(get("KATA_RUNTIME_LABEL"), names::KATA_RUNTIME_LABEL);
    assert_eq!(get("NODE_CONDITION"), names::NODE_CONDITION);
    assert_eq!(get("LEASE_NAME"), kata_coordinator::rbac::LEASE_NAME);
    // The check pods run under an account of their own, in a namespace of
    // their own: the pod policy pins the operator's accounts to its
    // workload controllers.
    for account in [
        contract::AGENT_SERVICE_ACCOUNT,
        contract::COORDINATOR_SERVICE_ACCOUNT,
    ] {
        assert_ne!(get("CHECK_SERVICE_ACCOUNT"), account);
    }
    assert!(
        !contract::DEFAULT_NAMESPACE.starts_with(get("CHECK_NAMESPACE_PREFIX")),
        "check pods never land in the operator's namespace"
    );
    // The label the gather selects the admission policies by is on every
    // policy and binding the coordinator creates.
    let (key, value) = get("MANAGED_BY_SELECTOR").split_once('=').unwrap();
    let shipped = kata_coordinator::operands::policies::desired(contract::DEFAULT_NAMESPACE);
    assert!(!shipped.is_empty());
    for policy in &shipped {
        assert_eq!(
            policy.body["metadata"]["labels"][key], value,
            "{} {}",
            policy.kind.kind, policy.name
        );
    }
    let text = read(&script());
    assert!(
        text.contains(&format!(
            "NAMESPACE=\"${{KATA_NAMESPACE:-{}}}\"",
            contract::DEFAULT_NAMESPACE
        )),
        "the default namespace is the operator's"
    );
    for annotation in [
        mco::CURRENT_CONFIG,
        mco::DESIRED_CONFIG,
        mco::STATE,
        mco::REASON,
    ] {
        assert!(
            text.contains(&format!("    \"{annotation}\"\n")),
            "MCO_ANNOTATIONS lists {annotation}"
        );
    }

    // What the manifests name: the workloads, their selectors, the ports.
    // A selector's order does not matter: compare sorted.
    let sorted = |selector: &str| {
        let mut pairs: Vec<&str> = selector.split(',').collect();
        pairs.sort();
        pairs.join(",")
    };
    let labels = |pairs: &Yaml| {
        let mut pairs: Vec<String> = pairs
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()))
            .collect();
        pairs.sort();
        pairs.join(",")
    };
    let manifest = |file: &str, kind: &str| -> Yaml {
        let text = read(&deploy_dir().join("base").join(file));
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Yaml::deserialize(d).unwrap())
            .find(|d| d["kind"] == kind)
            .unwrap()
    };
    let daemonset = manifest("node-agent.yaml", "DaemonSet");
    assert_eq!(daemonset["metadata"]["name"], get("AGENT_DAEMONSET"));
    assert_eq!(
        sorted(get("AGENT_SELECTOR")),
        labels(&daemonset["spec"]["selector"]["matchLabels"])
    );
    let agent = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(agent["name"], get("AGENT_CONTAINER"));
    assert!(
        agent["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|a| a == "--host-root=/host"),
        "the agent sees the host at /host, where the check looks"
    );
    assert_ne!(
        daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        get("CHECK_POD_COMPONENT"),
        "check pods must not match the DaemonSet's selector"
    );
    let deployment = manifest("coordinator.yaml", "Deployment");
    assert_eq!(
        sorted(get("COORDINATOR_SELECTOR")),
        labels(&deployment["spec"]["selector"]["matchLabels"])
    );
    let ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap();
    let metrics = ports.iter().find(|p| p["name"] == "metrics").unwrap();
    assert_eq!(
        get("METRICS_PORT"),
        metrics["containerPort"].as_u64().unwrap().to_string()
    );
}

#[kata_test]
fn the_script_is_valid_bash_and_passes_shellcheck() {
    let script = script();
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(read(&script).starts_with("#!/usr/bin/env bash\n"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "gather is executable");
    }
    match std::process::Command::new("shellcheck")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            let lint = std::process::Command::new("shellcheck")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                lint.status.success(),
                "shellcheck:\n{}",
                String::from_utf8_lossy(&lint.stdout)
            );
        }
        Err(e) => kata_test_harness::skip(format!(
            "the shellcheck lint of {} (the other checks passed): shellcheck is not installed \
             ({e}); tests/scripts/install-packages.sh installs it",
            script.display()
        )),
    }
}
