//! CRI-O set up for a kubelet on this kind of machine (Debian 12's crun
//! 1.8.1, cgroup v1 hybrid, a VM that withholds a capability, no registry),
//! and no `kata` handler: that comes at run time, as the machine-config
//! daemon delivers it ([`super::RealNode::apply_rendered_config`]). Each
//! workaround says what it works around.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use super::PAUSE_IMAGE;
use super::images::{self, ImageSpec};
use crate::Error;
use crate::crio::{Crio, Started, main_config};

/// The CNI network's name; CNI's result cache files start with it.
pub(super) const NETWORK: &str = "kata-real-node";
/// The bridge the network's pods hang on.
pub(super) const BRIDGE: &str = "kata-rn0";
/// The host's own address on [`BRIDGE`], in the pods' subnet: how a pod
/// reaches a server on this machine (the coordinator's health channel)
/// with no Service networking, DNS, gateway or forwarding here.
pub const HOST_ON_BRIDGE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 244, 77, 1);
/// The pods' subnet, [`HOST_ON_BRIDGE`]'s prefix length.
const SUBNET: &str = "10.244.77.0/24";
/// host-local hands out addresses from here on, never the host's.
const FIRST_POD_ADDRESS: &str = "10.244.77.10";
/// Starts CRI-O in `dir` for the kubelet, its drop-ins in `config_dir`, its
/// storage holding [`PAUSE_IMAGE`].
pub(super) fn start_crio(dir: &Path, config_dir: &Path, node_bin: &Path) -> Result<Crio, Error> {
    for sub in [config_dir, &dir.join("cni/net.d"), &dir.join("cni/bin")] {
        std::fs::create_dir_all(sub).map_err(|e| Error::io(sub, e))?;
    }
    let main = dir.join("crio.conf");
    // cgroupfs and conmon in the pod's cgroup come with main_config already.
    // drop_infra_ctr: no pause process per pod, the kubelet does not need one.
    // pids_limit = 0: crun 1.8.1 writes CRI-O's default of -1 literally into
    // pids.max, which the kernel refuses (`Invalid argument`).
    let runtime_extra = "default_runtime = \"crun\"\ndrop_infra_ctr = true\npids_limit = 0";
    write(&main, &main_config(dir, runtime_extra))?;
    write(&config_dir.join("10-node.conf"), &node_drop_in(dir)?)?;
    write_cni(dir)?;
    build_pause_image(dir, node_bin)?;
    match Crio::start(dir, &main, config_dir)? {
        Started::Serving(crio) => Ok(crio),
        Started::Exited(log) => Err(Error::Setup(format!(
            "CRI-O refused the node's configuration:\n{log}"
        ))),
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn write_executable(path: &Path, text: &str) -> Result<(), Error> {
    write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(path, e))
}

/// The pause image for every sandbox (CRI-O prepares the infra container's
/// storage from it even with drop_infra_ctr, and registry.k8s.io cannot be
/// reached), and crun behind a wrapper.
fn node_drop_in(dir: &Path) -> Result<String, Error> {
    let wrapper = dir.join("crun-for-debian-12");
    write_executable(&wrapper, &crun_wrapper(&withheld_capabilities()?))?;
    Ok(format!(
        r#"[crio.image]
pause_image = "{PAUSE_IMAGE}"
pause_command = "/pause"

[crio.runtime.runtimes.crun]
runtime_path = "{wrapper}"
runtime_root = "{root}"
monitor_path = "/usr/bin/conmon"
"#,
        wrapper = wrapper.display(),
        root = dir.join("crun").display(),
    ))
}

/// crun with the container's spec mended first, for two things of this
/// machine:
/// - Debian 12's crun 1.8.1 accepts only `ociVersion` 1.0.x and CRI-O 1.36
///   writes 1.3.0 (`unknown version specified`); the fields CRI-O sets are
///   all 1.0 ones, so the spec is marked 1.0.2. A newer crun would not need it.
/// - The VM withholds capabilities from every process's bounding set
///   (`CAP_SYS_RESOURCE` here); CRI-O gives a privileged container every
///   capability and crun's capset then fails (`Operation not permitted`), so
///   the withheld ones are dropped from the spec. Without CAP_SYS_RESOURCE
///   no process may lower its `oom_score_adj` either (the kubelet asks -997
///   for a system-node-critical pod: `write to /proc/self/oom_score_adj:
///   Permission denied`), so the spec's is raised to crun's own when lower.
///
/// conmon passes the bundle as `--bundle <dir>` to `create`; every other
/// call goes to crun unchanged.
fn crun_wrapper(withheld: &[&str]) -> String {
    let withheld = serde_json::to_string(withheld).unwrap_or_else(|_| "[]".into());
    format!(
        r#"#!/bin/sh
bundle=""
previous=""
for arg in "$@"; do
  case "$previous" in --bundle|-b) bundle="$arg" ;; esac
  case "$arg" in --bundle=*) bundle="${{arg#--bundle=}}" ;; esac
  previous="$arg"
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  floor="$(cat /proc/self/oom_score_adj)"
  /usr/bin/jq --argjson withheld '{withheld}' --argjson floor "$floor" '
    .ociVersion = "1.0.2"
    | if .process.capabilities then
        .process.capabilities |= map_values(map(select(. as $c | $withheld | index($c) | not)))
      else . end
    | if ($withheld | index("CAP_SYS_RESOURCE")) and (.process.oomScoreAdj // $floor) < $floor then
        .process.oomScoreAdj = $floor
      else . end' "$bundle/config.json" >"$bundle/config.json.mended" || exit 1
  mv "$bundle/config.json.mended" "$bundle/config.json"
fi
exec /usr/bin/crun "$@"
"#
    )
}

