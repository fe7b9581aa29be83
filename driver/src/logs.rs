//! Log output for both binaries: text or JSON lines on stderr, filtered by
//! `BRAID_LOG_FILTER` (default `info`).

use braid_config::LogFormat;

/// Starts logging in `format`. Colour codes only for a terminal, not in files or the journal.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG_FILTER")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}
