//! The coordinator run as a pod of the Deployment OLM wrote would run it:
//! the real binary on the token of the pod's ServiceAccount, with the
//! container's env and args read from the live Deployment. What a pod gets
//! from the kubelet the test stands in for: the downward-API values, the
//! `$(VAR)` expansion in args, the TLS Secret's files (the test's own
//! certificate) and loopback listen addresses.

use std::collections::BTreeMap;

use kata_tests::api_objects::service_account_token;
use kata_tests::cluster::Cluster;
use kata_tests::control_plane::free_port;
use kata_tests::coordinator::{CoordinatorProcess, PodSettings};
use kata_tests::pki::TlsFiles;
use kube::api::{Api, DynamicObject};
use serde_json::Value;

use super::install::NAMESPACE;

/// The coordinator as one pod of the Deployment, and its TLS files.
pub struct CoordinatorPod {
    pub process: CoordinatorProcess,
    _tls: TlsFiles,
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
/// values, and the pod's name and namespace for their field references.
pub fn container_env(container: &Value, pod_name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().unwrap().to_owned();
        let value = match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => pod_name.to_owned(),
            Some("metadata.namespace") => NAMESPACE.to_owned(),
            Some(other) => panic!("{name}: field {other} is not played"),
            None => entry["value"].as_str().unwrap_or_default().to_owned(),
        };
        env.insert(name, value);
    }
    env
}

/// The container's args after the kubelet's `$(VAR)` expansion, less the
/// subcommand and the metrics address the test process chooses itself;
/// the gRPC address and the TLS files replaced by the test's.
pub fn container_args(
    container: &Value,
    env: &BTreeMap<String, String>,
    grpc: &str,
    tls: &TlsFiles,
) -> Vec<String> {
    let mut args = Vec::new();
    for arg in container["args"].as_array().unwrap() {
        let mut arg = arg.as_str().unwrap().to_owned();
        for (name, value) in env {
            arg = arg.replace(&format!("$({name})"), value);
        }
        let flag = arg.split('=').next().unwrap_or_default();
        match flag {
            "run" | "--metrics-listen" => continue,
            "--grpc-listen" => arg = format!("--grpc-listen={grpc}"),
            "--tls-cert-file" => arg = format!("--tls-cert-file={}", tls.cert.display()),
            "--tls-key-file" => arg = format!("--tls-key-file={}", tls.key.display()),
            _ => {}
        }
        args.push(arg);
    }
    args
}

impl CoordinatorPod {
    /// Starts the pod `pod_name` of the live Deployment `deployment`.
    pub async fn start(cluster: &Cluster, deployment: &str, pod_name: &str) -> CoordinatorPod {
        let live = live_deployment(cluster, deployment).await;
        let pod = &live["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let account = pod["serviceAccountName"].as_str().unwrap();
        let token = service_account_token(&cluster.client, NAMESPACE, account)
            .await
            .unwrap();
        let tls = TlsFiles::generate().unwrap();
        let env = container_env(container, pod_name);
        let grpc = format!("127.0.0.1:{}", free_port().unwrap());
        let args = container_args(container, &env, &grpc, &tls);
        println!("{pod_name}: coordinator run {}", args.join(" "));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let settings = PodSettings {
            token: Some(token),
            env: env.into_iter().collect(),
        };
        let process = CoordinatorProcess::start_with(&cluster.plane, &args, &settings).unwrap();
        CoordinatorPod { process, _tls: tls }
    }
}
