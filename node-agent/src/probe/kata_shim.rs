//! Kata: the runtime binary `containerd-shim-kata-v2` and the
//! `configuration.toml` it reads, as the shim will find them.
//!
//! CRI-O starts the handler's `runtime_path` and hands the shim the handler's
//! `runtime_config_path`, which the shim prefers over its own search path. So
//! both come from CRI-O's merged drop-ins ([`crio::read_config_files`] at [`crio::crio_paths`],
//! [`crio::merge_cached`]) for the expected handler, and only when the
//! drop-ins do not say does the probe fall back to the shim's own locations.
//! (The default locations, `/etc/crio/crio.conf` and `crio.conf.d`; a
//! `--config-dir` on CRI-O's command line is not followed here.)
//! The configuration is parsed, and its hypervisor table's binary, kernel and
//! image (or initrd) must exist, as Kata's own `kata-runtime check` requires:
//! a shim with a broken configuration fails every pod.

use toml_edit::DocumentMut;

use super::crio;
use super::host::{HostRoot, display, first_line};
use super::{ProbeName, ProbeOutcome, reason};
use crate::config::ExpectedConfig;

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
/// Characters of a value from a file shown in a message, at most.
const VALUE_SHOWN: usize = 128;

const NAME: ProbeName = ProbeName::KataShim;

/// Where a path came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// `<file>: crio.runtime.runtimes.<handler>.<key>`.
    DropIn(String),
    /// The shim's own search path.
    Search,
}

/// A host path and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chosen {
    path: String,
    origin: Origin,
}

impl Chosen {
    /// The path (cut to [`VALUE_SHOWN`] characters) and its origin.
    fn describe(&self) -> String {
        let mut path: String = display(&self.path).chars().take(VALUE_SHOWN).collect();
        if path.len() < display(&self.path).len() {
            path.push('…');
        }
        match &self.origin {
            Origin::DropIn(key) => format!("{path} ({key})"),
            Origin::Search => path,
        }
    }
}

/// What the merged CRI-O drop-ins say about the handler's paths.
#[derive(Debug, Default)]
struct FromDropIns {
    runtime_path: Option<Chosen>,
    runtime_config_path: Option<Chosen>,
    /// Why the drop-ins could not be used, when they could not.
    note: Option<String>,
}

/// Blocking; run it through [`super::run_blocking`].
pub fn probe(root: &HostRoot, config: &ExpectedConfig) -> ProbeOutcome {
    let from = from_drop_ins(root, &config.runtime_handler);
    let with_note = |outcome: ProbeOutcome| match &from.note {
        Some(note) => ProbeOutcome {
            message: format!("{} ({note})", outcome.message),
            ..outcome
        },
        None => outcome,
    };
    let shim = match choose(root, from.runtime_path.clone(), &SHIM_CANDIDATES) {
        Ok(chosen) => chosen,
        Err(Some(named)) => {
            return ProbeOutcome::fail(
                NAME,
                reason::KATA_SHIM_MISSING,
                format!("{} does not exist", named.describe()),
            );
        }
        Err(None) => {
            return with_note(ProbeOutcome::fail(
                NAME,
                reason::KATA_SHIM_MISSING,
                format!("none of {} exists", SHIM_CANDIDATES.join(", ")),
            ));
        }
    };
    if !root.is_executable(&shim.path) {
        return ProbeOutcome::fail(
            NAME,
            reason::KATA_SHIM_NOT_EXECUTABLE,
            format!("{} is not an executable regular file", shim.describe()),
        );
    }
    let kata_config = match choose(root, from.runtime_config_path.clone(), &CONFIG_CANDIDATES) {
        Ok(chosen) => chosen,
        Err(Some(named)) => {
            return ProbeOutcome::fail(
                NAME,
                reason::KATA_CONFIG_MISSING,
                format!(
                    "{} does not exist: the shim is told to read it",
                    named.describe()
                ),
            );
        }
        Err(None) => {
            return with_note(ProbeOutcome::fail(
                NAME,
                reason::KATA_CONFIG_MISSING,
                format!(
                    "{} found, but none of {}",
                    shim.describe(),
                    CONFIG_CANDIDATES.join(", ")
                ),
            ));
        }
    };
    match check_configuration(root, &kata_config.path) {
        Ok(hypervisor) => with_note(ProbeOutcome::ok(
            NAME,
            reason::KATA_SHIM_INSTALLED,
            format!(
                "{} with {}: {hypervisor}",
                shim.describe(),
                kata_config.describe()
            ),
        )),
        Err(outcome) => outcome,
    }
}

