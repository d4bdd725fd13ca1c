//! Which process is the host's CRI-O. Its command line says where CRI-O
//! reads its configuration, so it is trusted only from a process a tenant
//! cannot forge: one that runs in the host's mount namespace and whose
//! executable is the host's own file at the path it runs from. Any
//! container can start a process named `crio` with any arguments, but its
//! mount namespace is its own, and its executable, whatever path the kernel
//! shows for it, is a file of its image, not the host's file at that path.
//!
//! Both facts come from procfs's magic links (`/proc/<pid>/ns/mnt`,
//! `/proc/<pid>/exe`), which the kernel follows to the real namespace and
//! file wherever they live ([`HostRoot::entry_file_id`]). A fake host root
//! imitates them with ordinary files and symlinks (see the fixtures): the
//! same reads, the same judgement ([`judge`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;

use super::host::{FileId, HostRoot, display};
use crate::error::AgentError;

/// A command line is a few KiB.
const CMDLINE_LIMIT: u64 = 64 * 1024;
/// Processes looked at, at most, to find crio.
const MAX_PROCESSES: usize = 65_536;
/// Rejected candidates logged one by one per scan: a node full of forged
/// `crio` processes costs a few debug lines and a count, not a line each.
const LOGGED_REJECTIONS: usize = 4;
/// Host roots whose crio pid is remembered: one in the agent; tests use many.
const REMEMBERED_ROOTS: usize = 8;

/// What identifies a running process, read from its `/proc` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `ns/mnt`, followed: the process's mount namespace.
    pub mount_namespace: FileId,
    /// `exe`, followed: the file the process runs, in its own mount namespace.
    pub executable: FileId,
    /// `exe`'s target as the kernel spells it: the path in the process's
    /// own mount namespace, which a container chooses freely.
    pub executable_path: String,
}

/// Why a process named `crio` is not taken for the host's CRI-O.
#[derive(Debug)]
pub enum Rejection {
    /// Its `/proc` entry, or the host's reference, could not be read (the
    /// process exited, or the kernel refused to show it).
    Unreadable(String),
    OtherMountNamespace,
    /// Its executable is not the host's file at the path it runs from.
    ExecutableNotHostFile {
        path: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Unreadable(err) => write!(f, "cannot be inspected: {err}"),
            Rejection::OtherMountNamespace => {
                f.write_str("runs in another mount namespace than the host's")
            }
            Rejection::ExecutableNotHostFile { path } => write!(
                f,
                "its executable is not the host's file at {}",
                display(path)
            ),
        }
    }
}

/// Whether `process` is the host's CRI-O: it runs in
/// `host_mount_namespace`, and its executable is the very file found on the
/// host at the path it runs from (`host_file`, `None` when nothing is
/// there). Pure.
pub fn judge(
    process: &ProcessIdentity,
    host_mount_namespace: FileId,
    host_file: Option<FileId>,
) -> Result<(), Rejection> {
    if process.mount_namespace != host_mount_namespace {
        return Err(Rejection::OtherMountNamespace);
    }
    if host_file != Some(process.executable) {
        return Err(Rejection::ExecutableNotHostFile {
            path: process.executable_path.clone(),
        });
    }
    Ok(())
}

/// The arguments of the host's running CRI-O, from the host's `/proc`;
/// `None` when no process passes [`judge`]. The pid found is remembered per
/// host root, so a steady node costs a few small reads per cycle instead of
/// a scan of every process; the remembered pid is judged again every time,
/// so a pid reused by another process is not trusted. Blocking.
pub fn host_crio_arguments(root: &HostRoot) -> Option<Vec<String>> {
    static LAST_PID: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());
    let mut host_namespace = None;
    let remembered = LAST_PID.lock().ok().and_then(|last| {
        last.iter()
            .find(|(r, _)| r == root.path())
            .map(|(_, pid)| pid.clone())
    });
    if let Some(pid) = remembered
        && let Candidate::HostCrio(args) = examine(root, &pid, &mut host_namespace)
    {
        return Some(args);
    }
    let pids = root.read_dir_sorted("/proc").ok()?;
    let mut rejected = 0usize;
    let found = pids
        .iter()
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .take(MAX_PROCESSES)
        .find_map(|pid| match examine(root, pid, &mut host_namespace) {
            Candidate::NotCrio => None,
            Candidate::Rejected(why) => {
                rejected += 1;
                if rejected <= LOGGED_REJECTIONS {
                    tracing::debug!(pid = %pid, reason = %why, "a process named crio is not the host's CRI-O: its command line is not trusted");
                }
                None
            }
            Candidate::HostCrio(args) => Some((pid.clone(), args)),
        });
    if rejected > LOGGED_REJECTIONS {
        tracing::debug!(
            rejected,
            "processes named crio that are not the host's CRI-O"
        );
    }
    let (pid, args) = found?;
    if let Ok(mut last) = LAST_PID.lock() {
        last.retain(|(r, _)| r != root.path());
        if last.len() >= REMEMBERED_ROOTS {
            last.remove(0);
        }
        last.push((root.path().to_owned(), pid));
    }
    Some(args)
}

