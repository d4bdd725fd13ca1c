//! deploy/base/network-policy.yaml on a real API server: the policies are
//! created (server-side apply, not a dry run), and their selectors, evaluated
//! by the API server against pods made from deploy/base's own templates,
//! select exactly the operator's pods and the monitoring namespaces; their
//! ports are exactly the containers' ports; the node-agent may reach the
//! coordinator's gRPC port, the one it dials through the Service, and DNS,
//! and nothing else.
#![allow(clippy::unwrap_used)]

use kata_test_harness::kata_test;
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ContainerPort, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kata_coordinator::rbac::NAMESPACE;
use kata_tests::ControlPlane;
use kata_tests::api_objects::listed_names;
use kata_tests::manifests::apply_objects;
use kata_tests::manifests::deploy_dir;
use kata_tests::manifests::read_manifests;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const MONITORING_NAMESPACES: &[&str] =
    &["openshift-monitoring", "openshift-user-workload-monitoring"];

fn base(file: &str) -> Vec<DynamicObject> {
    read_manifests(&deploy_dir().join("base").join(file)).unwrap()
}

fn of_kind(objects: &[DynamicObject], kind: &str) -> DynamicObject {
    objects
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind))
        .unwrap_or_else(|| panic!("no {kind}"))
        .clone()
}

/// A label selector in the API's query syntax; `{}` selects everything.
fn selector_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => panic!("selector operator {other}"),
        });
    }
    terms.join(",")
}

/// The names of the pods of `namespace` the API server finds for `selector`.
async fn pods_selected(client: &Client, namespace: &str, selector: &LabelSelector) -> Vec<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let selected = ListParams::default().labels(&selector_query(selector));
    listed_names(&pods, &selected).await.unwrap()
}

async fn namespaces_selected(client: &Client, selector: &LabelSelector) -> Vec<String> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let selected = ListParams::default().labels(&selector_query(selector));
    listed_names(&namespaces, &selected).await.unwrap()
}

/// The pods of the policy's namespace and the namespaces the peers of a
/// rule admit, as the API server evaluates their selectors.
#[derive(Debug, Default, PartialEq, Eq)]
struct Admitted {
    pods: BTreeSet<String>,
    namespaces: BTreeSet<String>,
}

async fn admitted(client: &Client, peers: &[NetworkPolicyPeer]) -> Admitted {
    let mut out = Admitted::default();
    for peer in peers {
        assert!(peer.ip_block.is_none(), "no ipBlock peers: {peer:?}");
        match (&peer.pod_selector, &peer.namespace_selector) {
            (Some(pods), None) => out
                .pods
                .extend(pods_selected(client, NAMESPACE, pods).await),
            (None, Some(namespaces)) => out
                .namespaces
                .extend(namespaces_selected(client, namespaces).await),
            other => panic!("a peer selects pods or namespaces, not both or neither: {other:?}"),
        }
    }
    out
}

fn only_pods(names: &[&str]) -> Admitted {
    Admitted {
        pods: names.iter().map(|n| n.to_string()).collect(),
        namespaces: BTreeSet::new(),
    }
}

fn monitoring() -> Admitted {
    Admitted {
        pods: BTreeSet::new(),
        namespaces: MONITORING_NAMESPACES
            .iter()
            .map(|n| n.to_string())
            .collect(),
    }
}

/// A pod as its controller would make it from `template`.
fn pod_from(template: &serde_json::Value, name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
    .unwrap()
}

/// The container ports of a pod.
fn container_ports(pod: &Pod) -> Vec<ContainerPort> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .collect()
}

/// The named container port of `pod` a policy port means.
fn resolve(port: &NetworkPolicyPort, pod: &Pod) -> Option<String> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    container_ports(pod).into_iter().find_map(|c| {
        let matches = match port.port.as_ref()? {
            IntOrString::Int(n) => c.container_port == *n,
            IntOrString::String(name) => c.name.as_deref() == Some(name.as_str()),
        };
        (matches && c.protocol.as_deref().unwrap_or("TCP") == protocol).then(|| {
            c.name
                .clone()
                .expect("the operator's container ports are named")
        })
    })
}

fn port_set(ports: &[NetworkPolicyPort]) -> BTreeSet<(String, String)> {
    ports
        .iter()
        .map(|p| {
            let port = match p.port.as_ref().unwrap() {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            };
            (p.protocol.clone().unwrap_or_else(|| "TCP".into()), port)
        })
        .collect()
}

