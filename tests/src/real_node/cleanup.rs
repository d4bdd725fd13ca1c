//! Taking the node off the machine: what the kubelet, CRI-O, conmon and CNI
//! leave outside the test's directory (cgroups, the bridge, CNI's result
//! cache, the kubelet's device-plugin socket and container log links) and
//! the mounts inside it. Every step is idempotent and best-effort: a
//! teardown runs on drop, where there is no error to return.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::runtime::{BRIDGE, HUGETLB_V1, NETWORK};

/// Where the kubelet writes whatever its `--root-dir` says: the
/// device-plugin socket and the container log links.
const DEVICE_PLUGIN_SOCKET: &str = "/var/lib/kubelet/device-plugins/kubelet.sock";
const CONTAINER_LOGS: &str = "/var/log/containers";
/// Where libcni caches each attachment's result, one file per
/// `<network>-<container>-<interface>`.
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// Directories the node may create outside its own, deepest first: removed
/// again when they did not exist before and are empty after.
const HOST_DIRS: [&str; 6] = [
    "/var/lib/kubelet/device-plugins",
    "/var/lib/kubelet",
    CONTAINER_LOGS,
    CNI_RESULTS,
    "/var/lib/cni",
    "/run/crio",
];

/// How the node's temporary directory is named: every process of the node
/// names it on its command line, and every mount of the node is under it.
pub(super) const DIR_PREFIX: &str = "kata-real-node-";

/// What a node left on the machine, if anything, each said in a few words:
/// a process naming a node's directory on its command line (the kubelet,
/// CRI-O, conmon), a `kubepods` cgroup, the bridge, a mount under a node's
/// directory, a stand-in for Kata's shim. Empty once a teardown did its work.
pub fn left_behind() -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let command = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let command = String::from_utf8_lossy(&command).replace('\0', " ");
        if command.contains(DIR_PREFIX) {
            left.push(format!("process {pid}: {}", command.trim()));
        }
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let kubepods = hierarchy.path().join("kubepods");
        if kubepods.exists() {
            left.push(format!("cgroup {}", kubepods.display()));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        left.push(format!("bridge {BRIDGE}"));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mountinfo.lines().filter_map(|line| line.split(' ').nth(4)) {
        if point.contains(DIR_PREFIX) {
            left.push(format!("mount {}", unescape_mount_point(point)));
        }
    }
    for path in super::stand_ins::left_behind() {
        left.push(format!("stand-in {}", path.display()));
    }
    left
}

/// What the node changed on the machine that the teardown must undo.
#[derive(Debug, Default)]
pub(super) struct HostChanges {
    /// The node mounted the hugetlb controller (see `runtime::mount_hugetlb_v1`).
    pub hugetlb_mounted: bool,
    /// The node made `/` a shared mount (see `runtime::share_root_mount`).
    pub root_shared: bool,
    /// Of [`HOST_DIRS`], those that did not exist before the start.
    created_dirs: Vec<PathBuf>,
}

impl HostChanges {
    pub(super) fn before_start() -> Self {
        HostChanges {
            hugetlb_mounted: false,
            root_shared: false,
            created_dirs: HOST_DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|dir| !dir.exists())
                .collect(),
        }
    }
}

/// Undoes what a node started from `dir` did to the machine, after its
/// processes were stopped.
pub(super) fn host(dir: &Path, changes: &HostChanges) {
    leftovers();
    unmount_under(dir);
    remove_log_links_into(dir);
    let _ = std::fs::remove_file(DEVICE_PLUGIN_SOCKET);
    for created in &changes.created_dirs {
        // Only if empty: something else may have come to use it meanwhile.
        let _ = std::fs::remove_dir(created);
    }
    if changes.root_shared {
        let _ = Command::new("mount").args(["--make-private", "/"]).status();
    }
    if changes.hugetlb_mounted {
        // The kernel may keep the hierarchy (and hugetlb bound to v1) after
        // the unmount; nothing on this machine uses hugetlb on v2.
        let _ = Command::new("umount").arg(HUGETLB_V1).status();
        let _ = std::fs::remove_dir(HUGETLB_V1);
    }
}

/// What any node leaves on the machine regardless of its directory, also
/// after a run killed before its teardown: processes and cgroups under
/// `/kubepods` (only a kubelet makes those), the bridge, CNI's cached
/// results for the node's network, the stand-ins for Kata's shim.
pub(super) fn leftovers() {
    remove_kubepods_cgroups();
    super::stand_ins::leftovers();
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = Command::new("ip").args(["link", "delete", BRIDGE]).status();
    }
    if let Ok(entries) = std::fs::read_dir(CNI_RESULTS) {
        let prefix = format!("{NETWORK}-");
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Every `kubepods` cgroup in every hierarchy, deepest first, its processes
/// (containers and their conmon, by the pids the cgroup records) killed.
fn remove_kubepods_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut cgroups = Vec::new();
    for hierarchy in hierarchies.flatten() {
        collect_dirs(&hierarchy.path().join("kubepods"), &mut cgroups);
    }
    // Deepest first: a cgroup is removable only once its children are gone.
    cgroups.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for cgroup in &cgroups {
        kill_members(cgroup);
    }
    for cgroup in &cgroups {
        for _ in 0..50 {
            if std::fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
                break;
            }
            // Killed members take a moment to leave.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn collect_dirs(dir: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    into.push(dir.to_owned());
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), into);
        }
    }
}

fn kill_members(cgroup: &Path) {
    let Ok(procs) = std::fs::read_to_string(cgroup.join("cgroup.procs")) else {
        return;
    };
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Lazily unmounts every mount under `dir` (CRI-O's shm and namespaces, the
/// kubelet's volumes), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mount_point(point)))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    points.dedup();
    for point in points {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape_mount_point(escaped: &str) -> String {
    escaped
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The kubelet links each container's log into /var/log/containers; those
/// pointing into `dir` are this node's.
fn remove_log_links_into(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(CONTAINER_LOGS) else {
        return;
    };
    for entry in entries.flatten() {
        if std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(dir)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        assert_eq!(unescape_mount_point("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_point("/run/x"), "/run/x");
    }
}
