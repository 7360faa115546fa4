//! Logging setup: structured logs on stderr, pretty or JSON, filtered by BEEPHOST_LOG.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::env_vars;

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env(env_vars::BEEPHOST_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
