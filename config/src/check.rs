//! Rules several configs check the same way, with the same message: one home for each,
//! used by the client config, the node's `[node]` table and the central, relay and
//! gateway rules.

use std::path::{Path, PathBuf};

use crate::error::ConfigError;

/// Every `(key, value)` is greater than 0; the first that is not (in order) is the error.
pub(crate) fn positive(file: &Path, fields: &[(&str, u64)]) -> Result<(), ConfigError> {
    match fields.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(ConfigError::invalid(file, *key, "must be greater than 0")),
        None => Ok(()),
    }
}

/// Every `(key, path)` is non-empty; the first that is empty (in order) is the error.
pub(crate) fn non_empty(file: &Path, paths: &[(&str, &PathBuf)]) -> Result<(), ConfigError> {
    match paths.iter().find(|(_, path)| path.as_os_str().is_empty()) {
        Some((key, _)) => Err(ConfigError::invalid(file, *key, "must not be empty")),
        None => Ok(()),
    }
}

/// `key` (= `value`) is at least `min_key` (= `min`); `why`, if any, ends the message.
pub(crate) fn not_below(
    file: &Path,
    (key, value): (&str, u64),
    (min_key, min): (&str, u64),
    why: Option<&str>,
) -> Result<(), ConfigError> {
    if value >= min {
        return Ok(());
    }
    let why = why.map(|w| format!(": {w}")).unwrap_or_default();
    Err(ConfigError::invalid(
        file,
        key,
        format!("{value} is smaller than {min_key} ({min}){why}"),
    ))
}
