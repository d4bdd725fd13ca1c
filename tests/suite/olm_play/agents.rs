//! The node-agents of the DaemonSet the coordinator created, run for real
//! on a bare API server, which has no DaemonSet controller and no kubelet.
//! The test stands in for both: for each simulated worker the DaemonSet
//! selects, it creates the Pod the controller would (from the template,
//! owned by the DaemonSet as controller, bound to the node, created as the
//! controller's ServiceAccount so the pod policy judges it as it would),
//! prepares its volumes as the kubelet would and starts the real node-agent
//! binary with the container's args and env (`launch`). When the template
//! changes (its hash, which the controller's `controller-revision-hash`
//! label stands for), it rolls the pods one node at a time: stop the agent,
//! delete the Pod, create the new one, start it and wait for its liveness
//! probe.

mod launch;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kata_coordinator::operands::{self, node_agent};
use kata_tests::api_objects::bound_token;
use kata_tests::cluster::{CONVERGE, Cluster};
use kata_tests::control_plane::free_port;
use kata_tests::http::http_get;
use kata_tests::workspace_binary::workspace_binary;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::install::NAMESPACE;
use super::pod::{CoordinatorService, SERVICE_PORT};
use launch::{ServiceAddress, check_template, launch, only};

/// Who creates a DaemonSet's pods when the controller manager runs with
/// --use-service-account-credentials; the API server's bootstrap RBAC
/// lets it create and delete pods.
const DAEMON_SET_CONTROLLER: &str = "system:serviceaccount:kube-system:daemon-set-controller";
/// The label the DaemonSet controller puts the template's revision in.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// How long a stopped agent may take after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One agent pod and its running process.
pub struct AgentPod {
    pub name: String,
    pub image: String,
    process: Child,
    log: PathBuf,
    _files: tempfile::TempDir,
}

impl Drop for AgentPod {
    fn drop(&mut self) {
        kata_tests::child_process::stop(&mut self.process, STOP_GRACE);
    }
}

/// The agents of the DaemonSet, one per selected node.
pub struct AgentPods {
    /// Each node's fake host root, where its `/` hostPath leads.
    hosts: BTreeMap<String, PathBuf>,
    pub running: BTreeMap<String, AgentPod>,
    /// The template revision the running pods were made from.
    revision: String,
    controller: Client,
}

fn daemon_set_pods(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), NAMESPACE, &ApiResource::erase::<Pod>(&()))
}

async fn live_daemon_set(cluster: &Cluster) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client.clone(),
        NAMESPACE,
        &operands::DAEMON_SET.api_resource(),
    );
    serde_json::to_value(api.get(node_agent::NAME).await.unwrap()).unwrap()
}

/// The template's revision: a hash of it, as the controller's label is.
fn revision(ds: &Value) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    ds["spec"]["template"].to_string().hash(&mut hasher);
    format!("{:x}", hasher.finish())
}

/// The Pod the DaemonSet controller creates for `node`.
fn pod_for(ds: &Value, node: &str, revision: &str) -> Value {
    let template = &ds["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    labels[REVISION_LABEL] = json!(revision);
    labels["pod-template-generation"] = json!(ds["metadata"]["generation"].to_string());
    let mut spec = template["spec"].clone();
    // The controller leaves binding to the scheduler (a node affinity on
    // the node's name); the stand-in plays both and binds it.
    spec["nodeName"] = json!(node);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", node_agent::NAME),
            "namespace": NAMESPACE,
            "labels": labels,
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "name": ds["metadata"]["name"], "uid": ds["metadata"]["uid"],
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    })
}

/// The nodes the template's nodeSelector picks.
async fn selected_nodes(client: &Client, template: &Value) -> Vec<String> {
    let selector = template["spec"]["nodeSelector"].as_object();
    let selector: Vec<String> = selector
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap()))
        .collect();
    let params = ListParams::default().labels(&selector.join(","));
    let nodes = Api::<Node>::all(client.clone())
        .list(&params)
        .await
        .unwrap();
    nodes.items.iter().map(|n| n.name_any()).collect()
}

