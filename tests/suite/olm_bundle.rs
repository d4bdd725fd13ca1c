//! The OLM bundle (`bundle/`, registry+v1) checked for what
//! `operator-sdk bundle validate` checks (the validator cannot be installed
//! here), and for drift from `deploy/`: the bundle annotations equal the
//! bundle image's LABELs; every manifest is a kind OLM can install from a
//! bundle; the CSV's required fields are present and well formed; the owned
//! CRDs are the CRD files, and the CRD file is byte-for-byte deploy/base's;
//! the install strategy runs exactly deploy/base's Deployment with exactly the
//! generated RBAC; the monitoring and network policy manifests OLM can install
//! are `make generate`'s current copies of deploy/'s; and the `alm-examples`
//! are accepted by a real API server.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kata_tests::ControlPlane;
use kata_tests::manifests::deploy_dir;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde::Deserialize;
use serde_yaml::Value;

const PACKAGE: &str = "kata-operator";
const CHANNEL: &str = "alpha";
const CRD_NAME: &str = "kataconfigs.kataconfiguration.openshift.io";
const PROFILE_CRD_NAME: &str = "kataruntimeprofiles.kataconfiguration.openshift.io";

fn bundle_dir() -> PathBuf {
    deploy_dir().join("../bundle")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(path: &Path) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn one_document(path: &Path) -> Value {
    let mut docs = documents(path);
    assert_eq!(docs.len(), 1, "{} holds one document", path.display());
    docs.remove(0)
}

fn of_kind(docs: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0].clone()
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is a non-empty string"))
}

/// Every manifest in bundle/manifests, by file name.
fn manifests() -> BTreeMap<String, Value> {
    let dir = bundle_dir().join("manifests");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "bundle/manifests holds only YAML manifests, not {name}"
        );
        out.insert(name, one_document(&path));
    }
    out
}

fn csv() -> Value {
    let all = manifests();
    let csvs: Vec<&Value> = all
        .values()
        .filter(|m| m["kind"] == "ClusterServiceVersion")
        .collect();
    assert_eq!(csvs.len(), 1, "one ClusterServiceVersion in the bundle");
    csvs[0].clone()
}

fn is_semver(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars().all(|c| c.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

/// `LABEL k=v [k=v ...]` lines of a Dockerfile, unquoted.
fn dockerfile_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("LABEL ") else {
            continue;
        };
        for pair in rest.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("LABEL {pair} is key=value"));
            let value = value.trim_matches('"');
            assert!(
                labels.insert(key.to_owned(), value.to_owned()).is_none(),
                "LABEL {key} set twice"
            );
        }
    }
    labels
}

#[kata_test]
fn bundle_annotations_match_the_bundle_image_labels() {
    let annotations = one_document(&bundle_dir().join("metadata/annotations.yaml"));
    let annotations: BTreeMap<String, String> =
        serde_yaml::from_value(annotations["annotations"].clone()).unwrap();
    let expected = [
        (
            "operators.operatorframework.io.bundle.mediatype.v1",
            "registry+v1",
        ),
        (
            "operators.operatorframework.io.bundle.manifests.v1",
            "manifests/",
        ),
        (
            "operators.operatorframework.io.bundle.metadata.v1",
            "metadata/",
        ),
        ("operators.operatorframework.io.bundle.package.v1", PACKAGE),
        ("operators.operatorframework.io.bundle.channels.v1", CHANNEL),
        (
            "operators.operatorframework.io.bundle.channel.default.v1",
            CHANNEL,
        ),
    ];
    for (key, value) in expected {
        assert_eq!(
            annotations.get(key).map(String::as_str),
            Some(value),
            "annotations.yaml {key}"
        );
    }
    // The default channel is one of the bundle's channels.
    let channels: Vec<&str> = annotations["operators.operatorframework.io.bundle.channels.v1"]
        .split(',')
        .collect();
    assert!(channels.contains(
        &annotations["operators.operatorframework.io.bundle.channel.default.v1"].as_str()
    ));

    let dockerfile = read(&bundle_dir().join("bundle.Dockerfile"));
    let labels = dockerfile_labels(&dockerfile);
    for (key, value) in &annotations {
        if key.starts_with("operators.operatorframework.io.bundle.") {
            assert_eq!(
                labels.get(key),
                Some(value),
                "bundle.Dockerfile LABEL {key} equals annotations.yaml"
            );
        }
    }
    for key in labels.keys() {
        assert!(
            annotations.contains_key(key),
            "bundle.Dockerfile LABEL {key} is also in annotations.yaml"
        );
    }
    // The image is FROM scratch and copies the two directories the
    // annotations name, to the image root.
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(instructions.first(), Some(&"FROM scratch"));
    for dir in ["manifests", "metadata"] {
        assert!(
            instructions.contains(&format!("COPY {dir} /{dir}/").as_str()),
            "bundle.Dockerfile copies {dir}/"
        );
        assert!(bundle_dir().join(dir).is_dir());
    }
}

