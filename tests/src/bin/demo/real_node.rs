//! `demo --real-node` (`make demo REAL_NODE=1`): the demo with a real
//! kubelet as its node. It changes this machine (the kubelet's `/kubepods`
//! cgroups, a CNI bridge, `/` made a shared mount, stand-ins for Kata's shim
//! at the paths the coordinator's drop-in names), so it is never the default;
//! everything is removed at the end by the real node's teardown.
//!
//! The node (kubelet, CRI-O, kube-scheduler, kube-controller-manager, see
//! `kata_tests::real_node`) joins the MCO simulator's worker pool; the
//! coordinator and a node-agent probing this machine's `/` run in this
//! process. A KataConfig moves the node into `kata-oc`; once the simulator
//! has it on the rendered config, the machine-config daemon's write of that
//! config is played on the real node and CRI-O reloads, so the real CRI-O
//! serves the `kata` handler. A pod with `runtimeClassName: kata` is then
//! shown Pending, with the overhead admission gave it, for as long as the
//! node is not runtime-ready: here for good, since this VM's kernel lacks
//! what Kata needs (the agent says what), and Kata's shim is a stand-in.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kata_coordinator::api::KataConfig;
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::mco::names as mco;
use kata_coordinator::{names, objects};
use kata_tests::demo_world::{
    Agent, Coordinator, Probing, create_agent_identity, free_addr, node_states, wait_until_adopted,
};
use kata_tests::eventually;
use kata_tests::manifests::install_operator_api;
use kata_tests::mco_simulator::{McoSimulator, SimulatorOptions, machine_config_spec};
use kata_tests::pki::TlsFiles;
use kata_tests::real_node::{NODE_NAME, RealNode, SHIM_STAND_IN_ERROR, kata_pod, left_behind};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::{BoxError, step};

const KATACONFIG: &str = "example-kataconfig";
const POD: &str = "kata-demo";
const POD_NAMESPACE: &str = "default";

/// Why the real-node demo cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !kata_tests::crio::running_as_root() {
        return Some(
            "the real node needs root (it runs a kubelet and CRI-O and changes cgroups, \
             mounts and network links)"
                .into(),
        );
    }
    if !Path::new("/dev/kvm").exists() {
        return Some("this machine has no /dev/kvm".into());
    }
    kata_tests::real_node::unavailable()
}

