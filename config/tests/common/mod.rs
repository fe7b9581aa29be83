//! Shared test helpers (included with `mod common;`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use braid_config::ConfigError;

pub const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");

pub fn sample_path(name: &str) -> PathBuf {
    Path::new(SAMPLES).join(name)
}

pub fn sample(name: &str) -> String {
    fs::read_to_string(sample_path(name)).unwrap()
}

/// An env lookup over a fixed map.
pub fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

/// Write `files` (relative path → contents) under a fresh temp dir.
pub fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, contents) in files {
        let p = dir.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
    dir
}

/// A complete identity folder `keys/<id>` plus the sample directory, in a temp dir.
pub fn node_tree(id: &str, config_name: &str, config: &str) -> tempfile::TempDir {
    let noise = format!("keys/{id}/noise.key");
    let tls = format!("keys/{id}/tls.key");
    let crt = format!("keys/{id}/tls.crt");
    let dir_text = sample("directory.toml");
    tree(&[
        ("directory.toml", &dir_text),
        (&noise, "k"),
        (&tls, "k"),
        (&crt, "c"),
        (config_name, config),
    ])
}

/// The error's message names `file` and contains every fragment.
#[track_caller]
pub fn says(err: &ConfigError, file: &str, fragments: &[&str]) {
    let msg = err.to_string();
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    for f in fragments {
        assert!(msg.contains(f), "message lacks {f:?}: {msg}");
    }
}

/// The `NodeConfig::$role` variant's config, or a panic naming the role it has instead.
#[allow(unused_macros)] // not every test file uses it
macro_rules! role_config {
    ($cfg:expr, $role:ident) => {
        match $cfg {
            braid_config::NodeConfig::$role(c) => c,
            other => panic!("expected {}, got {:?}", stringify!($role), other.role()),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use role_config;