/// Linux's capabilities by number (capability.h, up to CAP_CHECKPOINT_RESTORE).
const CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities missing from this process's bounding set: no process
/// started from here, crun included, can hand them on.
fn withheld_capabilities() -> Result<Vec<&'static str>, Error> {
    let status_path = Path::new("/proc/self/status");
    let status = std::fs::read_to_string(status_path).map_err(|e| Error::io(status_path, e))?;
    let bounding = status
        .lines()
        .find_map(|line| line.strip_prefix("CapBnd:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| Error::Setup("no CapBnd in /proc/self/status".into()))?;
    Ok(withheld_from(bounding))
}

fn withheld_from(bounding: u64) -> Vec<&'static str> {
    CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// A bridge network (without one CRI-O reports NetworkReady=false and the
/// node never gets Ready). No gateway and no masquerading: either would
/// change the machine (ip_forward, iptables) for networking no test here
/// uses; the host's address on the bridge ([`bridge_with_host_address`]) is
/// in the pods' subnet, so a pod reaches it on-link. host-local keeps its
/// leases in `dir`.
fn write_cni(dir: &Path) -> Result<(), Error> {
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": SUBNET, "rangeStart": FIRST_POD_ADDRESS }]],
                "dataDir": dir.join("cni/ipam").display().to_string(),
            },
        }],
    });
    write(
        &dir.join("cni/net.d/10-kata-real-node.conflist"),
        &conflist.to_string(),
    )?;
    for plugin in ["bridge", "host-local", "loopback"] {
        let link = dir.join("cni/bin").join(plugin);
        let _ = std::fs::remove_file(&link);
        symlink(Path::new("/usr/lib/cni").join(plugin), &link).map_err(|e| Error::io(&link, e))?;
    }
    Ok(())
}

/// Creates [`BRIDGE`] with [`HOST_ON_BRIDGE`] on it before CRI-O's bridge
/// plugin first runs (the plugin takes a bridge that exists as it is, and
/// with `isGateway: false` gives it no address of its own). The teardown
/// deletes the bridge, the address with it.
pub(super) fn bridge_with_host_address() -> Result<(), Error> {
    let address = format!(
        "{HOST_ON_BRIDGE}/{}",
        SUBNET.rsplit('/').next().unwrap_or("24")
    );
    let steps: [&[&str]; 3] = [
        &["link", "add", BRIDGE, "type", "bridge"],
        &["addr", "add", &address, "dev", BRIDGE],
        &["link", "set", BRIDGE, "up"],
    ];
    for args in steps {
        let status = Command::new("ip")
            .args(args)
            .status()
            .map_err(|e| Error::Setup(format!("ip {}: {e}", args.join(" "))))?;
        if !status.success() {
            return Err(Error::Setup(format!(
                "ip {} failed ({status})",
                args.join(" ")
            )));
        }
    }
    Ok(())
}