/// The pod's volumes as the kubelet would set them up, under `dir`: name →
/// where it is here. The host root (`/` only) is the node's fake root;
/// the projected token one bound to this Pod for the template's audience;
/// a ConfigMap's keys as files.
async fn prepare_volumes(
    client: &Client,
    pod: &Value,
    dir: &Path,
    host_root: &Path,
) -> BTreeMap<String, PathBuf> {
    let mut volumes = BTreeMap::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        only(
            "volume",
            volume,
            &[&["name", "hostPath", "projected", "configMap"]],
        );
        let name = volume["name"].as_str().unwrap().to_owned();
        let local = dir.join(&name);
        if let Some(host_path) = volume.get("hostPath") {
            only("hostPath", host_path, &[&["path", "type"]]);
            assert_eq!(host_path["path"], "/", "only the host root is played");
            volumes.insert(name, host_root.to_owned());
            continue;
        }
        std::fs::create_dir_all(&local).unwrap();
        if let Some(projected) = volume.get("projected") {
            only("projected", projected, &[&["sources", "defaultMode"]]);
            for source in projected["sources"].as_array().unwrap() {
                only("projected source", source, &[&["serviceAccountToken"]]);
                let request = &source["serviceAccountToken"];
                only(
                    "serviceAccountToken",
                    request,
                    &[&["audience", "expirationSeconds", "path"]],
                );
                let token = pod_token(client, pod, request["audience"].as_str().unwrap()).await;
                std::fs::write(local.join(request["path"].as_str().unwrap()), token).unwrap();
            }
        } else if let Some(config_map) = volume.get("configMap") {
            only("configMap", config_map, &[&["name", "defaultMode"]]);
            let map = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE)
                .get(config_map["name"].as_str().unwrap())
                .await
                .unwrap();
            let data = map.data.unwrap_or_default();
            assert!(
                !data.is_empty(),
                "ConfigMap {config_map} has no data to mount"
            );
            for (key, value) in data {
                std::fs::write(local.join(key), value).unwrap();
            }
        } else {
            panic!("volume {volume} is not played");
        }
        volumes.insert(name, local);
    }
    volumes
}

/// A token bound to the Pod, as the kubelet projects it. Valid for a day
/// rather than the template's hour: no kubelet refreshes it here.
async fn pod_token(client: &Client, pod: &Value, audience: &str) -> String {
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap();
    let meta: kube::api::ObjectMeta = serde_json::from_value(pod["metadata"].clone()).unwrap();
    bound_token(client, NAMESPACE, account, &meta, audience)
        .await
        .unwrap()
}

impl AgentPods {
    /// Creates and starts the pods of the live DaemonSet, on the nodes its
    /// template selects, each with the fake host root `hosts` gives it.
    pub async fn start(
        cluster: &Cluster,
        service: &CoordinatorService,
        hosts: &[(&str, &Path)],
    ) -> AgentPods {
        let mut config = cluster.plane.config().await.unwrap();
        config.auth_info.impersonate = Some(DAEMON_SET_CONTROLLER.to_owned());
        let mut agents = AgentPods {
            hosts: hosts
                .iter()
                .map(|(node, root)| (node.to_string(), root.to_path_buf()))
                .collect(),
            running: BTreeMap::new(),
            revision: String::new(),
            controller: Client::try_from(config).unwrap(),
        };
        let ds = live_daemon_set(cluster).await;
        check_template(&ds["spec"]["template"]);
        agents.revision = revision(&ds);
        for node in selected_nodes(&cluster.client, &ds["spec"]["template"]).await {
            let pod = agents.run_pod(cluster, service, &ds, &node).await;
            agents.running.insert(node, pod);
        }
        agents
    }

    /// When the live DaemonSet's template is not the one the pods were
    /// made from, replaces them one node at a time; how many it replaced.
    pub async fn roll(&mut self, cluster: &Cluster, service: &CoordinatorService) -> usize {
        let ds = live_daemon_set(cluster).await;
        let revision = revision(&ds);
        if revision == self.revision {
            return 0;
        }
        check_template(&ds["spec"]["template"]);
        self.revision = revision;
        let nodes: Vec<String> = self.running.keys().cloned().collect();
        for node in &nodes {
            let old = self.running.remove(node).unwrap();
            self.delete_pod(cluster, old).await;
            let new = self.run_pod(cluster, service, &ds, node).await;
            self.running.insert(node.clone(), new);
        }
        nodes.len()
    }