/// Runs the demo; the node is torn down on every way out, a failure too.
pub async fn run(ci: bool, timeout: Duration) -> Result<ExitCode, BoxError> {
    if let Some(why) = unavailable() {
        eprintln!("demo: REAL_NODE=1 cannot run here: {why}");
        return Ok(ExitCode::from(2));
    }
    step(
        "starting a real node: a control plane fit for a kubelet, kube-controller-manager, \
         kube-scheduler, CRI-O (crun, a CNI bridge) and the kubelet; this changes the \
         machine until the end of the demo",
    );
    let started = Instant::now();
    let mut node = RealNode::start().await?;
    println!(
        "    {NODE_NAME} Ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let outcome = show(&mut node, ci, timeout).await;
    step(
        "removing the real node: its pods, the kubelet, CRI-O, the controllers, the control plane, its bridge, cgroups, mounts and stand-ins",
    );
    drop(node);
    let left = left_behind();
    if left.is_empty() {
        println!(
            "    removed: no kubelet, CRI-O or conmon of the node, no kubepods cgroup, no bridge, \
             no mount under its directory, no stand-in"
        );
    } else {
        eprintln!("demo: the teardown left {}", left.join("; "));
        return Ok(ExitCode::FAILURE);
    }
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(why) => {
            eprintln!("demo: FAILED: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Everything after the node is up, stopped before the node goes.
async fn show(node: &mut RealNode, ci: bool, timeout: Duration) -> Result<(), BoxError> {
    let client = node.client().await?;
    label_worker(&client).await?;
    install_operator_api(node.control_plane()).await?;
    create_agent_identity(&client).await?;
    step("starting the MCO simulator: the node joins the worker pool");
    let simulator = McoSimulator::start(
        client.clone(),
        SimulatorOptions {
            update_delay: Duration::from_secs(1),
            resync_interval: Duration::from_millis(100),
        },
    )
    .await?;
    wait_until_adopted(&client, timeout).await?;
    let tls = TlsFiles::generate()?;
    let grpc = free_addr()?;
    let coordinator = Coordinator::start(client.clone(), &tls, grpc, MarkPolicy::default())?;
    let tokens = tempfile::tempdir()?;
    let agent = Agent::start_probing(
        &client,
        NODE_NAME,
        Path::new("/"),
        Probing::this_machine(),
        grpc,
        &tls,
        tokens.path(),
    )
    .await?;
    step(&format!(
        "started the coordinator (agents' gRPC on {grpc}) and a node-agent probing this machine's / for {NODE_NAME}"
    ));
    let shown = install_and_schedule(node, &client, timeout).await;
    if shown.is_ok() && !ci {
        println!();
        println!("Everything keeps running; Ctrl-C removes it all.");
        tokio::signal::ctrl_c().await?;
    }
    if let Err(error) = agent.stop().await {
        eprintln!("demo: the agent failed: {error}");
    }
    if let Err(error) = coordinator.stop().await {
        eprintln!("demo: the coordinator failed: {error}");
    }
    simulator.stop().await;
    shown
}

async fn label_worker(client: &Client) -> Result<(), BoxError> {
    let label = serde_json::json!({ "metadata": { "labels": { names::WORKER_ROLE_LABEL: "" } } });
    Api::<Node>::all(client.clone())
        .patch(NODE_NAME, &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    Ok(())
}

async fn install_and_schedule(
    node: &mut RealNode,
    client: &Client,
    timeout: Duration,
) -> Result<(), BoxError> {
    step(&format!(
        "creating KataConfig {KATACONFIG} (extension sandboxed-containers: the node runs Debian, \
         an OS the operator maps to no extension)"
    ));
    let config: KataConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": { "name": KATACONFIG },
        "spec": { "extension": "sandboxed-containers" },
    }))?;
    Api::<KataConfig>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await?;
    let rendered = on_kata_config(client, timeout).await?;
    println!("    {NODE_NAME} runs {rendered} (the MCO simulator's rollout)");
    let spec = machine_config_spec(client, &rendered)
        .await?
        .ok_or_else(|| format!("{rendered} is gone"))?;
    let (written, stand_ins) = node.apply_rendered_config(&spec)?;
    step("the machine-config daemon's write of that config on the real node, then SIGHUP to CRI-O");
    for path in &written {
        println!("    wrote {}", path.display());
    }
    for stand_in in &stand_ins {
        let what = if stand_in.named_by == "runtime_path" {
            format!("refuses with {SHIM_STAND_IN_ERROR:?}")
        } else {
            "names no hypervisor".to_owned()
        };
        println!(
            "    stand-in at {} (the drop-in's {}): it {what}; removed at the end",
            stand_in.path.display(),
            stand_in.named_by
        );
    }

    eventually("CRI-O to serve the kata handler", timeout, || async {
        let served = node.served_runtime_handlers().map_err(|e| e.to_string())?;
        Ok(served.iter().any(|h| h == names::RUNTIME_HANDLER))
    })
    .await?;
    println!(
        "    the real CRI-O serves: {}",
        node.served_runtime_handlers()?.join(", ")
    );

    step("a pod with runtimeClassName: kata");
    ensure_runtime_class(client).await?;
    node.wait_default_service_account(POD_NAMESPACE).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), POD_NAMESPACE);
    pods.create(&PostParams::default(), &kata_pod(POD)).await?;
    let overhead = pods
        .get(POD)
        .await?
        .spec
        .and_then(|s| s.overhead)
        .unwrap_or_default();
    println!(
        "    overhead set by admission: {}",
        show_quantities(&overhead)
    );
    let expected = BTreeMap::from([
        ("cpu".to_owned(), Quantity("250m".into())),
        ("memory".to_owned(), Quantity("350Mi".into())),
    ]);
    if overhead != expected {
        return Err(format!("the pod's overhead is {overhead:?}, not 250m/350Mi").into());
    }
    let condition = eventually("the node's KataRuntimeReady condition", timeout, || async {
        let states = node_states(client).await.map_err(|e| e.to_string())?;
        let state = states.into_iter().find(|s| s.name == NODE_NAME);
        Ok(state.is_some_and(|s| s.ready.is_some()))
    });
    condition.await?;
    let state = node_states(client)
        .await?
        .into_iter()
        .find(|s| s.name == NODE_NAME)
        .ok_or("the node is gone")?;
    let (status, reason, message) = state.ready.clone().unwrap_or_default();
    println!("    KataRuntimeReady on {NODE_NAME}: {status} {reason}: {message}");
    if state.runtime_ready() {
        let placed = eventually("the kata pod to be scheduled", timeout, || async {
            let pod = pods.get(POD).await.map_err(|e| e.to_string())?;
            Ok(pod.spec.and_then(|s| s.node_name).is_some())
        });
        placed.await?;
        println!(
            "    scheduled on {NODE_NAME}, charged its overhead; its sandbox then reaches \
             CRI-O's kata handler, whose shim here is a stand-in: a real VM needs Kata installed"
        );
        return Ok(());
    }
    let pending = eventually("the scheduler to hold the kata pod", timeout, || async {
        let pod = pods.get(POD).await.map_err(|e| e.to_string())?;
        Ok(unschedulable(&pod).is_some())
    });
    pending.await?;
    let pod = pods.get(POD).await?;
    println!(
        "    {}: Pending, {}",
        pod.name_any(),
        unschedulable(&pod).unwrap_or_default()
    );
    println!(
        "    The node cannot be made ready here: this VM's kernel lacks what Kata needs ({reason}), \
         and Kata's shim is a stand-in. So the pod stays Pending. On a node with Kata installed \
         and its kernel modules loaded, the coordinator labels it {} and the scheduler places \
         the pod there, charged 250m CPU and 350Mi memory over its own requests.",
        names::KATA_RUNTIME_LABEL
    );
    Ok(())
}

