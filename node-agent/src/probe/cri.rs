//! CRI handler served: a drop-in on disk is no proof that CRI-O loaded it
//! (CRI-O reads its configuration at start, and rejects a handler whose
//! binary is missing), so ask the running CRI-O which handlers it serves.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kata_proto::cri::v1::StatusRequest;
use kata_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Endpoint, Uri};

use super::host::{HostRoot, display};
use super::{Budgets, ProbeName, ProbeOutcome, blocking_within, reason};

/// CRI-O's socket, in the order CRI-O documents them (`/var/run` is a
/// symlink to `/run` on current systems; both are tried for older ones).
pub const CRIO_SOCKETS: [&str; 2] = ["/var/run/crio/crio.sock", "/run/crio/crio.sock"];

const NAME: ProbeName = ProbeName::CriHandler;

pub async fn probe(root: &HostRoot, handler: &str, budgets: &Budgets) -> ProbeOutcome {
    let lookup_root = root.clone();
    let found = blocking_within(NAME, budgets.filesystem, move || {
        Ok(CRIO_SOCKETS.into_iter().find_map(|socket| {
            let path = lookup_root.resolve(socket).ok()?;
            path.exists().then_some((socket, path))
        }))
    })
    .await;
    let (socket, path) = match found {
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
    match tokio::time::timeout(budgets.rpc, runtime_handlers(path)).await {
        Err(_) => ProbeOutcome::timed_out(NAME, budgets.rpc),
        Ok(Err(why)) => ProbeOutcome::fail(
            NAME,
            reason::CRI_STATUS_FAILED,
            format!("RuntimeService/Status on {shown}: {why}"),
        ),
        Ok(Ok(handlers)) if handlers.iter().any(|name| name == handler) => ProbeOutcome::ok(
            NAME,
            reason::HANDLER_SERVED,
            format!("CRI-O at {shown} serves runtime handler {handler:?}"),
        ),
        Ok(Ok(handlers)) => ProbeOutcome::fail(
            NAME,
            reason::HANDLER_NOT_SERVED,
            format!(
                "CRI-O at {shown} serves [{}] but not {handler:?}; restart CRI-O after \
                 installing the drop-in, and check its log for a rejected handler",
                handlers.join(", ")
            ),
        ),
    }
}

/// Asks CRI-O at `socket` for its runtime handlers.
pub async fn runtime_handlers(socket: PathBuf) -> Result<Vec<String>, String> {
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
        .status(StatusRequest { verbose: true })
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    Ok(response
        .into_inner()
        .runtime_handlers
        .into_iter()
        .map(|handler| handler.name)
        .collect())
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
