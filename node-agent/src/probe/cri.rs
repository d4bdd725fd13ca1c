//! CRI handler served: a drop-in on disk is no proof that CRI-O loaded it
//! (CRI-O reads its configuration at start, and drops a handler whose binary
//! is missing), so ask the running CRI-O which handlers it serves.
//!
//! One verbose `RuntimeService/Status` call; what its answer holds depends on
//! the CRI-O version (read from CRI-O's `server/runtime_status.go`):
//!
//! * since 1.33, `info["config"]` is a JSON document
//!   `{"sandboxImage": …, "crio": <RuntimeConfig>}` whose
//!   `crio.Runtimes.<handler>` is the *loaded* handler (`RuntimeType`,
//!   `RuntimePath`, `RuntimeConfigPath`, … — Go field names, no JSON tags).
//!   That is the strongest evidence: it says the handler is served and as what,
//!   so it is used first, and a handler that is not `"vm"` fails;
//! * since 1.30, `runtime_handlers` lists the served handler names;
//! * 1.29 (OpenShift 4.16) has neither: `runtime_handlers` is empty and
//!   `info["config"]` holds only `sandboxImage`. The probe then cannot verify
//!   and says so with a WARN `HandlerUnverifiable`, which the verdict accepts
//!   (the crio-drop-in probe still checks the file CRI-O reads).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kata_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use kata_proto::cri::v1::{StatusRequest, StatusResponse};
use serde_json::Value;
use tonic::transport::{Endpoint, Uri};

use super::host::{HostRoot, display};
use super::{Budgets, ProbeName, ProbeOutcome, blocking_within, reason};

/// CRI-O's socket, in the order CRI-O documents them (`/var/run` is a
/// symlink to `/run` on current systems; both are tried for older ones).
pub const CRIO_SOCKETS: [&str; 2] = ["/var/run/crio/crio.sock", "/run/crio/crio.sock"];

/// The largest Status reply accepted. CRI-O's whole loaded configuration, as
/// JSON, is some tens of KiB; tonic refuses a larger message before decoding.
pub const STATUS_REPLY_LIMIT: usize = 1024 * 1024;
/// Handler names shown in a message, at most.
const NAMES_SHOWN: usize = 16;
/// Characters of a value from the reply shown in a message, at most.
const VALUE_SHOWN: usize = 128;

const NAME: ProbeName = ProbeName::CriHandler;

pub async fn probe(root: &HostRoot, handler: &str, budgets: &Budgets) -> ProbeOutcome {
    let (socket, path) = match find_socket(root, budgets).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return ProbeOutcome::skip(
                NAME,
                reason::CRIO_SOCKET_ABSENT,
                format!("no CRI-O socket at {}", CRIO_SOCKETS.join(" or ")),
            );
        }
        Err(outcome) => return outcome,
    };
    let shown = display(socket);
    match tokio::time::timeout(budgets.rpc, status(path)).await {
        Err(_) => ProbeOutcome::timed_out(NAME, budgets.rpc),
        Ok(Err(why)) => ProbeOutcome::fail(
            NAME,
            reason::CRI_STATUS_FAILED,
            format!("RuntimeService/Status on {shown}: {why}"),
        ),
        Ok(Ok(reply)) => evaluate(&reply, handler, &shown),
    }
}

/// CRI-O's socket on the host, and its path from here.
async fn find_socket(
    root: &HostRoot,
    budgets: &Budgets,
) -> Result<Option<(&'static str, PathBuf)>, ProbeOutcome> {
    let lookup_root = root.clone();
    blocking_within(NAME, budgets.filesystem, move || {
        Ok(CRIO_SOCKETS.into_iter().find_map(|socket| {
            let path = lookup_root.resolve(socket).ok()?;
            path.exists().then_some((socket, path))
        }))
    })
    .await
}

/// CRI-O's verbose status, within the budgets; None when there is no
/// CRI-O to ask or it did not answer (the probe says why).
pub async fn status_of(root: &HostRoot, budgets: &Budgets) -> Option<StatusResponse> {
    let (_, path) = find_socket(root, budgets).await.ok()??;
    tokio::time::timeout(budgets.rpc, status(path))
        .await
        .ok()?
        .ok()
}

