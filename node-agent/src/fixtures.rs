//! Fake host roots for the node-agent probes: good, missing, broken and
//! hostile. Test support, behind the `fixtures` feature, which the shipped
//! binary never enables: node-agent's own tests and benchmark get it through
//! a dev-dependency on this crate, and `kata-tests` (as `kata_tests::host_root`)
//! through its dependency.
//!
//! A [`FakeHost`] is a temporary directory laid out like the parts of a node
//! the probes read. [`FakeHost::good`] passes every probe except KVM, which no
//! file can fake: add [`FakeHost::with_real_kvm`] on a machine that has one.
//! Mutators take and return the host so they chain:
//!
//! ```ignore
//! let host = FakeHost::good().staged_only_extension().broken_drop_in();
//! let outcomes = host.runner().run_cycle().await;
//! ```
//!
//! The rpm-ostree status is written where the MCO simulator writes it
//! ([`SIMULATED_STATUS_FILE`]), and [`FakeHost::runner`] reads it from there.
//! Fixture setup failing is a broken test machine, so the builder panics with
//! the path involved rather than returning errors.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kata_proto::contract;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{ExpectedConfig, HostRoot, ProbeRunner, RunnerOptions, StatusSource};

/// Where the test-suite's MCO simulator, and [`FakeHost`], write
/// `rpm-ostree status --json`: the agent under test is pointed at it with
/// [`StatusSource::File`] (`--rpm-ostree-status-file`).
pub const SIMULATED_STATUS_FILE: &str = "/run/kata-operator/rpm-ostree-status.json";

pub const QEMU: &str = "usr/libexec/qemu-kiwi";
pub const KATA_SHIM: &str = "usr/bin/containerd-shim-kata-v2";
pub const KATA_CONFIG: &str = "usr/share/kata-containers/defaults/configuration.toml";
pub const CRIO_CONF: &str = "etc/crio/crio.conf";
pub const DROP_IN_DIR: &str = "etc/crio/crio.conf.d";
/// The contract's drop-in, relative to the root.
pub const KATA_DROP_IN: &str = relative(contract::DROP_IN_PATH);
pub const CRIO_SOCKET: &str = "run/crio/crio.sock";
pub const EXTENSION_PACKAGE: &str = contract::EXTENSION_PACKAGE;

/// The drop-in the operator's MachineConfig writes.
pub const KATA_DROP_IN_TEXT: &str = r#"[crio.runtime.runtimes.kata]
runtime_path = "/usr/bin/containerd-shim-kata-v2"
runtime_type = "vm"
runtime_root = "/run/vc"
runtime_config_path = "/usr/share/kata-containers/defaults/configuration.toml"
privileged_without_host_devices = true
"#;

/// A host path without its leading `/`, as the paths above are spelled.
const fn relative(host_path: &str) -> &str {
    match host_path.as_bytes() {
        [b'/', ..] => host_path.split_at(1).1,
        _ => host_path,
    }
}

const CPUINFO_BLOCK: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
    model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\n\
    flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep vmx lm sse4_1 sse4_2 avx\n\n";

/// A node's filesystem in a temporary directory, removed on drop.
pub struct FakeHost {
    dir: TempDir,
}

