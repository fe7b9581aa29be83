//! Environment overrides: `BRAID_<PATH>`, `__` between table levels.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use braid_config::*;
use braid_proto::session::PathScheduler;
use common::*;

const FILE: &str = "/srv/braid/node.toml";

fn node(text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    parse_node_config(text, Path::new(FILE), &env_of(env))
}

#[test]
fn var_names() {
    assert_eq!(env_var_name("listen"), "BRAID_LISTEN");
    assert_eq!(env_var_name("node.id"), "BRAID_NODE__ID");
    assert_eq!(
        env_var_name("exit.allow_loopback"),
        "BRAID_EXIT__ALLOW_LOOPBACK"
    );
}

#[test]
fn top_level_and_nested_overrides() {
    let cfg = node(
        &sample("upstream.toml"),
        &[
            ("BRAID_LISTEN", "127.0.0.3:7100"),
            ("BRAID_NODE__ID", "upstream-2"),
            ("BRAID_NODE__IDENTITY", "/var/lib/braid/keys"),
            ("BRAID_NODE__ADMIN", "127.0.0.1:9999"),
            ("BRAID_NODE__LOG", "json"),
        ],
    )
    .unwrap();
    let u = role_config!(cfg, Upstream);
    assert_eq!(u.listen, "127.0.0.3:7100".parse().unwrap());
    assert_eq!(u.node.id, "upstream-2");
    assert_eq!(u.node.identity, Path::new("/var/lib/braid/keys"));
    assert_eq!(u.node.admin, Some("127.0.0.1:9999".parse().unwrap()));
    assert_eq!(u.node.log, LogFormat::Json);
}

#[test]
fn relative_override_paths_resolve_against_the_config_folder() {
    let cfg = node(
        &sample("upstream.toml"),
        &[("BRAID_NODE__IDENTITY", "other/keys")],
    )
    .unwrap();
    assert_eq!(cfg.common().identity, Path::new("/srv/braid/other/keys"));
}

#[test]
fn typed_values_parse_as_toml() {
    let cfg = node(
        &sample("gateway.toml"),
        &[
            ("BRAID_EXIT__ALLOW_LOOPBACK", "false"),
            ("BRAID_EXIT__ALLOW_PRIVATE", "true"),
            ("BRAID_RECONNECT_MAX_MS", "60000"),
            ("BRAID_HOSTS", "{ \"db.internal\" = \"10.0.0.7\" }"),
        ],
    )
    .unwrap();
    let g = role_config!(cfg, Gateway);
    assert!(!g.exit.allow_loopback);
    assert!(g.exit.allow_private);
    assert_eq!(g.reconnect_max_ms, 60_000);
    assert_eq!(g.hosts.len(), 1);
    assert_eq!(g.hosts["db.internal"].to_string(), "10.0.0.7");

    let cfg = node(&sample("relay.toml"), &[("BRAID_MIX_DELAY_MS", "5")]).unwrap();
    let r = role_config!(cfg, Relay);
    assert_eq!(r.mix_delay_ms, 5.0);

    let cfg = node(
        &sample("relay.toml"),
        &[
            ("BRAID_MAILBOX_CELLS", "16"),
            ("BRAID_POOL_CELLS", "64"),
            ("BRAID_MAILBOX_BUDGET_MIB", "2"),
            ("BRAID_MAX_MAILBOXES", "10"),
            ("BRAID_MAX_MAILBOXES_PER_CONNECTION", "3"),
            ("BRAID_REGISTRATION_TIMEOUT_MS", "250"),
        ],
    )
    .unwrap();
    let r = role_config!(cfg, Relay);
    assert_eq!(
        (
            r.mailbox_cells,
            r.pool_cells,
            r.mailbox_budget(),
            r.max_mailboxes,
            r.max_mailboxes_per_connection,
            r.registration_timeout().as_millis()
        ),
        (16, 64, 2 << 20, 10, 3, 250)
    );
}

#[test]
fn central_session_limit_overrides() {
    let cfg = node(
        &sample("central.toml"),
        &[
            ("BRAID_IDLE_TIMEOUT_SECS", "120"),
            ("BRAID_MAX_SESSIONS", "9"),
            ("BRAID_GLOBAL_SEND_BYTES", "65536"),
            ("BRAID_MAILBOX_CHANGE_INTERVAL_MS", "250"),
        ],
    )
    .unwrap();
    let c = role_config!(cfg, Central);
    assert_eq!(c.global_send_bytes, 65536);
    assert_eq!(c.mailbox_change_interval().as_millis(), 250);
    assert_eq!(c.idle_timeout().as_secs(), 120);
    assert_eq!(c.reassembly_timeout().as_secs(), 60);
    assert_eq!(c.max_sessions, 9);
    let e = node(&sample("central.toml"), &[("BRAID_MAX_SESSIONS", "lots")]).unwrap_err();
    says(
        &e,
        FILE,
        &["`max_sessions`", "\"lots\"", "BRAID_MAX_SESSIONS"],
    );
}

#[test]
fn override_creates_a_missing_table() {
    let text = "role = \"gateway\"\n[node]\nid = \"g\"\ndirectory = \"d\"\nidentity = \"k\"\n";
    let g = role_config!(
        node(text, &[("BRAID_EXIT__ALLOW_LOOPBACK", "true")]).unwrap(),
        Gateway
    );
    assert!(g.exit.allow_loopback);
    assert!(!g.exit.allow_private);
}

