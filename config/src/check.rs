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

/// How long a stream waits for (gateway) or keeps trying (client) a resume, by default.
pub(crate) fn default_resume_grace_ms() -> u64 {
    30_000
}

/// Sealed bytes a stream keeps for resending, by default.
pub(crate) fn default_resume_buffer_kib() -> u64 {
    2048
}

/// The sealed bytes all streams of a process may keep for resending, by default.
pub(crate) fn default_resume_budget_mib() -> u64 {
    512
}

/// A process's resend budget: at least one stream's worth, at most 1 TiB.
pub(crate) fn resume_budget(file: &Path, mib: u64) -> Result<(), ConfigError> {
    if (1..=1024 * 1024).contains(&mib) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            file,
            "resume_budget_mib",
            format!("{mib} is outside 1..=1048576 MiB"),
        ))
    }
}

/// A resend buffer holds at least two acknowledgement intervals of the largest records
/// (`braid_proto::inner::reliable::MIN_BUFFER`, about 260 KiB), and at most 1 GiB.
pub(crate) fn resume_buffer(file: &Path, kib: u64) -> Result<(), ConfigError> {
    if (512..=1024 * 1024).contains(&kib) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            file,
            "resume_buffer_kib",
            format!("{kib} is outside 512..=1048576 KiB"),
        ))
    }
}

/// `value` units of `unit` bytes, saturating (a size key in KiB or MiB, as bytes).
pub(crate) fn bytes(value: u64, unit: u64) -> usize {
    usize::try_from(value.saturating_mul(unit)).unwrap_or(usize::MAX)
}