impl FakeHost {
    /// An empty root: every probe finds nothing.
    pub fn empty() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("fake-host-")
                .tempdir()
                .expect("create a temporary directory for a fake host"),
        }
    }

    /// A Kata-ready node, except for `/dev/kvm` (see [`FakeHost::with_real_kvm`]).
    pub fn good() -> Self {
        let mut cpuinfo = CPUINFO_BLOCK.to_owned();
        cpuinfo.push_str(&CPUINFO_BLOCK.replace("processor\t: 0", "processor\t: 1"));
        let host = Self::empty()
            .write("proc/cpuinfo", cpuinfo)
            .memory_mib(16384, 8192)
            .write("sys/devices/system/cpu/online", "0-3\n")
            .write("dev/vhost-vsock", "")
            .write("dev/vhost-net", "")
            .qemu_version("8.2.0")
            .write_executable(KATA_SHIM, "#!/bin/sh\nexit 0\n")
            .write(KATA_CONFIG, KATA_CONFIG_TEXT)
            .write(KATA_KERNEL, "fake guest kernel\n")
            .write(KATA_IMAGE, "fake guest image\n")
            .write(
                CRIO_CONF,
                "[crio]\n[crio.runtime]\ndefault_runtime = \"crun\"\n",
            )
            .write(KATA_DROP_IN, KATA_DROP_IN_TEXT)
            .write("run/ostree-booted", "")
            .rpm_ostree_status(&rpm_ostree_status(&[EXTENSION_PACKAGE], None))
            // As on a real node: an absolute symlink the probes must resolve
            // inside the root, not in the agent's own filesystem.
            .symlink("var/run", "/run");
        ["kvm", "kvm_intel", "vhost", "vhost_net", "vhost_vsock"]
            .into_iter()
            .fold(host, |host, module| {
                host.mkdir(&format!("sys/module/{module}"))
            })
            .module_parameter("kvm_intel", "unrestricted_guest", "Y")
            .module_parameter("kvm", "kvmclock_periodic_sync", "Y")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `host_path` (with or without a leading `/`) inside the fake root.
    pub fn join(&self, host_path: &str) -> PathBuf {
        self.path().join(host_path.trim_start_matches('/'))
    }

    pub fn host_root(&self) -> HostRoot {
        HostRoot::new(self.path())
    }

    /// The options under which a fixture is judged: the rpm-ostree status
    /// from the simulator's file; capacity from the root's `proc` and `sys`.
    pub fn runner_options() -> RunnerOptions {
        RunnerOptions {
            rpm_ostree_status: StatusSource::File(SIMULATED_STATUS_FILE.to_owned()),
            ..RunnerOptions::default()
        }
    }

    /// A probe runner for this root with the default expected configuration.
    pub fn runner(&self) -> ProbeRunner {
        ProbeRunner::with_options(
            ExpectedConfig::default(),
            self.host_root(),
            Self::runner_options(),
        )
    }

    /// Arguments for `node-agent check` against this root.
    pub fn check_args(&self) -> Vec<String> {
        vec![
            "check".to_owned(),
            "--host-root".to_owned(),
            self.path().display().to_string(),
            "--rpm-ostree-status-file".to_owned(),
            SIMULATED_STATUS_FILE.to_owned(),
        ]
    }

    // ---- generic writers -------------------------------------------------

    /// Writes a file, creating its directories.
    pub fn write(self, host_path: &str, contents: impl AsRef<[u8]>) -> Self {
        let path = self.parent_made(host_path);
        fs::write(&path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
        self
    }

    /// Writes a file with mode 0755 (a shell script, for fake binaries).
    pub fn write_executable(self, host_path: &str, script: &str) -> Self {
        let host = self.write(host_path, script);
        host.chmod(host_path, 0o755)
    }

    pub fn mkdir(self, host_path: &str) -> Self {
        let path = self.join(host_path);
        fs::create_dir_all(&path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
        self
    }

    /// Removes a file, a symlink or a directory tree; absent is fine.
    pub fn remove(self, host_path: &str) -> Self {
        let path = self.join(host_path);
        let removed = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        };
        removed.unwrap_or_else(|err| panic!("remove {}: {err}", path.display()));
        self
    }

    /// Replaces `host_path` with a symlink to `target` (kept verbatim, so an
    /// absolute target is a host path).
    pub fn symlink(self, host_path: &str, target: &str) -> Self {
        let host = self.remove(host_path);
        let path = host.parent_made(host_path);
        symlink(target, &path).unwrap_or_else(|err| panic!("symlink {}: {err}", path.display()));
        host
    }

    pub fn chmod(self, host_path: &str, mode: u32) -> Self {
        let path = self.join(host_path);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", path.display()));
        self
    }

    /// Replaces `host_path` with a FIFO, which blocks a careless reader forever.
    pub fn fifo(self, host_path: &str) -> Self {
        let host = self.remove(host_path);
        let path = host.parent_made(host_path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap_or_else(|err| panic!("mkfifo {}: {err}", path.display()));
        host
    }

    fn parent_made(&self, host_path: &str) -> PathBuf {
        let path = self.join(host_path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("mkdir {}: {err}", parent.display()));
        }
        path
    }

    // ---- KVM and kernel ----------------------------------------------------

    /// Gives the root a `dev/kvm` device node with the same device number as
    /// the machine's real `/dev/kvm`, so the KVM probe talks to real KVM.
    /// Needs a real `/dev/kvm` and the right to `mknod` (root).
    pub fn with_real_kvm(self) -> io::Result<Self> {
        self.device_like("dev/kvm", Path::new("/dev/kvm"))
    }

    /// [`FakeHost::with_real_kvm`], or `None` after printing to stderr why
    /// `test` skips (no `/dev/kvm`, no right to `mknod`, or the device does
    /// not open read-write).
    pub fn with_real_kvm_or_skip(self, test: &str) -> Option<Self> {
        let opened = self.with_real_kvm().and_then(|host| {
            let device = host.join("dev/kvm");
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&device)
                .map(|_| host)
        });
        opened
            .map_err(|err| eprintln!("SKIP {test}: no usable /dev/kvm ({err})"))
            .ok()
    }

    /// `dev/kvm` as a character device that is not KVM (`/dev/null`'s number).
    pub fn kvm_as_other_device(self) -> io::Result<Self> {
        self.device_like("dev/kvm", Path::new("/dev/null"))
    }

    /// Makes `host_path` a character device node with `real`'s device number.
    fn device_like(self, host_path: &str, real: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let real_meta = fs::metadata(real)?;
        if !real_meta.file_type().is_char_device() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a character device", real.display()),
            ));
        }
        let host = self.remove(host_path);
        let path = host.parent_made(host_path);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            real_meta.rdev(),
        )?;
        Ok(host)
    }

    pub fn without_kvm(self) -> Self {
        self.remove("dev/kvm")
    }

    pub fn kvm_as_regular_file(self) -> Self {
        self.write("dev/kvm", "not a device\n")
    }

    pub fn kvm_as_fifo(self) -> Self {
        self.fifo("dev/kvm")
    }

    pub fn without_module(self, module: &str) -> Self {
        self.remove(&format!("sys/module/{module}"))
    }

    /// Writes `/sys/module/<module>/parameters/<parameter>` as the kernel
    /// shows it (`Y`, `N`, a number) with its newline.
    pub fn module_parameter(self, module: &str, parameter: &str, value: &str) -> Self {
        self.write(
            &format!("sys/module/{module}/parameters/{parameter}"),
            format!("{value}\n"),
        )
    }

    /// Replaces the loaded hardware KVM module (`kvm_intel`, `kvm_amd`) with
    /// `module`; a `kvm_intel` gets `unrestricted_guest=Y`.
    pub fn kvm_vendor_module(self, module: &str) -> Self {
        let host = self
            .without_module("kvm_intel")
            .without_module("kvm_amd")
            .mkdir(&format!("sys/module/{module}"));
        if module == "kvm_intel" {
            host.module_parameter(module, "unrestricted_guest", "Y")
        } else {
            host
        }
    }

    /// Changes `vendor_id` in every processor block of the cpuinfo, with the
    /// virtualization flag to match (`svm` for AuthenticAMD, else `vmx`).
    pub fn cpu_vendor(self, vendor: &str) -> Self {
        let (from, to) = if vendor == "AuthenticAMD" {
            (" vmx ", " svm ")
        } else {
            (" svm ", " vmx ")
        };
        self.edit_cpuinfo(|line| {
            if line.starts_with("vendor_id") {
                format!("vendor_id\t: {vendor}")
            } else if line.starts_with("flags") {
                format!("{line} ").replace(from, to).trim_end().to_owned()
            } else {
                line.to_owned()
            }
        })
    }

    /// Adds `hypervisor` to every block's flags, as in any guest of another
    /// hypervisor.
    pub fn nested(self) -> Self {
        self.edit_cpuinfo(|line| {
            if line.starts_with("flags") {
                format!("{line} hypervisor")
            } else {
                line.to_owned()
            }
        })
    }

    /// Rewrites the cpuinfo line by line.
    fn edit_cpuinfo(self, edit: impl Fn(&str) -> String) -> Self {
        let path = self.join("proc/cpuinfo");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
        let edited: String = text.lines().map(|line| edit(line) + "\n").collect();
        self.write("proc/cpuinfo", edited)
    }

    pub fn without_vhost_vsock_device(self) -> Self {
        self.remove("dev/vhost-vsock")
    }

    /// A cpuinfo of `bytes` bytes: one real processor block, then a sparse
    /// tail of NULs (instant to create, takes no disk).
    pub fn huge_cpuinfo(self, bytes: u64) -> Self {
        let host = self.write("proc/cpuinfo", CPUINFO_BLOCK);
        let path = host.join("proc/cpuinfo");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_len(bytes))
            .unwrap_or_else(|err| panic!("extend {}: {err}", path.display()));
        host
    }

    /// A cpuinfo whose first block lacks `flag` (as a nested guest hides `vmx`).
    pub fn cpu_without_flag(self, flag: &str) -> Self {
        let block = CPUINFO_BLOCK.replace(&format!(" {flag} "), " ");
        self.write("proc/cpuinfo", block)
    }

    pub fn memory_mib(self, total: u64, available: u64) -> Self {
        let meminfo = format!(
            "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n",
            total * 1024,
            available * 1024,
            available * 1024
        );
        self.write("proc/meminfo", meminfo)
    }

    pub fn online_cpus(self, list: &str) -> Self {
        self.write("sys/devices/system/cpu/online", format!("{list}\n"))
    }

    // ---- QEMU and Kata -----------------------------------------------------

    /// A fake `qemu-kiwi` that prints the given version.
    pub fn qemu_version(self, version: &str) -> Self {
        self.qemu_script(&format!(
            "#!/bin/sh\necho 'QEMU emulator version {version} (qemu-kvm-{version}-1.el9)'\n\
             echo 'Copyright (c) 2003-2023 Fabrice Bellard and the QEMU Project developers'\n"
        ))
    }

    pub fn qemu_script(self, script: &str) -> Self {
        self.write_executable(QEMU, script)
    }

    pub fn without_qemu(self) -> Self {
        self.remove(QEMU)
    }

    pub fn without_kata_shim(self) -> Self {
        self.remove(KATA_SHIM)
    }

    pub fn without_kata_config(self) -> Self {
        self.remove(KATA_CONFIG)
    }

    // ---- rpm-ostree ----------------------------------------------------------

    /// Writes `rpm-ostree status --json` where the MCO simulator does.
    pub fn rpm_ostree_status(self, status: &Value) -> Self {
        self.write(SIMULATED_STATUS_FILE, status.to_string())
    }

    pub fn not_ostree(self) -> Self {
        self.remove("run/ostree-booted")
    }

    /// The extension is in a staged deployment only: a reboot is pending.
    pub fn staged_only_extension(self) -> Self {
        self.rpm_ostree_status(&rpm_ostree_status(&[], Some(&[EXTENSION_PACKAGE])))
    }

    pub fn without_extension(self) -> Self {
        self.rpm_ostree_status(&rpm_ostree_status(&[], None))
    }

    pub fn malformed_rpm_ostree_status(self) -> Self {
        self.write(
            SIMULATED_STATUS_FILE,
            "{\"deployments\": [ {\"booted\": tru",
        )
    }

    // ---- CRI-O ---------------------------------------------------------------

    /// Writes `etc/crio/crio.conf.d/<name>`.
    pub fn drop_in(self, name: &str, text: &str) -> Self {
        self.write(&format!("{DROP_IN_DIR}/{name}"), text)
    }

    pub fn without_drop_in(self) -> Self {
        self.remove(KATA_DROP_IN)
    }

    /// A drop-in whose line 3, column 16 is a syntax error.
    pub fn broken_drop_in(self) -> Self {
        self.drop_in(
            "60-broken",
            "[crio.runtime]\nlog_level = \"info\"\npids_limit = = 5\n",
        )
    }

    /// A later drop-in redefining `kata` with another `runtime_path`.
    pub fn drop_in_defining_kata_twice(self) -> Self {
        let other = KATA_DROP_IN_TEXT.replace(
            "/usr/bin/containerd-shim-kata-v2",
            "/usr/local/bin/containerd-shim-kata-v2",
        );
        self.drop_in("99-other-kata", &other)
    }

    pub fn binary_garbage_drop_in(self) -> Self {
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        self.write(&format!("{DROP_IN_DIR}/70-garbage"), garbage)
    }

    /// A drop-in that is a symlink to itself.
    pub fn symlink_loop(self) -> Self {
        self.symlink(&format!("{DROP_IN_DIR}/80-loop"), "80-loop")
    }

    pub fn drop_in_as_fifo(self) -> Self {
        self.fifo(&format!("{DROP_IN_DIR}/85-fifo"))
    }

    /// Makes the Kata drop-in mode 000. Root reads it anyway (see
    /// [`unreadable_files_are_unreadable`]).
    pub fn unreadable_file(self) -> Self {
        self.chmod(KATA_DROP_IN, 0o000)
    }

    /// The path where a test's fake CRI-O should listen, its directory made.
    pub fn crio_socket_path(&self) -> PathBuf {
        self.parent_made(CRIO_SOCKET)
    }

    // ---- processes ---------------------------------------------------------
    //
    // A process's `/proc` entry as the crio-process check reads it. On a real
    // host `ns/mnt` and `exe` are magic links the kernel follows to the
    // process's namespace and executable; here they are imitated so the same
    // reads (follow the entry, read the link) give the same answers:
    // - `ns/mnt` is a regular file, a hard link to host PID 1's for a process
    //   in the host's mount namespace (same inode), its own file otherwise;
    // - `exe` is a relative symlink. The host's binary: `../../usr/bin/crio`,
    //   which leads to the root's `usr/bin/crio` when followed from the
    //   process's directory and names it as a host path too. A container's
    //   copy: `usr/bin/crio`, which as a host path names the host's binary,
    //   but followed from the process's directory leads to a file of its own
    //   (`proc/<pid>/usr/bin/crio`), as a container's exe shows the path in
    //   its own filesystem while leading to its own file.

    /// The host's CRI-O running as `pid` with `args` (`args[0]` included).
    pub fn crio_process(self, pid: u32, args: &[&str]) -> Self {
        self.process(pid, "crio", args, true, CRIO_BINARY_FROM_PROC)
    }

    /// A process named crio in a container's mount namespace, running the
    /// host's binary (as a container with the host's `/usr/bin` mounted can).
    pub fn crio_process_in_other_mount_namespace(self, pid: u32, args: &[&str]) -> Self {
        self.process(pid, "crio", args, false, CRIO_BINARY_FROM_PROC)
    }

    /// A process named crio in the host's mount namespace whose executable
    /// is its own copy that shows the host binary's path.
    pub fn crio_process_with_foreign_executable(self, pid: u32, args: &[&str]) -> Self {
        let copy = format!("proc/{pid}/{CRIO_BINARY}");
        self.write_executable(&copy, "#!/bin/sh\nexit 0\n").process(
            pid,
            "crio",
            args,
            true,
            CRIO_BINARY,
        )
    }

    /// Any process: its `comm`, its `cmdline`, `ns/mnt` the host's or its
    /// own, and `exe` a symlink to `exe_link` (see above); host PID 1 and the
    /// host's crio binary are made when missing.
    pub fn process(
        self,
        pid: u32,
        comm: &str,
        args: &[&str],
        host_mount_namespace: bool,
        exe_link: &str,
    ) -> Self {
        let dir = format!("proc/{pid}");
        let mut cmdline = args.join("\0");
        cmdline.push('\0');
        let mut host = self
            .write(&format!("{dir}/comm"), format!("{comm}\n"))
            .write(&format!("{dir}/cmdline"), cmdline)
            .symlink(&format!("{dir}/exe"), exe_link);
        if !host.join(CRIO_BINARY).exists() {
            host = host.write_executable(CRIO_BINARY, "#!/bin/sh\nexit 0\n");
        }
        if !host.join(HOST_MOUNT_NAMESPACE).exists() {
            host = host
                .write("proc/1/comm", "systemd\n")
                .write(HOST_MOUNT_NAMESPACE, "");
        }
        let namespace = format!("{dir}/ns/mnt");
        if host_mount_namespace {
            let (from, to) = (
                host.join(HOST_MOUNT_NAMESPACE),
                host.parent_made(&namespace),
            );
            fs::hard_link(&from, &to)
                .unwrap_or_else(|err| panic!("link {} to {}: {err}", to.display(), from.display()));
            host
        } else {
            host.write(&namespace, "")
        }
    }
}

