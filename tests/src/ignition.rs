//! The Ignition validator of github.com/coreos/ignition/v2 — the library the
//! Machine Config Operator checks every MachineConfig with — built from the
//! Go module proxy by `tests/scripts/build-ignition.sh` (its directory in
//! `KATA_IGNITION_BIN_DIR`): the judge of the configs we render.

use std::path::PathBuf;
use std::process::Command;

/// The ignition-validate binary, or why there is none.
pub fn ignition_validate() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KATA_IGNITION_BIN_DIR").ok_or(
        "KATA_IGNITION_BIN_DIR is not set (make test sets it from tests/scripts/build-ignition.sh)",
    )?;
    let path = PathBuf::from(dir).join("ignition-validate");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing", path.display()))
    }
}

/// Why the tests that need the validator cannot run here, if they cannot (a
/// `requires(..)` check of the suite's harness).
pub fn unavailable() -> Option<String> {
    ignition_validate().err()
}

/// Runs ignition-validate on `config` (an Ignition config, such as a
/// MachineConfig's `spec.config`): whether it accepted it, and what it said.
pub fn validate(config: &serde_json::Value) -> Result<(bool, String), String> {
    let binary = ignition_validate()?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let file = dir.path().join("config.ign");
    std::fs::write(&file, config.to_string()).map_err(|e| format!("{}: {e}", file.display()))?;
    let output = Command::new(&binary)
        .arg(&file)
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}
