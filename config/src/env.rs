//! Environment overrides: `BRAID_<PATH>` where PATH is the key path upper-cased with
//! `__` between table levels (`BRAID_LISTEN`, `BRAID_NODE__ID`,
//! `BRAID_EXIT__ALLOW_LOOPBACK`).
//!
//! Only the keys the schema knows are looked up (the lookup function cannot be
//! enumerated, and unrelated `BRAID_*` variables must not break loading). Values for
//! string keys are taken verbatim; values for number and boolean keys are parsed as a
//! TOML value when they parse (`1024`, `true`, `2.5`) and kept as a string otherwise, so
//! the type error names the key and the variable; values for table keys (`BRAID_HOSTS`)
//! must be TOML inline tables (`{ "db.internal" = "10.0.0.7" }`).

use std::path::Path;

use toml::{Table, Value};

use crate::de::KeyPath;
use crate::error::ConfigError;

/// How an override's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Taken verbatim as a string.
    Str,
    /// Parsed as a TOML scalar when possible, else a string.
    Scalar,
    /// Must be a TOML inline table; replaces the whole table.
    Table,
}

/// Overridable keys of the directory file.
pub(crate) const DIRECTORY_KEYS: &[(&str, Kind)] = &[("cell_size", Kind::Scalar)];

/// The node config's role key (applied first: it decides which keys follow).
pub(crate) const NODE_ROLE_KEY: &[(&str, Kind)] = &[("role", Kind::Str)];

/// Overridable keys in every node config's `[node]` table.
pub(crate) const NODE_COMMON_KEYS: &[(&str, Kind)] = &[
    ("node.id", Kind::Str),
    ("node.directory", Kind::Str),
    ("node.identity", Kind::Str),
    ("node.directory_key", Kind::Str),
    ("node.admin", Kind::Str),
    ("node.log", Kind::Str),
    ("node.log_level", Kind::Str),
    ("node.reload_watch_ms", Kind::Scalar),
    ("node.drain_timeout_secs", Kind::Scalar),
    ("node.max_connections", Kind::Scalar),
    ("node.max_connections_per_ip", Kind::Scalar),
    ("node.retry_above_handshakes", Kind::Scalar),
    ("node.join", Kind::Str),
    ("node.advertise", Kind::Str),
    ("node.descriptor_lifetime_secs", Kind::Scalar),
    ("node.max_joined_nodes", Kind::Scalar),
];

pub(crate) const UPSTREAM_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("client_queue_cells", Kind::Scalar),
    ("central_queue_cells", Kind::Scalar),
    ("auth_timeout_ms", Kind::Scalar),
    ("allow_sources", Kind::Scalar),
    ("deny_sources", Kind::Scalar),
    ("revoked", Kind::Str),
    ("per_user_usage", Kind::Scalar),
];

pub(crate) const CENTRAL_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("reorder_window_cells", Kind::Scalar),
    ("session_reorder_bytes", Kind::Scalar),
    ("global_reorder_bytes", Kind::Scalar),
    ("reassembly_timeout_secs", Kind::Scalar),
    ("idle_timeout_secs", Kind::Scalar),
    ("max_sessions", Kind::Scalar),
    ("max_streams_per_session", Kind::Scalar),
    ("stream_open_rate", Kind::Scalar),
    ("stream_open_burst", Kind::Scalar),
    ("gateway_stream_window_kib", Kind::Scalar),
    ("gateway_link_streams", Kind::Scalar),
    ("session_stalled_mib", Kind::Scalar),
    ("global_stalled_mib", Kind::Scalar),
    ("hello_queue_per_link", Kind::Scalar),
    ("admission_workers", Kind::Scalar),
    ("hello_window_secs", Kind::Scalar),
    ("hello_replay_cache", Kind::Scalar),
    ("max_half_open", Kind::Scalar),
    ("half_open_timeout_ms", Kind::Scalar),
    ("global_send_bytes", Kind::Scalar),
    ("mailbox_change_interval_ms", Kind::Scalar),
];

pub(crate) const DOWNSTREAM_KEYS: &[(&str, Kind)] = &[];

pub(crate) const RELAY_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("allow_sources", Kind::Scalar),
    ("deny_sources", Kind::Scalar),
    ("revoked", Kind::Str),
    ("per_user_usage", Kind::Scalar),
    ("mix_delay_ms", Kind::Scalar),
    ("mailbox_cells", Kind::Scalar),
    ("pool_cells", Kind::Scalar),
    ("mailbox_budget_mib", Kind::Scalar),
    ("max_mailboxes", Kind::Scalar),
    ("max_mailboxes_per_connection", Kind::Scalar),
    ("registration_timeout_ms", Kind::Scalar),
];

