//! Every sample under `config/samples/` parses, validates, and agrees with the others.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use braid_config::*;
use braid_proto::session::PathScheduler;
use common::*;

const NODE_SAMPLES: &[(&str, Role)] = &[
    ("upstream.toml", Role::Upstream),
    ("central.toml", Role::Central),
    ("downstream.toml", Role::Downstream),
    ("relay.toml", Role::Relay),
    ("gateway.toml", Role::Gateway),
];

fn sample_directory() -> Directory {
    load_directory_with_env(sample_path("directory.toml"), &no_env).unwrap()
}

#[test]
fn directory_sample_parses_and_has_the_documented_shape() {
    let dir = sample_directory();
    assert_eq!(dir.cell_size, 8192);
    assert_eq!(dir.nodes_with_role(Role::Upstream).count(), 2);
    assert_eq!(dir.nodes_with_role(Role::Central).count(), 1);
    assert_eq!(dir.nodes_with_role(Role::Downstream).count(), 2);
    assert_eq!(dir.nodes_with_role(Role::Relay).count(), 1);
    assert_eq!(dir.nodes_with_role(Role::Gateway).count(), 1);
    let central = dir.centrals().next().unwrap();
    assert_eq!(dir.centrals().count(), 1);
    assert_eq!(central.id, "central-1");
    assert_eq!(central.addr, Some("127.0.0.4:7400".parse().unwrap()));
    assert_eq!(dir.by_id("relay-1").unwrap().role, Role::Relay);
    assert!(dir.by_id("nope").is_none());
    let tls: Vec<[u8; 32]> = dir.all_tls_keys().copied().collect();
    assert_eq!(tls.len(), 7);
    for key in &tls {
        assert!(dir.by_tls_key(key).is_some());
    }
    let g = dir.by_id("gateway-1").unwrap();
    assert_eq!(dir.by_noise_key(&g.noise_key), Some(g));
    // Every listening address is on loopback, one host.
    for n in &dir.nodes {
        if let Some(a) = n.addr {
            assert!(a.ip().is_loopback(), "{}: {a}", n.id);
        }
    }
}

#[test]
fn directory_sample_round_trips_through_to_toml_string() {
    let dir = sample_directory();
    let text = dir.to_toml_string();
    assert_eq!(Directory::from_toml_str(&text).unwrap(), dir);
}

#[test]
fn every_node_sample_parses_and_matches_the_directory() {
    let dir = sample_directory();
    let mut admins = BTreeSet::new();
    for (name, role) in NODE_SAMPLES {
        let path = sample_path(name);
        let cfg = parse_node_config(&sample(name), &path, &no_env)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.role(), *role, "{name}");
        let common = cfg.common();
        // Relative paths resolve against the samples folder.
        assert_eq!(common.directory, sample_path("directory.toml"), "{name}");
        assert_eq!(
            common.identity,
            sample_path(&format!("keys/{}", common.id)),
            "{name}"
        );
        // The directory path the sample names is the sample directory.
        assert_eq!(
            load_directory_with_env(&common.directory, &no_env).unwrap(),
            dir
        );
        let entry = cfg
            .directory_entry(&dir)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(entry.role, *role);
        // A listening node listens where the directory says it does.
        assert_eq!(cfg.listen(), entry.addr, "{name}");
        let admin = common.admin.unwrap();
        assert!(
            admin.ip().is_loopback(),
            "{name}: admin {admin} not on loopback"
        );
        assert!(admins.insert(admin), "{name}: admin {admin} reused");
    }
}