/// Asks CRI-O at `socket` for its verbose status.
pub async fn status(socket: PathBuf) -> Result<StatusResponse, String> {
    // The URI is required by the API but unused: the connector below always
    // dials the unix socket.
    let endpoint =
        Endpoint::from_static("http://localhost").connect_timeout(Duration::from_secs(1));
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|err| describe_transport_error(&err))?;
    let response = RuntimeServiceClient::new(channel)
        .max_decoding_message_size(STATUS_REPLY_LIMIT)
        .status(StatusRequest { verbose: true })
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    Ok(response.into_inner())
}

/// The handler as CRI-O loaded it, from `info["config"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedHandler {
    pub runtime_type: String,
    pub runtime_path: String,
    pub runtime_config_path: String,
}

/// What `info["config"]` says about the handlers CRI-O loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadedConfig {
    /// No loaded configuration in the reply (CRI-O before 1.33, or not verbose).
    NotReported,
    /// `crio.Runtimes`: every handler name, and the one asked about if present.
    Reported {
        names: Vec<String>,
        handler: Option<LoadedHandler>,
    },
}

/// Reads `info["config"]`. Pure; never panics, whatever the text (serde_json
/// limits nesting, and the reply's size is capped before it gets here).
pub fn loaded_config(
    info: &HashMap<String, String>,
    handler: &str,
) -> Result<LoadedConfig, String> {
    let Some(text) = info.get("config") else {
        return Ok(LoadedConfig::NotReported);
    };
    let document: Value =
        serde_json::from_str(text).map_err(|err| format!("info[\"config\"] is not JSON: {err}"))?;
    let top = document
        .as_object()
        .ok_or_else(|| wrong_type("", "an object", &document))?;
    let Some(crio) = top.get("crio") else {
        return Ok(LoadedConfig::NotReported);
    };
    let crio = crio
        .as_object()
        .ok_or_else(|| wrong_type(".crio", "an object", crio))?;
    // Go marshals a nil map as null.
    let runtimes = match crio.get("Runtimes") {
        None | Some(Value::Null) => None,
        Some(runtimes) => Some(
            runtimes
                .as_object()
                .ok_or_else(|| wrong_type(".crio.Runtimes", "an object", runtimes))?,
        ),
    };
    let Some(runtimes) = runtimes else {
        return Ok(LoadedConfig::Reported {
            names: Vec::new(),
            handler: None,
        });
    };
    let handler = match runtimes.get(handler) {
        None => None,
        Some(table) => {
            let key = format!(".crio.Runtimes.{handler}");
            let table = table
                .as_object()
                .ok_or_else(|| wrong_type(&key, "an object", table))?;
            let field = |name: &str| match table.get(name) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(value)) => Ok(value.clone()),
                Some(other) => Err(wrong_type(&format!("{key}.{name}"), "a string", other)),
            };
            Some(LoadedHandler {
                runtime_type: field("RuntimeType")?,
                runtime_path: field("RuntimePath")?,
                runtime_config_path: field("RuntimeConfigPath")?,
            })
        }
    };
    Ok(LoadedConfig::Reported {
        names: runtimes.keys().cloned().collect(),
        handler,
    })
}

