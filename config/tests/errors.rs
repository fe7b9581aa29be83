//! Each kind of error names the file and the key, so the operator can fix it.
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Debug;
use std::fs;
use std::path::{Path, PathBuf};

use braid_config::*;
use common::*;

const NODE_FILE: &str = "/srv/braid/upstream.toml";
const DIR_FILE: &str = "/srv/braid/directory.toml";
const CLIENT_FILE: &str = "/srv/braid/client.toml";

/// Parsing fails, and the message names `file` and contains every fragment.
#[track_caller]
fn fails<T: Debug>(parsed: Result<T, ConfigError>, file: &str, fragments: &[&str]) -> ConfigError {
    let e = match parsed {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e,
    };
    says(&e, file, fragments);
    e
}

/// [`fails`] for node config text in [`NODE_FILE`].
#[track_caller]
fn node_fails(text: &str, fragments: &[&str]) -> ConfigError {
    let parsed = parse_node_config(text, Path::new(NODE_FILE), &no_env);
    fails(parsed, NODE_FILE, fragments)
}

/// [`fails`] for directory text in [`DIR_FILE`].
#[track_caller]
fn dir_fails(text: &str, fragments: &[&str]) -> ConfigError {
    fails(
        parse_directory(text, Path::new(DIR_FILE), &no_env),
        DIR_FILE,
        fragments,
    )
}

/// [`fails`] for client config text in [`CLIENT_FILE`].
#[track_caller]
fn client_fails(text: &str, fragments: &[&str]) -> ConfigError {
    let parsed = parse_client_config(text, Path::new(CLIENT_FILE), &no_env);
    fails(parsed, CLIENT_FILE, fragments)
}

fn upstream() -> String {
    sample("upstream.toml")
}

/// The upstream sample as a node in the directory, with no join file to fall back on.
fn upstream_without_join() -> String {
    upstream()
        .lines()
        .filter(|l| !l.starts_with("join ="))
        .collect::<Vec<_>>()
        .join("\n")
}

fn directory() -> String {
    sample("directory.toml")
}

fn gateway() -> String {
    sample("gateway.toml")
}

// ---- syntax ------------------------------------------------------------------

#[test]
fn syntax_error_names_file_and_line() {
    let e = node_fails(
        "role = \"upstream\"\nlisten = \n",
        &["invalid TOML", "line 2"],
    );
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    node_fails(
        &format!("{}\nlisten = \"127.0.0.2:1\"\n", upstream())
            .replace("[node]", "listen = \"127.0.0.2:2\"\n[node]"),
        &["invalid TOML"],
    );
}

// ---- unknown keys ------------------------------------------------------------