/// The kinds OLM installs from a registry+v1 bundle: those the bundle
/// validator accepts (operator-registry pkg/lib/bundle/supported_resources.go)
/// that OLM's catalog operator also creates (operator-lifecycle-manager
/// pkg/controller/operators/catalog/supportedresources.go); an InstallPlan
/// with any other kind fails. NetworkPolicy is supported from OLM v0.32, and
/// in OpenShift's OLM (openshift/operator-framework-olm) from its August 2025
/// backport to the release-4.12 and later branches. A PodMonitor passes the
/// validator but the catalog operator refuses it, and a DaemonSet,
/// SecurityContextConstraints or ValidatingAdmissionPolicy is not supported
/// at all: the coordinator creates the DaemonSet, the policies and the
/// PodMonitor (coordinator/src/operands).
const SUPPORTED_KINDS: &[&str] = &[
    "ClusterServiceVersion",
    "CustomResourceDefinition",
    "Secret",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "ServiceAccount",
    "Service",
    "Role",
    "RoleBinding",
    "PrometheusRule",
    "ServiceMonitor",
    "PodDisruptionBudget",
    "PriorityClass",
    "VerticalPodAutoscaler",
    "ConsoleYAMLSample",
    "NetworkPolicy",
];

#[kata_test]
fn every_bundle_manifest_is_a_kind_olm_installs_and_unnamespaced() {
    let all = manifests();
    assert!(all.len() >= 2, "a CSV and a CRD at least");
    for (file, manifest) in &all {
        let kind = str_of(&manifest["kind"], "kind");
        assert!(
            SUPPORTED_KINDS.contains(&kind),
            "{file}: OLM cannot install a {kind} from a bundle"
        );
        assert!(
            manifest["apiVersion"].as_str().is_some(),
            "{file}: apiVersion"
        );
        assert!(
            manifest["metadata"]["name"].as_str().is_some(),
            "{file}: name"
        );
        // OLM places namespaced objects in the install namespace.
        assert!(
            manifest["metadata"]["namespace"].is_null(),
            "{file}: no namespace in a bundle manifest"
        );
    }
}

