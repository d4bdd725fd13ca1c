//! CRI-O drop-in: does CRI-O's merged configuration define the Kata handler
//! the way Kata needs it?
//!
//! CRI-O reads `/etc/crio/crio.conf`, then every file of
//! `/etc/crio/crio.conf.d` in lexical order, later files overriding earlier
//! ones. A `[crio.runtime.runtimes.<handler>]` table in a later file replaces
//! the earlier one as a whole (Go's TOML decoder builds a fresh map value), so
//! that is how the merge here treats it. Two files that define the handler
//! with a different `runtime_path` or `runtime_type` are reported as a
//! conflict: which one wins then depends on file names nobody looks at.

use std::fmt;

use toml_edit::{DocumentMut, Item, TableLike};

use super::host::{HostRoot, display};
use super::{ProbeName, ProbeOutcome, reason};
use crate::config::ExpectedConfig;

pub const CRIO_CONF: &str = "/etc/crio/crio.conf";
pub const CRIO_CONF_D: &str = "/etc/crio/crio.conf.d";
/// CRI-O's full default configuration is about 70 KiB.
const FILE_LIMIT: u64 = 1024 * 1024;

const NAME: ProbeName = ProbeName::CrioDropIn;

/// One configuration file as read from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub privileged_without_host_devices: Option<bool>,
}