#[test]
fn node_samples_carry_the_documented_values() {
    let parse = |name: &str| parse_node_config(&sample(name), &sample_path(name), &no_env).unwrap();
    let c = role_config!(parse("central.toml"), Central);
    assert_eq!(c.reorder_window_cells, 1024);
    assert_eq!(c.session_reorder_bytes, 16 << 20);
    assert_eq!(c.global_reorder_bytes, 256 << 20);
    assert_eq!(c.reassembly_timeout().as_secs(), 60);
    assert_eq!(c.idle_timeout_secs, 60);
    assert_eq!(c.idle_timeout().as_secs(), 60);
    assert_eq!(c.max_sessions, 100_000);
    assert_eq!(c.global_send_bytes, 256 << 20);
    assert_eq!(c.mailbox_change_interval().as_millis(), 1000);
    let r = role_config!(parse("relay.toml"), Relay);
    assert_eq!(r.mix_delay_ms, 25.0);
    assert_eq!(r.mix_delay().as_millis(), 25);
    assert_eq!(r.mailbox_cells, 4096);
    assert_eq!(r.pool_cells, 16_384);
    assert_eq!(r.mailbox_budget(), 256 << 20);
    assert_eq!(r.max_mailboxes, 65_536);
    assert_eq!(r.max_mailboxes_per_connection, 8);
    assert_eq!(r.registration_timeout().as_millis(), 5000);
    let g = role_config!(parse("gateway.toml"), Gateway);
    assert!(g.exit.allow_loopback);
    assert!(!g.exit.allow_private);
    assert_eq!(g.hosts.len(), 2);
    assert_eq!(
        g.hosts["demo.braid.test"],
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(g.connect_timeout().as_secs(), 10);
    assert_eq!(g.reconnect_min().as_millis(), 200);
    assert_eq!(g.reconnect_max().as_millis(), 30_000);
    assert_eq!(parse("downstream.toml").common().log, LogFormat::Json);
}

/// The central's idle timeout and session cap are read from the file, independently of
/// the reassembly timeout.
#[test]
fn central_session_limits_are_read_from_the_file() {
    let text = sample("central.toml")
        .replace("idle_timeout_secs = 60", "idle_timeout_secs = 300")
        .replace("max_sessions = 100000", "max_sessions = 5000");
    let cfg = parse_node_config(&text, &sample_path("central.toml"), &no_env).unwrap();
    let c = role_config!(cfg, Central);
    assert_eq!(c.idle_timeout(), std::time::Duration::from_secs(300));
    assert_eq!(c.reassembly_timeout().as_secs(), 60);
    assert_eq!(c.max_sessions, 5000);
}

#[test]
fn client_sample_parses_and_matches_the_directory() {
    let path = sample_path("client.toml");
    let cfg = parse_client_config(&sample("client.toml"), &path, &no_env).unwrap();
    assert_eq!(cfg.directory, sample_path("directory.toml"));
    assert_eq!(
        cfg.socks_listen,
        "127.0.0.1:1080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.admin, "127.0.0.1:1081".parse::<SocketAddr>().unwrap());
    assert_eq!(cfg.gateway.as_deref(), Some("gateway-1"));
    assert_eq!(cfg.scheduler, PathScheduler::RoundRobin);
    assert_eq!(cfg.window_cells, 1024);
    // The client sample's directory exists, so the full load works too.
    assert_eq!(load_client_config_with_env(&path, &no_env).unwrap(), cfg);
    let dir = sample_directory();
    let gws = cfg.eligible_gateways(&dir).unwrap();
    assert_eq!(gws.len(), 1);
    assert_eq!(gws[0].id, "gateway-1");
}

/// The full `load_node_config` path (file existence checks included) on every sample,
/// with the identity folder and directory pointed at a temp dir by env overrides.
#[test]
fn every_node_sample_loads_with_identity_in_a_tempdir() {
    for (name, role) in NODE_SAMPLES {
        let cfg0 = parse_node_config(&sample(name), &sample_path(name), &no_env).unwrap();
        let id = cfg0.common().id.clone();
        let tmp = node_tree(&id, "unused.toml", "");
        let identity = tmp.path().join("keys").join(&id);
        let directory = tmp.path().join("directory.toml");
        let env = env_of(&[
            ("BRAID_NODE__IDENTITY", identity.to_str().unwrap()),
            ("BRAID_NODE__DIRECTORY", directory.to_str().unwrap()),
        ]);
        let cfg = load_node_config_with_env(sample_path(name), &env)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(cfg.role(), *role);
        assert_eq!(cfg.common().identity, identity);
        assert_eq!(cfg.common().noise_key_path(), identity.join("noise.key"));
        assert_eq!(cfg.common().tls_key_path(), identity.join("tls.key"));
        assert_eq!(cfg.common().tls_cert_path(), identity.join("tls.crt"));
        let dir = load_directory_with_env(&cfg.common().directory, &no_env).unwrap();
        cfg.directory_entry(&dir).unwrap();
    }
}

/// Relative paths resolve against the config file's folder, not the working directory.
#[test]
fn load_resolves_relative_paths_against_the_config_folder() {
    let tmp = node_tree("upstream-1", "upstream.toml", &sample("upstream.toml"));
    let cfg = load_node_config_with_env(tmp.path().join("upstream.toml"), &no_env).unwrap();
    assert_eq!(cfg.common().directory, tmp.path().join("directory.toml"));
    assert_eq!(cfg.common().identity, tmp.path().join("keys/upstream-1"));
}

/// Effective configs serialize and parse back (paths are absolute after loading, so the
/// round trip is exact).
#[test]
fn node_and_client_configs_round_trip_through_toml() {
    for (name, _) in NODE_SAMPLES {
        let cfg = parse_node_config(&sample(name), &sample_path(name), &no_env).unwrap();
        let text = cfg.to_toml_string().unwrap();
        let back = parse_node_config(&text, &sample_path("elsewhere.toml"), &no_env)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(back, cfg, "{name}");
    }
    let cfg =
        parse_client_config(&sample("client.toml"), &sample_path("client.toml"), &no_env).unwrap();
    let text = cfg.to_toml_string().unwrap();
    assert_eq!(
        parse_client_config(&text, &sample_path("x.toml"), &no_env).unwrap(),
        cfg
    );
}

#[test]
fn defaults_apply_when_optional_keys_are_absent() {
    let file = std::path::Path::new("/etc/braid/node.toml");
    let text = "role = \"central\"\nlisten = \"127.0.0.4:7400\"\n[node]\nid = \"central-1\"\ndirectory = \"d.toml\"\nidentity = \"keys\"\n";
    let c = role_config!(parse_node_config(text, file, &no_env).unwrap(), Central);
    assert_eq!(c.reorder_window_cells, 1024);
    assert_eq!(c.session_reorder_bytes, 16 * 1024 * 1024);
    assert_eq!(c.global_reorder_bytes, 256 * 1024 * 1024);
    assert_eq!(c.reassembly_timeout_secs, 60);
    assert_eq!(c.idle_timeout_secs, 60);
    assert_eq!(c.max_sessions, 100_000);
    assert_eq!(c.node.admin, None);
    assert_eq!(c.node.log, LogFormat::Text);
    assert_eq!(c.node.directory, std::path::Path::new("/etc/braid/d.toml"));

    let text = "role = \"relay\"\nlisten = \"127.0.0.6:7600\"\n[node]\nid = \"r\"\ndirectory = \"d\"\nidentity = \"k\"\n";
    let r = role_config!(parse_node_config(text, file, &no_env).unwrap(), Relay);
    assert_eq!(r.mix_delay_ms, 0.0);
    assert_eq!(r.mailbox_cells, 4096);
    assert_eq!(r.pool_cells, 16_384);
    assert_eq!(r.mailbox_budget_mib, 256);
    assert_eq!(r.max_mailboxes, 65_536);
    assert_eq!(r.max_mailboxes_per_connection, 8);
    assert_eq!(r.registration_timeout_ms, 5000);

    let text = "role = \"gateway\"\n[node]\nid = \"g\"\ndirectory = \"d\"\nidentity = \"k\"\n";
    let g = role_config!(parse_node_config(text, file, &no_env).unwrap(), Gateway);
    assert_eq!(g.connect_timeout_secs, 10);
    assert_eq!(g.exit, ExitConfig::default());
    assert!(!g.exit.allow_loopback && !g.exit.allow_private);
    assert!(g.hosts.is_empty());
    assert_eq!((g.reconnect_min_ms, g.reconnect_max_ms), (200, 30_000));

    let cfg = parse_client_config("directory = \"d.toml\"\n", file, &no_env).unwrap();
    assert_eq!(cfg, ClientConfig::with_directory("/etc/braid/d.toml"));
    assert_eq!(
        cfg.socks_listen,
        "127.0.0.1:1080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cfg.gateway, None);
    assert_eq!(cfg.scheduler, PathScheduler::RoundRobin);
    assert_eq!(cfg.window_cells, 1024);
    assert_eq!(cfg.log, LogFormat::Text);
    assert_eq!(cfg.eligible_gateways(&sample_directory()).unwrap().len(), 1);
}

#[test]
fn a_signed_directory_verifies_and_any_edit_expiry_or_rollback_is_refused() {
    use braid_config::DirectoryTrust;
    use braid_proto::credential::SigningKey;
    let op = SigningKey::from_seed(&[3; 32]);
    let mut dir = sample_directory();
    dir.version = 7;
    dir.expires = 2_000;
    let pin = op.public();
    assert_eq!(dir.verify(&pin, 1_000, 0), Err(DirectoryTrust::Unsigned));
    dir.sign(&op);
    assert_eq!(dir.verify(&pin, 1_000, 7), Ok(()));
    // Through TOML and back: the signature covers the parsed directory, not the layout.
    let text = toml::to_string(&dir).unwrap();
    let back = Directory::from_toml_str(&text).unwrap();
    assert_eq!(back.verify(&pin, 1_000, 0), Ok(()));
    assert_eq!(
        dir.verify(&pin, 2_000, 0),
        Err(DirectoryTrust::Expired {
            expires: 2_000,
            now: 2_000
        })
    );
    assert_eq!(
        dir.verify(&pin, 1_000, 8),
        Err(DirectoryTrust::Older { got: 7, held: 8 })
    );
    // An inserted node, a moved address, a changed key or version: refused.
    let mut edits: Vec<Directory> = Vec::new();
    let mut d = dir.clone();
    d.nodes[0].addr = Some("127.0.0.99:7000".parse().unwrap());
    edits.push(d);
    let mut d = dir.clone();
    d.nodes[1].tls_key[0] ^= 1;
    edits.push(d);
    let mut d = dir.clone();
    d.nodes[0].addr = None;
    d.nodes[0].host = Some("evil.example:7000".into());
    edits.push(d);
    let mut d = dir.clone();
    let mut extra = d.nodes[0].clone();
    extra.id = "upstream-9".into();
    d.nodes.push(extra);
    edits.push(d);
    let mut d = dir.clone();
    d.version = 8;
    edits.push(d);
    for d in edits {
        assert_eq!(d.verify(&pin, 1_000, 0), Err(DirectoryTrust::BadSignature));
    }
    // Signed by another key, or naming another operator.
    let other = SigningKey::from_seed(&[4; 32]);
    let mut d = dir.clone();
    d.sign(&other);
    assert!(matches!(
        d.verify(&pin, 1_000, 0),
        Err(DirectoryTrust::OtherOperator { .. })
    ));
    d.operator_key = Some(pin);
    assert_eq!(d.verify(&pin, 1_000, 0), Err(DirectoryTrust::BadSignature));
    let mut d = dir.clone();
    d.signature = Some("zz".into());
    assert_eq!(
        d.verify(&pin, 1_000, 0),
        Err(DirectoryTrust::MalformedSignature)
    );
}

#[test]
fn a_node_may_be_named_by_host_instead_of_addr() {
    let mut dir = sample_directory();
    let up = dir.nodes.iter().position(|n| n.id == "upstream-1").unwrap();
    dir.nodes[up].addr = None;
    dir.nodes[up].host = Some("upstream-1.swarm:7100".into());
    dir.validate().unwrap();
    let back = Directory::from_toml_str(&dir.to_toml_string()).unwrap();
    assert_eq!(
        back.nodes[up].host.as_deref(),
        Some("upstream-1.swarm:7100")
    );
    assert!(back.nodes[up].dialable());
    // Both, neither (for a listener), or a malformed host: refused, naming the field.
    for (addr, host, want) in [
        (
            Some("127.0.0.9:7100"),
            Some("upstream-1:7100"),
            "both addr and host",
        ),
        (None, None, "needs an addr (or a host)"),
        (None, Some("upstream-1"), "no port"),
        (None, Some("up stream:7100"), "not a DNS name"),
        (None, Some("upstream-1:0"), "no valid port"),
    ] {
        let mut d = dir.clone();
        d.nodes[up].addr = addr.map(|a| a.parse().unwrap());
        d.nodes[up].host = host.map(str::to_string);
        let err = d.validate().unwrap_err().to_string();
        assert!(err.contains(want), "{addr:?} {host:?}: {err}");
    }
    // A host that resolves gives the address to dial.
    dir.nodes[up].host = Some("localhost:7100".into());
    assert_eq!(
        dir.nodes[up].resolve_blocking().map(|a| a.port()),
        Some(7100)
    );
}
