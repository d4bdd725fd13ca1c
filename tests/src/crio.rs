//! A real CRI-O for the tests: built from the Go module proxy by
//! `tests/scripts/build-crio.sh` (its directory in `KATA_CRIO_BIN_DIR`),
//! started as root on a temporary root with a given main configuration and
//! drop-in directory, and always stopped (on drop, and with the test process:
//! see [`crate::child_process`]).
//!
//! CRI-O listens where the node-agent looks, `/run/crio/crio.sock`, so only
//! one may run at a time: keep the tests that start one in a single test
//! function. Every other path it writes is under the temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::child_process::{spawn_tied_to_process, stop};

/// Where the node-agent's CRI probe asks.
pub const SOCKET: &str = "/run/crio/crio.sock";
/// CRI-O answers within 2 s here; a loaded CI machine gets more.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this process runs as root: CRI-O and a real node need it.
pub fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    })
}

/// Why the CRI-O tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !running_as_root() {
        return Some("CRI-O needs root".into());
    }
    let Some(dir) = std::env::var_os("KATA_CRIO_BIN_DIR") else {
        return Some(
            "KATA_CRIO_BIN_DIR is not set (make test sets it from tests/scripts/build-crio.sh)"
                .into(),
        );
    };
    let dir = PathBuf::from(dir);
    for binary in ["crio", "pinns", "crictl"] {
        if !dir.join(binary).is_file() {
            return Some(format!("{} is missing", dir.join(binary).display()));
        }
    }
    for binary in ["/usr/bin/conmon", "/usr/bin/crun"] {
        if !Path::new(binary).is_file() {
            return Some(format!("{binary} is missing (apt-get install conmon crun)"));
        }
    }
    None
}

fn bin_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("KATA_CRIO_BIN_DIR").unwrap_or_default())
}

/// The main configuration for a CRI-O confined to `dir`, with `extra` (TOML)
/// appended to the `[crio.runtime]` table.
pub fn main_config(dir: &Path, runtime_extra: &str) -> String {
    let d = dir.display();
    let bin = bin_dir();
    let bin = bin.display();
    format!(
        r#"[crio]
root = "{d}/storage"
runroot = "{d}/runroot"
storage_driver = "vfs"
log_dir = "{d}/log"
version_file = "{d}/version"
version_file_persist = "{d}/version-persist"
clean_shutdown_file = "{d}/clean.shutdown"

[crio.api]
listen = "{SOCKET}"

[crio.runtime]
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
irqbalance_config_file = ""
disable_hostport_mapping = true
container_exits_dir = "{d}/exits"
container_attach_socket_dir = "{d}/attach"
namespaces_dir = "{d}/ns"
pinns_path = "{bin}/pinns"
hooks_dir = ["{d}/hooks"]
{runtime_extra}

[crio.runtime.runtimes.crun]
runtime_path = "/usr/bin/crun"
runtime_root = "{d}/crun"
monitor_path = "/usr/bin/conmon"

[crio.image]
signature_policy = "{d}/policy.json"

[crio.network]
network_dir = "{d}/cni/net.d"
plugin_dirs = ["{d}/cni/bin"]

[crio.metrics]
enable_metrics = false

[crio.nri]
enable_nri = false
"#
    )
}

/// A running CRI-O; stopped when dropped.
pub struct Crio {
    child: Child,
    pub config: PathBuf,
    pub config_dir: PathBuf,
    log: PathBuf,
}

/// How a start ended.
pub enum Started {
    /// Its socket answers.
    Serving(Crio),
    /// It exited (a configuration it refuses), with its log's tail.
    Exited(String),
}

impl Crio {
    /// Starts CRI-O with `config` and `config_dir` (already written) and
    /// waits until its socket answers or it exits.
    pub fn start(dir: &Path, config: &Path, config_dir: &Path) -> Result<Started, Error> {
        for sub in [
            "storage",
            "runroot",
            "log",
            "exits",
            "attach",
            "ns",
            "hooks",
            "crun",
            "cni/net.d",
            "cni/bin",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(dir, e))?;
        }
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .map_err(|e| Error::io(&policy, e))?;
        std::fs::create_dir_all("/run/crio").map_err(|e| Error::io(Path::new("/run/crio"), e))?;
        let _ = std::fs::remove_file(SOCKET);
        let log = dir.join("crio.log");
        let log_file = std::fs::File::create(&log).map_err(|e| Error::io(&log, e))?;
        let mut command = Command::new(bin_dir().join("crio"));
        command
            .arg("--config")
            .arg(config)
            .arg("--config-dir")
            .arg(config_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| Error::io(&log, e))?)
            .stderr(log_file);
        let child = spawn_tied_to_process(command)
            .map_err(|e| Error::Setup(format!("starting crio: {e}")))?;
        let mut crio = Crio {
            child,
            config: config.to_owned(),
            config_dir: config_dir.to_owned(),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = crio.child.try_wait() {
                return Ok(Started::Exited(crio.log_tail()));
            }
            if Path::new(SOCKET).exists() && crio.crictl(&["version"]).is_ok() {
                return Ok(Started::Serving(crio));
            }
            if Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "crio did not answer on {SOCKET} within {START_TIMEOUT:?}:\n{}",
                    crio.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs crictl against this CRI-O; its stdout.
    pub fn crictl(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(bin_dir().join("crictl"))
            .arg("--runtime-endpoint")
            .arg(format!("unix://{SOCKET}"))
            .arg("--timeout")
            .arg("5s")
            .args(args)
            .output()
            .map_err(|e| format!("crictl: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `crictl info`: CRI-O's verbose Status, as JSON.
    pub fn info(&self) -> Result<serde_json::Value, String> {
        let text = self.crictl(&["info"])?;
        serde_json::from_str(&text).map_err(|e| format!("crictl info is not JSON ({e}): {text}"))
    }

    /// `systemctl reload crio`: SIGHUP.
    pub fn reload(&self) -> Result<(), String> {
        let pid = i32::try_from(self.child.id()).map_err(|e| e.to_string())?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .map_err(|e| e.to_string())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Crio {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(10));
        let _ = std::fs::remove_file(SOCKET);
    }
}
