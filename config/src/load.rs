//! Loading: read the file, parse it into a `toml::Table`, apply environment overrides,
//! deserialize into the typed config (tracking key paths for errors), resolve relative
//! paths against the file's folder, then validate.
//!
//! `load_*` functions do all of that and also check that the files a config names exist
//! (identity folder and key files, directory file). `parse_*` functions take the text
//! and the file name it came from and do everything except touching the file system, so
//! they suit tests, samples and text received over the network.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::client::ClientConfig;
use crate::de::{from_value, scalar_repr, toml_quote, DeError, DeErrorKind, KeyPath};
use crate::directory::{Directory, Role};
use crate::env::{self, Applied};
use crate::error::ConfigError;
use crate::node::NodeConfig;

/// The process environment as an override source (`std::env::var_os`, lossily decoded).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// No overrides at all.
pub fn no_env(_name: &str) -> Option<String> {
    None
}

/// Load and validate the directory file, with overrides from the process environment.
pub fn load_directory(path: impl AsRef<Path>) -> Result<Directory, ConfigError> {
    load_directory_with_env(path, &process_env)
}

/// Load and validate the directory file, with overrides from `env`.
pub fn load_directory_with_env(
    path: impl AsRef<Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Directory, ConfigError> {
    let path = path.as_ref();
    let text = read(path)?;
    parse_directory(&text, path, env)
}

/// Parse and validate directory text; `file` names it in errors.
pub fn parse_directory(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Directory, ConfigError> {
    let mut table = parse_table(text, file)?;
    let mut applied = Applied::default();
    env::apply(&mut table, env::DIRECTORY_KEYS, env, file, &mut applied)?;
    let dir: Directory = typed(Value::Table(table), file, &applied)?;
    dir.validate_in(file)?;
    Ok(dir)
}

/// Load and validate a node config, with overrides from the process environment.
/// Relative paths resolve against the file's folder; the directory file and the identity
/// folder with `noise.key`, `tls.key` and `tls.crt` must exist.
pub fn load_node_config(path: impl AsRef<Path>) -> Result<NodeConfig, ConfigError> {
    load_node_config_with_env(path, &process_env)
}

/// [`load_node_config`] with overrides from `env`.
pub fn load_node_config_with_env(
    path: impl AsRef<Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<NodeConfig, ConfigError> {
    let path = path.as_ref();
    let text = read(path)?;
    let cfg = parse_node_config(&text, path, env)?;
    cfg.check_files(path)?;
    Ok(cfg)
}

/// Parse and validate node config text, except for file existence; `file` names it in
/// errors and its folder is the base for relative paths.
pub fn parse_node_config(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<NodeConfig, ConfigError> {
    let mut table = parse_table(text, file)?;
    let mut applied = Applied::default();
    env::apply(&mut table, env::NODE_ROLE_KEY, env, file, &mut applied)?;
    let role_path = KeyPath::dotted("role");
    let bad_role = |value: Option<String>, message: String| ConfigError::InvalidValue {
        file: file.to_owned(),
        key: "role".into(),
        value,
        message,
        env_var: applied.var_for(&role_path),
    };
    let role = match table.remove("role") {
        None => {
            return Err(ConfigError::MissingKey {
                file: file.to_owned(),
                key: "role".into(),
            })
        }
        Some(Value::String(s)) => s.parse::<Role>().map_err(|_| {
            bad_role(
                Some(toml_quote(&s)),
                "unknown role: expected one of upstream, central, downstream, relay, gateway"
                    .into(),
            )
        })?,
        Some(other) => {
            return Err(bad_role(
                scalar_repr(&other),
                format!(
                    "expected a string naming the role, got a {}",
                    other.type_str()
                ),
            ))
        }
    };
    env::apply(&mut table, env::NODE_COMMON_KEYS, env, file, &mut applied)?;
    let role_keys = match role {
        Role::Upstream => env::UPSTREAM_KEYS,
        Role::Central => env::CENTRAL_KEYS,
        Role::Downstream => env::DOWNSTREAM_KEYS,
        Role::Relay => env::RELAY_KEYS,
        Role::Gateway => env::GATEWAY_KEYS,
    };
    env::apply(&mut table, role_keys, env, file, &mut applied)?;

    let value = Value::Table(table);
    let mut cfg = match role {
        Role::Upstream => NodeConfig::Upstream(typed(value, file, &applied)?),
        Role::Central => NodeConfig::Central(typed(value, file, &applied)?),
        Role::Downstream => NodeConfig::Downstream(typed(value, file, &applied)?),
        Role::Relay => NodeConfig::Relay(typed(value, file, &applied)?),
        Role::Gateway => NodeConfig::Gateway(typed(value, file, &applied)?),
    };
    let base = base_dir(file);
    let common = cfg.common_mut();
    resolve(&base, &mut common.directory);
    resolve(&base, &mut common.identity);
    cfg.validate_in(file)?;
    Ok(cfg)
}

/// Load and validate a client config, with overrides from the process environment.
/// The directory file must exist.
pub fn load_client_config(path: impl AsRef<Path>) -> Result<ClientConfig, ConfigError> {
    load_client_config_with_env(path, &process_env)
}

/// [`load_client_config`] with overrides from `env`.
pub fn load_client_config_with_env(
    path: impl AsRef<Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ClientConfig, ConfigError> {
    let path = path.as_ref();
    let text = read(path)?;
    let cfg = parse_client_config(&text, path, env)?;
    cfg.check_files(path)?;
    Ok(cfg)
}

/// Parse and validate client config text, except for file existence.
pub fn parse_client_config(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ClientConfig, ConfigError> {
    let mut table = parse_table(text, file)?;
    let mut applied = Applied::default();
    env::apply(&mut table, env::CLIENT_KEYS, env, file, &mut applied)?;
    let mut cfg: ClientConfig = typed(Value::Table(table), file, &applied)?;
    resolve(&base_dir(file), &mut cfg.directory);
    cfg.validate_in(file)?;
    Ok(cfg)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })
}

fn parse_table(text: &str, file: &Path) -> Result<Table, ConfigError> {
    text.parse::<Table>().map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

fn typed<T: DeserializeOwned>(
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

fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() && !path.as_os_str().is_empty() {
        *path = base.join(&*path);
    }
}