/// The path the drop-in names, which must exist (`Err(Some)` when it does
/// not), else the first of `candidates` that exists (`Err(None)`: none does).
fn choose(
    root: &HostRoot,
    named: Option<Chosen>,
    candidates: &[&str],
) -> Result<Chosen, Option<Chosen>> {
    match named {
        Some(chosen) if root.exists(&chosen.path) => Ok(chosen),
        Some(chosen) => Err(Some(chosen)),
        None => candidates
            .iter()
            .find(|path| root.exists(path))
            .map(|path| Chosen {
                path: (*path).to_owned(),
                origin: Origin::Search,
            })
            .ok_or(None),
    }
}

/// The handler's `runtime_path` and `runtime_config_path` from the merged
/// drop-ins. Drop-ins that cannot be read or merged (the crio-drop-in probe
/// reports that) leave the shim's own search path, with a note.
fn from_drop_ins(root: &HostRoot, handler: &str) -> FromDropIns {
    let merged = crio::read_config_files(root, &crio::crio_paths(root))
        .and_then(|files| crio::merge_cached(&files, handler).map(|m| m.handler));
    let table = match merged {
        Ok(Some(table)) => table,
        Ok(None) => return FromDropIns::default(),
        Err(failure) => {
            return FromDropIns {
                note: Some(format!(
                    "CRI-O's drop-ins could not be merged ({}), so the shim's own paths were checked",
                    failure.reason
                )),
                ..FromDropIns::default()
            };
        }
    };
    let chosen = |value: Option<String>, field: &str| {
        value.filter(|path| !path.is_empty()).map(|path| Chosen {
            path,
            origin: Origin::DropIn(format!(
                "{}: crio.runtime.runtimes.{handler}.{field}",
                table.defined_in
            )),
        })
    };
    FromDropIns {
        runtime_path: chosen(table.runtime_path.clone(), "runtime_path"),
        runtime_config_path: chosen(table.runtime_config_path.clone(), "runtime_config_path"),
        note: None,
    }
}

/// Reads and parses the configuration, and checks its hypervisor's paths.
/// `Ok` describes the hypervisor for the OK message.
fn check_configuration(root: &HostRoot, host_path: &str) -> Result<String, ProbeOutcome> {
    let shown = display(host_path);
    let bytes = root
        .read_file(host_path, CONFIG_LIMIT)
        .map_err(|err| ProbeOutcome::fail(NAME, reason::KATA_CONFIG_UNREADABLE, err.to_string()))?;
    let invalid = |why: String| ProbeOutcome::fail(NAME, reason::KATA_CONFIG_INVALID, why);
    let text = String::from_utf8(bytes).map_err(|_| invalid(format!("{shown}: not UTF-8 text")))?;
    let document = text.parse::<DocumentMut>().map_err(|err| {
        invalid(format!(
            "{shown}: {} ({})",
            err.message().trim(),
            first_line(&err.to_string())
        ))
    })?;
    let not_configured =
        |why: String| ProbeOutcome::fail(NAME, reason::KATA_HYPERVISOR_NOT_CONFIGURED, why);
    let hypervisors = match document.get("hypervisor") {
        None => None,
        Some(item) => Some(
            item.as_table_like()
                .ok_or_else(|| invalid(format!("{shown}: hypervisor must be a table")))?,
        ),
    };
    let Some((kind, table)) = hypervisors.and_then(|tables| {
        tables
            .iter()
            .find_map(|(kind, item)| item.as_table_like().map(|table| (kind, table)))
    }) else {
        return Err(not_configured(format!(
            "{shown}: no [hypervisor.*] table (such as [hypervisor.qemu])"
        )));
    };
    let string = |field: &str| -> Result<Option<String>, ProbeOutcome> {
        match table.get(field) {
            None => Ok(None),
            Some(item) => match item.as_str() {
                Some("") => Ok(None),
                Some(value) => Ok(Some(value.to_owned())),
                None => Err(invalid(format!(
                    "{shown}: hypervisor.{kind}.{field} must be a string, found {}",
                    item.type_name()
                ))),
            },
        }
    };
    let required = |field: &str| {
        string(field)?
            .ok_or_else(|| not_configured(format!("{shown}: hypervisor.{kind}.{field} is not set")))
    };
    let binary = required("path")?;
    let kernel = required("kernel")?;
    let guest = match (string("image")?, string("initrd")?) {
        (Some(image), None) => ("image", image),
        (None, Some(initrd)) => ("initrd", initrd),
        (None, None) => {
            return Err(not_configured(format!(
                "{shown}: hypervisor.{kind} sets neither image nor initrd"
            )));
        }
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "{shown}: hypervisor.{kind} sets both image and initrd; Kata accepts one"
            )));
        }
    };
    let missing = |field: &str, value: &str, what: &str| {
        ProbeOutcome::fail(
            NAME,
            reason::KATA_ASSET_MISSING,
            format!(
                "{shown}: hypervisor.{kind}.{field} = {}, which is not {what} on the host",
                shorten(value)
            ),
        )
    };
    if !root.is_executable(&binary) {
        return Err(missing("path", &binary, "an executable file"));
    }
    for (field, value) in [("kernel", &kernel), (guest.0, &guest.1)] {
        if !root.metadata(value).is_ok_and(|meta| meta.is_file()) {
            return Err(missing(field, value, "a file"));
        }
    }
    Ok(format!(
        "hypervisor.{kind} path {}, kernel {}, {} {}",
        shorten(&binary),
        shorten(&kernel),
        guest.0,
        shorten(&guest.1)
    ))
}

