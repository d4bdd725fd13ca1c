//! Reading the host through a host root (`/` on a node, `/host` in the
//! DaemonSet, a temporary directory in tests).
//!
//! Paths are resolved *inside* the root, the way `chroot` would: an absolute
//! symlink such as `var/run -> /run` is followed relative to the root rather
//! than into the agent's own container, and `..` never climbs above the root.
//! Reads go through `openat2(RESOLVE_IN_ROOT)` on a descriptor of the root,
//! so the kernel enforces that in one call per open, with no window between
//! resolving and opening; where the kernel or a seccomp profile refuses
//! `openat2` (before Linux 5.6), the same rules are applied component by
//! component in [`HostRoot::resolve`]. Files are opened non-blocking and
//! checked to be regular files before they are read, so a FIFO planted where
//! a config file should be cannot hang a probe, and every read has a size cap.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2, readlinkat};
use nix::sys::stat::{SFlag, fstatat};

use crate::error::AgentError;

/// Linux's own limit on symlinks followed while resolving one path.
const MAX_SYMLINK_HOPS: usize = 40;

/// The most a host command may print on stdout (`rpm-ostree status
/// --json` on a node with many deployments is tens of KiB) and on stderr
/// (only its first line is shown).
const COMMAND_STDOUT_LIMIT: u64 = 4 << 20;
const COMMAND_STDERR_LIMIT: u64 = 64 << 10;

/// How often an open is retried when `openat2(RESOLVE_IN_ROOT)` says
/// `EAGAIN` (a rename elsewhere in the tree raced with the lookup).
const OPENAT2_RETRIES: usize = 3;

/// A file's identity on the host: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub device: u64,
    pub inode: u64,
}

/// The directory under which the host's filesystem is visible.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
    /// A descriptor of the root for `openat2`, opened at first use (and
    /// shared by clones); `None` when `openat2` cannot be used here.
    root_fd: Arc<OnceLock<Option<OwnedFd>>>,
}