pub(crate) const GATEWAY_KEYS: &[(&str, Kind)] = &[
    ("connect_timeout_secs", Kind::Scalar),
    ("max_streams", Kind::Scalar),
    ("link_idle_timeout_ms", Kind::Scalar),
    ("exit", Kind::Table),
    ("exit.allow_loopback", Kind::Scalar),
    ("exit.allow_private", Kind::Scalar),
    ("hosts", Kind::Table),
    ("reconnect_min_ms", Kind::Scalar),
    ("reconnect_max_ms", Kind::Scalar),
    ("resume_grace_ms", Kind::Scalar),
    ("resume_buffer_kib", Kind::Scalar),
    ("resume_budget_mib", Kind::Scalar),
    ("link_stream_window_kib", Kind::Scalar),
    ("handshake_timeout_ms", Kind::Scalar),
    ("stream_idle_timeout_secs", Kind::Scalar),
    ("open_replay_window_secs", Kind::Scalar),
    ("open_replay_cache", Kind::Scalar),
    ("max_dns_lookups", Kind::Scalar),
    ("dns_timeout_ms", Kind::Scalar),
    ("local_addrs_refresh_secs", Kind::Scalar),
    ("log_destinations", Kind::Scalar),
    ("udp", Kind::Scalar),
    ("udp_idle_secs", Kind::Scalar),
    ("max_udp_associations", Kind::Scalar),
    ("dns_ttl_secs", Kind::Scalar),
];

/// Overridable keys of the client config.
pub(crate) const CLIENT_KEYS: &[(&str, Kind)] = &[
    ("directory", Kind::Str),
    ("directory_key", Kind::Str),
    ("credential", Kind::Str),
    ("socks_listen", Kind::Str),
    ("http_listen", Kind::Str),
    ("http_max_header_bytes", Kind::Scalar),
    ("http_max_headers", Kind::Scalar),
    ("http_keepalive_secs", Kind::Scalar),
    ("http_max_body_mib", Kind::Scalar),
    ("dns_listen", Kind::Str),
    ("dns_max_inflight", Kind::Scalar),
    ("dns_tcp_idle_secs", Kind::Scalar),
    ("udp_idle_secs", Kind::Scalar),
    ("max_udp_associations", Kind::Scalar),
    ("max_isolated_sessions", Kind::Scalar),
    ("isolation_idle_secs", Kind::Scalar),
    ("admin", Kind::Str),
    ("gateway", Kind::Str),
    ("gateway_choice", Kind::Str),
    ("sticky_secs", Kind::Scalar),
    ("gateway_rest_ms", Kind::Scalar),
    ("central_rest_ms", Kind::Scalar),
    ("scheduler", Kind::Str),
    ("central_choice", Kind::Str),
    ("window_cells", Kind::Scalar),
    ("log", Kind::Str),
    ("handshake_timeout_secs", Kind::Scalar),
    ("max_connections", Kind::Scalar),
    ("max_connections_per_source", Kind::Scalar),
    ("limit_loopback_sources", Kind::Scalar),
    ("keepalive_ms", Kind::Scalar),
    ("peer_timeout_ms", Kind::Scalar),
    ("session_wait_ms", Kind::Scalar),
    ("session_lifetime_secs", Kind::Scalar),
    ("max_joined_upstreams", Kind::Scalar),
    ("resume_grace_ms", Kind::Scalar),
    ("resume_buffer_kib", Kind::Scalar),
    ("resume_budget_mib", Kind::Scalar),
    ("log_destinations", Kind::Scalar),
];

/// The environment variable for a dotted key path: `exit.allow_loopback` →
/// `BRAID_EXIT__ALLOW_LOOPBACK`.
pub fn env_var_name(key_path: &str) -> String {
    format!("BRAID_{}", key_path.replace('.', "__").to_ascii_uppercase())
}

/// Which key paths were set from which variables (to name the variable in errors).
#[derive(Debug, Default)]
pub(crate) struct Applied(Vec<(KeyPath, String)>);

impl Applied {
    /// The variable that set `path` or one of its parent tables, if any.
    pub(crate) fn var_for(&self, path: &KeyPath) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, v)| v.clone())
    }
}

/// Apply the overrides for `keys` to `root`, recording them in `applied`.
pub(crate) fn apply(
    root: &mut Table,
    keys: &[(&str, Kind)],
    env: &dyn Fn(&str) -> Option<String>,
    file: &Path,
    applied: &mut Applied,
) -> Result<(), ConfigError> {
    for &(path, kind) in keys {
        let var = env_var_name(path);
        let Some(raw) = env(&var) else { continue };
        let value = to_value(&raw, kind).ok_or_else(|| ConfigError::EnvOverride {
            file: file.to_owned(),
            var: var.clone(),
            message: format!(
                "`{path}` is a table: expected a TOML inline table such as {{ key = \"value\" }}, got {raw:?}"
            ),
        })?;
        set(root, path, value).map_err(|message| ConfigError::EnvOverride {
            file: file.to_owned(),
            var: var.clone(),
            message,
        })?;
        applied.0.push((KeyPath::dotted(path), var));
    }
    Ok(())
}

