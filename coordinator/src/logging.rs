//! Logging set-up, with a filter that can be changed while the coordinator
//! runs (`PUT /log-level` on the metrics port), so debugging a live cluster
//! needs no restart.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

/// Changes the active log filter (not CRI-O's level, which is
/// [`crate::api::LogLevel`]).
#[derive(Clone)]
pub struct LogFilter {
    handle: Arc<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter")
            .field("current", &self.current())
            .finish()
    }
}

/// Why a log filter was not installed.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    #[error("invalid log filter: {0}")]
    Invalid(#[source] tracing_subscriber::filter::ParseError),
    #[error("invalid log filter {filter:?}: {source}")]
    InvalidAtStart {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(transparent)]
    Reload(#[from] reload::Error),
    #[error(transparent)]
    Install(#[from] tracing_subscriber::util::TryInitError),
}

impl LogFilter {
    /// Replaces the filter; a filter that does not parse changes nothing.
    pub fn set(&self, filter: &str) -> Result<(), LogFilterError> {
        let filter = EnvFilter::try_new(filter.trim()).map_err(LogFilterError::Invalid)?;
        Ok(self.handle.reload(filter)?)
    }

    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}

/// Installs the global subscriber: text or JSON lines on stderr.
pub fn init(filter: &str, json: bool) -> Result<LogFilter, LogFilterError> {
    let filter = EnvFilter::try_new(filter).map_err(|source| LogFilterError::InvalidAtStart {
        filter: filter.to_owned(),
        source,
    })?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    result?;
    Ok(LogFilter {
        handle: Arc::new(handle),
    })
}
