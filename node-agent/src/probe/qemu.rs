//! QEMU: the binary Kata starts, executable, and recent enough.
//!
//! `--version` costs a fork and exec, too much for every cycle, so the parsed
//! answer is cached by (path, mtime, size): an upgrade replaces the file and
//! changes all three.

use std::path::PathBuf;
use std::time::SystemTime;

use super::host::{HostRoot, display, first_line};
use super::{Budgets, ProbeName, ProbeOutcome, blocking_within, reason};
use crate::config::Version;
use crate::error::AgentError;

const NAME: ProbeName = ProbeName::Qemu;

/// Where QEMU lives: RHCOS's trimmed `qemu-kiwi` first, then RHEL's
/// `qemu-kvm`, then upstream's `qemu-system-<arch>`.
pub fn candidates() -> Vec<String> {
    let arch = match std::env::consts::ARCH {
        "powerpc64" => "ppc64",
        other => other,
    };
    vec![
        "/usr/libexec/qemu-kiwi".to_owned(),
        "/usr/libexec/qemu-kvm".to_owned(),
        format!("/usr/bin/qemu-system-{arch}"),
        format!("/usr/libexec/qemu-system-{arch}"),
    ]
}

/// Extracts `X.Y.Z` from `QEMU emulator version X.Y.Z (anything)`.
pub fn parse_qemu_version(output: &str) -> Option<Version> {
    const MARKER: &str = "QEMU emulator version ";
    let rest = output
        .lines()
        .find_map(|line| line.find(MARKER).map(|at| &line[at + MARKER.len()..]))?;
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.trim_end_matches('.').parse().ok()
}

/// The identity of a binary on disk: when it changes, the cached version is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    path: PathBuf,
    modified: Option<SystemTime>,
    size: u64,
}

/// What `--version` said, or why it could not be used.
type VersionAnswer = Result<Version, (&'static str, String)>;

/// The last `--version` answer, kept by the runner across cycles.
#[derive(Debug, Default)]
pub struct QemuCache {
    entry: Option<(Fingerprint, VersionAnswer)>,
    runs: u64,
}

impl QemuCache {
    /// How many times `--version` has actually been run, for tests and the benchmark.
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

struct Located {
    host_path: String,
    fingerprint: Fingerprint,
}

pub async fn probe(
    root: &HostRoot,
    minimum: Version,
    cache: &mut QemuCache,
    budgets: &Budgets,
) -> ProbeOutcome {
    let lookup_root = root.clone();
    let located =
        match blocking_within(NAME, budgets.filesystem, move || locate(&lookup_root)).await {
            Ok(located) => located,
            Err(outcome) => return outcome,
        };
    let shown = display(&located.host_path);
    let cached = cache
        .entry
        .as_ref()
        .filter(|(fingerprint, _)| *fingerprint == located.fingerprint)
        .map(|(_, answer)| answer.clone());
    let answer = match cached {
        Some(answer) => answer,
        None => {
            cache.runs += 1;
            let answer = match root
                .run(&located.host_path, &["--version"], budgets.command)
                .await
            {
                Ok(stdout) => {
                    let stdout = String::from_utf8_lossy(&stdout);
                    parse_qemu_version(&stdout).ok_or_else(|| {
                        (
                            reason::QEMU_VERSION_UNPARSEABLE,
                            format!("{shown} --version printed {:?}", first_line(&stdout)),
                        )
                    })
                }
                // A slow node is no property of the binary: try again next cycle.
                Err(AgentError::CommandTimedOut { .. }) => {
                    return ProbeOutcome::timed_out(NAME, budgets.command);
                }
                Err(err) => Err((reason::QEMU_VERSION_FAILED, err.to_string())),
            };
            cache.entry = Some((located.fingerprint, answer.clone()));
            answer
        }
    };
    match answer {
        Ok(version) if version >= minimum => ProbeOutcome::ok(
            NAME,
            reason::QEMU_VERSION_SUPPORTED,
            format!("{shown} is QEMU {version} (minimum {minimum})"),
        ),
        Ok(version) => ProbeOutcome::fail(
            NAME,
            reason::QEMU_TOO_OLD,
            format!("{shown} is QEMU {version}, older than the minimum {minimum}"),
        ),
        Err((reason, message)) => ProbeOutcome::fail(NAME, reason, message),
    }
}

fn locate(root: &HostRoot) -> Result<Located, ProbeOutcome> {
    let candidates = candidates();
    let Some(host_path) = candidates.iter().find(|path| root.exists(path)) else {
        return Err(ProbeOutcome::fail(
            NAME,
            reason::QEMU_MISSING,
            format!("none of {} exists", candidates.join(", ")),
        ));
    };
    let not_executable = |why: String| ProbeOutcome::fail(NAME, reason::QEMU_NOT_EXECUTABLE, why);
    if !root.is_executable(host_path) {
        return Err(not_executable(format!(
            "{} is not an executable regular file",
            display(host_path)
        )));
    }
    let resolve = || -> Result<Fingerprint, AgentError> {
        let meta = root.metadata(host_path)?;
        Ok(Fingerprint {
            path: root.resolve(host_path)?,
            modified: meta.modified().ok(),
            size: meta.len(),
        })
    };
    let fingerprint = resolve().map_err(|err| not_executable(err.to_string()))?;
    Ok(Located {
        host_path: host_path.clone(),
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_banner() {
        let rhel =
            "QEMU emulator version 8.2.0 (qemu-kvm-8.2.0-11.el9_4)\nCopyright (c) 2003-2023\n";
        assert_eq!(parse_qemu_version(rhel), Some(Version::new(8, 2, 0)));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 9.1.50\n"),
            Some(Version::new(9, 1, 50))
        );
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2\n"),
            Some(Version::new(7, 2, 0))
        );
        assert_eq!(parse_qemu_version("qemu-img version 8.2.0"), None);
        assert_eq!(parse_qemu_version("QEMU emulator version banana"), None);
        assert_eq!(parse_qemu_version(""), None);
    }
}