/// Builds [`PAUSE_IMAGE`] (the static `pause`, FROM scratch) into the
/// storage CRI-O will use.
fn build_pause_image(dir: &Path, node_bin: &Path) -> Result<(), Error> {
    let spec = ImageSpec {
        reference: PAUSE_IMAGE,
        files: vec![(node_bin.join("pause"), "/pause".into())],
        entrypoint: "/pause",
    };
    images::build(dir, &spec)
}

/// crun refuses to run on a hybrid hierarchy while a controller (hugetlb
/// here) sits on the cgroup v2 side, and looks for it only at
/// `/sys/fs/cgroup/<name>`: mounts it there as v1 unless something is
/// mounted there already. Once mounted as v1 the kernel may keep it bound to
/// v1 after the unmount, so whether it is on v2 now says nothing. Whether it
/// mounted, for the teardown.
pub(super) fn mount_hugetlb_v1() -> Result<bool, Error> {
    let enabled = std::fs::read_to_string("/proc/cgroups").is_ok_and(|table| {
        table.lines().any(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            columns.first() == Some(&"hugetlb") && columns.get(3) == Some(&"1")
        })
    });
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|table| {
        table
            .lines()
            .any(|line| line.split(' ').nth(4) == Some(HUGETLB_V1))
    });
    if !enabled || mounted {
        return Ok(false);
    }
    let mount_point = Path::new(HUGETLB_V1);
    std::fs::create_dir_all(mount_point).map_err(|e| Error::io(mount_point, e))?;
    let status = Command::new("mount")
        .args(["-t", "cgroup", "-o", "hugetlb", "cgroup", HUGETLB_V1])
        .status()
        .map_err(|e| Error::Setup(format!("mount: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_dir(mount_point);
        return Err(Error::Setup(format!(
            "cannot mount the hugetlb cgroup controller at {HUGETLB_V1} ({status})"
        )));
    }
    Ok(true)
}

/// CRI-O gives a hostPath that holds its storage root (the node-agent's
/// `/`) HostToContainer propagation, which needs the host's mount to be
/// shared or a slave. systemd makes `/` shared at boot; without systemd as
/// PID 1 it is private here, so it is made shared for the node's lifetime.
/// Whether it changed it, for the teardown.
pub(super) fn share_root_mount() -> Result<bool, Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io(Path::new("/proc/self/mountinfo"), e))?;
    let propagates = mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4) == Some("/"))
        .is_some_and(propagation_set);
    if propagates {
        return Ok(false);
    }
    let status = Command::new("mount")
        .args(["--make-shared", "/"])
        .status()
        .map_err(|e| Error::Setup(format!("mount --make-shared /: {e}")))?;
    if !status.success() {
        return Err(Error::Setup(format!(
            "mount --make-shared / failed ({status})"
        )));
    }
    Ok(true)
}

/// Whether a mountinfo line's optional fields (between the mount options
/// and ` - `) make the mount shared or a slave.
fn propagation_set(line: &str) -> bool {
    let before_separator = line.split(" - ").next().unwrap_or_default();
    before_separator
        .split(' ')
        .skip(6)
        .any(|field| field.starts_with("shared:") || field.starts_with("master:"))
}

pub(super) const HUGETLB_V1: &str = "/sys/fs/cgroup/hugetlb";

/// Stops and removes every pod of this CRI-O (only the node's run in it),
/// containers killed at once.
pub(super) fn remove_all_pods(crio: &Crio) {
    let Ok(pods) = crio.crictl(&["pods", "-q"]) else {
        return;
    };
    for pod in pods.split_whitespace() {
        let _ = crio.crictl(&["stopp", pod]);
        let _ = crio.crictl(&["rmp", "-f", pod]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_root_mount_has_no_propagation_and_a_shared_one_has() {
        let private = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw";
        let shared = "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw";
        let slave = "27 1 254:0 / / rw,relatime master:3 - ext4 /dev/vda rw";
        assert!(!propagation_set(private));
        assert!(propagation_set(shared));
        assert!(propagation_set(slave));
    }

    #[test]
    fn a_bounding_set_without_sys_resource_withholds_only_it() {
        assert_eq!(
            withheld_from(0x0000_01ff_feff_ffff),
            vec!["CAP_SYS_RESOURCE"]
        );
        assert!(withheld_from(u64::MAX).is_empty());
    }
}
