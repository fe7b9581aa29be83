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
