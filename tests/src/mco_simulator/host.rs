//! A node's fake host root, as the machine-config daemon leaves it: the
//! rendered config's files, the rpm-ostree deployments (staged before the
//! reboot, booted after it) and the files of the layered packages.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::model::MachineConfigSpec;
use super::render::{ClusterOs, files_of, packages_for, stable_hash};
use crate::Error;

/// The status file is where `FakeHost` writes it and the node-agent under
/// test reads it, so the two cannot drift apart.
pub use kata_node_agent::fixtures::SIMULATED_STATUS_FILE;
pub use kata_node_agent::probe::rpm_ostree::OSTREE_BOOTED;

use crate::host_root::{
    EXTENSION_PACKAGE, KATA_CONFIG, KATA_CONFIG_TEXT, KATA_IMAGE, KATA_KERNEL, KATA_SHIM, QEMU,
};

/// The files of the `kata-containers` package that the node-agent probes.
/// `crate::host_root` has their paths; its contents are written by its
/// `FakeHost` builder into its own directory, so they are spelled here.
const KATA_PACKAGE_FILES: [(&str, u32, &str); 5] = [
    (
        KATA_SHIM,
        0o755,
        "#!/bin/sh\n# fake Kata shim installed by the MCO simulator\nexit 0\n",
    ),
    (
        QEMU,
        0o755,
        "#!/bin/sh\necho 'QEMU emulator version 8.2.0 (qemu-kvm-8.2.0-11.el9_4)'\n",
    ),
    // The configuration the package ships, naming its hypervisor, guest
    // kernel and image, which the package installs too.
    (KATA_CONFIG, 0o644, KATA_CONFIG_TEXT),
    (KATA_KERNEL, 0o644, "fake guest kernel\n"),
    (KATA_IMAGE, 0o644, "fake guest image\n"),
];

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Deployment {
    id: String,
    osname: &'static str,
    checksum: String,
    booted: bool,
    staged: bool,
    #[serde(rename = "requested-packages")]
    requested_packages: Vec<String>,
    packages: Vec<String>,
}

#[derive(Debug)]
struct Booted {
    config: String,
    files: BTreeSet<String>,
    deployment: Deployment,
}

/// One node's host root and what the simulator last wrote into it.
#[derive(Debug)]
pub struct SimulatedNodeRoot {
    path: PathBuf,
    booted: Option<Booted>,
    staged: Option<Deployment>,
    rollback: Option<Deployment>,
    serial: u32,
    /// Decides which extension names map to packages.
    os: ClusterOs,
}

impl SimulatedNodeRoot {
    pub fn new(path: PathBuf) -> Self {
        SimulatedNodeRoot {
            path,
            booted: None,
            staged: None,
            rollback: None,
            serial: 0,
            os: ClusterOs::default(),
        }
    }

    pub fn with_os(mut self, os: ClusterOs) -> Self {
        self.os = os;
        self
    }

    pub fn booted_config(&self) -> Option<&str> {
        self.booted.as_ref().map(|b| b.config.as_str())
    }

    /// Before the reboot: rpm-ostree stages a new deployment when the
    /// packages change; the booted one stays as it is.
    pub fn stage(&mut self, spec: &MachineConfigSpec) -> Result<(), Error> {
        let packages = packages_for(self.os, &spec.extensions).map_err(Error::Setup)?;
        self.staged = match &self.booted {
            Some(booted) if booted.deployment.packages == packages => None,
            _ => Some(self.deployment(packages, false)),
        };
        self.write_status()
    }

    /// After the reboot: the node runs `config`. Writes its files, removes
    /// the ones the previous config wrote and this one does not, and boots
    /// the deployment with its packages.
    pub fn boot(&mut self, config: &str, spec: &MachineConfigSpec) -> Result<(), Error> {
        let packages = packages_for(self.os, &spec.extensions).map_err(Error::Setup)?;
        let written = write_config_files(&self.path, spec)?;
        let previous = self.booted.take();
        for stale in previous.iter().flat_map(|b| b.files.difference(&written)) {
            remove(&self.host_path(stale))?;
        }
        let deployment = match previous {
            Some(previous) if previous.deployment.packages == packages => previous.deployment,
            previous => {
                self.rollback = previous.map(|p| Deployment {
                    booted: false,
                    ..p.deployment
                });
                self.deployment(packages, true)
            }
        };
        self.staged = None;
        self.set_package_files(deployment.packages.iter().any(|p| p == EXTENSION_PACKAGE))?;
        self.booted = Some(Booted {
            config: config.to_owned(),
            files: written,
            deployment,
        });
        self.write_status()
    }

    fn deployment(&mut self, packages: Vec<String>, booted: bool) -> Deployment {
        self.serial += 1;
        Deployment {
            id: format!("rhcos-{}", self.serial),
            osname: "rhcos",
            checksum: stable_hash(format!("{}:{}", self.serial, packages.join(",")).as_bytes()),
            booted,
            staged: !booted,
            requested_packages: packages.clone(),
            packages,
        }
    }

    fn set_package_files(&self, installed: bool) -> Result<(), Error> {
        for (path, mode, contents) in KATA_PACKAGE_FILES {
            let path = self.host_path(path);
            if installed {
                write_atomically(&path, contents.as_bytes(), mode)?;
            } else {
                remove(&path)?;
            }
        }
        Ok(())
    }