#[kata_test]
fn csv_has_the_fields_olm_and_operatorhub_require() {
    let csv = csv();
    assert_eq!(csv["apiVersion"], "operators.coreos.com/v1alpha1");
    let spec = &csv["spec"];
    let version = str_of(&spec["version"], "spec.version");
    assert_eq!(version, "0.1.0");
    assert!(is_semver(version));
    assert_eq!(
        str_of(&csv["metadata"]["name"], "metadata.name"),
        format!("{PACKAGE}.v{version}"),
        "CSV name is <package>.v<version>"
    );
    assert!(!str_of(&spec["displayName"], "displayName").is_empty());
    assert!(str_of(&spec["description"], "description").len() > 100);
    assert!(is_semver(str_of(&spec["minKubeVersion"], "minKubeVersion")));
    assert_eq!(spec["maturity"], "alpha");
    assert!(!str_of(&spec["provider"]["name"], "provider.name").is_empty());
    let maintainers = spec["maintainers"].as_sequence().unwrap();
    assert!(!maintainers.is_empty());
    for m in maintainers {
        assert!(!str_of(&m["name"], "maintainer name").is_empty());
        assert!(str_of(&m["email"], "maintainer email").contains('@'));
    }
    let links = spec["links"].as_sequence().unwrap();
    assert!(!links.is_empty());
    for link in links {
        assert!(!str_of(&link["name"], "link name").is_empty());
        assert!(str_of(&link["url"], "link url").starts_with("https://"));
    }
    assert!(!spec["keywords"].as_sequence().unwrap().is_empty());
    if let Some(icons) = spec["icon"].as_sequence() {
        for icon in icons {
            let data = base64::engine::general_purpose::STANDARD
                .decode(str_of(&icon["base64data"], "icon.base64data"))
                .expect("icon base64data decodes");
            let media = str_of(&icon["mediatype"], "icon.mediatype");
            assert!(
                ["image/svg+xml", "image/png", "image/jpeg", "image/gif"].contains(&media),
                "{media}"
            );
            if media == "image/svg+xml" {
                assert!(String::from_utf8(data).unwrap().starts_with("<svg"));
            }
        }
    }

    // AllNamespaces only: KataConfig is cluster-scoped and the coordinator
    // watches nodes and pods in every namespace.
    let modes: BTreeMap<String, bool> = spec["installModes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            (
                str_of(&m["type"], "installMode type").to_owned(),
                m["supported"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        BTreeMap::from([
            ("AllNamespaces".to_owned(), true),
            ("MultiNamespace".to_owned(), false),
            ("OwnNamespace".to_owned(), false),
            ("SingleNamespace".to_owned(), false),
        ])
    );

    let annotations = &csv["metadata"]["annotations"];
    assert!(
        [
            "Basic Install",
            "Seamless Upgrades",
            "Full Lifecycle",
            "Deep Insights",
            "Auto Pilot"
        ]
        .contains(&str_of(&annotations["capabilities"], "capabilities"))
    );
    const CATEGORIES: &[&str] = &[
        "AI/Machine Learning",
        "Application Runtime",
        "Big Data",
        "Cloud Provider",
        "Database",
        "Developer Tools",
        "Drivers and plugins",
        "Integration & Delivery",
        "Logging & Tracing",
        "Modernization & Migration",
        "Monitoring",
        "Networking",
        "OpenShift Optional",
        "Security",
        "Storage",
        "Streaming & Messaging",
    ];
    for category in str_of(&annotations["categories"], "categories").split(',') {
        assert!(
            CATEGORIES.contains(&category.trim()),
            "unknown OperatorHub category {category:?}"
        );
    }
    assert!(
        !str_of(
            &annotations["operators.operatorframework.io/builder"],
            "builder"
        )
        .is_empty()
    );
    assert_eq!(
        annotations["operatorframework.io/suggested-namespace"], "kata-operator",
        "the DaemonSet and the coordinator's address assume this namespace"
    );

    // The advertised image is the one the Deployment runs; every image is a
    // related image (for mirroring), the node-agent's too.
    let deployment = &spec["install"]["spec"]["deployments"][0]["spec"];
    let coordinator_image = str_of(
        &deployment["template"]["spec"]["containers"][0]["image"],
        "coordinator image",
    );
    assert_eq!(annotations["containerImage"], coordinator_image);
    let agent = of_kind(
        &documents(&deploy_dir().join("base/node-agent.yaml")),
        "DaemonSet",
    );
    let agent_image = str_of(
        &agent["spec"]["template"]["spec"]["containers"][0]["image"],
        "agent image",
    );
    let related: Vec<&str> = spec["relatedImages"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| str_of(&r["image"], "relatedImages image"))
        .collect();
    assert!(related.contains(&coordinator_image), "{related:?}");
    assert!(related.contains(&agent_image), "{related:?}");
}

/// The schema node at a descriptor path (`a.b`, through lists' items).
fn schema_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    let mut node = schema;
    for part in path.split('.') {
        while node["type"] == "array" {
            node = &node["items"];
        }
        node = node["properties"].get(part)?;
    }
    Some(node)
}

