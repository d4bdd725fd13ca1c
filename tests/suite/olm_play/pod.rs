//! The coordinator run as a pod of the Deployment OLM wrote would run it:
//! the real binary on the token of the pod's ServiceAccount, with the
//! container's env and args read from the live Deployment. What a pod gets
//! from the kubelet the test stands in for: the downward-API values, the
//! `$(VAR)` expansion in args, the TLS Secret's files (a certificate for
//! the Service's name, as the service-ca operator issues) and loopback
//! listen addresses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use kata_tests::api_objects::service_account_token;
use kata_tests::cluster::Cluster;
use kata_tests::control_plane::free_port;
use kata_tests::coordinator::{CoordinatorProcess, PodSettings};
use kata_tests::pki::TestCa;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::install::NAMESPACE;

/// The bundle's Service in front of the coordinator's gRPC port.
const SERVICE: &str = "kata-coordinator";
/// Its port, which the agents' URL names.
pub const SERVICE_PORT: u16 = 8443;
/// The ConfigMap the service-ca operator puts its CA in, and the key.
const CA_CONFIG_MAP: &str = "kata-coordinator-ca";
const CA_KEY: &str = "service-ca.crt";
/// The one setting the test adds to the Deployment's env: the eligibility
/// dwell, two minutes by default, that a node must be reported capable
/// before it is labelled. Shortened so the install is not two minutes of
/// waiting; the eligibility_dwell module tests the dwell itself.
const JOIN_DWELL: (&str, &str) = ("ELIGIBILITY_JOIN_SECONDS", "2");

/// The coordinator as one pod of the Deployment.
pub struct CoordinatorPod {
    pub process: CoordinatorProcess,
}

/// What the cluster gives the coordinator's pods beyond the Deployment, the
/// same for every pod: the Service's address (a loopback port every pod of
/// the Deployment listens on in turn), and the service-ca operator's
/// serving certificate for the Service's name and its CA, which it also
/// injects into the bundle's CA ConfigMap for the agents.
pub struct CoordinatorService {
    /// The Service's name as the agents' URL gives it.
    pub host: String,
    /// Where the Service's gRPC port leads: the pod's `--grpc-listen`.
    pub grpc: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl CoordinatorService {
    /// Issues the serving certificate and injects the CA, as the service-ca
    /// operator does for the Service's annotation and the ConfigMap's.
    pub async fn start(cluster: &Cluster) -> CoordinatorService {
        let host = format!("{SERVICE}.{NAMESPACE}.svc");
        let ca = TestCa::new("openshift-service-serving-signer").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let local = format!("{host}.cluster.local");
        let (cert, key) = ca
            .server_cert(&[&host, &local])
            .unwrap()
            .write(dir.path(), "tls")
            .unwrap();
        let injected = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CA_CONFIG_MAP, "namespace": NAMESPACE},
            "data": {CA_KEY: ca.cert_pem()},
        });
        Api::<ConfigMap>::namespaced(cluster.client.clone(), NAMESPACE)
            .patch(
                CA_CONFIG_MAP,
                &PatchParams::apply("service-ca-operator"),
                &Patch::Apply(&injected),
            )
            .await
            .unwrap();
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        CoordinatorService {
            host,
            grpc,
            cert,
            key,
            _dir: dir,
        }
    }
}

/// The live Deployment `name`.
pub async fn live_deployment(cluster: &Cluster, name: &str) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        NAMESPACE,
        &kata_coordinator::operands::DEPLOYMENT.api_resource(),
    );
    serde_json::to_value(api.get(name).await.unwrap()).unwrap()
}

/// The container's env as the kubelet gives it to the process: plain
/// values, and each field reference read from `pod` (the downward API).
/// Any other source (a Secret, a ConfigMap, a resource) is not played and
/// fails the test.
pub fn container_env(container: &Value, pod: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap().to_owned();
        let value = match (&entry["value"], &entry["valueFrom"]) {
            (Value::String(value), Value::Null) => value.clone(),
            (Value::Null, Value::Null) => String::new(),
            (Value::Null, from) => {
                let path = from["fieldRef"]["fieldPath"].as_str();
                let path = path.unwrap_or_else(|| panic!("{name}: {from} is not played"));
                let field = path.split('.').try_fold(pod, |v, key| v.get(key));
                let field = field.and_then(Value::as_str);
                field
                    .unwrap_or_else(|| panic!("{name}: field {path} is not in the pod"))
                    .to_owned()
            }
            _ => panic!("{name}: {entry} is not played"),
        };
        env.insert(name, value);
    }
    env
}

/// `arg` after the kubelet's expansion of `$(VAR)` from the container's env.
pub fn expand(arg: &str, env: &BTreeMap<String, String>) -> String {
    let mut arg = arg.to_owned();
    for (name, value) in env {
        arg = arg.replace(&format!("$({name})"), value);
    }
    arg
}

/// The container's args after the kubelet's `$(VAR)` expansion, less the
/// subcommand and the metrics address the test process chooses itself;
/// the gRPC address and the TLS files replaced by the Service's.
pub fn container_args(
    container: &Value,
    env: &BTreeMap<String, String>,
    service: &CoordinatorService,
) -> Vec<String> {
    let mut args = Vec::new();
    for arg in container["args"].as_array().unwrap() {
        let mut arg = expand(arg.as_str().unwrap(), env);
        let flag = arg.split('=').next().unwrap_or_default();
        match flag {
            "run" | "--metrics-listen" => continue,
            "--grpc-listen" => arg = format!("--grpc-listen={}", service.grpc),
            "--tls-cert-file" => arg = format!("--tls-cert-file={}", service.cert.display()),
            "--tls-key-file" => arg = format!("--tls-key-file={}", service.key.display()),
            _ => {}
        }
        args.push(arg);
    }
    args
}

impl CoordinatorPod {
    /// Starts the pod `pod_name` of the live Deployment the coordinator's
    /// operands are owned by, behind `service`.
    pub async fn start(
        cluster: &Cluster,
        service: &CoordinatorService,
        pod_name: &str,
    ) -> CoordinatorPod {
        let live = live_deployment(cluster, kata_coordinator::operands::OWNER_DEPLOYMENT).await;
        let pod = &live["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let account = pod["serviceAccountName"].as_str().unwrap();
        let token = service_account_token(&cluster.client, NAMESPACE, account)
            .await
            .unwrap();
        let pod_object = json!({"metadata": {"name": pod_name, "namespace": NAMESPACE}});
        let mut env = container_env(container, &pod_object);
        let args = container_args(container, &env, service);
        env.insert(JOIN_DWELL.0.to_owned(), JOIN_DWELL.1.to_owned());
        println!("{pod_name}: coordinator run {}", args.join(" "));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let settings = PodSettings {
            token: Some(token),
            env: env.into_iter().collect(),
        };
        let process = CoordinatorProcess::start_with(&cluster.plane, &args, &settings).unwrap();
        CoordinatorPod { process }
    }
}