/// A value from a file, quoted and cut to [`VALUE_SHOWN`] characters.
fn shorten(value: &str) -> String {
    let cut: String = value.chars().take(VALUE_SHOWN).collect();
    if cut.len() == value.len() {
        format!("{value:?}")
    } else {
        format!("{cut:?}…")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fixtures::{FakeHost, KATA_CONFIG, KATA_CONFIG_TEXT, KATA_DROP_IN_TEXT};
    use crate::probe::ProbeStatus;

    fn judge(host: &FakeHost) -> ProbeOutcome {
        probe(&host.host_root(), &ExpectedConfig::default())
    }

    fn expect(host: &FakeHost, status: ProbeStatus, reason: &str) -> String {
        let outcome = judge(host);
        assert_eq!(
            (outcome.status, outcome.reason),
            (status, reason),
            "{}",
            outcome.message
        );
        outcome.message
    }

    #[test]
    fn the_good_host_passes_with_the_drop_in_paths() {
        let message = expect(&FakeHost::good(), ProbeStatus::Ok, "KataShimInstalled");
        assert!(message.contains("runtime_config_path"), "{message}");
        assert!(message.contains("hypervisor.qemu"), "{message}");
    }

    #[test]
    fn runtime_config_path_wins_over_a_valid_etc_file() {
        let host = FakeHost::good()
            .write("etc/kata-containers/configuration.toml", KATA_CONFIG_TEXT)
            .write(KATA_CONFIG, "[hypervisor.qemu\n");
        let message = expect(&host, ProbeStatus::Fail, "KataConfigInvalid");
        assert!(message.starts_with(&display(KATA_CONFIG)), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn a_missing_runtime_config_path_names_the_drop_in_key() {
        let host = FakeHost::good().without_kata_config();
        let message = expect(&host, ProbeStatus::Fail, "KataConfigMissing");
        assert!(
            message.contains("50-kata: crio.runtime.runtimes.kata.runtime_config_path"),
            "{message}"
        );
    }

    #[test]
    fn without_the_key_the_shims_own_search_path_is_used() {
        let drop_in = KATA_DROP_IN_TEXT
            .lines()
            .filter(|line| !line.starts_with("runtime_config_path"))
            .collect::<Vec<_>>()
            .join("\n");
        let host = FakeHost::good()
            .kata_drop_in_text(&drop_in)
            .without_kata_config()
            .write("etc/kata-containers/configuration.toml", KATA_CONFIG_TEXT);
        let message = expect(&host, ProbeStatus::Ok, "KataShimInstalled");
        assert!(
            message.contains("/etc/kata-containers/configuration.toml:"),
            "{message}"
        );
        let host = FakeHost::good().without_drop_in().without_kata_config();
        expect(&host, ProbeStatus::Fail, "KataConfigMissing");
    }

    #[test]
    fn the_runtime_path_of_the_drop_in_must_exist() {
        let drop_in = KATA_DROP_IN_TEXT.replace("/usr/bin/", "/opt/elsewhere/");
        let host = FakeHost::good().kata_drop_in_text(&drop_in);
        let message = expect(&host, ProbeStatus::Fail, "KataShimMissing");
        assert!(
            message.contains("/opt/elsewhere/containerd-shim-kata-v2 (/etc/crio/crio.conf.d/50-kata: crio.runtime.runtimes.kata.runtime_path)"),
            "{message}"
        );
        let plain = FakeHost::good().chmod("usr/bin/containerd-shim-kata-v2", 0o644);
        expect(&plain, ProbeStatus::Fail, "KataShimNotExecutable");
    }

    #[test]
    fn hypervisor_assets_must_exist() {
        let host = FakeHost::good().remove("usr/share/kata-containers/vmlinuz.container");
        let message = expect(&host, ProbeStatus::Fail, "KataAssetMissing");
        assert!(message.contains("hypervisor.qemu.kernel"), "{message}");
        let host = FakeHost::good().remove("usr/share/kata-containers/kata-containers.img");
        let message = expect(&host, ProbeStatus::Fail, "KataAssetMissing");
        assert!(message.contains("hypervisor.qemu.image"), "{message}");
        let host = FakeHost::good().without_qemu();
        let message = expect(&host, ProbeStatus::Fail, "KataAssetMissing");
        assert!(message.contains("hypervisor.qemu.path"), "{message}");
    }

    #[test]
    fn hypervisor_tables_and_keys() {
        let cases = [
            (
                "[runtime]\n",
                "KataHypervisorNotConfigured",
                "no [hypervisor.*]",
            ),
            (
                "hypervisor = 1\n",
                "KataConfigInvalid",
                "hypervisor must be a table",
            ),
            (
                "[hypervisor.qemu]\npath = \"/usr/libexec/qemu-kiwi\"\n",
                "KataHypervisorNotConfigured",
                "hypervisor.qemu.kernel is not set",
            ),
            (
                "[hypervisor.qemu]\npath = \"/usr/libexec/qemu-kiwi\"\nkernel = \"/usr/share/kata-containers/vmlinuz.container\"\nimage = \"\"\n",
                "KataHypervisorNotConfigured",
                "neither image nor initrd",
            ),
            (
                "[hypervisor.qemu]\npath = 5\n",
                "KataConfigInvalid",
                "hypervisor.qemu.path must be a string",
            ),
            (
                &KATA_CONFIG_TEXT.replace("machine_type", "initrd = \"/x\"\nmachine_type"),
                "KataConfigInvalid",
                "both image and initrd",
            ),
            (
                &KATA_CONFIG_TEXT.replace("image =", "initrd ="),
                "KataShimInstalled",
                "initrd",
            ),
        ];
        for (text, reason, part) in cases {
            let outcome = judge(&FakeHost::good().write(KATA_CONFIG, text));
            assert_eq!(outcome.reason, reason, "{text}: {}", outcome.message);
            assert!(
                outcome.message.contains(part),
                "{text}: {}",
                outcome.message
            );
        }
    }

    #[test]
    fn hostile_configuration_files() {
        let host = FakeHost::good().fifo(KATA_CONFIG);
        expect(&host, ProbeStatus::Fail, "KataConfigUnreadable");
        let host = FakeHost::good().write(KATA_CONFIG, vec![0xffu8, 0xfe, 0]);
        expect(&host, ProbeStatus::Fail, "KataConfigInvalid");
        let host = FakeHost::good().write(KATA_CONFIG, vec![b'#'; 2 * 1024 * 1024]);
        expect(&host, ProbeStatus::Fail, "KataConfigUnreadable");
        let long = format!("/{}", "x".repeat(5000));
        let host = FakeHost::good().write(
            KATA_CONFIG,
            KATA_CONFIG_TEXT.replace("/usr/share/kata-containers/vmlinuz.container", &long),
        );
        let message = expect(&host, ProbeStatus::Fail, "KataAssetMissing");
        assert!(message.len() < 1000, "{}", message.len());
        let drop_in = KATA_DROP_IN_TEXT.replace("/usr/bin/containerd-shim-kata-v2", &long);
        let message = expect(
            &FakeHost::good().kata_drop_in_text(&drop_in),
            ProbeStatus::Fail,
            "KataShimMissing",
        );
        assert!(message.len() < 1000, "{}", message.len());
        let drop_in = KATA_DROP_IN_TEXT.replace(
            "\"/usr/share/kata-containers/defaults/configuration.toml\"",
            "7",
        );
        let host = FakeHost::good().kata_drop_in_text(&drop_in);
        let message = expect(&host, ProbeStatus::Ok, "KataShimInstalled");
        assert!(message.contains("DropInInvalidValue"), "{message}");
    }

    #[test]
    fn broken_drop_ins_fall_back_with_a_note() {
        let host = FakeHost::good().broken_drop_in();
        let message = expect(&host, ProbeStatus::Ok, "KataShimInstalled");
        assert!(message.contains("DropInSyntaxError"), "{message}");
    }
}