enum Candidate {
    NotCrio,
    Rejected(Rejection),
    HostCrio(Vec<String>),
}

/// Process `pid`: not named `crio`, named so but not the host's CRI-O, or
/// the host's CRI-O with its arguments. `host_namespace` is read at the
/// first process named crio and kept for the rest of the scan.
fn examine(
    root: &HostRoot,
    pid: &str,
    host_namespace: &mut Option<Result<FileId, String>>,
) -> Candidate {
    let named_crio = root
        .read_file(&format!("/proc/{pid}/comm"), 256)
        .is_ok_and(|comm| comm.trim_ascii() == b"crio");
    if !named_crio {
        return Candidate::NotCrio;
    }
    let host_namespace = match host_namespace
        .get_or_insert_with(|| host_mount_namespace(root).map_err(|err| err.to_string()))
    {
        Ok(namespace) => *namespace,
        Err(err) => return Candidate::Rejected(Rejection::Unreadable(err.clone())),
    };
    let identity = match process_identity(root, pid) {
        Ok(identity) => identity,
        Err(err) => return Candidate::Rejected(Rejection::Unreadable(err.to_string())),
    };
    let host_file = root.file_id(&identity.executable_path).ok();
    if let Err(why) = judge(&identity, host_namespace, host_file) {
        return Candidate::Rejected(why);
    }
    match root.read_file(&format!("/proc/{pid}/cmdline"), CMDLINE_LIMIT) {
        Ok(cmdline) => Candidate::HostCrio(
            cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
        ),
        Err(err) => Candidate::Rejected(Rejection::Unreadable(err.to_string())),
    }
}

/// The process's mount namespace and executable, following its magic links.
pub fn process_identity(root: &HostRoot, pid: &str) -> Result<ProcessIdentity, AgentError> {
    let dir = format!("/proc/{pid}");
    let link = root.read_link_entry(&dir, "exe")?;
    Ok(ProcessIdentity {
        mount_namespace: root.entry_file_id(&format!("{dir}/ns"), "mnt")?,
        executable: root.entry_file_id(&dir, "exe")?,
        // Not UTF-8: no host path of ours matches it.
        executable_path: link.to_string_lossy().into_owned(),
    })
}

/// The host's mount namespace: host PID 1's. Where PID 1 cannot be
/// inspected (an init that made itself not dumpable, as some sandboxes'
/// do), kthreadd's: PID 2 in the host's PID namespace is always the
/// kernel's thread creator, which runs in the initial mount namespace, and
/// no tenant process can hold that pid.
fn host_mount_namespace(root: &HostRoot) -> Result<FileId, AgentError> {
    root.entry_file_id("/proc/1/ns", "mnt").or_else(|init_err| {
        let kthreadd = root
            .read_file("/proc/2/comm", 256)
            .is_ok_and(|comm| comm.trim_ascii() == b"kthreadd");
        if !kthreadd {
            return Err(init_err);
        }
        root.entry_file_id("/proc/2/ns", "mnt")
            .map_err(|_| init_err)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The production reads against this machine's procfs: this test
    /// process, in the host's mount namespace, running its own binary,
    /// passes the judgement by its real magic links.
    #[test]
    fn the_real_procfs_is_read_through_its_magic_links() {
        let root = HostRoot::default();
        let me = process_identity(&root, &std::process::id().to_string()).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.executable_path, exe.display().to_string());
        let host_file = root.file_id(&me.executable_path).ok();
        let host_namespace = host_mount_namespace(&root).unwrap();
        judge(&me, host_namespace, host_file).unwrap();
        // Another host file at that path would not do.
        let other = root.file_id("/proc/self/status").ok();
        assert!(judge(&me, host_namespace, other).is_err());
    }
}
