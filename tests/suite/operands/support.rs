//! A cluster installed from the shipped manifests with the coordinator
//! running on its own ServiceAccount and managing its operands.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kata_coordinator::app::RunOptions;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::kind::Kind;
use kata_coordinator::operands::{self, OperandSettings, node_agent};
use kata_coordinator::rbac::{NAMESPACE, SERVICE_ACCOUNT};
use kata_tests::api_objects::service_account_token;
use kata_tests::cluster::Cluster;
use kata_tests::demo_world::free_addr;
use kata_tests::eventually;
use kata_tests::http::scrape_metric;
use kata_tests::manifests::{apply_objects, deploy_dir, read_manifests};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;

pub const IMAGE: &str = "registry.test/kata-operator/node-agent:v-test";
pub const NEW_IMAGE: &str = "registry.test/kata-operator/node-agent:v-next";
pub const COORDINATOR_URL: &str = "https://coordinator.test:8443";
pub const RESYNC: Duration = Duration::from_millis(500);
const WAIT: Duration = Duration::from_secs(30);

pub struct Installed {
    pub cluster: Cluster,
    pub deployment_uid: String,
    metrics: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Installed {
    /// The namespace, accounts, RBAC and the coordinator's Deployment as
    /// shipped, then the coordinator on its ServiceAccount's token.
    pub async fn start(image: Option<&str>) -> Installed {
        Self::start_after(image, &[]).await
    }

    /// [`Self::start`], with `earlier` created first as `kubectl apply`
    /// creates objects (field manager `kubectl-client-side-apply`): what an
    /// earlier release's install left.
    pub async fn start_after(image: Option<&str>, earlier: &[DynamicObject]) -> Installed {
        let cluster = Cluster::start(&[]).await;
        let base = deploy_dir().join("base");
        for file in [
            "namespace.yaml",
            "service-accounts.yaml",
            "rbac-coordinator.yaml",
            "coordinator.yaml",
        ] {
            apply_objects(&cluster.plane, &read_manifests(&base.join(file)).unwrap())
                .await
                .unwrap();
        }
        for object in earlier {
            create_as_kubectl(&cluster.client, object).await;
        }
        let deployments: Api<DynamicObject> = Api::namespaced_with(
            cluster.client.clone(),
            NAMESPACE,
            &operands::DEPLOYMENT.api_resource(),
        );
        let deployment_uid = deployments
            .get(operands::OWNER_DEPLOYMENT)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let (metrics, task) = run(&cluster, image).await;
        Installed {
            cluster,
            deployment_uid,
            metrics,
            task,
        }
    }

    /// Stops this coordinator and starts one with `image`, as an upgrade does.
    pub async fn restart(mut self, image: Option<&str>) -> Installed {
        self.task.abort();
        let _ = (&mut self.task).await;
        let (metrics, task) = run(&self.cluster, image).await;
        Installed {
            metrics,
            task,
            ..self
        }
    }

    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Writes this coordinator made to objects of `kind`.
    pub async fn writes(&self, kind: &str) -> f64 {
        let series = format!("kata_operator_api_writes_total{{kind=\"{kind}\"}}");
        scrape_metric(self.metrics, &series).await.unwrap_or(0.0)
    }

    pub fn daemon_sets(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.cluster.client.clone(),
            NAMESPACE,
            &operands::DAEMON_SET.api_resource(),
        )
    }