#[kata_test]
fn owned_crds_are_the_bundle_crd_files_and_those_equal_deploy_base() {
    let all = manifests();
    let crd_files: BTreeMap<&String, &Value> = all
        .iter()
        .filter(|(_, m)| m["kind"] == "CustomResourceDefinition")
        .collect();
    let names: Vec<&str> = crd_files
        .values()
        .map(|crd| str_of(&crd["metadata"]["name"], "CRD name"))
        .collect();
    assert_eq!(names, [CRD_NAME, PROFILE_CRD_NAME], "the bundle's CRDs");
    // No drift: the bundle's copies are deploy/base's, byte for byte (and
    // those are generated by the coordinator, checked by deploy_manifests).
    for (file, base) in crd_files
        .keys()
        .zip(["kataconfig-crd.yaml", "kataruntimeprofile-crd.yaml"])
    {
        assert_eq!(
            read(&bundle_dir().join("manifests").join(file)),
            read(&deploy_dir().join("base").join(base)),
            "bundle/manifests/{file} differs from deploy/base/{base}: run `make generate`"
        );
    }

    let csv = csv();
    let owned = csv["spec"]["customresourcedefinitions"]["owned"]
        .as_sequence()
        .unwrap();
    assert_eq!(
        owned.len(),
        crd_files.len(),
        "the CSV owns exactly the bundle's CRDs"
    );
    let mut kataconfig = None;
    for entry in owned {
        let crd = crd_files
            .values()
            .find(|crd| crd["metadata"]["name"] == entry["name"])
            .expect("each owned CRD is one of the bundle's");
        assert_eq!(entry["kind"], crd["spec"]["names"]["kind"]);
        let versions = crd["spec"]["versions"].as_sequence().unwrap();
        let version = versions
            .iter()
            .find(|v| v["name"] == entry["version"])
            .expect("the owned version is one of the CRD's");
        assert_eq!(version["served"], true);
        assert_eq!(version["storage"], true);
        assert!(!str_of(&entry["displayName"], "owned displayName").is_empty());
        assert!(!str_of(&entry["description"], "owned description").is_empty());
        if entry["name"] == CRD_NAME {
            kataconfig = Some((entry, version));
        }
    }
    let (entry, version) = kataconfig.expect("the CSV owns the KataConfig CRD");

    // Descriptors name fields that exist, for the main spec and status fields.
    let schema = &version["schema"]["openAPIV3Schema"];
    for (section, required) in [
        (
            "specDescriptors",
            &["kataConfigPoolSelector", "checkNodeEligibility", "logLevel"][..],
        ),
        (
            "statusDescriptors",
            &[
                "conditions",
                "kataNodes.readyNodeCount",
                "kataNodes.nodeCount",
            ][..],
        ),
    ] {
        let root = if section == "specDescriptors" {
            &schema["properties"]["spec"]
        } else {
            &schema["properties"]["status"]
        };
        let descriptors = entry[section].as_sequence().unwrap();
        let paths: Vec<&str> = descriptors
            .iter()
            .map(|d| str_of(&d["path"], "descriptor path"))
            .collect();
        for path in required {
            assert!(paths.contains(path), "{section} describe {path}");
        }
        for d in descriptors {
            let path = str_of(&d["path"], "descriptor path");
            assert!(
                schema_at(root, path).is_some(),
                "{section} path {path} is not a field of the CRD"
            );
            assert!(!str_of(&d["displayName"], "descriptor displayName").is_empty());
        }
    }
    // The log level selector offers exactly the enum the schema enforces.
    let log_level = entry["specDescriptors"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|d| d["path"] == "logLevel")
        .unwrap();
    let offered: Vec<String> = log_level["x-descriptors"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|x| {
            x.as_str()?
                .strip_prefix("urn:alm:descriptor:com.tectonic.ui:select:")
                .map(str::to_owned)
        })
        .collect();
    let allowed: Vec<String> = serde_yaml::from_value(
        schema["properties"]["spec"]["properties"]["logLevel"]["enum"].clone(),
    )
    .unwrap();
    assert_eq!(offered, allowed);
}