#[kata_test]
async fn network_policies_admit_exactly_the_operators_traffic() {
    let plane = ControlPlane::start().await.unwrap();
    let client = plane.client().await.unwrap();
    for file in ["namespace.yaml", "service-accounts.yaml"] {
        apply_objects(&plane, &base(file)).await.unwrap();
    }
    let namespaces = Api::<Namespace>::all(client.clone());
    for name in MONITORING_NAMESPACES {
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
    }

    // Really created: the API server validates and stores them.
    let policy_objects = base("network-policy.yaml");
    apply_objects(&plane, &policy_objects).await.unwrap();
    let stored = Api::<NetworkPolicy>::namespaced(client.clone(), NAMESPACE);
    let mut names: Vec<String> = policy_objects.iter().map(ResourceExt::name_any).collect();
    names.sort();
    let listed = listed_names(&stored, &Default::default()).await.unwrap();
    assert_eq!(listed, names);

    // Pods made from deploy/base's templates, and one that is neither.
    let coordinator_objects = base("coordinator.yaml");
    let deployment = of_kind(&coordinator_objects, "Deployment");
    let daemon_set = of_kind(&base("node-agent.yaml"), "DaemonSet");
    let coordinator_pod = pod_from(&deployment.data["spec"]["template"], "coordinator-0");
    let agent_pod = pod_from(&daemon_set.data["spec"]["template"], "agent-0");
    let bystander: Pod = serde_json::from_value(json!({
        "metadata": {"name": "bystander", "labels": {"app.kubernetes.io/name": "kata-operator"}},
        // No controller manager makes the default ServiceAccount here.
        "spec": {
            "serviceAccountName": "kata-node-agent",
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "registry.example/c"}],
        },
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    for pod in [&coordinator_pod, &agent_pod, &bystander] {
        pods.create(&PostParams::default(), pod).await.unwrap();
    }
    let coordinator = stored.get("kata-coordinator").await.unwrap().spec.unwrap();
    let agent = stored.get("kata-node-agent").await.unwrap().spec.unwrap();
    assert_eq!(
        pods_selected(
            &client,
            NAMESPACE,
            &coordinator.pod_selector.clone().unwrap_or_default()
        )
        .await,
        ["coordinator-0"]
    );
    assert_eq!(
        pods_selected(
            &client,
            NAMESPACE,
            &agent.pod_selector.clone().unwrap_or_default()
        )
        .await,
        ["agent-0"]
    );

    // The coordinator: gRPC from the agents, metrics from the monitoring
    // stack, every port it serves admitted; its egress is left open (the
    // API server's addresses differ per cluster).
    assert_eq!(
        coordinator.policy_types.as_deref(),
        Some(&["Ingress".to_owned()][..])
    );
    let mut served = BTreeSet::new();
    for rule in coordinator.ingress.as_ref().unwrap() {
        let ports = rule.ports.as_ref().expect("every rule names its ports");
        let named: BTreeSet<String> = ports
            .iter()
            .map(|p| {
                resolve(p, &coordinator_pod)
                    .unwrap_or_else(|| panic!("{p:?} is no port of the coordinator"))
            })
            .collect();
        let sources = admitted(
            &client,
            rule.from.as_ref().expect("every rule names its sources"),
        )
        .await;
        let expected = if named.contains("grpc") {
            only_pods(&["agent-0"])
        } else {
            monitoring()
        };
        assert_eq!(sources, expected, "sources of the coordinator's {named:?}");
        served.extend(named);
    }
    assert_eq!(served, BTreeSet::from(["grpc".into(), "metrics".into()]));
    assert_eq!(
        served.len(),
        container_ports(&coordinator_pod).len(),
        "every port the coordinator serves is admitted"
    );

    // The agent: metrics from the monitoring stack only.
    assert_eq!(
        agent.policy_types.as_deref(),
        Some(&["Ingress".to_owned(), "Egress".to_owned()][..])
    );
    let ingress = agent.ingress.as_ref().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    let named: Vec<Option<String>> = ingress[0]
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| resolve(p, &agent_pod))
        .collect();
    assert_eq!(
        named,
        [Some("metrics".to_owned())],
        "the agent's policy admits its container port named metrics (deploy/base/node-agent.yaml); container ports: {:?}",
        container_ports(&agent_pod)
    );
    assert_eq!(container_ports(&agent_pod).len(), 1);
    assert_eq!(
        admitted(&client, ingress[0].from.as_ref().unwrap()).await,
        monitoring()
    );

    // The agent's egress: the coordinator's gRPC port, DNS, nothing else.
    let egress = agent.egress.as_ref().unwrap();
    assert_eq!(egress.len(), 2, "{egress:?}");
    let to_coordinator = &egress[0];
    assert_eq!(
        admitted(&client, to_coordinator.to.as_ref().unwrap()).await,
        only_pods(&["coordinator-0"])
    );
    let ports = to_coordinator.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        resolve(&ports[0], &coordinator_pod).as_deref(),
        Some("grpc")
    );
    // The port it dials: --coordinator's URL, through the Service's targetPort.
    let dialled: i32 = daemon_set.data["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str()?.strip_prefix("--coordinator="))
        .map(|url| url.rsplit(':').next().unwrap().parse().unwrap())
        .next()
        .expect("the agent's --coordinator");
    let service: Service = serde_json::from_value(
        serde_json::to_value(of_kind(&coordinator_objects, "Service")).unwrap(),
    )
    .unwrap();
    let service_port = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port == dialled)
        .expect("the Service serves the port the agent dials");
    assert_eq!(
        service_port.target_port,
        Some(IntOrString::String("grpc".into())),
        "the Service forwards the agent to the coordinator's port grpc"
    );

    let dns = &egress[1];
    assert!(
        dns.to.is_none(),
        "DNS to whatever resolver the pod is given"
    );
    let expected: BTreeSet<(String, String)> = ["UDP", "TCP"]
        .iter()
        .flat_map(|proto| ["53", "5353"].map(|p| (proto.to_string(), p.to_owned())))
        .collect();
    assert_eq!(port_set(dns.ports.as_ref().unwrap()), expected);
}
