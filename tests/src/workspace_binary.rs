//! A binary of this workspace for a test to run as a child process, built
//! (or found up to date) by cargo once per test process, in the profile the
//! test binary itself was built in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::Error;

/// The binary `bin` of the workspace package `package`: the path in the
/// environment variable `override_env` when set, else `cargo build -p
/// PACKAGE --bin BIN` into the target directory this test binary runs from.
pub fn workspace_binary(package: &str, bin: &str, override_env: &str) -> Result<PathBuf, Error> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    if let Some(path) = std::env::var_os(override_env) {
        return Ok(PathBuf::from(path));
    }
    // Held across the build: two tests of one process asking at once get
    // one build.
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::Setup("the binary cache's lock is poisoned".into()))?;
    built
        .entry(bin.to_owned())
        .or_insert_with(|| build(package, bin))
        .clone()
        .map_err(Error::Setup)
}

fn build(package: &str, bin: &str) -> Result<PathBuf, String> {
    // target/<profile>/deps/<test>-<hash> → target/<profile>
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a target directory", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of {bin} failed ({status})"));
    }
    Ok(profile_dir.join(bin))
}