#[kata_test]
fn install_strategy_is_deploy_base_deployment_and_generated_rbac() {
    let csv = csv();
    let install = &csv["spec"]["install"];
    assert_eq!(install["strategy"], "deployment");
    let deployments = install["spec"]["deployments"].as_sequence().unwrap();
    assert_eq!(deployments.len(), 1);

    let base = documents(&deploy_dir().join("base/coordinator.yaml"));
    let deployment = of_kind(&base, "Deployment");
    assert_eq!(deployments[0]["name"], deployment["metadata"]["name"]);
    assert_eq!(deployments[0]["label"], deployment["metadata"]["labels"]);
    assert_eq!(
        deployments[0]["spec"], deployment["spec"],
        "the CSV's Deployment spec differs from deploy/base/coordinator.yaml: copy it over"
    );

    let rbac = documents(&deploy_dir().join("base/rbac-coordinator.yaml"));
    let cluster_role = of_kind(&rbac, "ClusterRole");
    let role = of_kind(&rbac, "Role");
    let service_account = |binding_kind: &str| {
        let binding = of_kind(&rbac, binding_kind);
        let subjects = binding["subjects"].as_sequence().unwrap();
        assert_eq!(subjects.len(), 1);
        subjects[0]["name"].clone()
    };
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        service_account("ClusterRoleBinding")
    );

    for (field, rules, binding) in [
        (
            "clusterPermissions",
            &cluster_role["rules"],
            "ClusterRoleBinding",
        ),
        ("permissions", &role["rules"], "RoleBinding"),
    ] {
        let permissions = install["spec"][field].as_sequence().unwrap();
        let coordinator = permissions
            .iter()
            .find(|p| p["serviceAccountName"] == service_account(binding))
            .unwrap_or_else(|| panic!("{field}: no entry for the coordinator"));
        assert_eq!(
            &coordinator["rules"], rules,
            "the CSV's {field} differ from deploy/base/rbac-coordinator.yaml (`coordinator rbac`): copy them over"
        );
    }
    // Besides the coordinator's, only the agent's use of the built-in
    // privileged SCC (OpenShift; an inert rule elsewhere).
    assert_eq!(
        install["spec"]["permissions"].as_sequence().unwrap().len(),
        1
    );
    let cluster = install["spec"]["clusterPermissions"].as_sequence().unwrap();
    assert_eq!(cluster.len(), 2, "{cluster:?}");
    let agent = cluster
        .iter()
        .find(|p| p["serviceAccountName"] == kata_coordinator::rbac::AGENT_SERVICE_ACCOUNT)
        .unwrap();
    let expected: serde_yaml::Value = serde_yaml::from_str(
        "- apiGroups: [security.openshift.io]\n  resourceNames: [privileged]\n  resources: [securitycontextconstraints]\n  verbs: [use]\n",
    )
    .unwrap();
    assert_eq!(agent["rules"], expected);
}