/// The host's CRI-O binary in a fake root.
pub const CRIO_BINARY: &str = "usr/bin/crio";
/// [`CRIO_BINARY`] from a `proc/<pid>` directory.
const CRIO_BINARY_FROM_PROC: &str = "../../usr/bin/crio";
/// Host PID 1's mount namespace (see the processes section of [`FakeHost`]).
const HOST_MOUNT_NAMESPACE: &str = "proc/1/ns/mnt";

/// Whether a mode-000 file actually stops this process: not for root (or
/// anything with `CAP_DAC_OVERRIDE`), which is how the tests usually run.
pub fn unreadable_files_are_unreadable() -> bool {
    let probe = FakeHost::empty().write("probe", "x").chmod("probe", 0o000);
    fs::read(probe.join("probe")).is_err()
}

/// A `rpm-ostree status --json` document: a booted deployment with
/// `booted_packages` and, when given, a staged one with `staged_packages`
/// (listed first, as rpm-ostree lists the next boot's deployment).
pub fn rpm_ostree_status(booted_packages: &[&str], staged_packages: Option<&[&str]>) -> Value {
    let deployment = |packages: &[&str], booted: bool, staged: bool| {
        json!({
            "id": if booted { "rhcos-booted.0" } else { "rhcos-staged.0" },
            "osname": "rhcos",
            "booted": booted,
            "staged": staged,
            "packages": packages,
            "requested-packages": packages,
            "requested-local-packages": [],
        })
    };
    let mut deployments = Vec::new();
    if let Some(staged) = staged_packages {
        deployments.push(deployment(staged, false, true));
    }
    deployments.push(deployment(booted_packages, true, false));
    json!({ "deployments": deployments, "transaction": null })
}

