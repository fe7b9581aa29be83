//! Shared text-to-typed machinery for every config file: parse the text into a
//! `toml::Table`, deserialize it (tracking key paths for errors), and resolve relative
//! paths against the file's folder.
//!
//! This module knows no config type. Each config owns its own parse entry point
//! ([`crate::parse_directory`] in `directory.rs`, [`crate::parse_node_config`] in
//! `node/`, [`crate::parse_client_config`] in `client.rs`) built from these pieces, and
//! `load.rs` adds the file I/O on top.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::de::{from_value, DeError, DeErrorKind, KeyPath};
use crate::env::Applied;
use crate::error::ConfigError;

/// Parse `text` as a TOML document; syntax errors name `file`.
pub(crate) fn parse_table(text: &str, file: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

/// Deserialize `value` into `T`; errors name `file`, the key path and, when an
/// environment override set the value, the variable.
pub(crate) fn typed<T: DeserializeOwned>(
    value: Value,
    file: &Path,
    applied: &Applied,
) -> Result<T, ConfigError> {
    from_value(value, KeyPath::default()).map_err(|e| convert(e, file, applied))
}

fn convert(e: DeError, file: &Path, applied: &Applied) -> ConfigError {
    let path = e.path.unwrap_or_default();
    match e.kind {
        DeErrorKind::UnknownField(expected) => ConfigError::UnknownKey {
            file: file.to_owned(),
            key: path.to_string(),
            expected,
            env_var: applied.var_for(&path),
        },
        DeErrorKind::MissingField(field) => ConfigError::MissingKey {
            file: file.to_owned(),
            key: path.key(field).to_string(),
        },
        DeErrorKind::Custom(message) => ConfigError::InvalidValue {
            file: file.to_owned(),
            key: path.to_string(),
            value: e.value,
            message: with_hint(message),
            env_var: applied.var_for(&path),
        },
    }
}

/// Add an example to the standard library's terse address parse errors.
fn with_hint(message: String) -> String {
    let hint = match message.as_str() {
        "invalid socket address syntax" => {
            "expected IP:PORT, e.g. \"127.0.0.1:7400\" or \"[::1]:7400\""
        }
        "invalid IP address syntax" => "expected an IP address, e.g. \"127.0.0.1\" or \"::1\"",
        _ => return message,
    };
    format!("{message} ({hint})")
}

/// The folder relative paths in `file` resolve against.
pub(crate) fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Make a relative, non-empty `path` relative to `base`.
pub(crate) fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}