fn to_value(raw: &str, kind: Kind) -> Option<Value> {
    match kind {
        Kind::Str => Some(Value::String(raw.to_owned())),
        Kind::Scalar => Some(
            parse_single(raw)
                .filter(|v| !matches!(v, Value::Table(_) | Value::Array(_)))
                .unwrap_or_else(|| Value::String(raw.to_owned())),
        ),
        Kind::Table => parse_single(raw).filter(|v| matches!(v, Value::Table(_))),
    }
}

/// Parse `raw` as the right-hand side of one TOML key/value pair.
fn parse_single(raw: &str) -> Option<Value> {
    let mut table: Table = format!("v = {raw}").parse().ok()?;
    if table.len() != 1 {
        return None;
    }
    table.remove("v")
}

fn set(root: &mut Table, path: &str, value: Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else {
        return Err("empty key path".to_owned());
    };
    let mut table = root;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            other => {
                return Err(format!(
                    "cannot set `{path}`: `{walked}` in the file is a {}, not a table",
                    other.type_str()
                ))
            }
        };
    }
    table.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn scalar_parsing() {
        assert_eq!(to_value("42", Kind::Scalar), Some(Value::Integer(42)));
        assert_eq!(to_value("true", Kind::Scalar), Some(Value::Boolean(true)));
        assert_eq!(to_value("2.5", Kind::Scalar), Some(Value::Float(2.5)));
        assert_eq!(
            to_value("127.0.0.1:80", Kind::Scalar),
            Some(Value::String("127.0.0.1:80".into()))
        );
        // An attempt to smuggle in a second key stays one string.
        assert_eq!(
            to_value("1\nx = 2", Kind::Scalar),
            Some(Value::String("1\nx = 2".into()))
        );
        // String keys keep digits-only values as strings.
        assert_eq!(
            to_value("123", Kind::Str),
            Some(Value::String("123".into()))
        );
        assert!(to_value("{ a = \"1.2.3.4\" }", Kind::Table).is_some());
        assert!(to_value("nope", Kind::Table).is_none());
    }

    #[test]
    fn set_creates_tables_and_rejects_non_tables() {
        let mut t = Table::new();
        set(&mut t, "exit.allow_loopback", Value::Boolean(true)).unwrap();
        assert_eq!(
            t.get("exit")
                .and_then(|e| e.get("allow_loopback"))
                .and_then(Value::as_bool),
            Some(true)
        );
        let mut t: Table = "exit = 3".parse().unwrap();
        let err = set(&mut t, "exit.allow_loopback", Value::Boolean(true));
        assert!(err.is_err_and(|m| m.contains("`exit`")));
    }

    /// Dotted paths of every leaf in a serialized config (`hosts` counts as a leaf).
    fn leaves(table: &Table, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::Table(t) if path != "hosts" => leaves(t, &path, out),
                _ => {
                    out.insert(path);
                }
            }
        }
    }

    /// Listed paths minus those that are parents of other listed paths.
    fn listed(lists: &[&[(&str, Kind)]]) -> BTreeSet<String> {
        let all: Vec<&str> = lists
            .iter()
            .flat_map(|l| l.iter().map(|(p, _)| *p))
            .collect();
        all.iter()
            .filter(|p| !all.iter().any(|q| q.starts_with(&format!("{p}."))))
            .map(|p| (*p).to_owned())
            .collect()
    }

    fn serialized(value: Value) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Value::Table(t) = value {
            leaves(&t, "", &mut out);
        }
        out
    }

    /// The override key lists cover exactly the schema's keys: adding a field without
    /// listing it (or the reverse) fails here. The samples set every optional key.
    #[test]
    fn override_lists_match_the_schema() {
        let file = Path::new("/x/sample.toml");
        let samples = [
            (include_str!("../samples/upstream.toml"), UPSTREAM_KEYS),
            (include_str!("../samples/central.toml"), CENTRAL_KEYS),
            (include_str!("../samples/downstream.toml"), DOWNSTREAM_KEYS),
            (include_str!("../samples/relay.toml"), RELAY_KEYS),
            (include_str!("../samples/gateway.toml"), GATEWAY_KEYS),
        ];
        for (text, keys) in samples {
            let cfg = crate::parse_node_config(text, file, &crate::no_env).unwrap();
            let got = serialized(Value::try_from(&cfg).unwrap());
            let want = listed(&[NODE_ROLE_KEY, NODE_COMMON_KEYS, keys]);
            assert_eq!(got, want, "role {}", cfg.role());
        }
        let cfg = crate::parse_client_config(
            include_str!("../samples/client.toml"),
            file,
            &crate::no_env,
        )
        .unwrap();
        assert_eq!(
            serialized(Value::try_from(&cfg).unwrap()),
            listed(&[CLIENT_KEYS])
        );
        let dir =
            crate::Directory::from_toml_str(include_str!("../samples/directory.toml")).unwrap();
        let mut got = serialized(Value::try_from(&dir).unwrap());
        assert!(got.remove("nodes"), "nodes are not overridable");
        // Signed fields: an override would void the signature.
        for signed in ["operator_key", "version", "expires", "signature"] {
            got.remove(signed);
        }
        assert_eq!(got, listed(&[DIRECTORY_KEYS]));
    }
}
