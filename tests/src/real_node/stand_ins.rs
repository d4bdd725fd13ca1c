//! Stand-ins for what the `sandboxed-containers` extension would install on
//! the real node and cannot be had here: Kata's shim (not served by the Go
//! module proxy, not packaged in Debian) and its configuration. They go at
//! the host paths the rendered CRI-O drop-in names, because CRI-O drops a
//! `vm` handler whose `runtime_path` or `runtime_config_path` does not
//! exist, and the paths are the coordinator's rendering, not the fixture's.
//!
//! On the host itself rather than in a private mount namespace for the
//! node: the kubelet and CRI-O would both have to run in that namespace
//! (the kubelet's volume mounts must be the ones CRI-O bind-mounts into
//! containers), a restarted kubelet would have to re-enter it, and the
//! agent's read-only host root (`/` through CRI-O) would then show the
//! namespace, not the machine. So each stand-in is written only where
//! nothing exists (a file already there is never written over: the fixture
//! refuses to start the delivery instead), removed at teardown with the
//! directories made for it, and known by its marker line when a killed run
//! left it behind.
//!
//! Neither is Kata: the shim refuses with [`SHIM_STAND_IN_ERROR`], and the
//! configuration names no hypervisor, so the agent's `kata-shim` probe
//! fails on it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kata_coordinator::objects::CrioRuntimeHandler;

use crate::Error;

/// What the stand-in for Kata's shim says when CRI-O starts it: the text the
/// kubelet reports in its FailedCreatePodSandBox event.
pub const SHIM_STAND_IN_ERROR: &str =
    "containerd-shim-kata-v2 stand-in: the Kata shim is not built on this test node";
/// In every stand-in, so that one a killed run left is known as the
/// fixture's and nothing else is ever removed.
const MARKER: &str = "kata-tests real-node stand-in";

fn shim_text() -> String {
    format!("#!/bin/sh\n# {MARKER}: not Kata\necho '{SHIM_STAND_IN_ERROR}' >&2\nexit 1\n")
}

fn config_text() -> String {
    format!("# {MARKER}: not a Kata configuration, it names no hypervisor\n")
}

/// A stand-in the fixture put on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandIn {
    pub path: PathBuf,
    /// The drop-in key that names it (`runtime_path`, `runtime_config_path`).
    pub named_by: &'static str,
}

/// The stand-ins installed so far and the directories made for them, for
/// the teardown.
#[derive(Debug, Default)]
pub(super) struct StandIns {
    files: Vec<PathBuf>,
    /// Made by the fixture (or, for the handler's `runtime_root`, absent
    /// before and perhaps made by CRI-O or the shim): removed when empty.
    dirs: Vec<PathBuf>,
}

impl StandIns {
    /// Installs the stand-ins for `handler`'s table in the drop-in `text`
    /// (as the coordinator renders it): its `runtime_path` and
    /// `runtime_config_path`, each where nothing exists yet. Those installed.
    pub(super) fn install_for(&mut self, text: &str, handler: &str) -> Result<Vec<StandIn>, Error> {
        let doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| Error::Setup(format!("the rendered drop-in is not TOML: {e}")))?;
        let table = &doc["crio"]["runtime"]["runtimes"][handler];
        let key = |name: &str| table[name].as_str().map(PathBuf::from);
        let mut installed = Vec::new();
        if let Some(root) = key("runtime_root").filter(|root| !root.exists()) {
            self.dirs.push(root);
        }
        let wanted = [
            ("runtime_path", shim_text(), 0o755),
            ("runtime_config_path", config_text(), 0o644),
        ];
        for (named_by, text, mode) in wanted {
            let Some(path) = key(named_by) else { continue };
            if self.files.contains(&path) {
                continue;
            }
            if path.exists() {
                return Err(Error::Setup(format!(
                    "{} ({named_by} of the rendered drop-in) exists on this machine and is not \
                     the fixture's: it is never written over, so the real node cannot serve \
                     the `{handler}` handler on a stand-in here",
                    path.display()
                )));
            }
            self.make_parents(&path)?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            self.files.push(path.clone());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(&path, e))?;
            installed.push(StandIn { path, named_by });
        }
        Ok(installed)
    }

    /// Creates `path`'s missing parents, recording each.
    fn make_parents(&mut self, path: &Path) -> Result<(), Error> {
        let missing: Vec<&Path> = path
            .ancestors()
            .skip(1)
            .take_while(|dir| !dir.exists())
            .collect();
        for dir in missing.into_iter().rev() {
            std::fs::create_dir(dir).map_err(|e| Error::io(dir, e))?;
            self.dirs.push(dir.to_owned());
        }
        Ok(())
    }

    /// Removes every stand-in, then the directories made for them, deepest
    /// first and only when empty.
    pub(super) fn remove(&mut self) {
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(file);
        }
        self.dirs
            .sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
        for dir in self.dirs.drain(..) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The stand-ins at the paths the coordinator renders, known by their
/// marker.
pub(super) fn left_behind() -> Vec<PathBuf> {
    let handler = CrioRuntimeHandler::default();
    [handler.runtime_path, handler.runtime_config_path]
        .into_iter()
        .map(PathBuf::from)
        .filter(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains(MARKER)))
        .collect()
}

/// Stand-ins a run killed before its teardown left ([`left_behind`]), and
/// their directories when that leaves them empty.
pub(super) fn leftovers() {
    for path in left_behind() {
        let _ = std::fs::remove_file(&path);
        for dir in path.ancestors().skip(1) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn drop_in(root: &Path) -> String {
        CrioRuntimeHandler {
            runtime_path: root
                .join("usr/bin/containerd-shim-kata-v2")
                .display()
                .to_string(),
            runtime_config_path: root
                .join("usr/share/kata/defaults/configuration.toml")
                .display()
                .to_string(),
            runtime_root: root.join("run/vc").display().to_string(),
            ..CrioRuntimeHandler::default()
        }
        .to_toml()
    }

    #[test]
    fn stand_ins_go_where_the_drop_in_says_and_leave_nothing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        let mut stand_ins = StandIns::default();
        let installed = stand_ins
            .install_for(&drop_in(root.path()), "kata")
            .unwrap();
        let shim = root.path().join("usr/bin/containerd-shim-kata-v2");
        assert_eq!(
            installed.iter().map(|s| s.named_by).collect::<Vec<_>>(),
            ["runtime_path", "runtime_config_path"]
        );
        assert_eq!(installed[0].path, shim);
        let mode = std::fs::metadata(&shim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let output = std::process::Command::new(&shim).output().unwrap();
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains(SHIM_STAND_IN_ERROR));
        // Asked again (a second delivery): nothing new, no error.
        assert!(
            stand_ins
                .install_for(&drop_in(root.path()), "kata")
                .unwrap()
                .is_empty()
        );
        stand_ins.remove();
        assert!(!shim.exists());
        assert!(root.path().join("usr/bin").exists(), "it existed before");
        assert!(
            !root.path().join("usr/share").exists(),
            "made for a stand-in"
        );
    }

    #[test]
    fn an_existing_file_is_never_written_over() {
        let root = tempfile::tempdir().unwrap();
        let shim = root.path().join("usr/bin/containerd-shim-kata-v2");
        std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
        std::fs::write(&shim, "a real shim").unwrap();
        let mut stand_ins = StandIns::default();
        let refused = stand_ins.install_for(&drop_in(root.path()), "kata");
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("never written over")
        );
        assert_eq!(std::fs::read_to_string(&shim).unwrap(), "a real shim");
        stand_ins.remove();
        assert_eq!(std::fs::read_to_string(&shim).unwrap(), "a real shim");
    }
}
