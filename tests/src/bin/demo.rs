//! `demo [--ci] [--state-dir DIR] [--timeout SECONDS] [--without-kvm] [--real-node]`:
//! the whole system on this machine (`make demo`; with `--real-node`, `make
//! demo REAL_NODE=1`, a real kubelet instead, see [`real_node`]).
//!
//! Brings up a local control plane (etcd + kube-apiserver, state in
//! `DIR`, default `.cluster`), the MCO simulator, the coordinator and a
//! node-agent for each of three simulated workers, whose host roots are kept
//! in `DIR/hosts/NODE`:
//!
//! - `worker-kvm`: its `/dev/kvm` is this machine's real one (when it has one);
//! - `worker-nokvm`: no KVM at all;
//! - `worker-broken`: capable, but a broken CRI-O drop-in keeps the runtime
//!   from ever being ready.
//!
//! Then it creates a KataConfig with `checkNodeEligibility: true` and prints
//! the KataConfig's phase and each node's state whenever they change, until
//! the expected end state, then `kubectl get` tables and how to explore.
//!
//! Interactive (stdin and stdout are terminals, no `--ci`): everything keeps
//! running, and changes keep being printed, until Ctrl-C (or SIGTERM, which
//! is what `make cluster-down` sends); then every process stops and the state
//! directory stays for reading (`make cluster-down` removes it).
//! Non-interactive: exits 0 at the expected end state, 1 if it is not
//! reached within the time limit, stopping everything either way.

#[path = "demo/real_node.rs"]
mod real_node;

use std::error::Error;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use kata_coordinator::api::{KataConfig, condition};
use kata_coordinator::health::marks::MarkPolicy;
use kata_coordinator::names;
use kata_coordinator::plan::nodes::failure_reason;
use kata_tests::ControlPlane;
use kata_tests::api_objects::create_node;
use kata_tests::control_plane::binary_dir;
use kata_tests::demo_world::{
    Agent, Coordinator, NodeState, copy_tree, create_agent_identity, free_addr, host_dir,
    node_states, uninstalled_host, wait_until_adopted,
};
use kata_tests::eventually;
use kata_tests::host_root::FakeHost;
use kata_tests::manifests::install_operator_api;
use kata_tests::mco_simulator::{McoSimulator, SimulatorOptions};
use kata_tests::pki::TlsFiles;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::signal::unix::{SignalKind, signal};

type BoxError = Box<dyn Error>;

const KATACONFIG: &str = "example-kataconfig";
const WORKER_KVM: &str = "worker-kvm";
const WORKER_NOKVM: &str = "worker-nokvm";
const WORKER_BROKEN: &str = "worker-broken";
const NODES: [&str; 3] = [WORKER_BROKEN, WORKER_KVM, WORKER_NOKVM];
const POLL: Duration = Duration::from_millis(250);
const NODE_LABELS: &str = "feature.node.kubernetes.io/runtime.kata,node-role.kubernetes.io/kata-oc,katacontainers.io/kata-runtime";

struct Options {
    ci: bool,
    state_dir: PathBuf,
    timeout: Duration,
    without_kvm: bool,
    real_node: bool,
}

