//! Loading from files: read the file, hand its text to `parse::parse_config` (which
//! applies environment overrides, deserializes, resolves relative paths against the
//! file's folder and validates), then check that the files the config names exist
//! (identity folder and key files, directory file). One generic [`load`] does this for
//! every config; the public functions name the type.
//!
//! The parse step (also behind the public `parse_*` functions in `directory.rs`, `node/`
//! and `client.rs`) does everything except touching the file system, so it suits tests,
//! samples and text received over the network. This module depends on it, never the
//! reverse.

use std::path::Path;

use crate::client::ClientConfig;
use crate::directory::Directory;
use crate::error::ConfigError;
use crate::node::NodeConfig;
use crate::parse::{parse_config, ConfigFile, Env};

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
    load(path.as_ref(), env)
}

/// Load the directory and check who signed it. With a pinned operator key (`directory_key`
/// in a node's or client's config) the directory must be signed by that key, unexpired at
/// `now` (Unix seconds), and no older than the version recorded in `version_file` (which
/// then records this one). Without a pin, a signed directory must still verify against the
/// operator key it names (a bad signature is refused), and an unsigned one is taken as it
/// is (a network without an operator).
pub fn load_trusted_directory(
    path: impl AsRef<Path>,
    pinned: Option<&[u8; 32]>,
    version_file: Option<&Path>,
    now: u64,
) -> Result<Directory, ConfigError> {
    let path = path.as_ref();
    let dir = load_directory(path)?;
    let untrusted = |e: crate::DirectoryTrust| ConfigError::Invalid {
        file: path.to_owned(),
        key: "signature".into(),
        message: e.to_string(),
    };
    let held = version_file
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(0);
    match (pinned, dir.operator_key, &dir.signature) {
        (Some(pin), ..) => dir.verify(pin, now, held).map_err(untrusted)?,
        (None, Some(named), Some(_)) => dir.verify(&named, now, held).map_err(untrusted)?,
        _ => return Ok(dir),
    }
    if let Some(f) = version_file.filter(|_| dir.version > held) {
        // Best effort: a node that cannot record it still refuses older ones until restart.
        let _ = std::fs::write(f, format!("{}\n", dir.version));
    }
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
    load(path.as_ref(), env)
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
    load(path.as_ref(), env)
}

/// Read the file, parse it (overrides from `env`), then check the files it names.
fn load<T: ConfigFile>(path: &Path, env: Env<'_>) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_owned(),
        source,
    })?;
    let cfg: T = parse_config(&text, path, env)?;
    cfg.check_files(path)?;
    Ok(cfg)
}