    /// `rpm-ostree status --json`: the deployment for the next boot first.
    fn write_status(&self) -> Result<(), Error> {
        let booted = self.booted.as_ref().map(|b| &b.deployment);
        let deployments: Vec<&Deployment> = match &self.staged {
            Some(staged) => [Some(staged), booted].into_iter().flatten().collect(),
            None => [booted, self.rollback.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&serde_json::json!({ "deployments": deployments }))
            .map_err(|e| Error::Setup(format!("cannot serialize rpm-ostree status: {e}")))?;
        write_atomically(&self.host_path(OSTREE_BOOTED), b"", 0o644)?;
        write_atomically(&self.host_path(SIMULATED_STATUS_FILE), &json, 0o644)
    }

    fn host_path(&self, host_path: &str) -> PathBuf {
        in_root(&self.path, host_path)
    }
}

/// Writes the files of `spec` (a rendered config) under the node root
/// `root`, as the daemon writes them before the reboot's end: each through
/// a temporary file and a rename, with its mode. Their host paths. The real
/// node's fixture calls it too, so that what lands in its CRI-O's
/// configuration is what this daemon writes, from the same rendering.
pub fn write_config_files(
    root: &Path,
    spec: &MachineConfigSpec,
) -> Result<BTreeSet<String>, Error> {
    let files = files_of(spec).map_err(Error::Setup)?;
    for file in &files {
        write_atomically(&in_root(root, &file.path), &file.contents, file.mode)?;
    }
    Ok(files.into_iter().map(|f| f.path).collect())
}

/// `host_path`, absolute on the node or relative to its root, under `root`.
pub fn in_root(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

/// `(staged, booted, packages)` of each deployment in the root's rpm-ostree
/// status, in listed order: for tests to check what a node would boot.
pub fn listed_deployments(root: &Path) -> Result<Vec<(bool, bool, Vec<String>)>, Error> {
    #[derive(Deserialize)]
    struct Status {
        deployments: Vec<Listed>,
    }
    #[derive(Deserialize)]
    struct Listed {
        staged: bool,
        booted: bool,
        packages: Vec<String>,
    }
    let path = in_root(root, SIMULATED_STATUS_FILE);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let status: Status = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Setup(format!("{}: {e}", path.display())))?;
    Ok(status
        .deployments
        .into_iter()
        .map(|d| (d.staged, d.booted, d.packages))
        .collect())
}

/// Writes through a temporary file and a rename, so that a probe reading
/// concurrently sees the old or the new file, never half of one.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".mco-simulator.tmp");
    let temporary = PathBuf::from(temporary);
    fs::write(&temporary, contents).map_err(|e| Error::io(&temporary, e))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(&temporary, e))?;
    fs::rename(&temporary, path).map_err(|e| Error::io(path, e))
}

fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    fn spec(files: &[(&str, &str)], extensions: &[&str]) -> MachineConfigSpec {
        let files: Vec<Value> = files
            .iter()
            .map(|(path, source)| json!({ "path": path, "mode": 420, "contents": { "source": source } }))
            .collect();
        MachineConfigSpec {
            config: json!({ "ignition": { "version": "3.4.0" }, "storage": { "files": files } }),
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
            kernel_arguments: vec![],
        }
    }

    fn deployments(root: &Path) -> Vec<(bool, bool, Vec<String>)> {
        listed_deployments(root).unwrap()
    }

    #[test]
    fn extension_is_staged_then_booted_then_removed_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = SimulatedNodeRoot::new(dir.path().to_owned());
        root.boot("rendered-worker-1", &spec(&[], &[])).unwrap();
        assert!(
            dir.path()
                .join(OSTREE_BOOTED.trim_start_matches('/'))
                .exists()
        );
        assert_eq!(deployments(dir.path()), [(false, true, vec![])]);

        let kata = spec(
            &[("/etc/crio/crio.conf.d/50-kata", "data:,%5Bcrio%5D%0A")],
            &["sandboxed-containers"],
        );
        root.stage(&kata).unwrap();
        let kata_package = vec![EXTENSION_PACKAGE.to_owned()];
        assert_eq!(
            deployments(dir.path()),
            [(true, false, kata_package.clone()), (false, true, vec![])]
        );
        assert!(
            !dir.path().join("etc/crio/crio.conf.d/50-kata").exists(),
            "files wait for the reboot"
        );

        root.boot("rendered-kata-oc-1", &kata).unwrap();
        assert_eq!(
            deployments(dir.path()),
            [(false, true, kata_package), (false, false, vec![])]
        );
        let drop_in = dir.path().join("etc/crio/crio.conf.d/50-kata");
        assert_eq!(fs::read(&drop_in).unwrap(), b"[crio]\n");
        assert_eq!(
            fs::metadata(&drop_in).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let shim = dir.path().join(KATA_SHIM);
        assert_eq!(
            fs::metadata(&shim).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(root.booted_config(), Some("rendered-kata-oc-1"));

        root.boot("rendered-worker-1", &spec(&[], &[])).unwrap();
        assert!(!drop_in.exists());
        assert!(!shim.exists());
        assert!(!dir.path().join(QEMU).exists());
        assert_eq!(deployments(dir.path())[0], (false, true, vec![]));
    }

    #[test]
    fn a_file_only_change_stages_no_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let mut root = SimulatedNodeRoot::new(dir.path().to_owned());
        root.boot("r1", &spec(&[("/etc/a", "data:,1")], &[]))
            .unwrap();
        root.stage(&spec(&[("/etc/a", "data:,2")], &[])).unwrap();
        assert_eq!(deployments(dir.path()), [(false, true, vec![])]);
        root.boot("r2", &spec(&[("/etc/a", "data:,2")], &[]))
            .unwrap();
        assert_eq!(deployments(dir.path()), [(false, true, vec![])]);
        assert_eq!(fs::read(dir.path().join("etc/a")).unwrap(), b"2");
    }
}
