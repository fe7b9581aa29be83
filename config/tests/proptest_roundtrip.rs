//! Generated directories round-trip through `to_toml_string` and parsing.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use braid_config::*;
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ];
    (ip, 1u16..).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

/// A valid directory: unique ids, one central, 1..=4 of each other role, unique
/// non-zero keys, unique concrete addresses for listeners, shuffled order.
fn valid_directory() -> impl Strategy<Value = Directory> {
    (1usize..=4, 1usize..=4, 1usize..=3, 1usize..=3)
        .prop_flat_map(|(up, down, relay, gw)| {
            let n = up + 1 + down + relay + gw;
            let mut roles = vec![Role::Upstream; up];
            roles.push(Role::Central);
            roles.extend(std::iter::repeat_n(Role::Downstream, down));
            roles.extend(std::iter::repeat_n(Role::Relay, relay));
            roles.extend(std::iter::repeat_n(Role::Gateway, gw));
            (
                MIN_CELL_SIZE..=MAX_CELL_SIZE,
                Just(roles),
                proptest::collection::btree_set("[a-z0-9-]{1,32}", n),
                proptest::collection::btree_set(any::<[u8; 32]>(), 2 * n),
                proptest::collection::btree_set(
                    addr().prop_filter("concrete", |a| !a.ip().is_unspecified()),
                    n,
                ),
                proptest::collection::vec(any::<bool>(), n),
            )
        })
        .prop_filter("non-zero keys", |(_, _, _, keys, _, _)| {
            keys.iter().all(|k| k.iter().any(|b| *b != 0))
        })
        .prop_flat_map(|(cell_size, roles, ids, keys, addrs, has_addr)| {
            let keys: Vec<[u8; 32]> = keys.into_iter().collect();
            let (noise, tls) = keys.split_at(roles.len());
            let nodes: Vec<NodeEntry> = roles
                .iter()
                .zip(ids)
                .zip(addrs)
                .enumerate()
                .map(|(i, ((role, id), a))| {
                    let addr = (role.listens() || has_addr[i]).then_some(a);
                    NodeEntry::new(id, *role, addr, noise[i], tls[i])
                })
                .collect();
            (Just(cell_size), Just(nodes).prop_shuffle())
        })
        .prop_map(|(cell_size, nodes)| Directory::new(cell_size, nodes))
}

/// Any directory, valid or not, with arbitrary id strings (exercises quoting).
fn any_directory() -> impl Strategy<Value = Directory> {
    let role = proptest::sample::select(Role::ALL.to_vec());
    let node = (
        any::<String>(),
        role,
        proptest::option::of(addr()),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(id, role, addr, n, t)| NodeEntry::new(id, role, addr, n, t));
    (any::<u32>(), proptest::collection::vec(node, 0..6))
        .prop_map(|(cell_size, nodes)| Directory::new(cell_size, nodes))
}

proptest! {
    #[test]
    fn valid_directory_round_trips(dir in valid_directory()) {
        dir.validate().unwrap();
        let text = dir.to_toml_string();
        let back = Directory::from_toml_str(&text).unwrap();
        prop_assert_eq!(&back, &dir);
        // And through the file loader.
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &text).unwrap();
        prop_assert_eq!(load_directory_with_env(tmp.path(), &no_env).unwrap(), dir);
    }

    #[test]
    fn any_directory_text_parses_back(dir in any_directory()) {
        let text = dir.to_toml_string();
        let back: Directory = toml::from_str(&text).unwrap();
        prop_assert_eq!(back, dir);
    }
}