/// The rendered `kata-oc` config, once the simulator has the node on it.
async fn on_kata_config(client: &Client, timeout: Duration) -> Result<String, BoxError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let prefix = format!("rendered-{}-", mco::POOL_NAME);
    let current = || async {
        let node = nodes.get(NODE_NAME).await.map_err(|e| e.to_string())?;
        let annotations = node.annotations();
        let done = annotations.get(mco::STATE).is_some_and(|s| s == "Done");
        Ok::<_, String>(
            annotations
                .get(mco::CURRENT_CONFIG)
                .filter(|c| done && c.starts_with(&prefix))
                .cloned(),
        )
    };
    eventually(
        "the MCO simulator to put the node on the kata-oc config",
        timeout,
        || async { Ok(current().await?.is_some()) },
    )
    .await?;
    Ok(current().await?.unwrap_or_default())
}

/// The RuntimeClass as the coordinator applies it, unless it already has.
async fn ensure_runtime_class(client: &Client) -> Result<(), BoxError> {
    let classes: Api<RuntimeClass> = Api::all(client.clone());
    match classes
        .create(&PostParams::default(), &objects::runtime_class())
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// The scheduler's message when it holds the pod.
fn unschedulable(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .filter(|c| c.reason.as_deref() == Some("Unschedulable"))
        .map(|c| c.message.clone().unwrap_or_default())
}

fn show_quantities(quantities: &BTreeMap<String, Quantity>) -> String {
    quantities
        .iter()
        .map(|(k, v)| format!("{k} {}", v.0))
        .collect::<Vec<_>>()
        .join(", ")
}