/// The bundle's extra manifests are deploy/'s, minus the namespace OLM
/// assigns (and, for the Service, with the OpenShift overlay's annotation).
#[kata_test]
fn extra_bundle_manifests_equal_deploy() {
    let all = manifests();
    let strip_namespace = |mut v: Value| {
        if let Some(meta) = v["metadata"].as_mapping_mut() {
            meta.remove("namespace");
        }
        v
    };
    let by_kind_and_name = |kind: &str, name: &str| -> Value {
        all.values()
            .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the bundle has {kind} {name}"))
            .clone()
    };

    let service = of_kind(
        &documents(&deploy_dir().join("base/coordinator.yaml")),
        "Service",
    );
    let bundled = by_kind_and_name("Service", "kata-coordinator");
    assert_eq!(bundled["spec"], service["spec"]);
    assert_eq!(bundled["metadata"]["labels"], service["metadata"]["labels"]);
    // The Secret the Deployment mounts is the one service-ca issues.
    let deployment = of_kind(
        &documents(&deploy_dir().join("base/coordinator.yaml")),
        "Deployment",
    );
    assert_eq!(
        bundled["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"],
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"]
    );

    let ca = one_document(&deploy_dir().join("openshift/coordinator-ca.yaml"));
    assert_eq!(
        by_kind_and_name("ConfigMap", "kata-coordinator-ca"),
        strip_namespace(ca)
    );

    let accounts = documents(&deploy_dir().join("base/service-accounts.yaml"));
    let agent_account = accounts
        .into_iter()
        .find(|a| a["metadata"]["name"] == "kata-node-agent")
        .unwrap();
    assert_eq!(
        by_kind_and_name("ServiceAccount", "kata-node-agent"),
        strip_namespace(agent_account)
    );
}

/// The bundle's copies of deploy/ manifests that `make generate` writes:
/// (source, index of the YAML document in it, bundle file).
const GENERATED_COPIES: &[(&str, usize, &str)] = &[
    (
        "monitoring/service-monitor.yaml",
        0,
        "kata-coordinator_monitoring.coreos.com_v1_servicemonitor.yaml",
    ),
    (
        "monitoring/service-monitor.yaml",
        1,
        "kata-operator-prometheus_rbac.authorization.k8s.io_v1_role.yaml",
    ),
    (
        "monitoring/service-monitor.yaml",
        2,
        "kata-operator-prometheus_rbac.authorization.k8s.io_v1_rolebinding.yaml",
    ),
    (
        "monitoring/prometheus-rule.yaml",
        0,
        "kata-operator_monitoring.coreos.com_v1_prometheusrule.yaml",
    ),
    (
        "base/network-policy.yaml",
        0,
        "kata-coordinator_networking.k8s.io_v1_networkpolicy.yaml",
    ),
    (
        "base/network-policy.yaml",
        1,
        "kata-node-agent_networking.k8s.io_v1_networkpolicy.yaml",
    ),
];