    /// The controller deletes the Pod; the kubelet stops its container and
    /// then removes the Pod for good (no grace left: it has stopped).
    async fn delete_pod(&self, cluster: &Cluster, pod: AgentPod) {
        daemon_set_pods(&self.controller)
            .delete(&pod.name, &DeleteParams::default())
            .await
            .unwrap();
        let name = pod.name.clone();
        drop(pod);
        let pods = daemon_set_pods(&cluster.client);
        if pods.get_opt(&name).await.unwrap().is_some() {
            pods.delete(&name, &DeleteParams::default().grace_period(0))
                .await
                .unwrap();
        }
    }

    /// Creates `node`'s Pod as the controller and starts its agent; returns
    /// once the agent answers its liveness probe.
    async fn run_pod(
        &self,
        cluster: &Cluster,
        service: &CoordinatorService,
        ds: &Value,
        node: &str,
    ) -> AgentPod {
        let host_root = self
            .hosts
            .get(node)
            .unwrap_or_else(|| panic!("the DaemonSet selects {node}, which has no host root"));
        let object: DynamicObject =
            serde_json::from_value(pod_for(ds, node, &self.revision)).unwrap();
        let created = daemon_set_pods(&self.controller)
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("the agent's pod for {node} refused: {e}"));
        let pod = serde_json::to_value(&created).unwrap();
        let files = tempfile::tempdir().unwrap();
        let volumes = prepare_volumes(&cluster.client, &pod, files.path(), host_root).await;
        let address = ServiceAddress {
            host: &service.host,
            port: SERVICE_PORT,
            local: service.grpc,
        };
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let launch = launch(&pod, &volumes, &address, metrics);
        let name = created.name_any();
        println!("{name} on {node}: node-agent {}", launch.args.join(" "));
        let log = files.path().join("node-agent.log");
        let mut agent = AgentPod {
            name,
            image: pod["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned(),
            process: spawn(&launch, &log),
            log,
            _files: files,
        };
        if let Some((path, address)) = &launch.liveness {
            wait_live(&mut agent, path, *address).await;
        }
        agent
    }
}

fn spawn(launch: &launch::Launch, log: &Path) -> Child {
    let binary = workspace_binary("kata-node-agent", "node-agent", "NODE_AGENT_BIN").unwrap();
    let file = std::fs::File::create(log).unwrap();
    let mut command = std::process::Command::new(binary);
    command
        .args(&launch.args)
        // The container's env only, as in its own image.
        .env_clear()
        .envs(&launch.env)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    kata_tests::child_process::spawn_tied_to_process(command).unwrap()
}

/// Waits until the agent answers its liveness probe with 200; fails with
/// its log if it exits first or never does.
async fn wait_live(agent: &mut AgentPod, path: &str, address: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + CONVERGE;
    let failure = loop {
        if let Ok(Some(status)) = agent.process.try_wait() {
            break format!("exited {status}");
        }
        if http_get(address, path)
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            return;
        }
        if std::time::Instant::now() > deadline {
            break format!("no 200 on {path} after {CONVERGE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    panic!("{}: {failure}; its log:\n{log}", agent.name);
}

/// Records every moment one of `nodes` lacks `label`, from its start to
/// [`LabelWatch::finish`].
pub struct LabelWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl LabelWatch {
    pub fn start(client: &Client, nodes: &[&str], label: &'static str) -> LabelWatch {
        let api = Api::<Node>::all(client.clone());
        let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut missing = Vec::new();
            while stopped.try_recv().is_err() {
                for node in &nodes {
                    let labels = api.get(node).await.unwrap().labels().clone();
                    if !labels.contains_key(label) {
                        missing.push(format!("{node} without {label}: {labels:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            missing
        });
        LabelWatch { stop, task }
    }

    /// Every moment seen without the label.
    pub async fn finish(self) -> Vec<String> {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}