impl PartialEq for HostRoot {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

impl Eq for HostRoot {}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            root_fd: Arc::default(),
        }
    }

    /// A root that resolves every path itself, as on kernels without
    /// `openat2`: the tests hold both ways to the same rules.
    #[cfg(test)]
    fn without_openat2(root: impl Into<PathBuf>) -> Self {
        let host = Self::new(root);
        let _ = host.root_fd.set(None);
        host
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// True when the root is the agent's own `/`, where the kernel's path
    /// resolution already is the right one and commands run directly.
    pub fn is_system_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `host_path` (such as `/etc/crio/crio.conf`) as a path the agent can
    /// open, with every symlink on the way resolved inside the root.
    ///
    /// A missing component is not an error here: the rest of the path is
    /// appended as is, and opening it reports `NotFound`.
    pub fn resolve(&self, host_path: &str) -> Result<PathBuf, AgentError> {
        if self.is_system_root() {
            return Ok(Path::new("/").join(host_path.trim_start_matches('/')));
        }
        let mut pending: VecDeque<OsString> = components(Path::new(host_path)).collect();
        let mut resolved = self.root.clone();
        let mut depth = 0usize;
        let mut hops = 0usize;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                if depth > 0 {
                    resolved.pop();
                    depth -= 1;
                }
                continue;
            }
            let candidate = resolved.join(&part);
            let meta = match fs::symlink_metadata(&candidate) {
                Ok(meta) => meta,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    resolved = candidate;
                    resolved.extend(pending);
                    return Ok(resolved);
                }
                Err(source) => return Err(io_error(host_path, source)),
            };
            if !meta.file_type().is_symlink() {
                resolved = candidate;
                depth += 1;
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(AgentError::SymlinkLoop {
                    path: display(host_path),
                });
            }
            let target = fs::read_link(&candidate).map_err(|source| io_error(host_path, source))?;
            if target.is_absolute() {
                resolved = self.root.clone();
                depth = 0;
            }
            for part in components(&target).collect::<Vec<_>>().into_iter().rev() {
                pending.push_front(part);
            }
        }
        Ok(resolved)
    }

    /// Metadata of `host_path`, following symlinks inside the root.
    pub fn metadata(&self, host_path: &str) -> Result<Metadata, AgentError> {
        // O_PATH: nothing is opened for reading, so any kind of file (a
        // FIFO, a device) can be looked at without side effects.
        let file = File::from(self.open(host_path, OFlag::O_PATH)?);
        file.metadata()
            .map_err(|source| io_error(host_path, source))
    }

    /// Device and inode of `host_path`, following symlinks inside the root.
    pub fn file_id(&self, host_path: &str) -> Result<FileId, AgentError> {
        self.metadata(host_path).map(|meta| FileId {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// Device and inode of what the entry `name` of the directory `dir`
    /// leads to. `dir` is resolved inside the root; `name` is followed by the
    /// kernel even when it is one of procfs's magic links (`exe`, `mnt`),
    /// which lead to the real file or namespace whatever mount namespace
    /// it lives in: that is the point, and why only a single entry of a
    /// directory already inside the root is followed this way.
    pub fn entry_file_id(&self, dir: &str, name: &str) -> Result<FileId, AgentError> {
        let host_path = format!("{}/{name}", dir.trim_end_matches('/'));
        let dir = self.open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let stat = fstatat(dir.as_fd(), name, AtFlags::empty())
            .map_err(|errno| errno_error(&host_path, errno))?;
        Ok(FileId {
            device: stat.st_dev,
            inode: stat.st_ino,
        })
    }

    /// The target of the symlink entry `name` of the directory `dir`, as
    /// the kernel spells it (for a magic link: the path in the mount
    /// namespace of the process it belongs to).
    pub fn read_link_entry(&self, dir: &str, name: &str) -> Result<OsString, AgentError> {
        let host_path = format!("{}/{name}", dir.trim_end_matches('/'));
        let dir = self.open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        readlinkat(dir.as_fd(), name).map_err(|errno| errno_error(&host_path, errno))
    }

    /// Whether `host_path` exists (any kind of file).
    pub fn exists(&self, host_path: &str) -> bool {
        self.metadata(host_path).is_ok()
    }

    /// Whether `host_path` is a regular file with an execute bit set.
    pub fn is_executable(&self, host_path: &str) -> bool {
        self.metadata(host_path)
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }

    /// The whole of a regular file, refusing anything larger than `limit`.
    pub fn read_file(&self, host_path: &str, limit: u64) -> Result<Vec<u8>, AgentError> {
        let bytes = self.read_prefix(host_path, limit.saturating_add(1))?;
        if bytes.len() as u64 > limit {
            return Err(AgentError::TooLarge {
                path: display(host_path),
                limit,
            });
        }
        Ok(bytes)
    }

    /// At most the first `limit` bytes of a regular file: for files such as
    /// `/proc/cpuinfo` where the beginning is enough.
    pub fn read_prefix(&self, host_path: &str, limit: u64) -> Result<Vec<u8>, AgentError> {
        let file = self.open_regular(host_path)?;
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|source| io_error(host_path, source))?;
        Ok(bytes)
    }

    /// Whether the entry `name` of the directory `dir` is itself a symlink
    /// (the entry is not followed; `dir` is resolved inside the root).
    pub fn is_symlink_entry(&self, dir: &str, name: &str) -> bool {
        self.open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .ok()
            .and_then(|dir| fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok())
            .is_some_and(|stat| {
                SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
            })
    }

    /// Names of the entries of a directory, sorted bytewise (the order CRI-O
    /// and most config loaders use), skipping names that are not UTF-8 rather
    /// than failing on them.
    pub fn read_dir_sorted(&self, host_path: &str) -> Result<Vec<String>, AgentError> {
        let dir = self.open(host_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(dir).map_err(|errno| errno_error(host_path, errno))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|errno| errno_error(host_path, errno))?;
            match entry.file_name().to_str() {
                Ok("." | "..") | Err(_) => {}
                Ok(name) => names.push(name.to_owned()),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Runs a host binary with a deadline and returns its stdout.
    ///
    /// Under a root other than `/` that holds a complete OS (it has
    /// `/bin/sh`), the binary runs through `chroot` so it finds the host's own
    /// libraries; a bare tree such as a test fixture has none to find, so its
    /// self-contained executables run directly.
    pub async fn run(
        &self,
        host_binary: &str,
        args: &[&str],
        budget: Duration,
    ) -> Result<Vec<u8>, AgentError> {
        let command_line = format!("{} {}", display(host_binary), args.join(" "));
        let mut command = if self.is_system_root() || !self.exists("/bin/sh") {
            tokio::process::Command::new(self.resolve(host_binary)?)
        } else {
            let mut chroot = tokio::process::Command::new("chroot");
            chroot.arg(&self.root).arg(display(host_binary));
            chroot
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let failed = |detail: String| AgentError::CommandFailed {
            command: command_line.clone(),
            detail,
        };
        let mut child = command.spawn().map_err(|err| failed(err.to_string()))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(failed("no pipe to read its output from".to_owned()));
        };
        // Both pipes are drained together (a child blocked writing to a full
        // stderr would never finish stdout) and each only up to its limit:
        // a host binary that prints without end costs a bounded buffer, and
        // is killed when the child is dropped.
        let finished = async {
            let (stdout, stderr) = tokio::join!(
                read_capped(stdout, COMMAND_STDOUT_LIMIT),
                read_capped(stderr, COMMAND_STDERR_LIMIT)
            );
            let stdout = stdout.map_err(|err| failed(format!("reading its output: {err}")))?;
            let stderr = stderr.unwrap_or_default();
            if stdout.len() as u64 > COMMAND_STDOUT_LIMIT {
                return Err(failed(format!(
                    "printed more than the {COMMAND_STDOUT_LIMIT}-byte limit"
                )));
            }
            let status = child.wait().await.map_err(|err| failed(err.to_string()))?;
            Ok((status, stdout, stderr))
        };
        let (status, stdout, stderr) = match tokio::time::timeout(budget, finished).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(AgentError::CommandTimedOut {
                    command: command_line,
                    seconds: budget.as_secs_f64(),
                });
            }
        };
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(failed(format!("{status}: {}", first_line(&stderr))));
        }
        Ok(stdout)
    }

    /// Opens `host_path` inside the root with `flags` (plus `O_CLOEXEC`):
    /// through `openat2(RESOLVE_IN_ROOT)` where the kernel has it, else
    /// through [`HostRoot::resolve`].
    fn open(&self, host_path: &str, flags: OFlag) -> Result<OwnedFd, AgentError> {
        let flags = flags | OFlag::O_CLOEXEC;
        let Some(root_fd) = self.root_fd() else {
            let path = self.resolve(host_path)?;
            return nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty())
                .map_err(|errno| errno_error(host_path, errno));
        };
        let relative = host_path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        let how = OpenHow::new()
            .flags(flags)
            // No magic links: /proc/<pid>/root and the like would lead out
            // of the root (and none of the host's files need them).
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut attempt = 0;
        loop {
            match openat2(root_fd, relative, how) {
                Err(Errno::EAGAIN) if attempt < OPENAT2_RETRIES => attempt += 1,
                Err(Errno::ELOOP) => {
                    return Err(AgentError::SymlinkLoop {
                        path: display(host_path),
                    });
                }
                result => return result.map_err(|errno| errno_error(host_path, errno)),
            }
        }
    }

    /// The root's descriptor for `openat2`; `None` for the system root
    /// (plain paths are already right there) and where `openat2` is missing
    /// or filtered (ENOSYS from old kernels, EPERM from some seccomp
    /// profiles), found out once.
    fn root_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.root_fd
            .get_or_init(|| {
                if self.is_system_root() {
                    return None;
                }
                let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                let root =
                    nix::fcntl::open(&self.root, flags, nix::sys::stat::Mode::empty()).ok()?;
                let how = OpenHow::new()
                    .flags(flags)
                    .resolve(ResolveFlag::RESOLVE_IN_ROOT);
                match openat2(root.as_fd(), ".", how) {
                    Err(Errno::ENOSYS | Errno::EPERM) => None,
                    _ => Some(root),
                }
            })
            .as_ref()
            .map(AsFd::as_fd)
    }

    fn open_regular(&self, host_path: &str) -> Result<File, AgentError> {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
        // writer. O_NOCTTY: a terminal planted there must not become ours.
        let file = File::from(self.open(
            host_path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        )?);
        let meta = file
            .metadata()
            .map_err(|source| io_error(host_path, source))?;
        if !meta.is_file() {
            return Err(AgentError::NotRegularFile {
                path: display(host_path),
                kind: file_kind(&meta),
            });
        }
        Ok(file)
    }
}