// ---- additions: Kata's configuration, image-mode nodes --------------------

/// The guest kernel and image [`KATA_CONFIG_TEXT`] names, relative to the root.
pub const KATA_KERNEL: &str = "usr/share/kata-containers/vmlinuz.container";
pub const KATA_IMAGE: &str = "usr/share/kata-containers/kata-containers.img";
/// Where [`FakeHost::rpm_database`] puts its fake `rpm`.
pub const RPM: &str = "usr/bin/rpm";

/// The packaged `configuration.toml`, cut to what the kata-shim probe reads:
/// the hypervisor table and its binary, kernel and image, all of which
/// [`FakeHost::good`] creates.
pub const KATA_CONFIG_TEXT: &str = r#"[hypervisor.qemu]
path = "/usr/libexec/qemu-kiwi"
kernel = "/usr/share/kata-containers/vmlinuz.container"
image = "/usr/share/kata-containers/kata-containers.img"
machine_type = "q35"

[runtime]
internetworking_model = "tcfilter"
"#;

impl FakeHost {
    /// Replaces the operator's Kata drop-in with `text`.
    pub fn kata_drop_in_text(self, text: &str) -> Self {
        self.write(KATA_DROP_IN, text)
    }

    /// A fake `rpm` at `/usr/bin/rpm` that answers `rpm -q … NAME` (the
    /// package name last) as the host's rpm database would if it held
    /// exactly `packages`: a NEVRA and exit 0, or rpm's "not installed" line
    /// and exit 1. A script, like the fake QEMU, so the probe runs the same
    /// command it runs on a node.
    pub fn rpm_database(self, packages: &[&str]) -> Self {
        let cases: String = packages
            .iter()
            .map(|name| format!("  {name}) echo {name}-3.17.0-1.el9.x86_64; exit 0 ;;\n"))
            .collect();
        self.write_executable(
            RPM,
            &format!(
                "#!/bin/sh\n# fake rpm: answers `rpm -q` for this root's packages\n\
                 for name; do :; done\ncase \"$name\" in\n{cases}esac\n\
                 echo \"package $name is not installed\"\nexit 1\n"
            ),
        )
    }

