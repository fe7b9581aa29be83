//! The one error type of this crate.
//!
//! Every variant names the file it is about (`file`) and, where one exists, the key path
//! inside that file (`key`, e.g. `node.identity` or `nodes[2].noise_key`), so the
//! operator can go straight to the line to fix. Values that came from an environment
//! override say which variable set them.

use std::io;
use std::path::{Path, PathBuf};

/// A configuration error. The `Display` form is a complete, operator-facing message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read file: {source}")]
    Read {
        /// The file that could not be read.
        file: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The file is not valid TOML (the message carries line and column).
    #[error("{file}: invalid TOML: {message}")]
    Syntax {
        /// The offending file.
        file: PathBuf,
        /// The parser's message, with line, column and an excerpt.
        message: String,
    },

    /// A key the schema does not know (all tables deny unknown keys).
    #[error("{file}: unknown key `{key}`{}{}", suggestion(.expected, .key), env_note(.env_var))]
    UnknownKey {
        /// The offending file.
        file: PathBuf,
        /// Full key path of the unknown key, e.g. `node.identiy`.
        key: String,
        /// The keys that are allowed at that place.
        expected: &'static [&'static str],
        /// The environment variable that introduced the key, if any.
        env_var: Option<String>,
    },

    /// A required key is absent.
    #[error("{file}: missing required key `{key}`")]
    MissingKey {
        /// The offending file.
        file: PathBuf,
        /// Full key path of the missing key, e.g. `node.id`.
        key: String,
    },

    /// A key has a value of the wrong type or one that does not parse (bad socket
    /// address, bad hex key, unknown enum variant, negative count, ...).
    #[error("{file}: invalid value for `{key}`{}: {message}{}", value_note(.value), env_note(.env_var))]
    InvalidValue {
        /// The offending file.
        file: PathBuf,
        /// Full key path, e.g. `listen` or `nodes[1].tls_key`.
        key: String,
        /// The offending value as written (scalars only).
        value: Option<String>,
        /// What is wrong with it.
        message: String,
        /// The environment variable that set the value, if any.
        env_var: Option<String>,
    },

    /// An environment override could not be applied to the file's structure.
    #[error("{file}: environment variable {var}: {message}")]
    EnvOverride {
        /// The file being overridden.
        file: PathBuf,
        /// The variable, e.g. `BRAID_EXIT__ALLOW_LOOPBACK`.
        var: String,
        /// What is wrong.
        message: String,
    },

    /// The values parse but break a rule (cell size out of range, duplicate node id,
    /// no central, reconnect_min_ms > reconnect_max_ms, ...).
    #[error("{file}: invalid `{key}`: {message}")]
    Invalid {
        /// The offending file (or `<in-memory directory>` for a directory built in code).
        file: PathBuf,
        /// Full key path, e.g. `cell_size` or `nodes[3].id`.
        key: String,
        /// The broken rule.
        message: String,
    },

    /// A path named by a key does not exist (identity folder, key file, directory file).
    #[error("{file}: `{key}` requires {what} {}, which does not exist", .path.display())]
    MissingPath {
        /// The config file holding the key.
        file: PathBuf,
        /// The key that named the path, e.g. `node.identity`.
        key: String,
        /// What was expected, e.g. "the Noise static key file".
        what: &'static str,
        /// The missing path (already resolved against the config file's folder).
        path: PathBuf,
    },
}

impl ConfigError {
    /// [`ConfigError::Invalid`]: the values in `file` parse but `key` breaks a rule.
    pub(crate) fn invalid(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            key: key.into(),
            message: message.into(),
        }
    }
}

fn env_note(var: &Option<String>) -> String {
    match var {
        Some(v) => format!(" (set by environment variable {v})"),
        None => String::new(),
    }
}

fn value_note(value: &Option<String>) -> String {
    match value {
        Some(v) => format!(" = {v}"),
        None => String::new(),
    }
}

fn suggestion(expected: &[&str], key: &str) -> String {
    if expected.is_empty() {
        return String::new();
    }
    let last = key.rsplit('.').next().unwrap_or(key);
    let close = expected
        .iter()
        .map(|e| (edit_distance(last, e), *e))
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min_by_key(|(d, _)| *d);
    let list = expected.join(", ");
    match close {
        Some((_, e)) => format!(" (did you mean `{e}`? allowed keys here: {list})"),
        None => format!(" (allowed keys here: {list})"),
    }
}

/// Levenshtein distance; the strings are short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            let del = prev[j + 1] + 1;
            let ins = cur[j] + 1;
            cur.push(subst.min(del).min(ins));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("listen", "listen"), 0);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn suggestion_picks_close_key() {
        let s = suggestion(&["id", "identity", "directory"], "node.identiy");
        assert!(s.contains("did you mean `identity`"), "{s}");
        let s = suggestion(&["id", "identity"], "node.zzzzzzzz");
        assert!(!s.contains("did you mean"), "{s}");
    }
}
