//! Property tests for the sans-IO SOCKS5 handshake.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use braid_proto::socks5::testing::{
    drive, no_auth, Outcome, AUTH, GREET_NO_AUTH, GREET_ONLY_USER_PASS, GREET_USER_PASS, POLICIES,
};
use braid_proto::socks5::{AuthPolicy, Command, Progress, Request, Socks5Error, Socks5Handshake};
use braid_proto::TargetAddr;
use proptest::prelude::*;

/// Split `bytes` at the given cut points (taken modulo its length, in order).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for p in points {
        out.push(&bytes[at..p]);
        at = p;
    }
    out.push(&bytes[at..]);
    out
}

/// Bytes that are mostly junk but often start like a real handshake, so that every stage of
/// the parser sees hostile input.
fn hostile() -> impl Strategy<Value = Vec<u8>> {
    let junk = proptest::collection::vec(any::<u8>(), 0..1200);
    let prefix = prop_oneof![
        Just(vec![]),
        Just(GREET_NO_AUTH.to_vec()),
        Just(GREET_USER_PASS.to_vec()),
        Just([GREET_ONLY_USER_PASS, AUTH].concat()),
        (0u8..=4, any::<u8>(), 0u8..=6)
            .prop_map(|(cmd, rsv, atyp)| vec![5, 1, 0, 5, cmd, rsv, atyp]),
    ];
    (prefix, junk).prop_map(|(mut p, j)| {
        p.extend(j);
        p
    })
}

fn target() -> impl Strategy<Value = TargetAddr> {
    let port = any::<u16>();
    prop_oneof![
        (any::<u32>(), port)
            .prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p))),
        (any::<u128>(), port)
            .prop_map(|(ip, p)| TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p))),
        // Lengths biased to the edges, 1 and 255, which uniform sampling would rarely hit.
        (prop_oneof![Just(1usize), Just(255), 1usize..=255], port)
            .prop_flat_map(|(len, p)| (proptest::collection::vec(0x21u8..0x7f, len), Just(p)))
            .prop_map(|(d, p)| TargetAddr::Domain(String::from_utf8(d).unwrap(), p)),
        ("\\PC{1,80}", port)
            .prop_filter("at most 255 bytes", |(d, _)| d.len() <= 255)
            .prop_map(|(d, p)| TargetAddr::Domain(d, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_nor_overconsume(bytes in hostile()) {
        for policy in POLICIES {
            // Raw `feed` on the same input: consumption never exceeds it.
            let mut hs = policy();
            let mut rest: &[u8] = &bytes;
            for _ in 0..4 {
                match hs.feed(rest) {
                    Ok(Progress::Reply { consumed, .. }) => {
                        prop_assert!(consumed <= rest.len());
                        rest = &rest[consumed..];
                    }
                    Ok(Progress::Done { consumed, early_data, .. }) => {
                        prop_assert_eq!(consumed + early_data, rest.len());
                        break;
                    }
                    Ok(Progress::NeedMore) | Err(_) => break,
                }
            }
            drive(policy(), &[&bytes]);
        }
    }

    #[test]
    fn splitting_never_changes_the_outcome(
        bytes in hostile(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        for policy in POLICIES {
            let whole = drive(policy(), &[&bytes]);
            prop_assert_eq!(drive(policy(), &split(&bytes, &cuts)), whole);
        }
    }

    #[test]
    fn request_round_trips(
        target in target(),
        command in prop_oneof![
            Just(Command::CONNECT),
            Just(Command::UDP_ASSOCIATE),
            any::<u8>().prop_map(Command),
        ],
        early in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let request = Request { command, target };
        let hs = no_auth().allow_command(command);
        let wire = [GREET_NO_AUTH, &request.encode().unwrap(), &early].concat();
        let outcome = drive(hs, &split(&wire, &cuts));
        if command == Command::CONNECT && request.target.port() == 0 {
            let written = vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0];
            prop_assert_eq!(outcome, (written, Outcome::Failed(Socks5Error::ZeroPort)));
        } else {
            prop_assert_eq!(outcome, (vec![5, 0], Outcome::Done(request, early)));
        }
    }

    #[test]
    fn credentials_round_trip(
        user in proptest::collection::vec(any::<u8>(), 1..=255),
        pass in proptest::collection::vec(any::<u8>(), 1..=255),
        wrong in any::<bool>(),
        target in target().prop_filter("CONNECT needs a port", |t| t.port() != 0),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        let mut sent_pass = pass.clone();
        if wrong {
            sent_pass[0] ^= 1;
        }
        let hs = Socks5Handshake::new(AuthPolicy::single(user.clone(), pass));
        let request = Request { command: Command::CONNECT, target };
        let wire = [
            GREET_ONLY_USER_PASS,
            &[1, u8::try_from(user.len()).unwrap()],
            &user,
            &[u8::try_from(sent_pass.len()).unwrap()],
            &sent_pass,
            &request.encode().unwrap(),
        ]
        .concat();
        let outcome = drive(hs, &split(&wire, &cuts));
        if wrong {
            let failed = Outcome::Failed(Socks5Error::BadCredentials);
            prop_assert_eq!(outcome, (vec![5, 2, 1, 1], failed));
        } else {
            prop_assert_eq!(outcome, (vec![5, 2, 1, 0], Outcome::Done(request, vec![])));
        }
    }
}