/// Judges a Status reply from CRI-O at `shown`. Pure; never panics.
pub fn evaluate(reply: &StatusResponse, handler: &str, shown: &str) -> ProbeOutcome {
    let loaded = match loaded_config(&reply.info, handler) {
        Ok(loaded) => loaded,
        Err(why) => {
            return ProbeOutcome::warn(
                NAME,
                reason::CRI_INFO_INVALID,
                format!("RuntimeService/Status on {shown} (verbose): {why}"),
            );
        }
    };
    match loaded {
        LoadedConfig::Reported {
            handler: Some(loaded),
            ..
        } if loaded.runtime_type == "vm" => ProbeOutcome::ok(
            NAME,
            reason::HANDLER_SERVED,
            format!(
                "CRI-O at {shown} loaded runtime handler {handler:?}: RuntimeType \"vm\", \
                 RuntimePath {}, RuntimeConfigPath {}",
                shorten(&loaded.runtime_path),
                shorten(&loaded.runtime_config_path),
            ),
        ),
        LoadedConfig::Reported {
            handler: Some(loaded),
            ..
        } => ProbeOutcome::fail(
            NAME,
            reason::RUNTIME_TYPE_NOT_VM,
            format!(
                "CRI-O at {shown} loaded runtime handler {handler:?} with RuntimeType {} \
                 (info[\"config\"].crio.Runtimes.{handler}.RuntimeType), expected \"vm\": \
                 Kata pods would not run in a VM",
                shorten(&loaded.runtime_type),
            ),
        ),
        LoadedConfig::Reported {
            handler: None,
            names,
        } => not_served(shown, handler, &names, "its loaded configuration has"),
        LoadedConfig::NotReported => {
            let names: Vec<String> = reply
                .runtime_handlers
                .iter()
                .map(|served| served.name.clone())
                .collect();
            if names.iter().any(|name| name == handler) {
                ProbeOutcome::ok(
                    NAME,
                    reason::HANDLER_SERVED,
                    format!("CRI-O at {shown} serves runtime handler {handler:?}"),
                )
            } else if names.is_empty() {
                ProbeOutcome::warn(
                    NAME,
                    reason::HANDLER_UNVERIFIABLE,
                    format!(
                        "CRI-O at {shown} lists no runtime_handlers and no loaded configuration \
                         in info[\"config\"] (CRI-O before 1.30 reports neither): whether it \
                         serves {handler:?} cannot be verified; the crio-drop-in probe checks \
                         the file it reads"
                    ),
                )
            } else {
                not_served(shown, handler, &names, "serves")
            }
        }
    }
}

fn not_served(shown: &str, handler: &str, names: &[String], has: &str) -> ProbeOutcome {
    ProbeOutcome::fail(
        NAME,
        reason::HANDLER_NOT_SERVED,
        format!(
            "CRI-O at {shown} {has} [{}] but not {handler:?}; restart CRI-O after \
             installing the drop-in, and check its log for a rejected handler",
            list(names)
        ),
    )
}

/// At most [`NAMES_SHOWN`] names, each escaped and cut, for a message; the
/// default runtime's empty name shows as `""`.
fn list(names: &[String]) -> String {
    let mut shown: Vec<String> = names
        .iter()
        .take(NAMES_SHOWN)
        .map(|name| match name.as_str() {
            "" => "\"\"".to_owned(),
            name => name
                .chars()
                .take(VALUE_SHOWN)
                .flat_map(char::escape_debug)
                .collect(),
        })
        .collect();
    if names.len() > NAMES_SHOWN {
        shown.push(format!("… {} more", names.len() - NAMES_SHOWN));
    }
    shown.join(", ")
}

