//! The node-agent against a real CRI-O: for each configuration, what the
//! agent's `crio-drop-in` and `cri-handler` probes say about the `kata`
//! handler must equal what CRI-O actually serves, read independently with
//! crictl (`crictl info`: CRI-O's verbose Status, its loaded config and its
//! runtime handlers).
//!
//! The agent runs with host root `/` and finds CRI-O's `--config` and
//! `--config-dir` on the running crio's command line, as on a node. Runs as
//! root with CRI-O built by tests/scripts/build-crio.sh; reported skipped, with the reason, elsewhere
//! otherwise. One test, so one CRI-O at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kata_test_harness::kata_test;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kata_coordinator::objects::CrioRuntimeHandler;
use kata_node_agent::probe::crio::CrioPaths;
use kata_node_agent::probe::{Budgets, HostRoot, ProbeOutcome, ProbeStatus, cri, crio};
use kata_node_agent::{ExpectedConfig, ProbeName};
use kata_tests::crio::{Crio, Started, main_config, unavailable};
use serde_json::Value;

/// What CRI-O serves for `kata`: nothing (not running, or handler dropped),
/// or a handler of this runtime type.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Served {
    CrioNotRunning,
    Dropped,
    Handler { runtime_type: String },
}

impl Served {
    fn as_vm(&self) -> bool {
        matches!(self, Served::Handler { runtime_type } if runtime_type == "vm")
    }
}

/// `crictl info` → what is served. The runtime handler list (since 1.30)
/// says what the CRI serves; the loaded config (`info.config.crio.Runtimes`,
/// since 1.33) gives each handler's `RuntimeType`.
fn served(info: &Value) -> Served {
    let handlers: Vec<&str> = info["runtimeHandlers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str())
        .collect();
    let kata = &info["config"]["crio"]["Runtimes"]["kata"];
    if !handlers.contains(&"kata") {
        return Served::Dropped;
    }
    let runtime_type = kata["RuntimeType"].as_str().unwrap_or("unknown").to_owned();
    Served::Handler { runtime_type }
}

/// The agent's word: its drop-in and CRI probes both accept the handler.
fn agent_serves_vm(drop_in: &ProbeOutcome, cri: &ProbeOutcome) -> bool {
    let drop_in_ok = drop_in.status == ProbeStatus::Ok
        || (drop_in.status == ProbeStatus::Warn
            && ["RuntimeRootMissing", "PrivilegedWithoutHostDevicesUnset"]
                .contains(&drop_in.reason));
    drop_in_ok && cri.status == ProbeStatus::Ok
}

/// The agent's probes on this host: the drop-in probe as it runs on a node
/// (CRI-O's paths found on the running crio's command line), the same
/// judgement on the case's paths given explicitly (what the agent reads on a
/// node whose crio runs from them, when this crio refused to start), and
/// the CRI probe.
async fn agent_view(explicit: CrioPaths) -> (ProbeOutcome, ProbeOutcome, ProbeOutcome) {
    let root = HostRoot::new("/");
    let config = ExpectedConfig::default();
    let (discovered, given) = {
        let root = root.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let given = crio::evaluate(
                crio::read_config_files(&root, &explicit)
                    .and_then(|files| crio::merge(&files, &config.runtime_handler)),
                &config,
                |path| root.is_executable(path),
                |path| root.exists(path),
            );
            (crio::probe(&root, &config), given)
        })
        .await
        .unwrap()
    };
    let cri = cri::probe(&root, &config.runtime_handler, &Budgets::default()).await;
    assert_eq!(discovered.name, ProbeName::CrioDropIn);
    (discovered, given, cri)
}

/// A case's files: the main config's `[crio.runtime]` additions and the
/// drop-ins (relative path → text; a value of `None` makes a symlink to a
/// directory).
struct Case {
    name: &'static str,
    runtime_extra: String,
    drop_ins: Vec<(String, Option<String>)>,
    /// After CRI-O started: drop-ins to write before a SIGHUP reload.
    reload: Option<Vec<(String, String)>>,
}

struct Paths {
    shim: PathBuf,
    kata_config: PathBuf,
}

fn handler(paths: &Paths, f: &dyn Fn(&mut CrioRuntimeHandler)) -> String {
    let mut h = CrioRuntimeHandler {
        runtime_path: paths.shim.display().to_string(),
        runtime_config_path: paths.kata_config.display().to_string(),
        ..CrioRuntimeHandler::default()
    };
    f(&mut h);
    h.to_toml()
}

