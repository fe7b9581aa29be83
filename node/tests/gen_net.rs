//! The compose simulation's generated exit policy (`deploy/gen-net.sh --compose`): the one
//! rule that opens the docker bridge's host side opens only the test origin's port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use braid_config::NodeConfig;
use braid_node::exit::Refusal;

#[test]
fn the_compose_allow_rule_opens_only_the_origin_port() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let net = out.path().join("net");
    let run = Command::new("bash")
        .arg(root.join("deploy/gen-net.sh"))
        .args(["--compose", "172.30.0", "--origin-port", "18080", "--out"])
        .arg(&net)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_braid-node"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "gen-net.sh: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let cfg = braid_config::load_node_config(net.join("gateway-1/node.toml")).unwrap();
    let NodeConfig::Gateway(g) = cfg else {
        panic!("gateway-1 is not a gateway")
    };
    let policy = braid_node::roles::gateway_params(&g, "0.0.0.0:0".parse().unwrap()).policy;
    let at = |s: &str| policy.check_addr(None, s.parse::<SocketAddr>().unwrap());
    assert_eq!(at("172.30.0.1:18080"), Ok(()), "the origin");
    for other in ["172.30.0.1:18081", "172.30.0.1:22", "172.30.0.1:80"] {
        assert!(
            matches!(at(other), Err(Refusal::Class { .. })),
            "{other}: {:?}",
            at(other)
        );
    }
    assert!(at("172.30.0.9:18080").is_err(), "another bridge address");
    assert!(at("172.30.0.1:25").is_err(), "a mail port");
}

/// `gen-net.sh --operator`: a closed, signed network. The directory is signed, every node and
/// the client pin the operator key and take it, the client has its credential (0600), and
/// an edited copy is refused.
#[test]
fn an_operator_network_is_signed_pinned_and_closed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let net = out.path().join("net");
    let op = out.path().join("op");
    let run = Command::new("bash")
        .arg(root.join("deploy/gen-net.sh"))
        .args(["--compose", "172.30.0", "--out"])
        .arg(&net)
        .arg("--operator")
        .arg(&op)
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_braid-node"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "gen-net.sh: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let now = braid_driver::unix_now();
    let mut pins = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&net).unwrap() {
        let node_toml = entry.unwrap().path().join("node.toml");
        if !node_toml.exists() {
            continue;
        }
        let cfg = braid_config::load_node_config(&node_toml).unwrap();
        let c = cfg.common();
        let pin = c.directory_key.expect("every node pins the operator key");
        pins.insert(pin);
        let dir = braid_config::load_trusted_directory(&c.directory, Some(&pin), None, now)
            .unwrap_or_else(|e| panic!("{}: {e}", node_toml.display()));
        assert_eq!(dir.operator_key, Some(pin));
        assert!(dir.version >= now - 600, "the version is the signing time");
    }
    assert_eq!(pins.len(), 1, "one operator key");
    let pin = *pins.iter().next().unwrap();
    let client = braid_config::load_client_config(net.join("client/client.toml")).unwrap();
    assert_eq!(client.directory_key, Some(pin));
    let cred = braid_config::load_credential(client.credential.as_ref().unwrap()).unwrap();
    assert_eq!(cred.credential.name, "client");
    assert!(!cred.limits_pass.is_empty());
    // An edited copy (an upstream's name changed) is refused.
    let text = std::fs::read_to_string(&client.directory).unwrap();
    let edited = text.replacen("upstream-1:7100", "evil-1:7100", 1);
    assert_ne!(edited, text);
    let copy = out.path().join("edited.toml");
    std::fs::write(&copy, edited).unwrap();
    let e = braid_config::load_trusted_directory(&copy, Some(&pin), None, now).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}