/// What the Makefile's `generate` writes for document `index` of `text`:
/// its lines (the first document's with the file's heading comment),
/// without the metadata.namespace line OLM replaces.
fn bundle_copy(text: &str, index: usize) -> String {
    let mut document = 0;
    let mut out = String::new();
    for line in text.lines() {
        if line == "---" {
            document += 1;
        } else if document == index && line != "  namespace: kata-operator" {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[kata_test]
fn generated_bundle_copies_are_current() {
    let bundle = bundle_dir().join("manifests");
    for (source, index, file) in GENERATED_COPIES {
        let source_path = deploy_dir().join(source);
        let expected = bundle_copy(&read(&source_path), *index);
        assert!(
            !expected.trim().is_empty(),
            "{source} has a document {index}"
        );
        assert_eq!(
            read(&bundle.join(file)),
            expected,
            "bundle/manifests/{file} is stale against deploy/{source}: run `make generate`"
        );
        // The line filter removed the namespace and nothing else.
        let mut original = documents(&source_path).remove(*index);
        assert_eq!(
            original["metadata"]["namespace"], "kata-operator",
            "deploy/{source} #{index}"
        );
        original["metadata"]
            .as_mapping_mut()
            .unwrap()
            .remove("namespace");
        assert_eq!(one_document(&bundle.join(file)), original, "{file}");
    }
    // Every document of those sources is copied: a policy or rule added to
    // one is not silently left out of the bundle.
    let sources: std::collections::BTreeSet<&str> =
        GENERATED_COPIES.iter().map(|(s, _, _)| *s).collect();
    for source in sources {
        let copied = GENERATED_COPIES
            .iter()
            .filter(|(s, _, _)| *s == source)
            .count();
        assert_eq!(
            documents(&deploy_dir().join(source)).len(),
            copied,
            "deploy/{source}: every document needs a bundle copy (Makefile `generate` and GENERATED_COPIES)"
        );
    }
    // OLM's InstallPlan refuses a PodMonitor, and the dashboard belongs in
    // openshift-config-managed, where OLM installs nothing: the coordinator
    // creates both.
    for (_, manifest) in manifests() {
        assert_ne!(manifest["kind"], "PodMonitor");
        assert_ne!(manifest["metadata"]["name"], "kata-operator-dashboard");
    }
}

#[kata_test]
async fn alm_examples_are_accepted_by_the_api_server() {
    let csv = csv();
    let examples: serde_json::Value = serde_json::from_str(str_of(
        &csv["metadata"]["annotations"]["alm-examples"],
        "alm-examples",
    ))
    .expect("alm-examples is JSON");
    let examples = examples.as_array().expect("alm-examples is a JSON array");
    let owned = &csv["spec"]["customresourcedefinitions"]["owned"];
    let owned_kinds: Vec<&str> = owned
        .as_sequence()
        .unwrap()
        .iter()
        .map(|o| str_of(&o["kind"], "owned kind"))
        .collect();
    for kind in &owned_kinds {
        assert!(
            examples.iter().any(|e| e["kind"] == *kind),
            "alm-examples has an example of every owned kind ({kind})"
        );
    }

    let crds: Vec<CustomResourceDefinition> = [
        "kataconfiguration.openshift.io_kataconfigs.yaml",
        "kataconfiguration.openshift.io_kataruntimeprofiles.yaml",
    ]
    .iter()
    .map(|file| serde_yaml::from_str(&read(&bundle_dir().join("manifests").join(file))).unwrap())
    .collect();
    let plane = ControlPlane::start().await.unwrap();
    plane.install_crds(&crds).await.unwrap();
    let client = plane.client().await.unwrap();

    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some("olm-bundle-test".into()),
    };
    for example in examples {
        let object: DynamicObject = serde_json::from_value(example.clone()).unwrap();
        let types = object.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let plural = format!("{}s", gvk.kind.to_lowercase());
        let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let created = api
            .create(&dry_run, &object)
            .await
            .unwrap_or_else(|e| panic!("the API server refuses alm-example {example}: {e}"));
        // Defaults were applied, so the schema really ran on it; and the
        // same example with a value the schema forbids is refused, so the
        // dry run is not waving everything through.
        let mut broken = example.clone();
        if gvk.kind == "KataConfig" {
            assert_eq!(created.data["spec"]["enablePeerPods"], false, "{created:?}");
            broken["spec"]["logLevel"] = "loud".into();
        } else {
            assert_eq!(created.data["spec"]["debug"], false, "{created:?}");
            broken["spec"]["vm"]["vcpus"] = 0.into();
        }
        let broken: DynamicObject = serde_json::from_value(broken).unwrap();
        let refused = api.create(&dry_run, &broken).await;
        assert!(refused.is_err(), "{broken:?} was accepted");
    }
    // Nothing was stored.
    assert!(api_is_empty(&client).await);
}

async fn api_is_empty(client: &kube::Client) -> bool {
    let gvk = GroupVersionKind::gvk("kataconfiguration.openshift.io", "v1", "KataConfig");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "kataconfigs");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty()
}