const USAGE: &str =
    "usage: demo [--ci] [--state-dir DIR] [--timeout SECONDS] [--without-kvm] [--real-node]

  --ci            do not wait for Ctrl-C: exit 0 once the system has converged,
                  1 if it has not within the time limit (the default when
                  stdin or stdout is not a terminal)
  --state-dir     where the control plane, kubeconfig and fake host roots live
                  (default .cluster, as for `make cluster-up`)
  --timeout       how long the system may take to converge (default 180)
  --without-kvm   act as if this machine had no /dev/kvm
  --real-node     a real kubelet and CRI-O as the node instead of simulated
                  ones (root and /dev/kvm; changes this machine until the
                  demo ends, then removes everything)";

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            ci: !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()),
            state_dir: PathBuf::from(".cluster"),
            timeout: Duration::from_secs(180),
            without_kvm: false,
            real_node: false,
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--ci" => options.ci = true,
                "--without-kvm" => options.without_kvm = true,
                "--real-node" => options.real_node = true,
                "--state-dir" => {
                    options.state_dir = args.next().ok_or("--state-dir needs a value")?.into();
                }
                "--timeout" => {
                    let seconds = args.next().ok_or("--timeout needs a value")?;
                    let seconds: u64 = seconds
                        .parse()
                        .map_err(|e| format!("--timeout {seconds}: {e}"))?;
                    options.timeout = Duration::from_secs(seconds);
                }
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(options)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("demo: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = if options.real_node {
        real_node::run(options.ci, options.timeout).await
    } else {
        run(options).await
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("demo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the demo started, stopped in order by [`World::stop`].
struct World {
    plane: ControlPlane,
    client: Client,
    simulator: McoSimulator,
    coordinator: Coordinator,
    agents: Vec<Agent>,
    _tls: TlsFiles,
}

impl World {
    async fn stop(self) {
        for agent in self.agents {
            let node = agent.node.clone();
            if let Err(error) = agent.stop().await {
                eprintln!("demo: the agent of {node} failed: {error}");
            }
        }
        if let Err(error) = self.coordinator.stop().await {
            eprintln!("demo: the coordinator failed: {error}");
        }
        self.simulator.stop().await;
        drop(self.client);
        // Stops kube-apiserver, then etcd.
        drop(self.plane);
    }
}

async fn run(options: Options) -> Result<ExitCode, BoxError> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let state_dir = prepare_state_dir(&options.state_dir)?;
    let pid_file = state_dir.join("pid");
    std::fs::write(&pid_file, std::process::id().to_string())?;
    let kvm = kvm_available(options.without_kvm);

    let started = Instant::now();
    let world = tokio::select! {
        world = start_world(&state_dir, kvm.is_ok(), options.ci) => world?,
        _ = interrupt.recv() => return Ok(stopped_early(&state_dir)),
        _ = terminate.recv() => return Ok(stopped_early(&state_dir)),
    };
    let kubeconfig = std::fs::canonicalize(world.plane.kubeconfig())?;
    std::fs::write(state_dir.join("ready"), kubeconfig.display().to_string())?;
    if let Err(why) = &kvm {
        println!("NOTE: {why}; {WORKER_KVM} gets no /dev/kvm either, so no node is capable.");
    }

    step(&format!(
        "creating KataConfig {KATACONFIG} (checkNodeEligibility: true)"
    ));
    create_kataconfig(&world.client).await?;
    println!();
    let expected = Expected { kvm: kvm.is_ok() };
    let mut watch = Watch::new(started);
    let deadline = Instant::now() + options.timeout;
    let mut converged = false;
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupt.recv() => break Outcome::Interrupted,
            _ = terminate.recv() => break Outcome::Interrupted,
        }
        if world.coordinator.has_stopped() {
            break Outcome::Failed("the coordinator stopped by itself".into());
        }
        let Ok(snapshot) = Snapshot::take(&world.client).await else {
            continue;
        };
        watch.show(&snapshot);
        if converged {
            continue;
        }
        match expected.check(&snapshot) {
            Ok(()) => {
                converged = true;
                println!();
                step(&format!(
                    "converged after {:.1}s: the expected end state",
                    started.elapsed().as_secs_f64()
                ));
                summary(&kubeconfig, &state_dir, kvm.is_ok(), options.ci)?;
                if options.ci {
                    break Outcome::Converged;
                }
            }
            Err(unmet) if Instant::now() > deadline => {
                break Outcome::Failed(format!(
                    "the system did not converge within {}s: {unmet}\nlogs: {}",
                    options.timeout.as_secs(),
                    state_dir.display()
                ));
            }
            Err(_) => {}
        }
    };

    step("stopping the agents, the coordinator, the MCO simulator and the control plane");
    world.stop().await;
    let _ = std::fs::remove_file(state_dir.join("ready"));
    let _ = std::fs::remove_file(&pid_file);
    match outcome {
        Outcome::Converged => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted if converged => {
            println!(
                "Stopped. The state stays in {}; `make cluster-down` removes it.",
                state_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted => {
            println!("Interrupted before the system converged.");
            Ok(ExitCode::from(130))
        }
        Outcome::Failed(why) => {
            eprintln!("demo: FAILED: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

enum Outcome {
    Converged,
    Interrupted,
    Failed(String),
}

fn stopped_early(state_dir: &Path) -> ExitCode {
    let _ = std::fs::remove_file(state_dir.join("pid"));
    println!("Interrupted while starting; everything started so far is stopped.");
    ExitCode::from(130)
}

fn step(what: &str) {
    println!("==> {what}");
}

/// Makes `dir` an empty directory for a new demo, refusing if a control plane
/// (`make cluster-up`'s or a demo's) still runs there, or if it holds
/// something that is not a previous demo's or cluster's state.
fn prepare_state_dir(dir: &Path) -> Result<PathBuf, BoxError> {
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
        let pid = pid.trim();
        if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
            return Err(format!(
                "a local control plane is already running from {} (pid {pid}). Stop it first: \
                 Ctrl-C in the terminal of its demo, or `make cluster-down`.",
                dir.display()
            )
            .into());
        }
    }
    if dir.exists() {
        let ours = ["pid", "ready", "kubeconfig", "ca.crt", "hosts"]
            .iter()
            .any(|name| dir.join(name).exists());
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !ours && !empty {
            return Err(format!(
                "{} exists and is not a previous demo's state; choose another --state-dir",
                dir.display()
            )
            .into());
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    // Absolute, so the kubeconfig's certificate paths work from anywhere.
    Ok(std::fs::canonicalize(dir)?)
}

/// Whether a fake root can have this machine's real `/dev/kvm`, or why not.
fn kvm_available(pretend_without: bool) -> Result<(), String> {
    if pretend_without {
        return Err("--without-kvm: acting as if this machine had no /dev/kvm".into());
    }
    if !Path::new("/dev/kvm").exists() {
        return Err("this machine has no /dev/kvm".into());
    }
    // Making a device node for it needs root (CAP_MKNOD); try it once.
    FakeHost::empty()
        .with_real_kvm()
        .map(|_| ())
        .map_err(|e| format!("cannot give a fake root this machine's /dev/kvm ({e})"))
}

async fn start_world(state_dir: &Path, kvm: bool, ci: bool) -> Result<World, BoxError> {
    step(&format!(
        "starting etcd and kube-apiserver in {}",
        state_dir.display()
    ));
    let plane = ControlPlane::start_in_dir(state_dir.to_path_buf()).await?;
    step(
        "installing the OpenShift MachineConfig CRDs, the KataConfig CRD and its singleton policy",
    );
    install_operator_api(&plane).await?;
    let client = plane.client().await?;
    create_agent_identity(&client).await?;

    step(&format!(
        "creating nodes {} with fake host roots in {}",
        NODES.join(", "),
        state_dir.join("hosts").display()
    ));
    for node in NODES {
        let host = match node {
            WORKER_KVM => uninstalled_host(kvm)?,
            WORKER_NOKVM => uninstalled_host(false)?,
            // An extra drop-in with a syntax error: CRI-O would refuse to
            // start, whatever the operator installs next to it.
            _ => uninstalled_host(kvm)?.broken_drop_in(),
        };
        copy_tree(host.path(), &host_dir(state_dir, node))?;
        create_node(&client, node, &[(names::WORKER_ROLE_LABEL, "")]).await?;
    }

    // Slower in interactive mode, so each node's rollout can be followed.
    let update_delay = if ci {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    step(&format!(
        "starting the MCO simulator (a node's drain and reboot take {update_delay:?})"
    ));
    let simulator = McoSimulator::start(
        client.clone(),
        SimulatorOptions {
            update_delay,
            resync_interval: Duration::from_millis(100),
        },
    )
    .await?;
    for node in NODES {
        simulator.register_host_root(node, host_dir(state_dir, node));
    }
    // Nodes join on their pool's configuration, as installed machines do.
    wait_until_adopted(&client, Duration::from_secs(60)).await?;

    let tls = TlsFiles::generate()?;
    let grpc = free_addr()?;
    let policy = MarkPolicy {
        grace: Duration::from_secs(5),
        hold_down: Duration::from_secs(5),
        // A demo shows the dwell without waiting minutes for it.
        join_dwell: Duration::from_secs(5),
        leave_dwell: Duration::from_secs(5),
        brake: kata_coordinator::health::marks::brake::BrakePolicy::DEFAULT,
    };
    let coordinator = Coordinator::start(client.clone(), &tls, grpc, policy)?;
    step(&format!(
        "started the coordinator: agents' gRPC on {grpc} (TLS), metrics on http://{}/metrics",
        coordinator.metrics
    ));
    let tokens = state_dir.join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let mut agents = Vec::new();
    for node in NODES {
        let root = host_dir(state_dir, node);
        agents.push(Agent::start(&client, node, &root, grpc, &tls, &tokens).await?);
    }
    step("started a node-agent per node (pod-bound ServiceAccount tokens, TLS)");
    eventually("every agent connected", Duration::from_secs(60), || async {
        Ok(coordinator.metric("kata_operator_connected_agents").await? == NODES.len() as f64)
    })
    .await?;
    Ok(World {
        plane,
        client,
        simulator,
        coordinator,
        agents,
        _tls: tls,
    })
}

async fn create_kataconfig(client: &Client) -> Result<(), BoxError> {
    let object: KataConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "kataconfiguration.openshift.io/v1", "kind": "KataConfig",
        "metadata": { "name": KATACONFIG },
        "spec": { "checkNodeEligibility": true },
    }))?;
    Api::<KataConfig>::all(client.clone())
        .create(&PostParams::default(), &object)
        .await?;
    Ok(())
}

/// What the demo shows: the KataConfig's phase and every node's state.
#[derive(PartialEq)]
struct Snapshot {
    /// (type, status, reason) of InProgress, Ready and Degraded.
    conditions: Vec<(String, String, String)>,
    /// "ready/selected" and the nodes by phase.
    nodes_line: String,
    nodes: Vec<NodeState>,
}

impl Snapshot {
    async fn take(client: &Client) -> Result<Snapshot, BoxError> {
        let config = Api::<KataConfig>::all(client.clone())
            .get_opt(KATACONFIG)
            .await?;
        let status = config.and_then(|c| c.status).unwrap_or_default();
        let conditions = status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect();
        let k = &status.kata_nodes;
        let mut nodes_line = format!("{}/{} nodes ready", k.ready_node_count, k.node_count);
        for (phase, list) in [
            ("installed", &k.installed),
            ("installing", &k.installing),
            ("waiting", &k.waiting_to_install),
            ("uninstalling", &k.uninstalling),
            ("waitingToUninstall", &k.waiting_to_uninstall),
        ] {
            if !list.is_empty() {
                let _ = write!(nodes_line, "  {phase}: {}", list.join(","));
            }
        }
        for (phase, list) in [
            ("failed", &k.failed_to_install),
            ("failedToUninstall", &k.failed_to_uninstall),
        ] {
            if !list.is_empty() {
                let failed: Vec<String> = list
                    .iter()
                    .map(|name| format!("{name} ({})", failure_reason(k, name)))
                    .collect();
                let _ = write!(nodes_line, "  {phase}: {}", failed.join(", "));
            }
        }
        Ok(Snapshot {
            conditions,
            nodes_line,
            nodes: node_states(client).await?,
        })
    }

    fn condition(&self, type_: &str) -> Option<&(String, String, String)> {
        self.conditions.iter().find(|c| c.0 == type_)
    }

    fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Prints a snapshot whenever it differs from the last one printed.
struct Watch {
    started: Instant,
    last: Option<Snapshot>,
}

impl Watch {
    fn new(started: Instant) -> Watch {
        Watch {
            started,
            last: None,
        }
    }

    fn show(&mut self, snapshot: &Snapshot) {
        if self.last.as_ref() == Some(snapshot) {
            return;
        }
        let mut out = String::new();
        let conditions: Vec<String> = [
            condition::IN_PROGRESS,
            condition::READY,
            condition::DEGRADED,
        ]
        .iter()
        .filter_map(|t| snapshot.condition(t))
        .map(|(t, s, r)| format!("{t}={s} ({r})"))
        .collect();
        let conditions = if conditions.is_empty() {
            "no status yet".to_string()
        } else {
            conditions.join("  ")
        };
        let _ = writeln!(
            out,
            "[{:>6.1}s] KataConfig {KATACONFIG}: {conditions}\n          {}",
            self.started.elapsed().as_secs_f64(),
            snapshot.nodes_line
        );
        let _ = writeln!(
            out,
            "          {:<14} {:<9} {:<8} {:<8} {:<8} KataRuntimeReady",
            "NODE", "MCO", "CAPABLE", "KATA-OC", "RUNTIME"
        );
        let previous = self.last.as_ref();
        for node in &snapshot.nodes {
            let changed = previous.and_then(|p| p.node(&node.name)) != Some(node);
            let ready = match &node.ready {
                Some((status, reason, message)) => {
                    let message = if status == "True" {
                        String::new()
                    } else {
                        format!(": {}", shorten(message, 60))
                    };
                    format!("{status} {reason}{message}")
                }
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "        {} {:<14} {:<9} {:<8} {:<8} {:<8} {ready}",
                if changed { "*" } else { " " },
                node.name,
                or_dash(&node.mco_state),
                yes_no(node.capable()),
                yes_no(node.targeted()),
                yes_no(node.runtime_ready()),
            );
        }
        print!("{out}");
        self.last = Some(Snapshot {
            conditions: snapshot.conditions.clone(),
            nodes_line: snapshot.nodes_line.clone(),
            nodes: snapshot.nodes.clone(),
        });
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "-" }
}

fn or_dash(value: &str) -> &str {
    if value.is_empty() { "-" } else { value }
}

fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() <= max {
        line.to_string()
    } else {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// The end state the demo waits for.
struct Expected {
    kvm: bool,
}

impl Expected {
    /// The first expectation not met yet.
    fn check(&self, s: &Snapshot) -> Result<(), String> {
        let node = |name: &str| s.node(name).ok_or(format!("node {name} is missing"));
        // Without KVM no node is eligible, and the KataConfig says so.
        let (status, reason) = if self.kvm {
            ("True", "Installed")
        } else {
            ("False", "NoTargetNodes")
        };
        match s.condition(condition::READY) {
            Some((_, s, r)) if s == status && r == reason => {}
            Some((_, s, r)) => {
                return Err(format!(
                    "KataConfig Ready is {s} ({r}), not {status} ({reason})"
                ));
            }
            None => return Err("KataConfig has no Ready condition yet".into()),
        }
        let kvm = node(WORKER_KVM)?;
        if self.kvm && !kvm.runtime_ready() {
            return Err(format!("{WORKER_KVM} is not runtime-ready yet"));
        }
        if !self.kvm && kvm.capable() {
            return Err(format!("{WORKER_KVM} is capable without /dev/kvm"));
        }
        let broken = node(WORKER_BROKEN)?;
        if self.kvm && !broken.capable() {
            return Err(format!("{WORKER_BROKEN} is not capable yet"));
        }
        if broken.runtime_ready() {
            return Err(format!(
                "{WORKER_BROKEN} is runtime-ready despite its drop-in"
            ));
        }
        if self.kvm {
            let crio = broken
                .ready
                .as_ref()
                .is_some_and(|(status, reason, message)| {
                    status == "False"
                        && (reason.to_lowercase().contains("crio")
                            || message.to_lowercase().contains("crio"))
                });
            if !crio {
                return Err(format!(
                    "{WORKER_BROKEN}'s KataRuntimeReady is {:?}, not False for CRI-O",
                    broken.ready
                ));
            }
        }
        let nokvm = node(WORKER_NOKVM)?;
        if nokvm.capable() {
            return Err(format!("{WORKER_NOKVM} is capable"));
        }
        if nokvm.ready.is_none() {
            return Err(format!(
                "{WORKER_NOKVM} has no KataRuntimeReady condition yet"
            ));
        }
        Ok(())
    }
}

/// The real `kubectl` tables, then how to explore and how to stop.
fn summary(kubeconfig: &Path, state_dir: &Path, kvm: bool, ci: bool) -> Result<(), BoxError> {
    let kubectl = binary_dir()?.join("kubectl");
    let kubeconfig_arg = kubeconfig.display().to_string();
    for args in [
        vec!["get", "kataconfig,runtimeclass"],
        vec!["get", "nodes", "-L", NODE_LABELS],
    ] {
        println!("\n$ kubectl {}", args.join(" "));
        let output = std::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig_arg)
            .args(&args)
            .output()?;
        print!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(format!("kubectl {} failed: {}", args.join(" "), output.status).into());
        }
    }
    let nokvm_root = host_dir(state_dir, WORKER_NOKVM);
    let mut text = String::new();
    let _ = writeln!(text, "\nWhat you see:");
    if kvm {
        let _ = writeln!(
            text,
            "  {WORKER_KVM}     capable (this machine's /dev/kvm), in the kata-oc pool, runtime ready;"
        );
    } else {
        let _ = writeln!(
            text,
            "  {WORKER_KVM}     no usable /dev/kvm here, so not capable and never targeted;"
        );
    }
    let _ = writeln!(
        text,
        "  {WORKER_NOKVM}   not capable (no /dev/kvm), so never targeted;\n  {WORKER_BROKEN}  {}\n\
         \nExplore further{}:\n  \
         export KUBECONFIG={}\n  \
         export PATH={}:$PATH    # this kubectl\n  \
         kubectl describe node {WORKER_BROKEN}\n  \
         kubectl get kataconfig {KATACONFIG} -o yaml\n  \
         {} check --host-root {} --rpm-ostree-status-file {}\n  \
         (the fake host roots are in {}; edit one and watch its node change)",
        if kvm {
            "capable and installed, but its broken CRI-O drop-in keeps the runtime label off."
        } else {
            "not capable either here; with KVM it would be installed but not runtime-ready."
        },
        if ci {
            " (this run was non-interactive, so everything has stopped)"
        } else {
            " while it runs"
        },
        kubeconfig.display(),
        kubectl
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        node_agent_command(),
        nokvm_root.display(),
        kata_node_agent::fixtures::SIMULATED_STATUS_FILE,
        state_dir.join("hosts").display(),
    );
    if ci {
        let _ = writeln!(
            text,
            "\nStop: nothing runs any more; `make cluster-down` removes {}.",
            state_dir.display()
        );
    } else {
        let _ = writeln!(
            text,
            "\nStop: Ctrl-C stops the agents, the coordinator, the MCO simulator and the control \
             plane and removes nothing;\n      then `make cluster-down` removes {}.\n\
             \nChanges keep being printed below until then.",
            state_dir.display()
        );
    }
    print!("{text}");
    Ok(())
}

/// The built `node-agent` next to this binary (`make demo` builds it), or
/// how to build and run it.
fn node_agent_command() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("node-agent")))
        .filter(|path| path.is_file())
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| "cargo run -q -p kata-node-agent --".into())
}
