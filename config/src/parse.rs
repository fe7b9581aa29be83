//! Shared text-to-typed machinery for every config file: parse the text into a
//! `toml::Table`, apply environment overrides and deserialize it (tracking key paths for
//! errors), resolve relative paths against the file's folder, and validate.
//!
//! This module knows no config type. [`parse_config`] runs those steps in that order for
//! any [`ConfigFile`]; each config implements the trait next to its type (`directory.rs`,
//! `node/`, `client.rs`) and keeps its public `parse_*` entry point, and `load.rs` adds
//! the file I/O on top.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::de::{from_value, DeError, DeErrorKind, KeyPath};
use crate::env::{self, Applied, Kind};
use crate::error::ConfigError;

/// An environment lookup: variable name to value (see [`crate::process_env`]).
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One config text being parsed: the file it names in errors, where overrides come
/// from, and which keys they have set so far (to name the variable in errors).
pub(crate) struct Source<'a> {
    file: &'a Path,
    env: Env<'a>,
    applied: Applied,
}

impl Source<'_> {
    /// The file errors name.
    pub(crate) fn file(&self) -> &Path {
        self.file
    }

    /// The environment variable that set `path` (or a table above it), if any.
    pub(crate) fn var_for(&self, path: &KeyPath) -> Option<String> {
        self.applied.var_for(path)
    }

    /// Apply the overrides for `keys` to `table` (see `env.rs`).
    pub(crate) fn apply(
        &mut self,
        table: &mut Table,
        keys: &[(&str, Kind)],
    ) -> Result<(), ConfigError> {
        env::apply(table, keys, self.env, self.file, &mut self.applied)
    }

    /// Deserialize `value` into `T`; errors name the file, the key path and, when an
    /// environment override set the value, the variable.
    pub(crate) fn typed<T: DeserializeOwned>(&self, value: Value) -> Result<T, ConfigError> {
        from_value(value, KeyPath::default()).map_err(|e| convert(e, self.file, &self.applied))
    }
}

/// A config file type: the steps of [`parse_config`] that differ between configs.
pub(crate) trait ConfigFile: DeserializeOwned {
    /// The overridable keys (lists in `env.rs`) applied to the table before anything
    /// else.
    const ENV_KEYS: &'static [(&'static str, Kind)];

    /// Apply the environment overrides to `table` and deserialize it. Default:
    /// [`Self::ENV_KEYS`], then deserialize.
    fn from_table(mut table: Table, src: &mut Source<'_>) -> Result<Self, ConfigError> {
        src.apply(&mut table, Self::ENV_KEYS)?;
        src.typed(Value::Table(table))
    }

    /// The paths that resolve against the config file's folder. Default: none.
    fn relative_paths(&mut self) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    /// Check the rules that need no file system; errors name `file`.
    fn validate_in(&self, file: &Path) -> Result<(), ConfigError>;

    /// Check that the files the config names exist (only when loading from a file).
    /// Default: it names none.
    fn check_files(&self, _file: &Path) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Parse and validate config text, except for file existence; `file` names it in errors
/// and its folder is the base for relative paths.
pub(crate) fn parse_config<T: ConfigFile>(
    text: &str,
    file: &Path,
    env: Env<'_>,
) -> Result<T, ConfigError> {
    let table = parse_table(text, file)?;
    let mut src = Source {
        file,
        env,
        applied: Applied::default(),
    };
    let mut cfg = T::from_table(table, &mut src)?;
    let base = base_dir(file);
    for path in cfg.relative_paths() {
        resolve(&base, path);
    }
    cfg.validate_in(file)?;
    Ok(cfg)
}

/// Parse `text` as a TOML document; syntax errors name `file`.
fn parse_table(text: &str, file: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
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
fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Make a relative, non-empty `path` relative to `base`.
fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}
