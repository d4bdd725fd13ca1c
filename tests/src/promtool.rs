//! Prometheus's own `promtool`, built from the Go module proxy by
//! `tests/scripts/build-promtool.sh` (its directory in
//! `KATA_PROMTOOL_BIN_DIR`): the judge of our metrics text and rules.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The promtool binary, or why there is none.
pub fn promtool() -> Result<PathBuf, String> {
    let dir = std::env::var_os("KATA_PROMTOOL_BIN_DIR").ok_or(
        "KATA_PROMTOOL_BIN_DIR is not set (make test sets it from tests/scripts/build-promtool.sh)",
    )?;
    let path = PathBuf::from(dir).join("promtool");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing", path.display()))
    }
}

/// Why the tests that need promtool cannot run here, if they cannot (a
/// `requires(..)` check of the suite's harness).
pub fn unavailable() -> Option<String> {
    promtool().err()
}

/// `promtool <args>` with `stdin` on its standard input: whether it
/// succeeded, and what it printed (stdout then stderr).
pub fn run(args: &[&str], stdin: &str) -> Result<(bool, String), String> {
    let mut child = Command::new(promtool()?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("promtool stdin: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}