    pub fn namespaced_api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.cluster.client.clone(), namespace, &kind.api_resource())
    }

    pub fn cluster_api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.cluster.client.clone(), &kind.api_resource())
    }

    /// The DaemonSet, once `ready` holds for it.
    pub async fn wait_daemon_set(&self, ready: impl Fn(&Value) -> bool) -> Value {
        wait_object(&self.daemon_sets(), node_agent::NAME, ready).await
    }

    /// Installs the stand-in PodMonitor CRD: the Prometheus Operator's API
    /// served from now on.
    pub async fn install_pod_monitor_api(&self) {
        self.cluster
            .plane
            .install_crds(&[kata_tests::manifests::pod_monitor_crd().unwrap()])
            .await
            .unwrap();
    }

    pub async fn wait_cluster_object(&self, kind: Kind, name: &str) {
        let api = self.cluster_api(kind);
        eventually(&format!("{} {name}", kind.kind), WAIT, || {
            let api = api.clone();
            async move {
                Ok(api
                    .get_opt(name)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some())
            }
        })
        .await
        .unwrap();
    }

    /// A strategic-merge patch by another field manager, as `kubectl edit`
    /// makes.
    pub async fn edit_daemon_set(&self, patch: Value) {
        let params = PatchParams {
            field_manager: Some("kubectl-edit".into()),
            ..PatchParams::default()
        };
        self.daemon_sets()
            .patch(node_agent::NAME, &params, &Patch::Strategic(&patch))
            .await
            .unwrap();
    }

    async fn events(&self, reason: &str) -> Vec<Event> {
        Api::<Event>::all(self.cluster.client.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Waits for an Event `reason` whose note contains `text`.
    pub async fn wait_event(&self, reason: &str, text: &str) {
        eventually(
            &format!("an Event {reason} saying {text:?}"),
            WAIT,
            || async {
                Ok(self
                    .events(reason)
                    .await
                    .iter()
                    .any(|e| e.note.as_deref().is_some_and(|n| n.contains(text))))
            },
        )
        .await
        .unwrap();
    }

    /// How many times an Event `reason` was published (a series counts
    /// each repeat).
    pub async fn event_count(&self, reason: &str) -> i32 {
        self.events(reason)
            .await
            .iter()
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum()
    }
}

async fn run(cluster: &Cluster, image: Option<&str>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let token = service_account_token(&cluster.client, NAMESPACE, SERVICE_ACCOUNT)
        .await
        .unwrap();
    let client = cluster.plane.client_with_token(&token).await.unwrap();
    let metrics = free_addr().unwrap();
    let options = RunOptions {
        agents: None,
        operands: Some(OperandSettings {
            namespace: NAMESPACE.into(),
            node_agent_image: image.map(str::to_owned),
            coordinator_url: COORDINATOR_URL.into(),
            host_root: "/".into(),
            owner_deployment: Some(operands::OWNER_DEPLOYMENT.into()),
            resync: RESYNC,
        }),
        metrics_listen: metrics,
        mark_policy: MarkPolicy::default(),
        leader_election: None,
        log_filter: None,
        heap: None,
    };
    let task = tokio::spawn(async move {
        let _ = kata_coordinator::app::run(client, options).await;
    });
    (metrics, task)
}

async fn create_as_kubectl(client: &kube::Client, object: &DynamicObject) {
    let types = object.types.clone().unwrap();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", &types.api_version));
    let gvk = kube::core::GroupVersionKind::gvk(group, version, &types.kind);
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), NAMESPACE, &resource)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = kube::api::PostParams {
        field_manager: Some("kubectl-client-side-apply".into()),
        ..Default::default()
    };
    api.create(&params, object).await.unwrap();
}

/// The object `name`, once `ready` holds for it.
pub async fn wait_object(
    api: &Api<DynamicObject>,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let seen = std::sync::Mutex::new(Value::Null);
    let result = eventually(&format!("{name} as expected"), WAIT, || {
        let (api, seen, ready) = (api.clone(), &seen, &ready);
        async move {
            let Some(live) = api.get_opt(name).await.map_err(|e| e.to_string())? else {
                return Ok(false);
            };
            let live = serde_json::to_value(live).map_err(|e| e.to_string())?;
            let holds = ready(&live);
            *seen.lock().unwrap() = live;
            Ok(holds)
        }
    })
    .await;
    let seen = seen.into_inner().unwrap();
    result.unwrap_or_else(|e| panic!("{e}; last seen: {seen}"));
    seen
}

/// The namespace the OpenShift console reads dashboards from.
pub fn console_dashboards_namespace() -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": kata_coordinator::operands::monitoring::DASHBOARD_NAMESPACE},
    }))
    .unwrap()
}

/// Everything logged in this process (each test runs in its own) from the
/// moment it is installed, as text lines.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLog {
    pub fn install() -> CapturedLog {
        let log = CapturedLog::default();
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init()
            .expect("no other log subscriber in this test's process");
        log
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