/// A value from the reply, quoted and cut to [`VALUE_SHOWN`] characters.
fn shorten(value: &str) -> String {
    if value.chars().count() <= VALUE_SHOWN {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(VALUE_SHOWN).collect();
        format!("{cut:?}…")
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value) -> String {
    let kind = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("info[\"config\"]{key} must be {expected}, found {kind}")
}

/// tonic's transport error says only "transport error"; the cause (connection
/// refused, permission denied) is what a person needs.
fn describe_transport_error(err: &tonic::transport::Error) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeStatus;
    use kata_proto::cri::v1::RuntimeHandler;
    use proptest::prelude::*;

    const SOCKET: &str = "/var/run/crio/crio.sock";

    fn reply(handlers: &[&str], config: Option<&str>) -> StatusResponse {
        StatusResponse {
            runtime_handlers: handlers
                .iter()
                .map(|name| RuntimeHandler {
                    name: (*name).to_owned(),
                    features: None,
                })
                .collect(),
            info: config
                .map(|text| HashMap::from([("config".to_owned(), text.to_owned())]))
                .unwrap_or_default(),
            ..StatusResponse::default()
        }
    }

    fn judge(handlers: &[&str], config: Option<&str>) -> (ProbeStatus, &'static str, String) {
        let outcome = evaluate(&reply(handlers, config), "kata", SOCKET);
        (outcome.status, outcome.reason, outcome.message)
    }

    fn crio_config(kata_type: &str) -> String {
        format!(
            r#"{{"sandboxImage":"registry.k8s.io/pause:3.10","crio":{{"DefaultRuntime":"crun","Runtimes":{{"crun":{{"RuntimeType":"oci","RuntimePath":"/usr/bin/crun"}},"kata":{{"RuntimeConfigPath":"/usr/share/kata-containers/defaults/configuration.toml","RuntimePath":"/usr/bin/containerd-shim-kata-v2","RuntimeType":"{kata_type}","RuntimeRoot":"/run/vc"}}}}}}}}"#
        )
    }

    #[test]
    fn the_loaded_configuration_decides_when_present() {
        let (status, reason, message) = judge(&["crun", "kata"], Some(&crio_config("vm")));
        assert_eq!((status, reason), (ProbeStatus::Ok, "HandlerServed"));
        assert!(message.contains("configuration.toml"), "{message}");
        let (status, reason, message) = judge(&["crun", "kata"], Some(&crio_config("oci")));
        assert_eq!((status, reason), (ProbeStatus::Fail, "RuntimeTypeNotVm"));
        assert!(
            message.contains(".crio.Runtimes.kata.RuntimeType"),
            "{message}"
        );
        let without = r#"{"crio":{"Runtimes":{"crun":{"RuntimeType":"oci"}}}}"#;
        let (status, reason, message) = judge(&[], Some(without));
        assert_eq!((status, reason), (ProbeStatus::Fail, "HandlerNotServed"));
        assert!(message.contains("[crun] but not \"kata\""), "{message}");
        let null = r#"{"crio":{"Runtimes":null}}"#;
        assert_eq!(judge(&[], Some(null)).1, "HandlerNotServed");
    }

    #[test]
    fn handler_lists_and_the_1_29_shape() {
        let sandbox_only = r#"{"sandboxImage":"quay.io/openshift/pause"}"#;
        assert_eq!(
            judge(&["runc", "kata", ""], Some(sandbox_only)).1,
            "HandlerServed"
        );
        assert_eq!(judge(&["runc"], None).1, "HandlerNotServed");
        let (status, reason, message) = judge(&[], Some(sandbox_only));
        assert_eq!((status, reason), (ProbeStatus::Warn, "HandlerUnverifiable"));
        assert!(message.contains("cannot be verified"), "{message}");
        assert_eq!(judge(&[], None).1, "HandlerUnverifiable");
    }

    #[test]
    fn malformed_configuration_names_the_key() {
        for (text, key) in [
            ("{\"crio\": ", "info[\"config\"] is not JSON"),
            ("[1]", "info[\"config\"] must be an object"),
            (r#"{"crio":5}"#, "info[\"config\"].crio must be an object"),
            (
                r#"{"crio":{"Runtimes":[]}}"#,
                "info[\"config\"].crio.Runtimes must be an object",
            ),
            (
                r#"{"crio":{"Runtimes":{"kata":{"RuntimeType":1}}}}"#,
                "info[\"config\"].crio.Runtimes.kata.RuntimeType must be a string",
            ),
        ] {
            let (status, reason, message) = judge(&["kata"], Some(text));
            assert_eq!(
                (status, reason),
                (ProbeStatus::Warn, "CriInfoInvalid"),
                "{text}"
            );
            assert!(message.contains(key), "{text}: {message}");
        }
    }

    #[test]
    fn long_lists_and_values_are_cut() {
        let names: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_, reason, message) = judge(&names, None);
        assert_eq!(reason, "HandlerNotServed");
        assert!(message.contains("… 84 more"), "{message}");
        let long = crio_config(&"x".repeat(10_000));
        let (_, reason, message) = judge(&[], Some(&long));
        assert_eq!(reason, "RuntimeTypeNotVm");
        assert!(message.len() < 1000, "{}", message.len());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_config_text_never_panics(text in ".{0,256}") {
            let outcome = evaluate(&reply(&[], Some(&text)), "kata", SOCKET);
            prop_assert!(!outcome.reason.is_empty());
        }
    }
}