#[test]
fn unknown_top_level_key() {
    let e = node_fails(
        &upstream().replace("listen =", "lisen ="),
        &["unknown key `lisen`", "did you mean `listen`"],
    );
    match &e {
        ConfigError::UnknownKey { key, .. } => assert_eq!(key, "lisen"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_nested_key() {
    node_fails(
        &upstream().replace("identity =", "identiy ="),
        &["unknown key `node.identiy`", "did you mean `identity`"],
    );
}

#[test]
fn key_of_another_role_is_unknown() {
    // mix_delay_ms belongs to relays, not upstreams.
    node_fails(
        &upstream().replace("[node]", "mix_delay_ms = 5.0\n[node]"),
        &["unknown key `mix_delay_ms`"],
    );
}

#[test]
fn unknown_key_in_directory_node() {
    let text = directory().replacen("role = \"upstream\"", "role = \"upstream\"\nport = 7100", 2);
    // The first [[nodes]] entry is the first to fail.
    dir_fails(&text, &["unknown key `nodes[0].port`"]);
}

#[test]
fn unknown_key_in_exit_table() {
    node_fails(
        &gateway().replace("allow_private", "allow_privat"),
        &[
            "unknown key `exit.allow_privat`",
            "did you mean `allow_private`",
        ],
    );
}

#[test]
fn unknown_key_in_client() {
    client_fails(
        "directory = \"d.toml\"\nsocks = \"127.0.0.1:1080\"\n",
        &["unknown key `socks`"],
    );
}

// ---- missing keys ------------------------------------------------------------

#[test]
fn missing_role() {
    let e = node_fails(
        &upstream().replace("role = \"upstream\"", ""),
        &["missing required key `role`"],
    );
    assert!(matches!(e, ConfigError::MissingKey { .. }), "{e:?}");
}

#[test]
fn missing_nested_key() {
    node_fails(
        &upstream().replace("id = \"upstream-1\"", ""),
        &["missing required key `node.id`"],
    );
}

#[test]
fn missing_listen() {
    node_fails(
        &upstream().replace("listen = \"127.0.0.2:7100\"", ""),
        &["missing required key `listen`"],
    );
}

#[test]
fn missing_node_key_in_directory() {
    let text = directory().replacen(
        "tls_key = \"0a7e2671b3ffc49ae3bfcf404c3e25a5886ba398c7006c62cacd09711d7b611b\"",
        "",
        1,
    );
    dir_fails(&text, &["missing required key `nodes[0].tls_key`"]);
}

#[test]
fn missing_client_directory() {
    client_fails(
        "socks_listen = \"127.0.0.1:1080\"\n",
        &["missing required key `directory`"],
    );
}

// ---- bad values --------------------------------------------------------------

#[test]
fn bad_listen_address_names_field_and_value() {
    let e = node_fails(
        &upstream().replace("\"127.0.0.2:7100\"", "\"127.0.0.2\""),
        &["invalid value for `listen`", "127.0.0.2", "socket address"],
    );
    match &e {
        ConfigError::InvalidValue { key, value, .. } => {
            assert_eq!(key, "listen");
            assert_eq!(value.as_deref(), Some("\"127.0.0.2\""));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_admin_address() {
    node_fails(
        &upstream().replace("\"127.0.0.1:9101\"", "\"localhost:9101\""),
        &["`node.admin`", "localhost:9101"],
    );
}

#[test]
fn bad_directory_address() {
    dir_fails(
        &directory().replace("\"127.0.0.6:7600\"", "\"127.0.0.6:76000\""),
        &["`nodes[5].addr`", "127.0.0.6:76000"],
    );
}

#[test]
fn bad_socks_address() {
    client_fails(
        "directory = \"d\"\nsocks_listen = \"1080\"\n",
        &["`socks_listen`", "\"1080\""],
    );
}

#[test]
fn bad_hex_length() {
    let text = directory().replace(
        "099764baa5af2e1e0fb43a4319d30ec6d1867a2e84c8a971c88cf6c7d0b3f714",
        "099764baa5",
    );
    dir_fails(
        &text,
        &[
            "`nodes[2].noise_key`",
            "bad hex key",
            "64 hex digits",
            "099764baa5",
        ],
    );
}

#[test]
fn bad_hex_characters() {
    let text = directory().replace(
        "959b4321387909d4dc83a58e6cf8dcfc15c65398d2352c9ee1c0964f1da77088",
        "zz9b4321387909d4dc83a58e6cf8dcfc15c65398d2352c9ee1c0964f1da77088",
    );
    dir_fails(&text, &["`nodes[6].tls_key`", "bad hex key"]);
}

#[test]
fn unknown_role() {
    node_fails(
        &upstream().replace("role = \"upstream\"", "role = \"exit\""),
        &[
            "`role`",
            "\"exit\"",
            "upstream, central, downstream, relay, gateway",
        ],
    );
    dir_fails(
        &directory().replacen("role = \"relay\"", "role = \"mix\"", 1),
        &["`nodes[5].role`", "\"mix\"", "unknown variant"],
    );
}

#[test]
fn wrong_type() {
    let central = sample("central.toml").replace(
        "reorder_window_cells = 1024",
        "reorder_window_cells = \"many\"",
    );
    node_fails(
        &central,
        &["`reorder_window_cells`", "\"many\"", "invalid type"],
    );
    node_fails(
        &upstream().replace("\"upstream-1\"", "7"),
        &["`node.id`", "= 7", "invalid type"],
    );
}

#[test]
fn negative_count() {
    let relay = sample("relay.toml").replace("mailbox_cells = 4096", "mailbox_cells = -1");
    node_fails(&relay, &["`mailbox_cells`", "-1"]);
}

#[test]
fn bad_log_format_and_scheduler() {
    node_fails(
        &upstream().replace("log = \"text\"", "log = \"xml\""),
        &["`node.log`", "\"xml\"", "text", "json"],
    );
    client_fails(
        "directory = \"d\"\nscheduler = \"fastest\"\n",
        &["`scheduler`", "\"fastest\"", "round-robin", "rtt"],
    );
}

#[test]
fn bad_hosts_entry() {
    node_fails(
        &gateway().replace(
            "\"echo.braid.test\" = \"127.0.0.1\"",
            "\"echo.braid.test\" = \"not-an-ip\"",
        ),
        &["`hosts.\"echo.braid.test\"`", "not-an-ip"],
    );
    node_fails(
        &gateway().replace("\"echo.braid.test\"", "\"Echo.Braid.Test\""),
        &["`hosts.\"Echo.Braid.Test\"`", "lower-case"],
    );
}

// ---- rule violations ---------------------------------------------------------

#[test]
fn invalid_cell_size() {
    for bad in ["512", "16385", "0"] {
        let text = directory().replace("cell_size = 8192", &format!("cell_size = {bad}"));
        let e = dir_fails(&text, &["`cell_size`", bad, "1024..=16384"]);
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    }
    dir_fails(
        &directory().replace("cell_size = 8192", "cell_size = -5"),
        &["`cell_size`", "-5"],
    );
}

#[test]
fn bad_node_id() {
    dir_fails(
        &directory().replace("\"relay-1\"", "\"Relay_1\""),
        &["`nodes[5].id`", "Relay_1", "lower-case"],
    );
    node_fails(
        &upstream().replace("\"upstream-1\"", "\"upstream 1\""),
        &["`node.id`", "upstream 1"],
    );
}

#[test]
fn duplicate_id() {
    dir_fails(
        &directory().replace("\"upstream-2\"", "\"upstream-1\""),
        &[
            "`nodes[1].id`",
            "duplicate node id `upstream-1`",
            "nodes[0]",
        ],
    );
}

#[test]
fn duplicate_keys() {
    dir_fails(
        &directory().replace(
            "458c3cd23fd313291ad329b38a25a6918958f8b92e369f20b0ce1b3dab670285",
            "4aab8e5e84b1fc56a923b3004e2b72dc3aa85eb2395345d209ae913be099f06f",
        ),
        &["`nodes[1].noise_key`", "upstream-2", "upstream-1"],
    );
    dir_fails(
        &directory().replace(
            "515cac1321d166d304723a87b347ed95aa5a47d71acaa5cf76e8176c02ce1367",
            "0a7e2671b3ffc49ae3bfcf404c3e25a5886ba398c7006c62cacd09711d7b611b",
        ),
        &["`nodes[1].tls_key`", "same tls_key"],
    );
    dir_fails(
        &directory().replace(
            "515cac1321d166d304723a87b347ed95aa5a47d71acaa5cf76e8176c02ce1367",
            &"0".repeat(64),
        ),
        &["`nodes[1].tls_key`", "all-zero"],
    );
}

#[test]
fn role_counts() {
    dir_fails(
        &directory().replace("role = \"central\"", "role = \"relay\""),
        &["`nodes`", "at least one central"],
    );
    // Any number of centrals: an upstream turned central still makes a valid network.
    let two = directory().replace(
        "role = \"upstream\"\naddr = \"127.0.0.3:7100\"",
        "role = \"central\"\naddr = \"127.0.0.3:7100\"",
    );
    let dir = parse_directory(&two, Path::new(DIR_FILE), &no_env).unwrap();
    assert_eq!(dir.centrals().count(), 2);
    dir_fails(
        &directory().replace("role = \"gateway\"", "role = \"downstream\""),
        &["`nodes`", "at least one gateway"],
    );
}

#[test]
fn listener_without_addr() {
    dir_fails(
        &directory().replace("addr = \"127.0.0.6:7600\"", ""),
        &["`nodes[5].addr`", "relay-1", "needs an addr"],
    );
}

#[test]
fn unusable_or_duplicate_addr() {
    dir_fails(
        &directory().replace("\"127.0.0.6:7600\"", "\"0.0.0.0:7600\""),
        &["`nodes[5].addr`", "0.0.0.0:7600"],
    );
    dir_fails(
        &directory().replace("\"127.0.0.3:7100\"", "\"127.0.0.2:7100\""),
        &["`nodes[1].addr`", "already used by node `upstream-1`"],
    );
}

#[test]
fn central_limits() {
    let central = sample("central.toml");
    node_fails(
        &central.replace(
            "reassembly_timeout_secs = 60",
            "reassembly_timeout_secs = 0",
        ),
        &["`reassembly_timeout_secs`", "greater than 0"],
    );
    node_fails(
        &central.replace(
            "global_reorder_bytes = 268435456",
            "global_reorder_bytes = 1000",
        ),
        &["`global_reorder_bytes`", "session_reorder_bytes"],
    );
}

#[test]
fn central_session_limits() {
    let central = sample("central.toml");
    for (from, to, key) in [
        (
            "idle_timeout_secs = 60",
            "idle_timeout_secs = 0",
            "`idle_timeout_secs`",
        ),
        (
            "max_sessions = 100000",
            "max_sessions = 0",
            "`max_sessions`",
        ),
        (
            "global_send_bytes = 268435456",
            "global_send_bytes = 0",
            "`global_send_bytes`",
        ),
    ] {
        let e = node_fails(&central.replace(from, to), &[key, "greater than 0"]);
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    }
    node_fails(
        &central.replace("max_sessions = 100000", "max_sessions = -1"),
        &["invalid value for `max_sessions`", "-1"],
    );
    node_fails(
        &central.replace("max_sessions = 100000", "max_sessions = 5000000000"),
        &["`max_sessions`", "5000000000"],
    );
    node_fails(
        &central.replace("idle_timeout_secs = 60", "idle_timeout_secs = \"1m\""),
        &["`idle_timeout_secs`", "\"1m\"", "invalid type"],
    );
    node_fails(
        &central.replace("idle_timeout_secs =", "idle_timeout_sec ="),
        &[
            "unknown key `idle_timeout_sec`",
            "did you mean `idle_timeout_secs`",
        ],
    );
    // The central's keys belong to the central only.
    node_fails(
        &upstream().replace("[node]", "max_sessions = 5\n[node]"),
        &["unknown key `max_sessions`"],
    );
}

#[test]
fn relay_limits() {
    let relay = sample("relay.toml");
    node_fails(
        &relay.replace("mix_delay_ms = 25.0", "mix_delay_ms = -1.0"),
        &["`mix_delay_ms`", "-1"],
    );
    node_fails(
        &relay.replace("mix_delay_ms = 25.0", "mix_delay_ms = nan"),
        &["`mix_delay_ms`", "NaN"],
    );
    node_fails(
        &relay.replace("mailbox_cells = 4096", "mailbox_cells = 0"),
        &["`mailbox_cells`"],
    );
    for (from, to, key) in [
        ("pool_cells = 16384", "pool_cells = 0", "`pool_cells`"),
        (
            "mailbox_budget_mib = 256",
            "mailbox_budget_mib = 0",
            "`mailbox_budget_mib`",
        ),
        (
            "mailbox_budget_mib = 256",
            "mailbox_budget_mib = 1048577",
            "`mailbox_budget_mib`",
        ),
        (
            "max_mailboxes = 65536",
            "max_mailboxes = 0",
            "`max_mailboxes`",
        ),
        (
            "max_mailboxes_per_connection = 8",
            "max_mailboxes_per_connection = 0",
            "`max_mailboxes_per_connection`",
        ),
        (
            "registration_timeout_ms = 5000",
            "registration_timeout_ms = 0",
            "`registration_timeout_ms`",
        ),
        (
            "registration_timeout_ms = 5000",
            "registration_timeout_ms = 600001",
            "`registration_timeout_ms`",
        ),
    ] {
        assert!(relay.contains(from), "{from}");
        node_fails(&relay.replace(from, to), &[key]);
    }
    // The overall cap cannot be below one connection's.
    node_fails(
        &relay.replace("max_mailboxes = 65536", "max_mailboxes = 4"),
        &["`max_mailboxes`", "max_mailboxes_per_connection (8)"],
    );
}

/// A relay config written before issue 8 (only `mailbox_cells`, which then sized the pool)
/// still loads: the key now means cells per mailbox, and the new keys take their defaults.
#[test]
fn old_relay_config_still_loads() {
    let text = "role = \"relay\"\nlisten = \"127.0.0.6:7600\"\nmix_delay_ms = 25.0\nmailbox_cells = 65536\n[node]\nid = \"r\"\ndirectory = \"d\"\nidentity = \"k\"\n";
    let cfg = parse_node_config(text, Path::new(NODE_FILE), &no_env).unwrap();
    let braid_config::NodeConfig::Relay(r) = cfg else {
        panic!("not a relay")
    };
    assert_eq!((r.mailbox_cells, r.pool_cells), (65_536, 16_384));
}

#[test]
fn gateway_backoff_order() {
    node_fails(
        &gateway().replace("reconnect_max_ms = 30000", "reconnect_max_ms = 100"),
        &["`reconnect_max_ms`", "reconnect_min_ms"],
    );
}

#[test]
fn client_rules() {
    client_fails("directory = \"d\"\nwindow_cells = 0\n", &["`window_cells`"]);
    client_fails(
        "directory = \"d\"\ngateway = \"GW\"\n",
        &["`gateway`", "GW"],
    );
}

/// The client's admin port shows its session to whoever connects: loopback only.
#[test]
fn client_admin_must_be_loopback() {
    for addr in ["0.0.0.0:1081", "192.168.1.2:1081", "[::]:1081"] {
        client_fails(
            &format!("directory = \"d\"\nadmin = \"{addr}\"\n"),
            &["`admin`", "loopback", addr],
        );
    }
    for addr in ["127.0.0.1:1081", "127.9.8.7:0", "[::1]:1081"] {
        let text = format!("directory = \"d\"\nadmin = \"{addr}\"\n");
        let cfg = parse_client_config(&text, Path::new(CLIENT_FILE), &no_env).unwrap();
        assert_eq!(cfg.admin, addr.parse::<std::net::SocketAddr>().unwrap());
    }
}

#[test]
fn in_memory_directory_errors_say_so() {
    let dir = Directory::new(100, vec![]);
    let e = dir.validate().unwrap_err();
    says(&e, "<in-memory directory>", &["`cell_size`"]);
}

// ---- files -------------------------------------------------------------------

#[test]
fn unreadable_config_names_the_file() {
    let e = load_node_config_with_env("/nonexistent/braid/node.toml", &no_env).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    says(&e, "/nonexistent/braid/node.toml", &["cannot read"]);
    let e = load_directory_with_env("/nonexistent/directory.toml", &no_env).unwrap_err();
    says(&e, "/nonexistent/directory.toml", &["cannot read"]);
    let e = load_client_config_with_env("/nonexistent/client.toml", &no_env).unwrap_err();
    says(&e, "/nonexistent/client.toml", &["cannot read"]);
}

fn load_err(tmp: &tempfile::TempDir, name: &str) -> (ConfigError, String) {
    let file: PathBuf = tmp.path().join(name);
    let e = load_node_config_with_env(&file, &no_env).unwrap_err();
    (e, file.display().to_string())
}

#[test]
fn missing_key_file_names_path_and_field() {
    for missing in ["noise.key", "tls.key", "tls.crt"] {
        let tmp = node_tree("upstream-1", "upstream.toml", &upstream_without_join());
        let gone = tmp.path().join("keys/upstream-1").join(missing);
        fs::remove_file(&gone).unwrap();
        let (e, file) = load_err(&tmp, "upstream.toml");
        match &e {
            ConfigError::MissingPath { key, path, .. } => {
                assert_eq!(key, "node.identity");
                assert_eq!(path, &gone);
            }
            other => panic!("{other:?}"),
        }
        says(
            &e,
            &file,
            &[
                "`node.identity`",
                &gone.display().to_string(),
                "does not exist",
            ],
        );
    }
}

#[test]
fn missing_identity_folder() {
    let tmp = node_tree(
        "upstream-1",
        "upstream.toml",
        &upstream_without_join().replace("keys/upstream-1", "keys/nobody"),
    );
    let (e, file) = load_err(&tmp, "upstream.toml");
    let folder = tmp.path().join("keys/nobody").display().to_string();
    says(&e, &file, &["`node.identity`", "identity folder", &folder]);
}

#[test]
fn a_joining_node_needs_its_join_file_not_keys() {
    // No identity: the node makes its keys, so only the join file must exist.
    let text = upstream().replace("keys/upstream-1", "keys/nobody");
    let tmp = node_tree("upstream-1", "upstream.toml", &text);
    let (e, file) = load_err(&tmp, "upstream.toml");
    let join = tmp.path().join("upstream.join").display().to_string();
    says(&e, &file, &["`node.join`", "join file", &join]);
    fs::write(tmp.path().join("upstream.join"), "").unwrap();
    load_node_config_with_env(tmp.path().join("upstream.toml"), &no_env).unwrap();
}

#[test]
fn missing_directory_file() {
    let tmp = node_tree(
        "upstream-1",
        "upstream.toml",
        &upstream().replace("\"directory.toml\"", "\"dir.toml\""),
    );
    let (e, file) = load_err(&tmp, "upstream.toml");
    let missing = tmp.path().join("dir.toml").display().to_string();
    says(&e, &file, &["`node.directory`", &missing]);

    let tmp = tree(&[("client.toml", "directory = \"nope.toml\"\n")]);
    let file = tmp.path().join("client.toml");
    let e = load_client_config_with_env(&file, &no_env).unwrap_err();
    says(
        &e,
        &file.display().to_string(),
        &["`directory`", "nope.toml", "does not exist"],
    );
}

// ---- cross-file checks ---------------------------------------------------------

#[test]
fn node_not_in_directory_or_wrong_role() {
    let dir = Directory::from_toml_str(&directory()).unwrap();
    let cfg = parse_node_config(
        &upstream().replace("\"upstream-1\"", "\"upstream-9\""),
        Path::new(NODE_FILE),
        &no_env,
    )
    .unwrap();
    let e = cfg.directory_entry(&dir).unwrap_err();
    says(&e, "/srv/braid/directory.toml", &["upstream-9", "node.id"]);

    let cfg = parse_node_config(
        &upstream().replace("\"upstream-1\"", "\"relay-1\""),
        Path::new(NODE_FILE),
        &no_env,
    )
    .unwrap();
    let e = cfg.directory_entry(&dir).unwrap_err();
    says(
        &e,
        "/srv/braid/directory.toml",
        &["relay-1", "role relay", "role upstream"],
    );
}

#[test]
fn client_gateway_must_be_a_gateway() {
    let dir = Directory::from_toml_str(&directory()).unwrap();
    let cfg = parse_client_config(
        "directory = \"directory.toml\"\ngateway = \"relay-1\"\n",
        Path::new(CLIENT_FILE),
        &no_env,
    )
    .unwrap();
    let e = cfg.eligible_gateways(&dir).unwrap_err();
    says(
        &e,
        "/srv/braid/directory.toml",
        &["relay-1", "not a gateway"],
    );
    let cfg = parse_client_config(
        "directory = \"directory.toml\"\ngateway = \"gateway-7\"\n",
        Path::new(CLIENT_FILE),
        &no_env,
    )
    .unwrap();
    let e = cfg.eligible_gateways(&dir).unwrap_err();
    says(&e, "/srv/braid/directory.toml", &["gateway-7"]);
}