impl Default for HostRoot {
    fn default() -> Self {
        Self::new("/")
    }
}

/// How a host path appears in messages: absolute, as the admin sees it on the node.
pub fn display(host_path: &str) -> String {
    format!("/{}", host_path.trim_start_matches('/'))
}

/// A word for the kind of file, for messages.
pub fn file_kind(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_file() {
        "regular file"
    } else if kind.is_dir() {
        "directory"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

pub(crate) fn first_line(text: &str) -> &str {
    text.lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// Up to `limit + 1` bytes of `pipe`: one byte more than allowed tells the
/// caller the limit was passed.
async fn read_capped(pipe: impl tokio::io::AsyncRead + Unpin, limit: u64) -> io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    pipe.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

fn errno_error(host_path: &str, errno: Errno) -> AgentError {
    io_error(host_path, io::Error::from_raw_os_error(errno as i32))
}

fn io_error(host_path: &str, source: io::Error) -> AgentError {
    AgentError::Io {
        path: display(host_path),
        source,
    }
}

/// The normal components of a path; `..` is kept for the resolver to clamp,
/// `/` and `.` are dropped.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(part) => Some(part.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/crio")).unwrap();
        fs::create_dir_all(dir.path().join("var")).unwrap();
        symlink("/run", dir.path().join("var/run")).unwrap();
        let root = HostRoot::new(dir.path());
        assert_eq!(
            root.resolve("/var/run/crio").unwrap(),
            dir.path().join("run/crio")
        );
    }

    #[test]
    fn dot_dot_cannot_climb_above_the_root() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        symlink("../../../../etc", dir.path().join("escape")).unwrap();
        let root = HostRoot::new(dir.path());
        assert_eq!(root.resolve("escape/x").unwrap(), dir.path().join("etc/x"));
        assert_eq!(root.resolve("../../etc").unwrap(), dir.path().join("etc"));
    }

    /// The root both ways: through `openat2` and resolved by hand.
    fn both_ways(dir: &Path) -> [HostRoot; 2] {
        [HostRoot::new(dir), HostRoot::without_openat2(dir)]
    }

    #[test]
    fn this_kernel_opens_through_openat2() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            HostRoot::new(dir.path()).root_fd().is_some(),
            "openat2(RESOLVE_IN_ROOT) is refused here: the agent would fall back to resolving by hand"
        );
        assert!(HostRoot::without_openat2(dir.path()).root_fd().is_none());
        assert!(HostRoot::default().root_fd().is_none());
    }

    #[test]
    fn reads_follow_symlinks_inside_the_root_either_way() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("run/crio")).unwrap();
        fs::write(dir.path().join("run/crio/conf"), "inside").unwrap();
        fs::create_dir_all(dir.path().join("var")).unwrap();
        symlink("/run", dir.path().join("var/run")).unwrap();
        symlink("../../../../run", dir.path().join("escape")).unwrap();
        // Outside the root, where a resolution that escaped would land.
        let outside = dir.path().parent().unwrap().join("run");
        assert!(!outside.join("crio/conf").exists());
        for root in both_ways(dir.path()) {
            assert_eq!(root.read_file("/var/run/crio/conf", 10).unwrap(), b"inside");
            assert_eq!(root.read_file("escape/crio/conf", 10).unwrap(), b"inside");
            assert_eq!(
                root.read_file("../../run/crio/conf", 10).unwrap(),
                b"inside"
            );
            assert!(root.metadata("/var/run/crio").unwrap().is_dir());
            assert_eq!(root.read_dir_sorted("/var/run").unwrap(), ["crio"]);
            assert!(root.is_symlink_entry("/var", "run"));
            assert!(!root.is_symlink_entry("/run", "crio"));
            assert!(
                root.read_file("/var/run/missing", 10)
                    .unwrap_err()
                    .is_not_found()
            );
        }
    }

    #[test]
    fn proc_magic_links_do_not_lead_out_of_the_root() {
        // With the real procfs as the root, `self/root` is the kernel's
        // magic link to this process's own `/`: following it would read
        // the agent's files instead of the host's.
        assert!(Path::new("/proc/self/root/etc").exists());
        for root in both_ways(Path::new("/proc")) {
            assert!(root.metadata("self/root/etc").is_err(), "{root:?}");
            assert!(root.read_dir_sorted("self/root/etc").is_err(), "{root:?}");
        }
    }

    #[test]
    fn symlink_loops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        for root in both_ways(dir.path()) {
            assert!(matches!(
                root.read_file("a", 10),
                Err(AgentError::SymlinkLoop { .. })
            ));
        }
    }

    #[test]
    fn read_file_enforces_its_limit_and_file_kind() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("big"), vec![b'x'; 100]).unwrap();
        fs::create_dir(dir.path().join("dir")).unwrap();
        for root in both_ways(dir.path()) {
            assert!(matches!(
                root.read_file("big", 99),
                Err(AgentError::TooLarge { limit: 99, .. })
            ));
            assert_eq!(root.read_file("big", 100).unwrap().len(), 100);
            assert_eq!(root.read_prefix("big", 10).unwrap().len(), 10);
            assert!(matches!(
                root.read_file("dir", 10),
                Err(AgentError::NotRegularFile {
                    kind: "directory",
                    ..
                })
            ));
            assert!(root.read_file("missing", 10).unwrap_err().is_not_found());
        }
    }

    #[tokio::test]
    async fn commands_are_bounded_in_output_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("endless", "exec yes");
        script(
            "quiet-fail",
            "echo 'first line' >&2; echo second >&2; exit 3",
        );
        script("hello", "echo hello");
        script("sleeper", "exec sleep 30");
        // The fixture has no /bin/sh, so its scripts run directly.
        let root = HostRoot::new(dir.path());
        let budget = Duration::from_secs(20);
        assert_eq!(root.run("/hello", &[], budget).await.unwrap(), b"hello\n");
        let endless = root.run("/endless", &[], budget).await.unwrap_err();
        assert!(
            endless
                .to_string()
                .contains("printed more than the 4194304-byte limit"),
            "{endless}"
        );
        let failed = root.run("/quiet-fail", &[], budget).await.unwrap_err();
        assert!(
            failed.to_string().ends_with("exit status: 3: first line"),
            "{failed}"
        );
        let slow = root
            .run("/sleeper", &[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(slow, AgentError::CommandTimedOut { .. }), "{slow}");
    }
}