#[test]
fn override_can_supply_a_missing_required_key() {
    let text = sample("upstream.toml").replace("listen = \"127.0.0.2:7100\"", "");
    let cfg = node(&text, &[("BRAID_LISTEN", "127.0.0.2:7100")]).unwrap();
    assert_eq!(cfg.listen(), Some("127.0.0.2:7100".parse().unwrap()));
}

#[test]
fn role_override_selects_the_variant() {
    // Without the upstream's own keys, which a relay does not know.
    let text: String = sample("upstream.toml")
        .lines()
        .filter(|l| !l.contains("_queue_cells") && !l.contains("auth_timeout_ms"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = node(&text, &[("BRAID_ROLE", "relay")]).unwrap();
    assert_eq!(cfg.role(), Role::Relay);
}

#[test]
fn keys_of_other_roles_are_not_looked_up() {
    // BRAID_MIX_DELAY_MS means nothing to an upstream: it is ignored, not an error.
    let cfg = node(&sample("upstream.toml"), &[("BRAID_MIX_DELAY_MS", "5")]).unwrap();
    assert_eq!(cfg.role(), Role::Upstream);
}

#[test]
fn bad_override_names_the_variable() {
    let e = node(&sample("upstream.toml"), &[("BRAID_LISTEN", "nowhere")]).unwrap_err();
    says(&e, FILE, &["`listen`", "\"nowhere\"", "BRAID_LISTEN"]);
    let e = node(
        &sample("gateway.toml"),
        &[("BRAID_EXIT__ALLOW_LOOPBACK", "yes")],
    )
    .unwrap_err();
    says(
        &e,
        FILE,
        &[
            "`exit.allow_loopback`",
            "\"yes\"",
            "BRAID_EXIT__ALLOW_LOOPBACK",
        ],
    );
    let e = node(
        &sample("gateway.toml"),
        &[("BRAID_HOSTS", "{ \"a.test\" = \"nope\" }")],
    )
    .unwrap_err();
    says(&e, FILE, &["hosts.\"a.test\"", "BRAID_HOSTS"]);
    let e = node(&sample("upstream.toml"), &[("BRAID_ROLE", "exit")]).unwrap_err();
    assert!(e.to_string().contains("BRAID_ROLE"), "{e}");
}

#[test]
fn malformed_table_override() {
    let e = node(&sample("gateway.toml"), &[("BRAID_HOSTS", "db=1.2.3.4")]).unwrap_err();
    assert!(matches!(e, ConfigError::EnvOverride { .. }), "{e:?}");
    says(&e, FILE, &["BRAID_HOSTS", "inline table"]);
}

#[test]
fn override_through_a_non_table_is_an_error() {
    let text = sample("gateway.toml")
        .replace("[exit]\nallow_loopback = true\nallow_private = false\n", "")
        .replace(
            "connect_timeout_secs = 10",
            "connect_timeout_secs = 10\nexit = 3",
        );
    let e = node(&text, &[("BRAID_EXIT__ALLOW_LOOPBACK", "true")]).unwrap_err();
    assert!(matches!(e, ConfigError::EnvOverride { .. }), "{e:?}");
    says(
        &e,
        FILE,
        &["BRAID_EXIT__ALLOW_LOOPBACK", "`exit`", "integer"],
    );
}

#[test]
fn directory_and_client_overrides() {
    let dir = parse_directory(
        &sample("directory.toml"),
        Path::new("/srv/braid/directory.toml"),
        &env_of(&[("BRAID_CELL_SIZE", "4096")]),
    )
    .unwrap();
    assert_eq!(dir.cell_size, 4096);
    let e = parse_directory(
        &sample("directory.toml"),
        Path::new("/srv/braid/directory.toml"),
        &env_of(&[("BRAID_CELL_SIZE", "100000")]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`cell_size`"), "{e}");

    let cfg = parse_client_config(
        &sample("client.toml"),
        Path::new("/home/u/.config/braid/client.toml"),
        &env_of(&[
            ("BRAID_SOCKS_LISTEN", "127.0.0.1:9050"),
            ("BRAID_ADMIN", "127.0.0.1:9051"),
            ("BRAID_SCHEDULER", "rtt"),
            ("BRAID_WINDOW_CELLS", "64"),
            ("BRAID_GATEWAY", "gateway-2"),
            ("BRAID_DIRECTORY", "/etc/braid/directory.toml"),
            ("BRAID_LOG", "json"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.socks_listen.port(), 9050);
    assert_eq!(cfg.admin.port(), 9051);
    assert_eq!(cfg.scheduler, PathScheduler::LowestDelay);
    assert_eq!(cfg.window_cells, 64);
    assert_eq!(cfg.gateway.as_deref(), Some("gateway-2"));
    assert_eq!(cfg.directory, Path::new("/etc/braid/directory.toml"));
    assert_eq!(cfg.log, LogFormat::Json);
}

#[test]
fn process_env_is_the_default_source() {
    // Reads a variable nobody sets; no mutation of the process environment.
    assert_eq!(process_env("BRAID_TEST_SURELY_UNSET_VARIABLE_1234"), None);
    assert_eq!(no_env("PATH"), None);
}
