//! Without kubelets: the documented tree, the objects by the code's names,
//! and every step a kubelet would answer recorded as failed.

use super::*;

#[kata_test]
async fn gather_collects_the_documented_tree_and_records_what_needs_a_kubelet() {
    let plane = ControlPlane::start().await.unwrap();
    let client = populate(&plane).await;
    // The control plane's kubectl first, as `oc` or `kubectl` is in the image.
    let run = run_gather(&plane, &client, &binary_dir().unwrap(), |_| async {}).await;
    let (out, stdout, seen) = (&run.out, &run.stdout, run.check_pod.clone());

    // --- the tree, exactly ---------------------------------------------
    let kataconfig_resource = format!("{}.{}", KATA_CONFIG.plural, KATA_CONFIG.group);
    assert_eq!(files(out), base_tree(), "the output tree");

    // --- the objects, by the code's names ------------------------------
    let named = |file: &str, kind: &str, name: &str| {
        let doc = yaml(&out.join(file));
        assert_eq!(doc["kind"], kind, "{file}");
        assert_eq!(doc["metadata"]["name"], name, "{file}");
        doc
    };
    let crd = named(
        &format!("crds/{kataconfig_resource}.yaml"),
        "CustomResourceDefinition",
        &kataconfig_resource,
    );
    assert_eq!(crd["spec"]["group"], KATA_CONFIG.group);
    let config = named(
        &format!("kataconfigs/{KATACONFIG}.yaml"),
        KATA_CONFIG.kind,
        KATACONFIG,
    );
    assert_eq!(config["spec"]["checkNodeEligibility"], true);
    assert_eq!(config["status"]["kataNodes"]["installed"][0], NODE_A);
    let mc = named(
        &format!("machineconfigs/{}.yaml", mco::MACHINE_CONFIG_NAME),
        mco::MACHINE_CONFIG.kind,
        mco::MACHINE_CONFIG_NAME,
    );
    assert_eq!(mc["spec"]["extensions"][0], mco::EXTENSION);
    for pool in [mco::POOL_NAME, mco::WORKER_POOL] {
        named(
            &format!("machineconfigpools/{pool}.yaml"),
            mco::POOL.kind,
            pool,
        );
    }
    let rc = named(
        &format!("runtimeclasses/{}.yaml", names::RUNTIME_CLASS_NAME),
        "RuntimeClass",
        names::RUNTIME_CLASS_NAME,
    );
    assert_eq!(rc["handler"], names::RUNTIME_HANDLER);
    let version = yaml(&out.join("version.yaml"));
    assert!(
        version["serverVersion"]["gitVersion"].is_string(),
        "{version:?}"
    );

    // --- nodes ---------------------------------------------------------
    assert_eq!(
        read(&out.join("nodes/targeted.txt")),
        format!("{NODE_A}\n{NODE_B}\n")
    );
    let table = read(&out.join("nodes/nodes.txt"));
    for node in [NODE_A, NODE_B, NODE_C] {
        assert!(table.contains(node), "{table}");
    }
    assert!(table.to_uppercase().contains("KATA-RUNTIME"), "{table}");
    let node_file = |node: &str| {
        let doc = yaml(&out.join(format!("nodes/{node}.yaml")));
        assert_eq!(doc["name"], node);
        doc
    };
    let labels = |doc: &Yaml| -> BTreeMap<String, Option<String>> {
        doc["labels"]
            .as_mapping()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_owned(),
                    v.as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    let expect_labels = |worker: Option<&str>,
                         kata_oc: Option<&str>,
                         capable: Option<&str>,
                         runtime: Option<&str>| {
        BTreeMap::from([
            (
                names::WORKER_ROLE_LABEL.to_owned(),
                worker.map(str::to_owned),
            ),
            (
                mco::KATA_POOL_ROLE_LABEL.to_owned(),
                kata_oc.map(str::to_owned),
            ),
            (
                names::KATA_CAPABLE_LABEL.to_owned(),
                capable.map(str::to_owned),
            ),
            (
                names::KATA_RUNTIME_LABEL.to_owned(),
                runtime.map(str::to_owned),
            ),
        ])
    };

    let a = node_file(NODE_A);
    assert_eq!(a["targeted"], true);
    assert_eq!(
        labels(&a),
        expect_labels(Some(""), Some(""), Some("true"), Some("true"))
    );
    assert_eq!(
        a["annotations"][mco::CURRENT_CONFIG],
        "rendered-kata-oc-1234"
    );
    assert_eq!(a["annotations"][mco::STATE], mco::STATE_DONE);
    assert!(a["annotations"][mco::REASON].is_null());
    assert_eq!(a["condition"]["type"], names::NODE_CONDITION);
    assert_eq!(a["condition"]["status"], "True");
    assert_eq!(a["condition"]["reason"], "RuntimeReady");
    assert_eq!(a["condition"]["lastTransitionTime"], "2026-01-02T03:04:05Z");

    let b = node_file(NODE_B);
    assert_eq!(b["targeted"], true, "targeted through the status alone");
    assert_eq!(
        labels(&b),
        expect_labels(Some(""), None, Some("true"), None)
    );
    assert!(b["annotations"][mco::CURRENT_CONFIG].is_null());
    assert_eq!(b["condition"]["status"], "False");
    assert_eq!(b["condition"]["reason"], "KvmDeviceMissing");
    assert_eq!(b["condition"]["message"], TRICKY_MESSAGE);

    let c = node_file(NODE_C);
    assert_eq!(c["targeted"], false);
    assert_eq!(labels(&c), expect_labels(Some(""), None, None, None));
    assert!(c["condition"].is_null(), "{c:?}");

    // --- pods, events, the namespace -----------------------------------
    assert_eq!(read(&out.join("kata-pods.txt")), "default/kata-workload\n");
    let kataconfig_events = yaml(&out.join("events/kataconfig.yaml"));
    let reasons: Vec<&str> = items(&kataconfig_events)
        .iter()
        .map(|e| {
            assert_eq!(e["involvedObject"]["kind"], KATA_CONFIG.kind);
            assert_eq!(e["involvedObject"]["name"], KATACONFIG);
            e["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(reasons, ["Installing"]);
    assert_eq!(
        names_of(&yaml(&out.join("events/namespace.yaml"))),
        BTreeSet::from(["agent-pull".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/deployments.yaml"))),
        BTreeSet::from(["kata-coordinator".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/daemonsets.yaml"))),
        BTreeSet::from(["kata-node-agent".to_owned()])
    );
    assert_eq!(
        names_of(&yaml(&out.join("namespace/services.yaml"))),
        BTreeSet::from(["kata-coordinator".to_owned()])
    );
    // The pod policy the world put in force, policy and binding.
    let policies = yaml(&out.join("admission-policies.yaml"));
    let kinds: BTreeSet<(String, String)> = items(&policies)
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap().to_owned(),
                i["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pod_policy = "kata-operator-node-agent-pods-v2".to_owned();
    assert_eq!(
        kinds,
        BTreeSet::from([
            ("ValidatingAdmissionPolicy".to_owned(), pod_policy.clone()),
            ("ValidatingAdmissionPolicyBinding".to_owned(), pod_policy),
        ])
    );
    let gathered_pods = names_of(&yaml(&out.join("namespace/pods.yaml")));
    assert!(gathered_pods.contains(COORDINATOR_POD) && gathered_pods.contains(AGENT_POD));
    assert!(items(&yaml(&out.join("namespace/leases.yaml"))).is_empty());

    // --- what needs a kubelet: recorded, one line each ------------------
    let errors = read(&out.join("gather-errors.log"));
    println!(
        "--- gather-errors.log ---\n{errors}\n--- nodes/{NODE_B}.yaml ---\n{}",
        read(&out.join(format!("nodes/{NODE_B}.yaml")))
    );
    let failed: Vec<&str> = errors
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| {
            let (_, rest) = l.split_once(" FAILED ").unwrap_or_else(|| panic!("{l}"));
            rest
        })
        .collect();
    let expected_failures = [
        format!("coordinator-logs: logs pod/{COORDINATOR_POD} -c coordinator"),
        // It restarted once, so its previous run's logs are asked for too.
        format!("coordinator-logs: previous logs pod/{COORDINATOR_POD} -c coordinator"),
        format!("coordinator-metrics: metrics of pod/{COORDINATOR_POD}"),
        format!("agent-logs: logs pod/{AGENT_POD} -c node-agent"),
        // worker-a has a running agent: exec into it, no new pod.
        format!("node-check: node-agent check in pod/{AGENT_POD} on node {NODE_A}"),
        // worker-b has none: a check pod, which no kubelet ever runs.
        format!("node-check: node-agent check on node {NODE_B}"),
    ];
    assert_eq!(
        failed.len(),
        expected_failures.len(),
        "exactly the kubelet-bound steps fail:\n{errors}"
    );
    for (line, want) in failed.iter().zip(&expected_failures) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} is not {want:?}\n{errors}"
        );
    }
    assert!(
        failed[5].contains("exit 124, timed out"),
        "the check pod is bounded: {}",
        failed[5]
    );
    assert!(
        errors.contains(&format!(
            "did not finish within {CHECK_TIMEOUT}s (phase: Pending)"
        )),
        "{errors}"
    );
    assert_eq!(read(&out.join("node-check/summary.txt")), "");

    let summary = read(&out.join("gather-summary.txt"));
    assert!(stdout.contains(&summary), "the summary ends the output");
    assert!(summary.contains("client:     kubectl"), "{summary}");
    assert!(summary.contains(&format!("namespace:  {}", contract::DEFAULT_NAMESPACE)));
    assert!(summary.contains("6 failed"), "{summary}");
    assert!(summary.contains("2 node(s), checked: 0"), "{summary}");
    let absent = format!(
        "absent:\n  {}.{}/{}\nfailed",
        mco::CONTAINER_RUNTIME_CONFIG.plural,
        mco::GROUP,
        mco::CONTAINER_RUNTIME_CONFIG_NAME
    );
    assert!(summary.contains(&absent), "{summary}");

    // --- the check pod: as the DaemonSet runs the agent, in a namespace
    // of its own (the pod policy refuses it in the operator's), then deleted
    let seen = seen.expect("the gather created a check pod for worker-b");
    let check_namespace = seen.namespace().unwrap();
    assert_ne!(check_namespace, contract::DEFAULT_NAMESPACE);
    assert!(
        errors.contains(&format!("pod {check_namespace}/{}", seen.name_any())),
        "{errors}"
    );
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&check_namespace)
        .await
        .unwrap();
    let labels = namespace.labels();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("privileged"),
            "{labels:?}"
        );
    }
    assert_eq!(
        namespace.annotations().get("openshift.io/node-selector"),
        Some(&String::new()),
        "no project node selector clashes with the pod's nodeName"
    );
    let spec = seen.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE_B));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let account = spec.service_account_name.as_deref().unwrap();
    assert_ne!(account, contract::AGENT_SERVICE_ACCOUNT);
    let account = Api::<ServiceAccount>::namespaced(client.clone(), &check_namespace)
        .get(account)
        .await
        .unwrap();
    assert_eq!(account.automount_service_account_token, Some(false));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(!spec.host_network.unwrap_or(false) && !spec.host_pid.unwrap_or(false));
    assert!(spec.active_deadline_seconds.is_some());
    let daemonset = read_manifests(&deploy_dir().join("base/node-agent.yaml")).unwrap();
    let agent = &daemonset[0].data["spec"]["template"]["spec"]["containers"][0];
    let container = &spec.containers[0];
    assert_eq!(container.image.as_deref(), agent["image"].as_str());
    assert_eq!(
        container.args.as_deref(),
        Some(
            &[
                "check".to_owned(),
                "--json".into(),
                "--host-root=/host".into()
            ][..]
        )
    );
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/host", Some(true))
    );
    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(volume.name, mount.name);
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/");
    assert_checks_cleaned_up(&client).await;
}