impl HandlerConfig {
    /// The fields whose disagreement between two files is a conflict.
    fn identity(&self) -> (Option<&str>, Option<&str>) {
        (self.runtime_path.as_deref(), self.runtime_type.as_deref())
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

/// Reads `crio.conf` and the drop-ins in CRI-O's order. A missing file or
/// directory is fine; anything present that cannot be read as a regular file
/// (a FIFO, a symlink loop, a permission error, a huge file) is a failure
/// naming that file. Blocking.
pub fn read_config_files(root: &HostRoot) -> Result<Vec<ConfigFile>, MergeFailure> {
    let unreadable = |message: String| MergeFailure {
        reason: reason::DROP_IN_UNREADABLE,
        message,
    };
    let mut paths = vec![CRIO_CONF.to_owned()];
    match root.read_dir_sorted(CRIO_CONF_D) {
        Ok(names) => paths.extend(names.iter().map(|name| format!("{CRIO_CONF_D}/{name}"))),
        Err(err) if err.is_not_found() => {}
        Err(err) => return Err(unreadable(err.to_string())),
    }
    let mut files = Vec::with_capacity(paths.len());
    for host_path in paths {
        // CRI-O skips directories inside the drop-in directory.
        if root.metadata(&host_path).is_ok_and(|meta| meta.is_dir()) {
            continue;
        }
        match root.read_file(&host_path, FILE_LIMIT) {
            Ok(bytes) => files.push(ConfigFile {
                host_path: display(&host_path),
                bytes,
            }),
            Err(err) if err.is_not_found() && host_path == CRIO_CONF => {}
            Err(err) => return Err(unreadable(err.to_string())),
        }
    }
    Ok(files)
}

/// Merges the files in order and returns the handler's table, if any file
/// defines it. Pure; never panics, whatever the bytes.
pub fn merge_handler(
    files: &[ConfigFile],
    handler: &str,
) -> Result<Option<HandlerConfig>, MergeFailure> {
    let mut merged: Option<HandlerConfig> = None;
    for file in files {
        let document = parse(file)?;
        let Some(definition) = handler_in(&document, &file.host_path, handler)? else {
            continue;
        };
        if let Some(previous) = &merged
            && previous.identity() != definition.identity()
        {
            return Err(MergeFailure {
                reason: reason::CONFLICTING_HANDLER_DEFINITIONS,
                message: format!(
                    "crio.runtime.runtimes.{handler} is defined in {} ({}) and again in {} ({}); \
                     remove one",
                    previous.defined_in,
                    describe_identity(previous),
                    definition.defined_in,
                    describe_identity(&definition),
                ),
            });
        }
        merged = Some(definition);
    }
    Ok(merged)
}

/// Judges the merged handler; `is_executable` checks a host path under the root.
pub fn evaluate(
    merged: Result<Option<HandlerConfig>, MergeFailure>,
    config: &ExpectedConfig,
    is_executable: impl Fn(&str) -> bool,
) -> ProbeOutcome {
    let handler = &config.runtime_handler;
    let merged = match merged {
        Ok(merged) => merged,
        Err(failure) => return ProbeOutcome::fail(NAME, failure.reason, failure.message),
    };
    let Some(table) = merged else {
        return ProbeOutcome::fail(
            NAME,
            reason::HANDLER_NOT_CONFIGURED,
            format!(
                "no [crio.runtime.runtimes.{handler}] in {} or {}/* (the operator writes it to {})",
                display(CRIO_CONF),
                display(CRIO_CONF_D),
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
    let Some(runtime_path) = table.runtime_path.as_deref() else {
        return ProbeOutcome::fail(
            NAME,
            reason::RUNTIME_PATH_MISSING,
            format!("{} is not set", key("runtime_path")),
        );
    };
    if !is_executable(runtime_path) {
        return ProbeOutcome::fail(
            NAME,
            reason::RUNTIME_PATH_NOT_EXECUTABLE,
            format!(
                "{} = {runtime_path:?}, which is not an executable file on the host",
                key("runtime_path")
            ),
        );
    }
    if table.runtime_type.as_deref() != Some("vm") {
        return ProbeOutcome::fail(
            NAME,
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
    if table.runtime_root.as_deref().is_none_or(str::is_empty) {
        return ProbeOutcome::fail(
            NAME,
            reason::RUNTIME_ROOT_MISSING,
            format!("{} is not set", key("runtime_root")),
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
    ProbeOutcome::ok(
        NAME,
        reason::HANDLER_CONFIGURED,
        format!(
            "[crio.runtime.runtimes.{handler}] in {}: runtime_path = {runtime_path:?}, runtime_type = \"vm\"",
            table.defined_in
        ),
    )
}

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot, config: &ExpectedConfig) -> ProbeOutcome {
    let merged =
        read_config_files(root).and_then(|files| merge_handler(&files, &config.runtime_handler));
    evaluate(merged, config, |path| root.is_executable(path))
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

/// The handler's table in one document, type-checked.
fn handler_in(
    document: &DocumentMut,
    file: &str,
    handler: &str,
) -> Result<Option<HandlerConfig>, MergeFailure> {
    let mut table: &dyn TableLike = document.as_table();
    let mut key = String::new();
    for part in ["crio", "runtime", "runtimes", handler] {
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
    let string = |field: &str| -> Result<Option<String>, MergeFailure> {
        match table.get(field) {
            None => Ok(None),
            Some(item) => item
                .as_str()
                .map(|value| Some(value.to_owned()))
                .ok_or_else(|| wrong_type(file, &format!("{key}.{field}"), "a string", item)),
        }
    };
    let privileged = match table.get("privileged_without_host_devices") {
        None => None,
        Some(item) => Some(item.as_bool().ok_or_else(|| {
            wrong_type(
                file,
                &format!("{key}.privileged_without_host_devices"),
                "a boolean",
                item,
            )
        })?),
    };
    Ok(Some(HandlerConfig {
        defined_in: file.to_owned(),
        runtime_path: string("runtime_path")?,
        runtime_type: string("runtime_type")?,
        runtime_root: string("runtime_root")?,
        privileged_without_host_devices: privileged,
    }))
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

fn describe_identity(table: &HandlerConfig) -> String {
    let (path, kind) = table.identity();
    format!(
        "runtime_path = {}, runtime_type = {}",
        path.map_or("unset".to_owned(), |p| format!("{p:?}")),
        kind.map_or("unset".to_owned(), |t| format!("{t:?}"))
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::probe::ProbeStatus;
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
            merge_handler(files, "kata"),
            &ExpectedConfig::default(),
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
        let inline = "crio.runtime.runtimes.kata = { runtime_path = \"/x\", runtime_type = \"vm\", \
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
            (ProbeStatus::Fail, "RuntimeRootMissing")
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
    fn conflicting_definitions_name_both_files() {
        let other = KATA.replace("containerd-shim-kata-v2", "other-shim");
        let outcome = judge(&[file("50-kata", KATA), file("99-other", &other)]);
        assert_eq!(outcome.reason, "ConflictingHandlerDefinitions");
        assert!(outcome.message.contains("50-kata") && outcome.message.contains("99-other"));
        let same = judge(&[file("50-kata", KATA), file("99-same", KATA)]);
        assert_eq!(
            same.status,
            ProbeStatus::Ok,
            "an identical repeat is no conflict"
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
            merge_handler(&[file("50-kata", KATA)], "kata"),
            &ExpectedConfig::default(),
            |_| false,
        );
        assert_eq!(outcome.reason, "RuntimePathNotExecutable");
    }

    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z/]{0,12}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
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
            let is_string = |key: &str| fields.get(key).is_some_and(|v| v.starts_with('"'));
            let ok = is_string("runtime_path")
                && fields.get("runtime_type").map(String::as_str) == Some("\"vm\"")
                && fields.get("runtime_root").is_some_and(|v| v.starts_with('"') && v != "\"\"")
                && fields.get("privileged_without_host_devices").map(String::as_str) == Some("true");
            prop_assert_eq!(outcome.status == ProbeStatus::Ok, ok, "{:?} -> {:?}", fields, outcome);
            // The same text parsed twice gives the same answer.
            prop_assert_eq!(judge(&[file("50-kata", &text)]), outcome);
        }
    }
}