fn cases(paths: &Paths, dir: &Path) -> Vec<Case> {
    let ours = handler(paths, &|_| {});
    let one = |name: &str, text: String| vec![(name.to_owned(), Some(text))];
    let case = |name, drop_ins| Case {
        name,
        runtime_extra: String::new(),
        drop_ins,
        reload: None,
    };
    // Our drop-in with one change.
    let changed = |f: &dyn Fn(&mut CrioRuntimeHandler)| one("50-kata", handler(paths, f));
    let renamed = dir.join("shim/kata-runtime");
    vec![
        case("the coordinator's drop-in", one("50-kata", ours.clone())),
        case(
            "runtime_path missing",
            changed(&|h| h.runtime_path = "/nonexistent/containerd-shim-kata-v2".into()),
        ),
        case(
            "runtime_path not named containerd-shim-*-v2",
            changed(&|h| h.runtime_path = renamed.display().to_string()),
        ),
        case(
            "runtime_config_path missing",
            changed(&|h| h.runtime_config_path = "/nonexistent/configuration.toml".into()),
        ),
        case(
            "inherit_default_runtime = true",
            one("50-kata", format!("{ours}inherit_default_runtime = true\n")),
        ),
        case(
            "a partial later override",
            vec![
                ("50-kata".into(), Some(ours.clone())),
                (
                    "60-partial".into(),
                    Some(format!(
                        "[crio.runtime.runtimes.kata]\nruntime_path = \"{}\"\nruntime_type = \"vm\"\nruntime_config_path = \"{}\"\n",
                        paths.shim.display(),
                        paths.kata_config.display()
                    )),
                ),
            ],
        ),
        case(
            "a drop-in in a subdirectory",
            one("sub/50-kata", ours.clone()),
        ),
        case(
            "a symlinked directory",
            vec![
                ("50-kata".into(), Some(ours.clone())),
                ("linked".into(), None),
            ],
        ),
        case(
            "a type error elsewhere",
            vec![
                ("50-kata".into(), Some(ours.clone())),
                (
                    "60-other".into(),
                    Some("[crio.runtime.runtimes.crun]\nruntime_path = 7\n".into()),
                ),
            ],
        ),
        Case {
            name: "default_runtime = \"kata\", broken",
            runtime_extra: "default_runtime = \"kata\"".into(),
            drop_ins: changed(&|h| h.runtime_type = "oci".into()),
            reload: None,
        },
        Case {
            name: "SIGHUP reload adds the handler",
            runtime_extra: String::new(),
            drop_ins: Vec::new(),
            reload: Some(vec![("50-kata".into(), ours.clone())]),
        },
        Case {
            name: "SIGHUP reload breaks the handler",
            runtime_extra: String::new(),
            drop_ins: one("50-kata", ours.clone()),
            reload: Some(vec![(
                "50-kata".into(),
                handler(paths, &|h| {
                    h.runtime_path = "/nonexistent/containerd-shim-kata-v2".into()
                }),
            )]),
        },
    ]
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Waits until `check` holds or 10 s pass (a reload is asynchronous).
async fn settle<F: FnMut() -> bool>(mut check: F) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[kata_test(
    requires(unavailable),
    exclusive(crio_socket),
    flavor = "multi_thread",
    worker_threads = 2
)]
async fn agent_and_crio_agree_on_the_kata_handler() {
    let mut rows = Vec::new();
    let mut disagreements = Vec::new();
    let total = {
        let scratch = tempfile::tempdir().unwrap();
        cases(
            &Paths {
                shim: scratch.path().join("a"),
                kata_config: scratch.path().join("b"),
            },
            scratch.path(),
        )
        .len()
    };
    for index in 0..total {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        let paths = Paths {
            shim: dir.join("shim/containerd-shim-kata-v2"),
            kata_config: dir.join("kata/configuration.toml"),
        };
        write(&paths.shim, "#!/bin/sh\nexit 1\n");
        std::fs::set_permissions(&paths.shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&paths.shim, dir.join("shim/kata-runtime")).unwrap();
        write(&paths.kata_config, "[hypervisor.qemu]\n");
        let case = cases(&paths, dir).remove(index);
        let config = dir.join("crio.conf");
        let config_dir = dir.join("crio.conf.d");
        std::fs::create_dir_all(&config_dir).unwrap();
        write(&config, &main_config(dir, &case.runtime_extra));
        for (name, text) in &case.drop_ins {
            match text {
                Some(text) => write(&config_dir.join(name), text),
                None => {
                    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
                    symlink(dir.join("elsewhere"), config_dir.join(name)).unwrap();
                }
            }
        }
        let explicit = CrioPaths {
            config: config.display().to_string(),
            config_dir: config_dir.display().to_string(),
            source: "the test".into(),
        };
        let started = Crio::start(dir, &config, &config_dir).expect("start crio");
        let (truth, (discovered, drop_in, cri), crio) = match started {
            Started::Exited(log) => {
                let last = log.lines().last().unwrap_or_default().to_owned();
                eprintln!("[{}] CRI-O exited: {last}", case.name);
                (Served::CrioNotRunning, agent_view(explicit).await, None)
            }
            Started::Serving(crio) => {
                if let Some(reload) = &case.reload {
                    for (name, text) in reload {
                        write(&config_dir.join(name), text);
                    }
                    crio.reload().unwrap();
                    let before = served(&crio.info().unwrap_or_default());
                    settle(|| served(&crio.info().unwrap_or_default()) != before).await;
                }
                let truth = served(&crio.info().expect("crictl info"));
                let view = agent_view(explicit).await;
                // On a node the agent finds CRI-O's paths itself.
                assert_eq!(
                    (view.0.status, view.0.reason),
                    (view.1.status, view.1.reason),
                    "[{}] the paths on crio's command line were not the ones used: {}",
                    case.name,
                    view.0.message
                );
                assert!(
                    view.0.message.contains("from the crio command line"),
                    "{}",
                    view.0.message
                );
                (truth, view, Some(crio))
            }
        };
        let _ = discovered;
        let agent = agent_serves_vm(&drop_in, &cri);
        let agree = agent == truth.as_vm();
        rows.push(format!(
            "| {} | {:?} | {} {} | {} {} | {} |",
            case.name,
            truth,
            drop_in.status.as_str(),
            drop_in.reason,
            cri.status.as_str(),
            cri.reason,
            if agree { "yes" } else { "NO" }
        ));
        if !agree {
            disagreements.push(format!(
                "{}: CRI-O {truth:?}, agent drop-in {drop_in:?}, cri {cri:?}{}",
                case.name,
                crio.as_ref()
                    .map(|c| format!("\nlog:\n{}", c.log_tail()))
                    .unwrap_or_default()
            ));
        }
        drop(crio);
    }
    eprintln!("| case | CRI-O serves | agent crio-drop-in | agent cri-handler | agree |");
    eprintln!("|---|---|---|---|---|");
    for row in &rows {
        eprintln!("{row}");
    }
    assert!(
        disagreements.is_empty(),
        "agent and CRI-O disagree:\n{}",
        disagreements.join("\n\n")
    );
}

/// The runtime profiles' drop-in as the coordinator renders it, beside the
/// `kata` handler, in a real CRI-O: each profile is served as a `vm`
/// handler of its own name with its own configuration path, and a profile
/// whose configuration file is missing is dropped while the others stay
/// (which is why the MachineConfig writes both in one rendered config).
/// The shim and the configuration files sit in a temporary directory in
/// place of `/usr/bin` and `/etc/kata-containers`; everything else of the
/// drop-in is as rendered. The agent's per-profile check is not built yet.
#[kata_test(
    requires(unavailable),
    exclusive(crio_socket),
    flavor = "multi_thread",
    worker_threads = 2
)]
async fn crio_serves_each_runtime_profile_as_rendered() {
    use kata_coordinator::objects::handlers_toml;
    use kata_coordinator::profiles::render;

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let shim = dir.join("shim/containerd-shim-kata-v2");
    write(&shim, "#!/bin/sh\nexit 1\n");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let moved = |name: &str| {
        let mut handler = render::handler(name);
        handler.runtime_path = shim.display().to_string();
        handler.runtime_config_path = dir
            .join(render::config_path(name).trim_start_matches('/'))
            .display()
            .to_string();
        handler
    };
    let profiles = ["kata-small", "kata-large", "kata-missing"];
    // The `kata` handler's configuration (the package's) and two of the
    // profiles' are there.
    for name in ["kata", "kata-small", "kata-large"] {
        write(
            Path::new(&moved(name).runtime_config_path),
            "[hypervisor.qemu]\n",
        );
    }
    let config = dir.join("crio.conf");
    let config_dir = dir.join("crio.conf.d");
    write(&config, &main_config(dir, ""));
    write(&config_dir.join("50-kata"), &moved("kata").to_toml());
    let handlers: Vec<CrioRuntimeHandler> = profiles.iter().map(|n| moved(n)).collect();
    let drop_in = render::HANDLERS_DROP_IN_PATH.rsplit('/').next().unwrap();
    write(&config_dir.join(drop_in), &handlers_toml(&handlers));

    let Started::Serving(crio) = Crio::start(dir, &config, &config_dir).expect("start crio") else {
        panic!("CRI-O exited with the profiles' drop-in");
    };
    let info = crio.info().expect("crictl info");
    let served: Vec<&str> = info["runtimeHandlers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["name"].as_str())
        .collect();
    for name in ["kata", "kata-small", "kata-large"] {
        assert!(served.contains(&name), "{name} not in {served:?}");
        let loaded = &info["config"]["crio"]["Runtimes"][name];
        assert_eq!(loaded["RuntimeType"], "vm", "{name}: {loaded}");
        assert_eq!(
            loaded["RuntimeConfigPath"].as_str(),
            Some(moved(name).runtime_config_path.as_str()),
            "{name}: {loaded}"
        );
    }
    assert!(
        !served.contains(&"kata-missing"),
        "a profile without its configuration file is dropped: {served:?}\n{}",
        crio.log_tail()
    );
    eprintln!("CRI-O serves {served:?}");
}