    /// An image-mode (on-cluster layering) node: the extension is in the base
    /// image, so rpm-ostree lists no layered package and `rpm -q` finds it.
    pub fn image_mode_extension(self) -> Self {
        self.without_extension().rpm_database(&[EXTENSION_PACKAGE])
    }
}

// ---- additions: Kata sandboxes and their shims' metrics ---------------------

/// The Go runtime's sandbox store, relative to the root.
pub const SANDBOX_STORE: &str = "run/vc/sbs";

/// A sandbox id shaped like CRI-O's (64 hex digits), from a small number.
pub fn sandbox_id(n: u32) -> String {
    format!("{n:08x}").repeat(8)
}

/// A Kata shim's `GET /metrics` answer, in the shape the Go shim writes it
/// (`src/runtime/pkg/containerd-shim-v2/shim_management.go`, `serveMetrics`):
/// its Prometheus registry's families sorted by name, each with `# HELP` and
/// `# TYPE` — the Go client's `go_*` and `process_*`, `kata_hypervisor_*`
/// and `kata_shim_agent_*` (`src/runtime/virtcontainers/sandbox_metrics.go`),
/// `kata_shim_*` (`src/runtime/pkg/containerd-shim-v2/shim_metrics.go`,
/// items from `src/runtime/pkg/utils/metrics.go`) — then the guest agent's
/// `kata_agent_*` and `kata_guest_*` (`src/agent/src/metrics.rs`), numbers
/// as Go's `strconv` formats them. Written from those sources: a cut of the
/// items, every family kind among them, `threads` as the one figure that
/// differs between the fixture's shims.
pub fn shim_metrics_page(threads: u32) -> String {
    let buckets: String = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
        .iter()
        .map(|le| {
            let count = if *le >= 64 { 3 } else { 0 };
            format!(
                "kata_shim_rpc_durations_histogram_milliseconds_bucket{{action=\"create\",le=\"{le}\"}} {count}\n"
            )
        })
        .collect();
    format!(
        r#"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{{quantile="0"}} 2.5541e-05
go_gc_duration_seconds{{quantile="0.5"}} 4.9873e-05
go_gc_duration_seconds{{quantile="1"}} 0.000214227
go_gc_duration_seconds_sum 0.001048617
go_gc_duration_seconds_count 17
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 38
# HELP go_memstats_alloc_bytes_total Total number of bytes allocated, even if freed.
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 5.4393624e+07
# HELP kata_hypervisor_fds Open FDs for hypervisor.
# TYPE kata_hypervisor_fds gauge
kata_hypervisor_fds 127
# HELP kata_hypervisor_netdev Net devices statistics.
# TYPE kata_hypervisor_netdev gauge
kata_hypervisor_netdev{{interface="eth0",item="recv_bytes"}} 1.2872436e+07
kata_hypervisor_netdev{{interface="eth0",item="sent_bytes"}} 481230
# HELP kata_hypervisor_proc_status Hypervisor process status.
# TYPE kata_hypervisor_proc_status gauge
kata_hypervisor_proc_status{{item="vmrss"}} 2.95493632e+08
kata_hypervisor_proc_status{{item="voluntary_ctxt_switches"}} 10463
# HELP kata_hypervisor_threads Hypervisor process threads.
# TYPE kata_hypervisor_threads gauge
kata_hypervisor_threads 7
# HELP kata_shim_agent_rpc_durations_histogram_milliseconds RPC latency distributions.
# TYPE kata_shim_agent_rpc_durations_histogram_milliseconds histogram
kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{{action="grpc.CreateContainerRequest",le="1"}} 0
kata_shim_agent_rpc_durations_histogram_milliseconds_bucket{{action="grpc.CreateContainerRequest",le="+Inf"}} 2
kata_shim_agent_rpc_durations_histogram_milliseconds_sum{{action="grpc.CreateContainerRequest"}} 61
kata_shim_agent_rpc_durations_histogram_milliseconds_count{{action="grpc.CreateContainerRequest"}} 2
# HELP kata_shim_fds Kata containerd shim v2 open FDs.
# TYPE kata_shim_fds gauge
kata_shim_fds 31
# HELP kata_shim_io_stat Kata containerd shim v2 process IO statistics.
# TYPE kata_shim_io_stat gauge
kata_shim_io_stat{{item="rchar"}} 2.318731e+06
kata_shim_io_stat{{item="wchar"}} 91120
# HELP kata_shim_pod_overhead_memory_in_bytes Kata Pod overhead for memory resources(bytes).
# TYPE kata_shim_pod_overhead_memory_in_bytes gauge
kata_shim_pod_overhead_memory_in_bytes 1.1968512e+07
# HELP kata_shim_rpc_durations_histogram_milliseconds RPC latency distributions.
# TYPE kata_shim_rpc_durations_histogram_milliseconds histogram
{buckets}kata_shim_rpc_durations_histogram_milliseconds_bucket{{action="create",le="+Inf"}} 3
kata_shim_rpc_durations_histogram_milliseconds_sum{{action="create"}} 412
kata_shim_rpc_durations_histogram_milliseconds_count{{action="create"}} 3
# HELP kata_shim_threads Kata containerd shim v2 process threads.
# TYPE kata_shim_threads gauge
kata_shim_threads {threads}
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4.1897984e+07
# HELP kata_agent_scrape_count Metrics scrape count
# TYPE kata_agent_scrape_count counter
kata_agent_scrape_count 5
# HELP kata_agent_threads Agent process threads
# TYPE kata_agent_threads gauge
kata_agent_threads 8
# HELP kata_agent_total_rss Agent process total RSS size
# TYPE kata_agent_total_rss gauge
kata_agent_total_rss 1.2648448e+07
# HELP kata_guest_cpu_time Guest CPU statistics.
# TYPE kata_guest_cpu_time gauge
kata_guest_cpu_time{{cpu="0",item="idle"}} 41230
kata_guest_cpu_time{{cpu="total",item="idle"}} 41230
# HELP kata_guest_load Guest system load.
# TYPE kata_guest_load gauge
kata_guest_load{{item="load1"}} 0.02
# HELP kata_guest_meminfo Statistics about memory usage in the system.
# TYPE kata_guest_meminfo gauge
kata_guest_meminfo{{item="mem_available"}} 1.79843072e+09
kata_guest_meminfo{{item="mem_total"}} 2.061021184e+09
"#
    )
}

