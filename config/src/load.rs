//! Loading from files: read the file, hand its text to the config's parse function
//! (which applies environment overrides, deserializes, resolves relative paths against
//! the file's folder and validates), then check that the files the config names exist
//! (identity folder and key files, directory file).
//!
//! The `parse_*` functions (in `directory.rs`, `node/` and `client.rs`) do everything
//! except touching the file system, so they suit tests, samples and text received over
//! the network. This module depends on them, never the reverse.

use std::path::Path;

use crate::client::{parse_client_config, ClientConfig};
use crate::directory::{parse_directory, Directory};
use crate::error::ConfigError;
use crate::node::{parse_node_config, NodeConfig};

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

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })
}
