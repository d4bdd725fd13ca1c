//! CRI-O drop-in: does CRI-O's merged configuration define the Kata handler
//! the way Kata needs it, by CRI-O's own rules (cri-o/cri-o v1.36,
//! `pkg/config`)?
//!
//! - Where: CRI-O's `--config` and `--config-dir`, read from the command
//!   line of the host's running crio (only a process that is provably the
//!   host's CRI-O, [`crio_process`]), else from `/etc/sysconfig/crio`, else
//!   the defaults `/etc/crio/crio.conf` and `/etc/crio/crio.conf.d`
//!   ([`crio_paths`]). What is read is bounded in bytes and in TOML items.
//! - Order: the main file, then every file under the directory
//!   **recursively**, lexical order at each level (`filepath.Walk`). A
//!   symlink to a directory in there makes CRI-O exit.
//! - Merge: a later `[crio.runtime.runtimes.<handler>]` table replaces the
//!   earlier one as a whole (Go's TOML decoder builds a fresh map value).
//! - A value of the wrong type in any handler table, or in
//!   `crio.runtime.default_runtime`, stops CRI-O.
//! - `inherit_default_runtime = true` copies runtime_path, runtime_type,
//!   runtime_root and runtime_config_path from the default runtime.
//! - CRI-O drops (serves without) a handler whose runtime_path does not
//!   exist; a vm handler whose runtime_path is not named
//!   `containerd-shim-<name>-v2`; one whose runtime_config_path is set and
//!   missing. Without runtime_root CRI-O uses its default: a WARN.

use std::fmt;

use toml_edit::{DocumentMut, Item, TableLike};

use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, crio_process, reason};
use crate::config::ExpectedConfig;
use crate::error::AgentError;

pub const CRIO_CONF: &str = "/etc/crio/crio.conf";
pub const CRIO_CONF_D: &str = "/etc/crio/crio.conf.d";
pub const CRIO_SYSCONFIG: &str = "/etc/sysconfig/crio";
/// CRI-O's default runtime when `default_runtime` is not set.
pub const DEFAULT_RUNTIME: &str = "crun";
// Memory. Every file is held until the merge (the merge cache is keyed by
// their bytes) and parsed one at a time; toml_edit's document costs about
// 8 times the bytes of a long string and about 1 KiB per key, table or
// value (measured with toml_edit 0.25: a 256 KiB file of 2,048 keys peaks
// at 4 MiB). So the worst case of one read and merge is the total below
// held plus one file parsed, about 4.5 MiB; the drop-in and kata-shim
// probes may overlap, about 9 MiB, well under the agent's 32 MiB limit.
/// One file. CRI-O's full default configuration (`crio config`, v1.36) is
/// about 37 KiB, mostly comments.
const FILE_LIMIT: u64 = 256 * 1024;
/// All the files together.
const TOTAL_LIMIT: u64 = 512 * 1024;
/// Keys, tables and values in one file, as counted by [`toml_items`] (an
/// upper bound): CRI-O's default configuration with every option set
/// counts 225.
const MAX_TOML_ITEMS: usize = 2048;
/// A sysconfig file is a few KiB.
const SMALL_FILE_LIMIT: u64 = 64 * 1024;
/// Drop-in files read at most, over the whole tree.
const MAX_FILES: usize = 512;
/// Directory levels walked at most.
const MAX_DEPTH: usize = 8;

const NAME: ProbeName = ProbeName::CrioDropIn;

/// One configuration file as read from the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigFile {
    /// As the admin sees it: `/etc/crio/crio.conf.d/50-kata`.
    pub host_path: String,
    pub bytes: Vec<u8>,
}

/// A value and the file that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub file: String,
}

/// The handler's table after the merge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandlerConfig {
    /// The file whose definition won.
    pub defined_in: String,
    pub runtime_path: Option<String>,
    pub runtime_type: Option<String>,
    pub runtime_root: Option<String>,
    pub runtime_config_path: Option<String>,
    pub privileged_without_host_devices: Option<bool>,
    pub inherit_default_runtime: Option<bool>,
}

/// What the merge yields for one handler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedConfig {
    /// The handler's winning table, if any file defines it.
    pub handler: Option<HandlerConfig>,
    /// Earlier files whose definition of the handler a later one replaced.
    pub replaced: Vec<String>,
    /// `crio.runtime.default_runtime`, if set.
    pub default_runtime: Option<Setting<String>>,
    /// The default runtime's table, if any file defines it.
    pub default_table: Option<HandlerConfig>,
}

impl MergedConfig {
    fn default_runtime_name(&self) -> &str {
        self.default_runtime
            .as_ref()
            .map_or(DEFAULT_RUNTIME, |s| s.value.as_str())
    }
}

/// A file failed to parse or has a value of the wrong type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeFailure {
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for MergeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// Where CRI-O reads its configuration on this host, and who said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrioPaths {
    pub config: String,
    pub config_dir: String,
    /// `crio command line`, `/etc/sysconfig/crio` or `defaults`.
    pub source: String,
}

impl Default for CrioPaths {
    fn default() -> Self {
        Self {
            config: CRIO_CONF.to_owned(),
            config_dir: CRIO_CONF_D.to_owned(),
            source: "defaults".to_owned(),
        }
    }
}

