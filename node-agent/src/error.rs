//! The crate's one error type. Probes turn these into outcomes with a stable
//! reason; the messages name the host path or command so a person can act.

use std::io;

/// Why reading the host or running a host command failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: too many levels of symbolic links (a loop?)")]
    SymlinkLoop { path: String },
    #[error("{path}: is a {kind}, not a regular file")]
    NotRegularFile { path: String, kind: &'static str },
    #[error("{path}: larger than the {limit}-byte limit for this file")]
    TooLarge { path: String, limit: u64 },
    #[error(
        "{path}: with the files read before it, larger than the {limit}-byte limit for them all"
    )]
    TotalTooLarge { path: String, limit: u64 },
    #[error("`{command}` did not finish within {seconds:.1}s")]
    CommandTimedOut { command: String, seconds: f64 },
    #[error("`{command}` failed: {detail}")]
    CommandFailed { command: String, detail: String },
    #[error("invalid version {0:?}: expected MAJOR.MINOR[.PATCH]")]
    InvalidVersion(String),
}

impl AgentError {
    /// The errno behind an I/O failure, so probes can map ENOENT, EACCES,
    /// EBUSY... to distinct reasons.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            AgentError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the path simply does not exist (as opposed to being unreadable).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}
