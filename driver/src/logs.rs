//! Log output for both binaries: text or JSON lines on stderr, filtered by the config's
//! `log_level`, else `BRAID_LOG_FILTER`, else `info`. The filter can be changed while
//! running (a node's config reload).

use braid_config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Changes what is logged while running.
pub struct LogControl {
    set: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl LogControl {
    /// Logs by `directives` from now on; a bad directive changes nothing and says why.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        (self.set)(parse_filter(directives)?)
    }
}

/// Parses filter directives (`"info"`, `"debug,quinn=warn"`), refusing any that do not
/// parse rather than dropping them.
pub fn parse_filter(directives: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("log_level {directives:?}: {e}"))
}

/// Starts logging in `format`, filtered by `level` (or the environment). Colour codes only
/// for a terminal, not in files or the journal.
pub fn init_logs(format: LogFormat, level: Option<&str>) -> LogControl {
    let filter = level
        .and_then(|l| parse_filter(l).ok())
        .or_else(|| EnvFilter::try_from_env("BRAID_LOG_FILTER").ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let base = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // The filter goes on last: the reload handle's type names the whole stack under it.
    match format {
        LogFormat::Json => {
            let b = base.json().with_env_filter(filter).with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            LogControl {
                set: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            }
        }
        LogFormat::Text => {
            let b = base.with_env_filter(filter).with_filter_reloading();
            let handle = b.reload_handle();
            b.init();
            LogControl {
                set: Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
            }
        }
    }
}