/// `--config`/`-c` and `--config-dir`/`-d` in a list of arguments, each in
/// `--flag value` or `--flag=value` form. Pure.
pub fn config_flags<'a>(
    args: impl IntoIterator<Item = &'a str>,
) -> (Option<String>, Option<String>) {
    let (mut config, mut dir) = (None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value)),
            _ => (arg, None),
        };
        let slot = match flag {
            "--config" | "-c" => &mut config,
            "--config-dir" | "-d" => &mut dir,
            _ => continue,
        };
        let value = inline.or_else(|| args.next()).map(|v| v.trim_matches('"'));
        if let Some(value) = value.filter(|v| v.starts_with('/')) {
            *slot = Some(value.to_owned());
        }
    }
    (config, dir)
}

/// Where CRI-O reads its configuration: the running crio's own flags, else
/// the flags in `/etc/sysconfig/crio` (its unit's EnvironmentFile), else the
/// defaults. Blocking; bounded reads.
pub fn crio_paths(root: &HostRoot) -> CrioPaths {
    let mut paths = CrioPaths::default();
    let found = crio_process::host_crio_arguments(root)
        .map(|args| {
            (
                config_flags(args.iter().map(String::as_str)),
                "crio command line",
            )
        })
        .or_else(|| {
            let bytes = root.read_file(CRIO_SYSCONFIG, SMALL_FILE_LIMIT).ok()?;
            let text = String::from_utf8_lossy(&bytes);
            let words = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '"' || c == '\''))
                .map(|w| {
                    w.split_once('=')
                        .filter(|(k, _)| !k.starts_with('-'))
                        .map_or(w, |(_, v)| v)
                })
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>();
            let flags = config_flags(words);
            (flags.0.is_some() || flags.1.is_some()).then_some((flags, CRIO_SYSCONFIG))
        });
    if let Some(((config, dir), source)) = found {
        paths.source = source.to_owned();
        if let Some(config) = config {
            paths.config = config;
        }
        if let Some(dir) = dir {
            paths.config_dir = dir;
        }
    }
    paths
}

/// Reads the main file and the drop-in tree at `paths` (see [`crio_paths`])
/// in CRI-O's order. A missing file or directory is fine; anything present
/// that cannot be read as a regular file (a FIFO, a symlink to a directory,
/// a permission error, a huge file, files together past [`TOTAL_LIMIT`]) is
/// a failure naming that file. Blocking.
pub fn read_config_files(
    root: &HostRoot,
    paths: &CrioPaths,
) -> Result<Vec<ConfigFile>, MergeFailure> {
    let unreadable = |message: String| MergeFailure {
        reason: reason::DROP_IN_UNREADABLE,
        message,
    };
    let mut files = Vec::new();
    match read_counted(root, &paths.config, &files) {
        Ok(bytes) => files.push(ConfigFile {
            host_path: display(&paths.config),
            bytes,
        }),
        Err(err) if err.is_not_found() => {}
        Err(err) => return Err(unreadable(err.to_string())),
    }
    walk(root, &paths.config_dir, 0, &mut files)?;
    Ok(files)
}

/// One file, within [`FILE_LIMIT`] and what the `files` already read leave
/// of [`TOTAL_LIMIT`].
fn read_counted(
    root: &HostRoot,
    host_path: &str,
    files: &[ConfigFile],
) -> Result<Vec<u8>, AgentError> {
    let held: u64 = files.iter().map(|file| file.bytes.len() as u64).sum();
    let left = TOTAL_LIMIT.saturating_sub(held);
    root.read_file(host_path, FILE_LIMIT.min(left))
        .map_err(|err| match err {
            AgentError::TooLarge { path, .. } if left < FILE_LIMIT => AgentError::TotalTooLarge {
                path,
                limit: TOTAL_LIMIT,
            },
            err => err,
        })
}

/// `filepath.Walk` over the drop-in directory: entries in lexical order,
/// directories entered where they sort.
fn walk(
    root: &HostRoot,
    dir: &str,
    depth: usize,
    files: &mut Vec<ConfigFile>,
) -> Result<(), MergeFailure> {
    let unreadable = |message: String| MergeFailure {
        reason: reason::DROP_IN_UNREADABLE,
        message,
    };
    let names = match root.read_dir_sorted(dir) {
        Ok(names) => names,
        Err(err) if err.is_not_found() && depth == 0 => return Ok(()),
        Err(err) => return Err(unreadable(err.to_string())),
    };
    for name in names {
        let host_path = format!("{}/{name}", dir.trim_end_matches('/'));
        let is_dir = root.metadata(&host_path).is_ok_and(|meta| meta.is_dir());
        if is_dir && root.is_symlink_entry(dir, &name) {
            return Err(MergeFailure {
                reason: reason::DROP_IN_DIR_SYMLINK,
                message: format!(
                    "{} is a symlink to a directory: CRI-O reads it as a file and exits",
                    display(&host_path)
                ),
            });
        }
        if is_dir {
            if depth + 1 >= MAX_DEPTH {
                return Err(unreadable(format!(
                    "{} is nested more than {MAX_DEPTH} levels deep",
                    display(&host_path)
                )));
            }
            walk(root, &host_path, depth + 1, files)?;
            continue;
        }
        if files.len() >= MAX_FILES {
            return Err(unreadable(format!(
                "more than {MAX_FILES} files under {}",
                display(dir)
            )));
        }
        let bytes =
            read_counted(root, &host_path, files).map_err(|err| unreadable(err.to_string()))?;
        files.push(ConfigFile {
            host_path: display(&host_path),
            bytes,
        });
    }
    Ok(())
}