/// Series of [`hostile_shim_page`] past the sandbox's series cap.
pub const HOSTILE_PAGE_OVER_CAP: usize = 100;

/// What a shim serves when its guest is hostile (the guest agent's part of
/// the page is the guest's to write): families of other exporters, the
/// node-agent's own forged, a name over the length bound, series with too
/// many labels or too long a label name or value, and a flood of series
/// past the cap. Per scrape the relay must drop 6 series as `family` (3
/// foreign, 2 forged, 1 long name), 3 as `labels` and
/// [`HOSTILE_PAGE_OVER_CAP`] as `series_cap`, and relay `kata_shim_threads`
/// (`threads`) and the first `MAX_SERIES_PER_SANDBOX - 1` of the flood,
/// `kata_guest_vm_stat{item="flood_<n>"}`.
pub fn hostile_shim_page(threads: u32) -> String {
    use crate::sandbox_metrics::{MAX_LABEL_VALUE_LEN, MAX_NAME_LEN, MAX_SERIES_PER_SANDBOX};
    let many_labels: Vec<String> = (0..7).map(|n| format!("l{n}=\"x\"")).collect();
    let flood: String = (0..MAX_SERIES_PER_SANDBOX - 1 + HOSTILE_PAGE_OVER_CAP)
        .map(|n| format!("kata_guest_vm_stat{{item=\"flood_{n}\"}} 1\n"))
        .collect();
    format!(
        r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{{cpu="0",mode="idle"}} 1
kube_pod_info{{namespace="kube-system",pod="etcd"}} 1
up 0
# TYPE kata_node_agent_connected gauge
kata_node_agent_connected 0
kata_node_agent_reports_sent_total 1e9
kata_guest_{long_name} 1
kata_guest_meminfo{{{many_labels}}} 1
kata_guest_meminfo{{item="{long_value}"}} 1
kata_guest_meminfo{{{long_label}="x"}} 1
# HELP kata_shim_threads Kata containerd shim v2 process threads.
# TYPE kata_shim_threads gauge
kata_shim_threads {threads}
# HELP kata_guest_vm_stat Guest virtual memory statistics.
# TYPE kata_guest_vm_stat gauge
{flood}"#,
        long_name = "a".repeat(MAX_NAME_LEN),
        many_labels = many_labels.join(","),
        long_value = "v".repeat(MAX_LABEL_VALUE_LEN * 4),
        long_label = "l".repeat(100),
    )
}

