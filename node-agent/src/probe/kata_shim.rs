//! Kata: the CRI-O runtime binary `containerd-shim-kata-v2` and the
//! `configuration.toml` it reads. The configuration is parsed too, because a
//! shim with a broken configuration fails every pod.

use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, reason};

pub const SHIM_CANDIDATES: [&str; 3] = [
    "/usr/bin/containerd-shim-kata-v2",
    "/usr/local/bin/containerd-shim-kata-v2",
    // kata-deploy's layout.
    "/opt/kata/bin/containerd-shim-kata-v2",
];
/// In the shim's own lookup order: the admin's override in /etc wins over
/// the packaged default.
pub const CONFIG_CANDIDATES: [&str; 3] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/kata-containers/defaults/configuration.toml",
    "/opt/kata/share/defaults/kata-containers/configuration.toml",
];
/// The packaged configuration is about 30 KiB.
const CONFIG_LIMIT: u64 = 1024 * 1024;

const NAME: ProbeName = ProbeName::KataShim;

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot) -> ProbeOutcome {
    let Some(shim) = SHIM_CANDIDATES.into_iter().find(|path| root.exists(path)) else {
        return ProbeOutcome::fail(
            NAME,
            reason::KATA_SHIM_MISSING,
            format!("none of {} exists", SHIM_CANDIDATES.join(", ")),
        );
    };
    if !root.is_executable(shim) {
        return ProbeOutcome::fail(
            NAME,
            reason::KATA_SHIM_NOT_EXECUTABLE,
            format!("{} is not an executable regular file", display(shim)),
        );
    }
    let Some(config) = CONFIG_CANDIDATES.into_iter().find(|path| root.exists(path)) else {
        return ProbeOutcome::fail(
            NAME,
            reason::KATA_CONFIG_MISSING,
            format!(
                "{} found, but none of {}",
                display(shim),
                CONFIG_CANDIDATES.join(", ")
            ),
        );
    };
    let text = match root.read_file(config, CONFIG_LIMIT) {
        Ok(bytes) => String::from_utf8(bytes),
        Err(err) => {
            return ProbeOutcome::fail(NAME, reason::KATA_CONFIG_UNREADABLE, err.to_string());
        }
    };
    let parsed = match text {
        Ok(text) => text
            .parse::<toml_edit::DocumentMut>()
            .map_err(|err| err.message().to_owned()),
        Err(_) => Err("not UTF-8 text".to_owned()),
    };
    match parsed {
        Ok(_) => ProbeOutcome::ok(
            NAME,
            reason::KATA_SHIM_INSTALLED,
            format!("{} and {}", display(shim), display(config)),
        ),
        Err(why) => ProbeOutcome::fail(
            NAME,
            reason::KATA_CONFIG_INVALID,
            format!("{}: {why}", display(config)),
        ),
    }
}