/// [`merge`], remembering the last answer: the drop-ins rarely change, and
/// both this probe and kata-shim merge them every cycle. Keyed by a hash of
/// every file's path and bytes and the handler, so any edit is seen.
pub fn merge_cached(files: &[ConfigFile], handler: &str) -> Result<MergedConfig, MergeFailure> {
    use std::hash::{Hash, Hasher};
    type Last = Option<(u64, Result<MergedConfig, MergeFailure>)>;
    static LAST: std::sync::Mutex<Last> = std::sync::Mutex::new(None);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (files, handler).hash(&mut hasher);
    let key = hasher.finish();
    if let Ok(last) = LAST.lock()
        && let Some((k, merged)) = last.as_ref()
        && *k == key
    {
        return merged.clone();
    }
    let merged = merge(files, handler);
    if let Ok(mut last) = LAST.lock() {
        *last = Some((key, merged.clone()));
    }
    merged
}

/// Merges the files in order, type-checking every handler table and the
/// default runtime on the way, as CRI-O does on start. Pure; never panics,
/// whatever the bytes.
pub fn merge(files: &[ConfigFile], handler: &str) -> Result<MergedConfig, MergeFailure> {
    let mut merged = MergedConfig::default();
    let mut tables: Vec<(String, HandlerConfig)> = Vec::new();
    for file in files {
        let document = parse(file)?;
        if let Some(setting) = default_runtime_in(&document, &file.host_path)? {
            merged.default_runtime = Some(setting);
        }
        for (name, table) in handlers_in(&document, &file.host_path)? {
            match tables.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => {
                    if name == handler {
                        merged.replaced.push(slot.1.defined_in.clone());
                    }
                    slot.1 = table;
                }
                None => tables.push((name, table)),
            }
        }
    }
    let default_name = merged.default_runtime_name().to_owned();
    for (name, table) in tables {
        if name == default_name {
            merged.default_table = Some(table.clone());
        }
        if name == handler {
            merged.handler = Some(table);
        }
    }
    Ok(merged)
}

/// Judges the merged handler; `is_executable` and `exists` check a host path
/// under the root.
pub fn evaluate(
    merged: Result<MergedConfig, MergeFailure>,
    config: &ExpectedConfig,
    is_executable: impl Fn(&str) -> bool,
    exists: impl Fn(&str) -> bool,
) -> ProbeOutcome {
    let handler = &config.runtime_handler;
    let merged = match merged {
        Ok(merged) => merged,
        Err(failure) => return ProbeOutcome::fail(NAME, failure.reason, failure.message),
    };
    let Some(table) = merged.handler.clone() else {
        return ProbeOutcome::fail(
            NAME,
            reason::HANDLER_NOT_CONFIGURED,
            format!(
                "no [crio.runtime.runtimes.{handler}] in CRI-O's configuration (the operator writes it to {})",
                display(&config.drop_in_path)
            ),
        );
    };
    let key = |field: &str| {
        format!(
            "{}: crio.runtime.runtimes.{handler}.{field}",
            table.defined_in
        )
    };
    // CRI-O will not start when its default runtime is a broken handler.
    let fatal = if merged.default_runtime_name() == handler.as_str() {
        " — and it is CRI-O's default_runtime, so CRI-O will not start"
    } else {
        ""
    };
    let fail = |reason: &'static str, message: String| {
        ProbeOutcome::fail(NAME, reason, format!("{message}{fatal}"))
    };
    if table.inherit_default_runtime == Some(true) {
        let default = merged.default_runtime_name();
        let default_type = merged
            .default_table
            .as_ref()
            .and_then(|t| t.runtime_type.as_deref())
            .unwrap_or("oci");
        if default_type != "vm" {
            return fail(
                reason::INHERITS_DEFAULT_RUNTIME,
                format!(
                    "{} = true: CRI-O runs {handler} pods with the default runtime {default:?}                      (runtime_type {default_type:?}), with no VM",
                    key("inherit_default_runtime")
                ),
            );
        }
    }
    let Some(runtime_path) = table.runtime_path.as_deref() else {
        return fail(
            reason::RUNTIME_PATH_MISSING,
            format!("{} is not set", key("runtime_path")),
        );
    };
    if !is_executable(runtime_path) {
        return fail(
            reason::RUNTIME_PATH_NOT_EXECUTABLE,
            format!(
                "{} = {runtime_path:?}, which is not an executable file on the host: CRI-O ignores the handler",
                key("runtime_path")
            ),
        );
    }
    if table.runtime_type.as_deref() != Some("vm") {
        return fail(
            reason::RUNTIME_TYPE_NOT_VM,
            format!(
                "{} is {}, expected \"vm\" (Kata is a VM runtime; CRI-O's default is \"oci\")",
                key("runtime_type"),
                table
                    .runtime_type
                    .as_deref()
                    .map_or("unset".to_owned(), |t| format!("{t:?}"))
            ),
        );
    }
    if !is_shim_name(runtime_path) {
        return fail(
            reason::RUNTIME_PATH_NOT_SHIM_NAME,
            format!(
                "{} = {runtime_path:?}: CRI-O ignores a vm handler whose binary is not named                  containerd-shim-<name>-v2",
                key("runtime_path")
            ),
        );
    }
    if let Some(config_path) = table
        .runtime_config_path
        .as_deref()
        .filter(|p| !p.is_empty())
        && !exists(config_path)
    {
        return fail(
            reason::RUNTIME_CONFIG_PATH_MISSING,
            format!(
                "{} = {config_path:?}, which does not exist on the host: CRI-O ignores the handler",
                key("runtime_config_path")
            ),
        );
    }
    if table.runtime_root.as_deref().is_none_or(str::is_empty) {
        return ProbeOutcome::warn(
            NAME,
            reason::RUNTIME_ROOT_MISSING,
            format!(
                "{} is not set: CRI-O uses its default root",
                key("runtime_root")
            ),
        );
    }
    if table.privileged_without_host_devices != Some(true) {
        return ProbeOutcome::warn(
            NAME,
            reason::PRIVILEGED_WITHOUT_HOST_DEVICES_UNSET,
            format!(
                "{} is not true: privileged Kata pods would be handed the host's devices",
                key("privileged_without_host_devices")
            ),
        );
    }
    let replaced = if merged.replaced.is_empty() {
        String::new()
    } else {
        format!(" (replacing the table in {})", merged.replaced.join(", "))
    };
    ProbeOutcome::ok(
        NAME,
        reason::HANDLER_CONFIGURED,
        format!(
            "[crio.runtime.runtimes.{handler}] in {}{replaced}: runtime_path = {runtime_path:?}, runtime_type = \"vm\"",
            table.defined_in
        ),
    )
}