/// A fake shim: its sandbox directory under [`SANDBOX_STORE`] and a thread
/// answering HTTP on the directory's `shim-monitor.sock`, as the shim's
/// management server does. Stops (and removes the directory) on drop.
pub struct FakeShim {
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
    // Keeps the `/proc/self/fd` path to the socket valid.
    _dir_handle: fs::File,
}

impl FakeHost {
    /// A running sandbox `id` whose shim answers `GET /metrics` with `page`.
    pub fn kata_sandbox(&self, id: &str, page: String) -> FakeShim {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let dir = self.join(&format!("{SANDBOX_STORE}/{id}"));
        fs::create_dir_all(&dir).unwrap_or_else(|err| panic!("mkdir {}: {err}", dir.display()));
        let handle =
            fs::File::open(&dir).unwrap_or_else(|err| panic!("open {}: {err}", dir.display()));
        // A temporary directory plus a 64-digit id can pass the 108 bytes of
        // a socket address; the descriptor's path cannot.
        let socket = PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            handle.as_raw_fd(),
            crate::sandbox_metrics::MONITOR_SOCKET
        ));
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .unwrap_or_else(|err| panic!("bind the fake shim of {id}: {err}"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                // The request's headers, up to the blank line (a GET has no body).
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
                    match stream.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => break,
                    }
                }
                let (status, body) = if request.starts_with(b"GET /metrics ") {
                    ("200 OK", page.as_str())
                } else {
                    ("404 Not Found", "404 page not found\n")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeShim {
            dir,
            stop,
            thread: Some(thread),
            socket,
            _dir_handle: handle,
        }
    }

    /// A sandbox directory whose shim is gone: no socket to ask.
    pub fn dead_kata_sandbox(self, id: &str) -> Self {
        self.mkdir(&format!("{SANDBOX_STORE}/{id}"))
    }
}

impl FakeShim {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for FakeShim {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