/// CRI-O's rule for a vm handler's binary (`pkg/config`):
/// `containerd-shim-([a-zA-Z0-9\-\+])+-v2` as the file name.
fn is_shim_name(runtime_path: &str) -> bool {
    let name = runtime_path.rsplit('/').next().unwrap_or(runtime_path);
    name.strip_prefix("containerd-shim-")
        .and_then(|rest| rest.strip_suffix("-v2"))
        .is_some_and(|middle| {
            !middle.is_empty()
                && middle
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'+')
        })
}

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot, config: &ExpectedConfig) -> ProbeOutcome {
    let paths = crio_paths(root);
    let merged = read_config_files(root, &paths)
        .and_then(|files| merge_cached(&files, &config.runtime_handler));
    let mut outcome = evaluate(
        merged,
        config,
        |path| root.is_executable(path),
        |path| root.exists(path),
    );
    if paths.source != "defaults" {
        outcome.message = format!(
            "{} (configuration {} and {} from the {})",
            outcome.message,
            display(&paths.config),
            display(&paths.config_dir),
            paths.source
        );
    }
    outcome
}

/// An upper bound on the keys, tables and values of a TOML text: each one
/// needs an `=`, `[`, `{`, `,` or, for a table of a dotted key, `.` on a
/// line that is not a comment.
fn toml_items(text: &str) -> usize {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .map(|line| {
            line.bytes()
                .filter(|b| matches!(b, b'=' | b'[' | b'{' | b',' | b'.'))
                .count()
        })
        .sum()
}

fn parse(file: &ConfigFile) -> Result<DocumentMut, MergeFailure> {
    let text = std::str::from_utf8(&file.bytes).map_err(|err| MergeFailure {
        reason: reason::DROP_IN_NOT_TEXT,
        message: format!(
            "{}: not UTF-8 text (invalid byte at offset {})",
            file.host_path,
            err.valid_up_to()
        ),
    })?;
    // Before parsing: the parsed document costs about 1 KiB an item.
    if toml_items(text) > MAX_TOML_ITEMS {
        return Err(MergeFailure {
            reason: reason::DROP_IN_UNREADABLE,
            message: format!(
                "{}: more than {MAX_TOML_ITEMS} keys, tables and values, more than the agent parses",
                file.host_path
            ),
        });
    }
    text.parse::<DocumentMut>().map_err(|err| {
        let (line, column) = err
            .span()
            .map_or((1, 1), |span| line_and_column(text, span.start));
        MergeFailure {
            reason: reason::DROP_IN_SYNTAX_ERROR,
            message: format!(
                "{}:{line}:{column}: {}",
                file.host_path,
                err.message().trim()
            ),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The table at `path` (e.g. `crio.runtime`), type-checked on the way.
fn table_at<'a>(
    document: &'a DocumentMut,
    file: &str,
    path: &[&str],
) -> Result<Option<&'a dyn TableLike>, MergeFailure> {
    let mut table: &dyn TableLike = document.as_table();
    let mut key = String::new();
    for part in path {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(part);
        let Some(item) = table.get(part) else {
            return Ok(None);
        };
        table = item
            .as_table_like()
            .ok_or_else(|| wrong_type(file, &key, "a table", item))?;
    }
    Ok(Some(table))
}

fn default_runtime_in(
    document: &DocumentMut,
    file: &str,
) -> Result<Option<Setting<String>>, MergeFailure> {
    let Some(runtime) = table_at(document, file, &["crio", "runtime"])? else {
        return Ok(None);
    };
    match runtime.get("default_runtime") {
        None => Ok(None),
        Some(item) => item
            .as_str()
            .map(|value| {
                Some(Setting {
                    value: value.to_owned(),
                    file: file.to_owned(),
                })
            })
            .ok_or_else(|| wrong_type(file, "crio.runtime.default_runtime", "a string", item)),
    }
}

/// Every handler table in one document, type-checked.
fn handlers_in(
    document: &DocumentMut,
    file: &str,
) -> Result<Vec<(String, HandlerConfig)>, MergeFailure> {
    let Some(runtimes) = table_at(document, file, &["crio", "runtime", "runtimes"])? else {
        return Ok(Vec::new());
    };
    runtimes
        .iter()
        .map(|(name, item)| {
            let key = format!("crio.runtime.runtimes.{name}");
            let table = item
                .as_table_like()
                .ok_or_else(|| wrong_type(file, &key, "a table", item))?;
            Ok((name.to_owned(), handler_table(table, file, &key)?))
        })
        .collect()
}

fn handler_table(
    table: &dyn TableLike,
    file: &str,
    key: &str,
) -> Result<HandlerConfig, MergeFailure> {
    let string = |field: &str| -> Result<Option<String>, MergeFailure> {
        match table.get(field) {
            None => Ok(None),
            Some(item) => item
                .as_str()
                .map(|value| Some(value.to_owned()))
                .ok_or_else(|| wrong_type(file, &format!("{key}.{field}"), "a string", item)),
        }
    };
    let boolean = |field: &str| -> Result<Option<bool>, MergeFailure> {
        match table.get(field) {
            None => Ok(None),
            Some(item) => item
                .as_bool()
                .map(Some)
                .ok_or_else(|| wrong_type(file, &format!("{key}.{field}"), "a boolean", item)),
        }
    };
    Ok(HandlerConfig {
        defined_in: file.to_owned(),
        runtime_path: string("runtime_path")?,
        runtime_type: string("runtime_type")?,
        runtime_root: string("runtime_root")?,
        runtime_config_path: string("runtime_config_path")?,
        privileged_without_host_devices: boolean("privileged_without_host_devices")?,
        inherit_default_runtime: boolean("inherit_default_runtime")?,
    })
}

fn wrong_type(file: &str, key: &str, expected: &str, found: &Item) -> MergeFailure {
    MergeFailure {
        reason: reason::DROP_IN_INVALID_VALUE,
        message: format!(
            "{file}: {key} must be {expected}, found {}",
            found.type_name()
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fixtures::{DROP_IN_DIR, FakeHost};
    use crate::probe::ProbeStatus;
    use crate::probe::host::FileId;
    use proptest::prelude::*;

    const KATA: &str = "[crio.runtime.runtimes.kata]\nruntime_path = \"/usr/bin/containerd-shim-kata-v2\"\n\
        runtime_type = \"vm\"\nruntime_root = \"/run/vc\"\nprivileged_without_host_devices = true\n";

    fn file(name: &str, text: &str) -> ConfigFile {
        ConfigFile {
            host_path: format!("/etc/crio/crio.conf.d/{name}"),
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn judge(files: &[ConfigFile]) -> ProbeOutcome {
        evaluate(
            merge(files, "kata"),
            &ExpectedConfig::default(),
            |_| true,
            |_| true,
        )
    }

    #[test]
    fn a_complete_drop_in_is_ok() {
        let base = ConfigFile {
            host_path: "/etc/crio/crio.conf".to_owned(),
            bytes: b"[crio.runtime]\ndefault_runtime = \"crun\"\n".to_vec(),
        };
        let outcome = judge(&[base, file("50-kata", KATA)]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Ok, "HandlerConfigured")
        );
        assert!(outcome.message.contains("50-kata"));
    }

    #[test]
    fn inline_tables_and_dotted_keys_count_too() {
        let inline = "crio.runtime.runtimes.kata = { runtime_path = \"/x/containerd-shim-kata-v2\", runtime_type = \"vm\", \
            runtime_root = \"/run/vc\", privileged_without_host_devices = true }\n";
        assert_eq!(judge(&[file("50-kata", inline)]).status, ProbeStatus::Ok);
    }

    #[test]
    fn a_later_file_replaces_the_table_as_a_whole() {
        let partial = "[crio.runtime.runtimes.kata]\nruntime_path = \"/usr/bin/containerd-shim-kata-v2\"\n\
            runtime_type = \"vm\"\n";
        let outcome = judge(&[file("50-kata", KATA), file("60-partial", partial)]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Warn, "RuntimeRootMissing"),
            "CRI-O serves it with its default root"
        );
        assert!(
            outcome.message.contains("60-partial"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn syntax_errors_give_file_line_and_column() {
        let outcome = judge(&[file("50-kata", "[crio.runtime]\nlog_level = \n")]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Fail, "DropInSyntaxError")
        );
        assert!(
            outcome
                .message
                .starts_with("/etc/crio/crio.conf.d/50-kata:2:"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn wrong_types_name_the_file_and_key() {
        let outcome = judge(&[file(
            "50-kata",
            &KATA.replace("\"/usr/bin/containerd-shim-kata-v2\"", "5"),
        )]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Fail, "DropInInvalidValue")
        );
        assert!(
            outcome
                .message
                .contains("50-kata: crio.runtime.runtimes.kata.runtime_path must be a string")
        );
        let outcome = judge(&[file("10-odd", "crio = 1\n")]);
        assert!(
            outcome.message.contains("10-odd: crio must be a table"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn a_later_definition_wins_and_names_what_it_replaced() {
        let other = KATA.replace("containerd-shim-kata-v2", "containerd-shim-other-v2");
        let outcome = judge(&[file("50-kata", KATA), file("99-other", &other)]);
        assert_eq!(
            outcome.status,
            ProbeStatus::Ok,
            "CRI-O serves the later one"
        );
        assert!(
            outcome.message.contains("in /etc/crio/crio.conf.d/99-other (replacing the table in /etc/crio/crio.conf.d/50-kata)"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn crio_drop_rules() {
        let named = KATA.replace("containerd-shim-kata-v2", "kata-runtime");
        assert_eq!(
            judge(&[file("50-kata", &named)]).reason,
            "RuntimePathNotShimName"
        );
        for good in ["containerd-shim-kata-v2", "containerd-shim-kata-qemu+x-v2"] {
            assert!(is_shim_name(&format!("/usr/bin/{good}")), "{good}");
        }
        for bad in [
            "containerd-shim--v2",
            "containerd-shim-kata-v3",
            "shim-kata-v2",
            "containerd-shim-k_a-v2",
        ] {
            assert!(!is_shim_name(bad), "{bad}");
        }
        let with_config = format!("{KATA}runtime_config_path = \"/etc/kata/none.toml\"\n");
        let outcome = evaluate(
            merge(&[file("50-kata", &with_config)], "kata"),
            &ExpectedConfig::default(),
            |_| true,
            |_| false,
        );
        assert_eq!(outcome.reason, "RuntimeConfigPathMissing");
        assert!(outcome.message.contains("runtime_config_path"));
    }

    #[test]
    fn inheriting_the_default_runtime_means_no_vm() {
        let inherit = format!("{KATA}inherit_default_runtime = true\n");
        let outcome = judge(&[file("50-kata", &inherit)]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Fail, "InheritsDefaultRuntime")
        );
        assert!(outcome.message.contains("\"crun\""), "{}", outcome.message);
    }

    #[test]
    fn a_broken_default_handler_stops_crio_and_a_type_error_anywhere_too() {
        let base = file("00-base", "[crio.runtime]\ndefault_runtime = \"kata\"\n");
        let oci = KATA.replace("\"vm\"", "\"oci\"");
        let outcome = judge(&[base, file("50-kata", &oci)]);
        assert!(
            outcome.message.contains("CRI-O will not start"),
            "{}",
            outcome.message
        );
        let other = file(
            "10-other",
            "[crio.runtime.runtimes.crun]\nruntime_path = 7\n",
        );
        let outcome = judge(&[other, file("50-kata", KATA)]);
        assert_eq!(outcome.reason, "DropInInvalidValue");
        assert!(
            outcome
                .message
                .contains("crio.runtime.runtimes.crun.runtime_path")
        );
    }

    #[test]
    fn config_paths_come_from_the_running_crio_then_sysconfig() {
        let host = FakeHost::empty();
        assert_eq!(crio_paths(&host.host_root()), CrioPaths::default());
        let host = host.write(
            "etc/sysconfig/crio",
            b"# options\nCRIO_CONFIG_OPTIONS=\"--config-dir=/etc/crio/other.d\"\nCRIO_STORAGE_OPTIONS=\n",
        );
        let from_sysconfig = crio_paths(&host.host_root());
        assert_eq!(
            (
                from_sysconfig.config_dir.as_str(),
                from_sysconfig.source.as_str()
            ),
            ("/etc/crio/other.d", CRIO_SYSCONFIG)
        );
        let host = host
            .crio_process(4242, &["/usr/bin/crio", "--config", "/x/crio.conf"])
            .write("proc/17/comm", b"bash\n");
        let from_process = crio_paths(&host.host_root());
        assert_eq!(
            (
                from_process.config.as_str(),
                from_process.config_dir.as_str(),
                from_process.source.as_str()
            ),
            ("/x/crio.conf", CRIO_CONF_D, "crio command line")
        );
    }

    /// Where a container could point the agent: its own image's files.
    const FORGED_DIR: &str = "/var/lib/containers/storage/overlay/0f3c/diff/etc/crio.d";

    fn forged_args() -> [String; 2] {
        ["crio".to_owned(), format!("--config-dir={FORGED_DIR}")]
    }

    fn paths_of(host: &FakeHost) -> (String, String) {
        let paths = crio_paths(&host.host_root());
        (paths.config_dir, paths.source)
    }

    #[test]
    fn a_process_named_crio_in_a_container_is_not_trusted() {
        let args = forged_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let defaults = (CRIO_CONF_D.to_owned(), "defaults".to_owned());
        let other_namespace = FakeHost::empty().crio_process_in_other_mount_namespace(300, &args);
        assert_eq!(paths_of(&other_namespace), defaults);
        let foreign_binary = FakeHost::empty().crio_process_with_foreign_executable(300, &args);
        assert_eq!(paths_of(&foreign_binary), defaults);
        // Forged processes before the real one (lower pids) are skipped, not
        // taken first, and the real one is still found.
        let both = other_namespace
            .crio_process_with_foreign_executable(301, &args)
            .crio_process(4000, &["/usr/bin/crio", "--config-dir", "/etc/crio/real.d"]);
        assert_eq!(
            paths_of(&both),
            (
                "/etc/crio/real.d".to_owned(),
                "crio command line".to_owned()
            )
        );
        // Without a reference namespace nothing is trusted.
        let no_init = FakeHost::empty()
            .crio_process(4000, &["crio", "--config-dir=/etc/crio/real.d"])
            .remove("proc/1");
        assert_eq!(paths_of(&no_init), defaults);
    }

    #[test]
    fn a_remembered_pid_taken_over_by_a_forgery_is_judged_again() {
        let host = FakeHost::empty().crio_process(4100, &["crio", "--config-dir=/etc/crio/real.d"]);
        assert_eq!(paths_of(&host).0, "/etc/crio/real.d");
        // CRI-O exits and a container process gets its pid.
        let args = forged_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = host
            .remove("proc/4100")
            .crio_process_in_other_mount_namespace(4100, &args);
        assert_eq!(paths_of(&host).1, "defaults");
    }

    #[test]
    fn the_judgement_needs_both_the_namespace_and_the_binary() {
        let id = |inode| FileId { device: 8, inode };
        let process = crio_process::ProcessIdentity {
            mount_namespace: id(1),
            executable: id(2),
            executable_path: "/usr/bin/crio".to_owned(),
        };
        assert!(crio_process::judge(&process, id(1), Some(id(2))).is_ok());
        for (namespace, host_file) in [(id(9), Some(id(2))), (id(1), Some(id(3))), (id(1), None)] {
            assert!(
                crio_process::judge(&process, namespace, host_file).is_err(),
                "{namespace:?} {host_file:?}"
            );
        }
        let other_device = FileId {
            device: 9,
            inode: 2,
        };
        assert!(crio_process::judge(&process, id(1), Some(other_device)).is_err());
    }

    #[test]
    fn a_huge_configuration_is_refused_not_held() {
        let comments = vec![b'#'; 200 * 1024];
        // A forged crio pointing at a huge directory: never read.
        let args = forged_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let forged = (0..8).fold(
            FakeHost::empty().crio_process_in_other_mount_namespace(300, &args),
            |host, n| host.write(&format!("{FORGED_DIR}/{n:02}"), &comments),
        );
        let paths = crio_paths(&forged.host_root());
        assert_eq!(paths.config_dir, CRIO_CONF_D);
        // The host's own drop-ins past the total: refused with a message.
        let huge = (0..8).fold(FakeHost::empty(), |host, n| {
            host.write(&format!("{}/{n:02}", DROP_IN_DIR), &comments)
        });
        let failure = read_config_files(&huge.host_root(), &CrioPaths::default()).unwrap_err();
        assert_eq!(failure.reason, "DropInUnreadable");
        assert!(
            failure.message.contains("/etc/crio/crio.conf.d/02")
                && failure.message.contains("524288-byte limit for them all"),
            "{}",
            failure.message
        );
        // Two files fit, and a third one too big alone says so.
        let two = (0..2).fold(FakeHost::empty(), |host, n| {
            host.write(&format!("{}/{n:02}", DROP_IN_DIR), &comments)
        });
        assert_eq!(
            read_config_files(&two.host_root(), &CrioPaths::default())
                .unwrap()
                .len(),
            2
        );
        let one_big = FakeHost::empty().write("etc/crio/crio.conf", vec![b'#'; 300 * 1024]);
        let failure = read_config_files(&one_big.host_root(), &CrioPaths::default()).unwrap_err();
        assert!(
            failure.message.contains("262144-byte limit for this file"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn a_file_with_too_many_items_is_not_parsed() {
        let many: String = (0..3000).map(|n| format!("k{n} = 1\n")).collect();
        let outcome = judge(&[file("50-many", &many)]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Fail, "DropInUnreadable")
        );
        assert!(outcome.message.contains("50-many"), "{}", outcome.message);
        let commented: String = (0..3000).map(|n| format!("# k{n} = 1\n")).collect();
        assert_eq!(
            judge(&[file("40-comments", &commented), file("50-kata", KATA)]).status,
            ProbeStatus::Ok
        );
        let ours = file("50-kata", KATA);
        assert!(toml_items(std::str::from_utf8(&ours.bytes).unwrap()) < 20);
    }

    #[test]
    fn the_drop_in_tree_is_walked_in_crio_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("etc/crio/crio.conf.d");
        std::fs::create_dir_all(d.join("20-dir/sub")).unwrap();
        for (path, text) in [
            ("10-a", "a"),
            ("20-dir/sub/x", "x"),
            ("20-dir/y", "y"),
            ("30-b", "b"),
        ] {
            std::fs::write(d.join(path), text).unwrap();
        }
        let files = read_config_files(&HostRoot::new(dir.path()), &CrioPaths::default()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.host_path.as_str()).collect();
        assert_eq!(
            names,
            [
                "/etc/crio/crio.conf.d/10-a",
                "/etc/crio/crio.conf.d/20-dir/sub/x",
                "/etc/crio/crio.conf.d/20-dir/y",
                "/etc/crio/crio.conf.d/30-b"
            ]
        );
        std::os::unix::fs::symlink("20-dir", d.join("40-link")).unwrap();
        let failure =
            read_config_files(&HostRoot::new(dir.path()), &CrioPaths::default()).unwrap_err();
        assert_eq!(failure.reason, "DropInDirSymlink");
        assert!(failure.message.contains("40-link"));
    }

    #[test]
    fn the_cached_merge_sees_every_edit() {
        let first = merge_cached(&[file("50-kata", KATA)], "kata").unwrap();
        assert_eq!(first, merge(&[file("50-kata", KATA)], "kata").unwrap());
        let oci = KATA.replace("\"vm\"", "\"oci\"");
        let edited = merge_cached(&[file("50-kata", &oci)], "kata").unwrap();
        assert_eq!(edited.handler.unwrap().runtime_type.as_deref(), Some("oci"));
        assert!(
            merge_cached(&[file("50-kata", KATA)], "other")
                .unwrap()
                .handler
                .is_none()
        );
    }

    #[test]
    fn config_paths_come_from_flags() {
        assert_eq!(
            config_flags(["/usr/bin/crio", "--config=/x/crio.conf", "-d", "/x/d"]),
            (Some("/x/crio.conf".into()), Some("/x/d".into()))
        );
        assert_eq!(
            config_flags(["crio", "--log-level", "info", "--config"]),
            (None, None)
        );
    }

    #[test]
    fn binary_garbage_is_not_text() {
        let garbage = ConfigFile {
            host_path: "/etc/crio/crio.conf.d/00-garbage".to_owned(),
            bytes: vec![0xff, 0xfe, 0x00, 0x80],
        };
        let outcome = judge(&[garbage]);
        assert_eq!(
            (outcome.status, outcome.reason),
            (ProbeStatus::Fail, "DropInNotText")
        );
        assert!(outcome.message.contains("00-garbage"));
    }

    #[test]
    fn a_missing_handler_or_field_fails() {
        assert_eq!(judge(&[]).reason, "HandlerNotConfigured");
        let oci = KATA.replace("\"vm\"", "\"oci\"");
        assert_eq!(judge(&[file("50-kata", &oci)]).reason, "RuntimeTypeNotVm");
        let unprivileged = KATA.replace("true", "false");
        assert_eq!(
            judge(&[file("50-kata", &unprivileged)]).reason,
            "PrivilegedWithoutHostDevicesUnset"
        );
        let outcome = evaluate(
            merge(&[file("50-kata", KATA)], "kata"),
            &ExpectedConfig::default(),
            |_| false,
            |_| true,
        );
        assert_eq!(outcome.reason, "RuntimePathNotExecutable");
    }

    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z/]{0,12}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("\"/usr/bin/containerd-shim-kata-v2\"".to_owned()),
            Just("[1, \"a\"]".to_owned()),
            Just("{ x = 1 }".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 0..4)) {
            let files: Vec<ConfigFile> = files
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| ConfigFile { host_path: format!("/f{i}"), bytes })
                .collect();
            let outcome = judge(&files);
            prop_assert!(!outcome.reason.is_empty());
        }

        #[test]
        fn structured_drop_ins_are_judged_consistently(
            fields in prop::collection::btree_map(
                prop_oneof![
                    Just("runtime_path"), Just("runtime_type"), Just("runtime_root"),
                    Just("privileged_without_host_devices"), Just("other")
                ],
                toml_value(),
                0..5,
            )
        ) {
            let mut text = "[crio.runtime.runtimes.kata]\n".to_owned();
            for (key, value) in &fields {
                text.push_str(&format!("{key} = {value}\n"));
            }
            let outcome = judge(&[file("50-kata", &text)]);
            let ok = fields.get("runtime_path").is_some_and(|v| v.ends_with("containerd-shim-kata-v2\""))
                && fields.get("runtime_type").map(String::as_str) == Some("\"vm\"")
                && fields.get("runtime_root").is_some_and(|v| v.starts_with('"') && v != "\"\"")
                && fields.get("privileged_without_host_devices").map(String::as_str) == Some("true");
            prop_assert_eq!(outcome.status == ProbeStatus::Ok, ok, "{:?} -> {:?}", fields, outcome);
            // The same text parsed twice gives the same answer.
            prop_assert_eq!(judge(&[file("50-kata", &text)]), outcome);
        }
    }
}
