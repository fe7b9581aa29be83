//! Tests of the SOCKS5 handshake, replies and errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use super::handshake::ct_eq;
use super::reply::failure_reply;
use super::testing::*;
use super::*;

fn drive_all(policy: fn() -> Socks5Handshake, bytes: &[u8]) -> (Vec<u8>, Outcome) {
    drive(policy(), &[bytes])
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn connect(target: &str) -> Request {
    Request {
        command: Command::CONNECT,
        target: parse_target(target),
    }
}

fn parse_target(s: &str) -> TargetAddr {
    match s.parse::<SocketAddr>() {
        Ok(a) => TargetAddr::Ip(a),
        Err(_) => {
            let (host, port) = s.rsplit_once(':').unwrap();
            TargetAddr::Domain(host.to_owned(), port.parse().unwrap())
        }
    }
}

fn fail(code: ReplyCode) -> Vec<u8> {
    reply(code, None)
}

#[test]
fn no_auth_connect_ipv4_ipv6_domain() {
    for (req, want) in [
        (REQ_V4, "10.0.0.1:443"),
        (REQ_V6, "[2001:db8::1]:80"),
        (REQ_DOMAIN, "example.com:80"),
    ] {
        let (written, outcome) = drive_all(no_auth, &cat(&[GREET_NO_AUTH, req]));
        assert_eq!(written, [5, 0]);
        assert_eq!(outcome, Outcome::Done(connect(want), vec![]));
    }
}

#[test]
fn step_by_step_progress() {
    let mut hs = user_pass();
    assert_eq!(hs.feed(&[]), Ok(Progress::NeedMore));
    assert_eq!(
        hs.feed(GREET_USER_PASS),
        Ok(Progress::Reply {
            consumed: 4,
            bytes: &[5, 2]
        })
    );
    assert_eq!(hs.feed(&AUTH[..5]), Ok(Progress::NeedMore));
    assert_eq!(
        hs.feed(AUTH),
        Ok(Progress::Reply {
            consumed: AUTH.len(),
            bytes: &[1, 0]
        })
    );
    assert_eq!(
        hs.feed(&cat(&[REQ_DOMAIN, b"GET /"])),
        Ok(Progress::Done {
            consumed: REQ_DOMAIN.len(),
            request: connect("example.com:80"),
            early_data: 5,
        })
    );
    assert!(hs.is_finished());
    assert_eq!(hs.feed(REQ_DOMAIN), Err(Socks5Error::Finished));
    assert_eq!(Socks5Error::Finished.reply(), None);
}

#[test]
fn user_pass_happy_path() {
    let (written, outcome) = drive_all(user_pass, &cat(&[GREET_USER_PASS, AUTH, REQ_V4]));
    assert_eq!(written, [5, 2, 1, 0]);
    assert_eq!(outcome, Outcome::Done(connect("10.0.0.1:443"), vec![]));
    // Offering only method 02 is fine too.
    let (written, outcome) = drive_all(user_pass, &cat(&[GREET_ONLY_USER_PASS, AUTH, REQ_V4]));
    assert_eq!(written, [5, 2, 1, 0]);
    assert!(matches!(outcome, Outcome::Done(..)));
}

/// `AnyUserPass`: method 02 when offered (any credentials, an empty password too, and the
/// username kept), else 00; anything else offered alone is refused as usual.
#[test]
fn any_user_pass_keeps_the_username_and_falls_back_to_no_auth() {
    for greet in [GREET_USER_PASS, GREET_ONLY_USER_PASS, &[5, 3, 0x80, 0, 2]] {
        let mut hs = any_user_pass();
        let mut written = Vec::new();
        let mut buf = cat(&[greet, b"\x01\x09gateway-2\x00", REQ_V4]);
        loop {
            match hs.feed(&buf).unwrap() {
                Progress::Reply { consumed, bytes } => {
                    written.extend_from_slice(bytes);
                    buf.drain(..consumed);
                }
                Progress::Done { request, .. } => {
                    assert_eq!(request, connect("10.0.0.1:443"));
                    break;
                }
                Progress::NeedMore => panic!("all was there"),
            }
        }
        assert_eq!(written, [5, 2, 1, 0], "{greet:?}");
        assert_eq!(hs.username(), Some(&b"gateway-2"[..]));
    }
    // Any password: the same handshake as `user_pass` but with other credentials.
    let (written, outcome) = drive_all(
        any_user_pass,
        &cat(&[GREET_USER_PASS, b"\x01\x01x\x01y", REQ_V4]),
    );
    assert_eq!(
        (written, outcome),
        (
            vec![5, 2, 1, 0],
            Outcome::Done(connect("10.0.0.1:443"), vec![])
        )
    );
    // No credentials offered: method 00 and no username.
    let mut hs = any_user_pass();
    assert_eq!(
        hs.feed(GREET_NO_AUTH),
        Ok(Progress::Reply {
            consumed: 3,
            bytes: &[5, 0]
        })
    );
    assert!(matches!(hs.feed(REQ_DOMAIN), Ok(Progress::Done { .. })));
    assert_eq!(hs.username(), None);
    // Still refused: nothing acceptable offered, an empty username, a bad sub-version.
    let (written, outcome) = drive_all(any_user_pass, &[5, 1, 1]);
    assert_eq!(
        (written, outcome),
        (
            vec![5, 0xFF],
            Outcome::Failed(Socks5Error::NoAcceptableMethod)
        )
    );
    let (written, outcome) = drive_all(
        any_user_pass,
        &cat(&[GREET_ONLY_USER_PASS, &[1, 0, 1, b'p']]),
    );
    assert_eq!(
        (written, outcome),
        (
            vec![5, 2, 1, 1],
            Outcome::Failed(Socks5Error::EmptyUsername)
        )
    );
    let (written, outcome) = drive_all(
        any_user_pass,
        &cat(&[GREET_ONLY_USER_PASS, &[2, 1, b'u', 1, b'p']]),
    );
    assert_eq!(
        (written, outcome),
        (
            vec![5, 2, 1, 1],
            Outcome::Failed(Socks5Error::BadAuthVersion(2))
        )
    );
    // The checked policy keeps the username too; `NoAuth` never has one.
    let mut hs = user_pass();
    hs.feed(GREET_USER_PASS).unwrap();
    hs.feed(AUTH).unwrap();
    assert_eq!(hs.username(), Some(&b"user"[..]));
    assert_eq!(format!("{:?}", AuthPolicy::AnyUserPass), "AnyUserPass");
}

#[test]
fn no_auth_chosen_among_several_methods() {
    let (written, outcome) = drive_all(no_auth, &cat(&[&[5, 3, 0x80, 2, 0], REQ_V4]));
    assert_eq!(written, [5, 0]);
    assert!(matches!(outcome, Outcome::Done(..)));
}

#[test]
fn early_data_is_reported() {
    let early = b"\x16\x03\x01 client hello";
    let all = cat(&[GREET_NO_AUTH, REQ_DOMAIN, early]);
    let (_, outcome) = drive_all(no_auth, &all);
    assert_eq!(
        outcome,
        Outcome::Done(connect("example.com:80"), early.to_vec())
    );
    let mut hs = no_auth();
    hs.feed(GREET_NO_AUTH).unwrap();
    match hs.feed(&all[GREET_NO_AUTH.len()..]).unwrap() {
        Progress::Done {
            consumed,
            early_data,
            ..
        } => {
            assert_eq!(consumed, REQ_DOMAIN.len());
            assert_eq!(early_data, early.len());
        }
        other => panic!("{other:?}"),
    }
}

/// (policy, client bytes, everything written back, request)
type Valid = (fn() -> Socks5Handshake, Vec<u8>, Vec<u8>, Request);

fn valid_handshakes() -> Vec<Valid> {
    let long_domain = "a".repeat(255);
    let mut req_long = vec![5, 1, 0, 3, 255];
    req_long.extend_from_slice(long_domain.as_bytes());
    req_long.extend_from_slice(&[0xFF, 0xFF]);
    let mut auth_long = vec![1, 255];
    auth_long.extend_from_slice(&[b'u'; 255]);
    auth_long.push(255);
    auth_long.extend_from_slice(&[b'p'; 255]);
    fn long_creds() -> Socks5Handshake {
        Socks5Handshake::new(AuthPolicy::single(vec![b'u'; 255], vec![b'p'; 255]))
    }
    vec![
        (
            no_auth,
            cat(&[GREET_NO_AUTH, REQ_V4]),
            vec![5, 0],
            connect("10.0.0.1:443"),
        ),
        (
            no_auth,
            cat(&[GREET_NO_AUTH, REQ_V6]),
            vec![5, 0],
            connect("[2001:db8::1]:80"),
        ),
        (
            no_auth,
            cat(&[GREET_NO_AUTH, REQ_DOMAIN]),
            vec![5, 0],
            connect("example.com:80"),
        ),
        (
            user_pass,
            cat(&[GREET_USER_PASS, AUTH, REQ_DOMAIN]),
            vec![5, 2, 1, 0],
            connect("example.com:80"),
        ),
        (
            long_creds,
            cat(&[GREET_USER_PASS, &auth_long, &req_long]),
            vec![5, 2, 1, 0],
            Request {
                command: Command::CONNECT,
                target: TargetAddr::Domain(long_domain, 65535),
            },
        ),
    ]
}

#[test]
fn every_split_point_gives_the_same_result() {
    for (policy, bytes, want_written, want) in valid_handshakes() {
        let with_early = cat(&[&bytes, b"xyz"]);
        let expected = (
            want_written.clone(),
            Outcome::Done(want.clone(), b"xyz".to_vec()),
        );
        for i in 0..=with_early.len() {
            let (a, b) = with_early.split_at(i);
            assert_eq!(drive(policy(), &[a, b]), expected, "split at {i}");
            for j in i..=with_early.len() {
                let (b, c) = with_early[i..].split_at(j - i);
                assert_eq!(drive(policy(), &[a, b, c]), expected, "split at {i}, {j}");
            }
        }
        let bytewise: Vec<&[u8]> = with_early.chunks(1).collect();
        assert_eq!(drive(policy(), &bytewise), expected);
    }
}

#[test]
fn every_truncation_needs_more() {
    for (policy, bytes, want_written, _) in valid_handshakes() {
        for i in 0..bytes.len() {
            let (written, outcome) = drive(policy(), &[&bytes[..i]]);
            assert_eq!(outcome, Outcome::Pending, "truncated at {i}");
            assert!(want_written.starts_with(&written));
        }
    }
    // And a single truncated message at each stage is `NeedMore`, consuming nothing.
    let stages: [(Socks5Handshake, &[u8]); 3] = [
        (no_auth(), REQ_V6),
        (user_pass(), GREET_USER_PASS),
        (user_pass(), AUTH),
    ];
    for (mut hs, msg) in stages {
        if msg == AUTH {
            hs.feed(GREET_USER_PASS).unwrap();
        } else if msg == REQ_V6 {
            hs.feed(GREET_NO_AUTH).unwrap();
        }
        for i in 0..msg.len() {
            assert_eq!(hs.feed(&msg[..i]), Ok(Progress::NeedMore));
        }
        assert!(!matches!(hs.feed(msg), Ok(Progress::NeedMore) | Err(_)));
    }
}

/// (policy, client bytes ending at the deciding byte, everything written back, error)
type Malformed = (fn() -> Socks5Handshake, Vec<u8>, Vec<u8>, Socks5Error);

fn malformed() -> Vec<Malformed> {
    use Socks5Error::*;
    let greet = |policy: fn() -> Socks5Handshake, bytes: &[u8], err| -> Malformed {
        (policy, bytes.to_vec(), vec![5, 0xFF], err)
    };
    let auth = |bytes: &[u8], err| -> Malformed {
        (
            user_pass,
            cat(&[GREET_USER_PASS, bytes]),
            vec![5, 2, 1, 1],
            err,
        )
    };
    let req = |bytes: &[u8], code, err| -> Malformed {
        (
            no_auth,
            cat(&[GREET_NO_AUTH, bytes]),
            cat(&[&[5, 0], &fail(code)]),
            err,
        )
    };
    let (general, cmd, atyp) = (
        ReplyCode::GENERAL_FAILURE,
        ReplyCode::COMMAND_NOT_SUPPORTED,
        ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED,
    );
    vec![
        (no_auth, vec![4], vec![], BadVersion(4)),
        // An HTTP request is turned away on its first byte.
        (no_auth, b"G".to_vec(), vec![], BadVersion(b'G')),
        greet(no_auth, &[5, 0], NoMethods),
        greet(no_auth, &[5, 1, 2], NoAcceptableMethod),
        greet(no_auth, &[5, 2, 1, 0x80], NoAcceptableMethod),
        greet(user_pass, &[5, 1, 0], NoAcceptableMethod),
        greet(user_pass, &[5, 0], NoMethods),
        auth(&[5], BadAuthVersion(5)),
        auth(&[0], BadAuthVersion(0)),
        auth(&[1, 0], EmptyUsername),
        auth(b"\x01\x04user\x00", EmptyPassword),
        auth(b"\x01\x04user\x04pasS", BadCredentials),
        auth(b"\x01\x04user\x03pas", BadCredentials),
        auth(b"\x01\x03use\x04pass", BadCredentials),
        req(&[4], general, BadRequestVersion(4)),
        req(&[5, 2], cmd, CommandNotSupported(Command::BIND)),
        req(&[5, 3], cmd, CommandNotSupported(Command::UDP_ASSOCIATE)),
        req(&[5, 0], cmd, CommandNotSupported(Command(0))),
        req(&[5, 9], cmd, CommandNotSupported(Command(9))),
        req(&[5, 1, 0, 2], atyp, AddressTypeNotSupported(2)),
        req(&[5, 1, 0, 0], atyp, AddressTypeNotSupported(0)),
        req(&[5, 1, 0, 3, 0], general, EmptyDomain),
        req(&[5, 1, 0, 3, 2, 0xC3, 0x28], general, DomainNotUtf8),
        req(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 0], general, ZeroPort),
        req(b"\x05\x01\x00\x03\x01a\x00\x00", general, ZeroPort),
        // After authentication, request errors follow `05 02 01 00`.
        (
            user_pass,
            cat(&[GREET_USER_PASS, AUTH, &[5, 1, 0, 7]]),
            cat(&[&[5, 2, 1, 0], &fail(atyp)]),
            AddressTypeNotSupported(7),
        ),
    ]
}

#[test]
fn malformed_inputs_get_their_exact_reply() {
    for (policy, bytes, want_written, want_err) in malformed() {
        let expected = (want_written.clone(), Outcome::Failed(want_err.clone()));
        // All at once, with junk after it: the junk must not matter.
        let junk = cat(&[&bytes, &[0xAA; 600]]);
        assert_eq!(drive(policy(), &[&junk]), expected, "{bytes:02x?}");
        // Rejected as soon as the deciding byte arrives, whatever the split.
        for i in 0..=bytes.len() {
            let (a, b) = bytes.split_at(i);
            assert_eq!(
                drive(policy(), &[a, b]),
                expected,
                "{bytes:02x?} split at {i}"
            );
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(drive(policy(), &bytewise), expected);
        // One byte short of the deciding byte, it is still waiting.
        let (written, outcome) = drive(policy(), &[&bytes[..bytes.len() - 1]]);
        assert_eq!(outcome, Outcome::Pending, "{bytes:02x?}");
        assert!(want_written.starts_with(&written));
    }
}

#[test]
fn error_replies_are_exact() {
    use Socks5Error::*;
    let general: &[u8] = &[5, 1, 0, 1, 0, 0, 0, 0, 0, 0];
    let cmd: &[u8] = &[5, 7, 0, 1, 0, 0, 0, 0, 0, 0];
    let atyp: &[u8] = &[5, 8, 0, 1, 0, 0, 0, 0, 0, 0];
    let table: [(Socks5Error, Option<&[u8]>); 14] = [
        (BadVersion(4), None),
        (NoMethods, Some(&[5, 0xFF])),
        (NoAcceptableMethod, Some(&[5, 0xFF])),
        (BadAuthVersion(2), Some(&[1, 1])),
        (EmptyUsername, Some(&[1, 1])),
        (EmptyPassword, Some(&[1, 1])),
        (BadCredentials, Some(&[1, 1])),
        (BadRequestVersion(4), Some(general)),
        (CommandNotSupported(Command::BIND), Some(cmd)),
        (AddressTypeNotSupported(9), Some(atyp)),
        (EmptyDomain, Some(general)),
        (DomainNotUtf8, Some(general)),
        (ZeroPort, Some(general)),
        (Finished, None),
    ];
    for (e, want) in table {
        assert_eq!(e.reply(), want, "{e}");
    }
}

#[test]
fn reply_encoding() {
    assert_eq!(
        reply(ReplyCode::SUCCEEDED, None),
        [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        reply(ReplyCode::SUCCEEDED, Some("1.2.3.4:8080".parse().unwrap())),
        [5, 0, 0, 1, 1, 2, 3, 4, 0x1F, 0x90]
    );
    assert_eq!(
        reply(
            ReplyCode::HOST_UNREACHABLE,
            Some("[2001:db8::2]:443".parse().unwrap())
        ),
        [5, 4, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0xBB]
    );
    assert_eq!(reply(ReplyCode(0x42), None)[1], 0x42);
    let codes = [
        ReplyCode::SUCCEEDED,
        ReplyCode::GENERAL_FAILURE,
        ReplyCode::NOT_ALLOWED,
        ReplyCode::NETWORK_UNREACHABLE,
        ReplyCode::HOST_UNREACHABLE,
        ReplyCode::CONNECTION_REFUSED,
        ReplyCode::TTL_EXPIRED,
        ReplyCode::COMMAND_NOT_SUPPORTED,
        ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED,
    ];
    for (i, c) in codes.into_iter().enumerate() {
        assert_eq!(usize::from(c.0), i);
        assert!(c.name().is_some());
        assert_eq!(reply(c, None), failure_reply(c));
    }
    assert_eq!(ReplyCode(9).name(), None);
    assert_eq!(
        format!("{:?}", ReplyCode::TTL_EXPIRED),
        "ReplyCode(0x06 TTL expired)"
    );
}

#[test]
fn command_policy() {
    let hs = no_auth();
    assert!(hs.allows(Command::CONNECT));
    assert!(!hs.allows(Command::BIND) && !hs.allows(Command::UDP_ASSOCIATE));
    let hs = no_auth()
        .allow_command(Command(0))
        .allow_command(Command(63));
    let hs = hs.allow_command(Command(64)).allow_command(Command(255));
    for c in [0, 1, 63, 64, 255] {
        assert!(hs.allows(Command(c)), "{c}");
    }
    for c in [2, 3, 62, 65, 127, 128, 254] {
        assert!(!hs.allows(Command(c)), "{c}");
    }

    // UDP ASSOCIATE, once allowed, may say 0.0.0.0:0 (RFC 1928 section 7).
    let mut hs = no_auth().allow_command(Command::UDP_ASSOCIATE);
    hs.feed(GREET_NO_AUTH).unwrap();
    match hs.feed(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap() {
        Progress::Done { request, .. } => {
            assert_eq!(request.command, Command::UDP_ASSOCIATE);
            assert_eq!(request.target, parse_target("0.0.0.0:0"));
        }
        other => panic!("{other:?}"),
    }
    // Tor's RESOLVE (0xF0) shares the layout.
    let mut hs = no_auth().allow_command(Command(0xF0));
    hs.feed(GREET_NO_AUTH).unwrap();
    let resolve = b"\x05\xf0\x00\x03\x0bexample.com\x00\x00";
    match hs.feed(resolve).unwrap() {
        Progress::Done { request, .. } => assert_eq!(request.command, Command(0xF0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(Command::UDP_ASSOCIATE.to_string(), "UDP ASSOCIATE");
    assert_eq!(format!("{:?}", Command(0xF0)), "command 0xf0");
}

#[test]
fn reserved_byte_is_ignored() {
    let (_, outcome) = drive_all(
        no_auth,
        &cat(&[GREET_NO_AUTH, &[5, 1, 0xEE, 1, 10, 0, 0, 1, 0, 80]]),
    );
    assert_eq!(outcome, Outcome::Done(connect("10.0.0.1:80"), vec![]));
}

#[test]
fn domain_is_kept_verbatim() {
    let (_, outcome) = drive_all(
        no_auth,
        &cat(&[GREET_NO_AUTH, b"\x05\x01\x00\x03\x071.2.3.4\x00\x50"]),
    );
    assert_eq!(
        outcome,
        Outcome::Done(
            Request {
                command: Command::CONNECT,
                target: TargetAddr::Domain("1.2.3.4".into(), 80)
            },
            vec![]
        )
    );
}

#[test]
fn verifier_sees_raw_credentials() {
    let hs = Socks5Handshake::new(AuthPolicy::UserPass(Box::new(|u, p| {
        u == [0xFF, 0x00] && p == b"\xC3\x28"
    })));
    let (written, outcome) = drive(
        hs,
        &[GREET_USER_PASS, b"\x01\x02\xff\x00\x02\xc3\x28", REQ_V4],
    );
    assert_eq!(written, [5, 2, 1, 0]);
    assert!(matches!(outcome, Outcome::Done(..)));
    assert_eq!(
        format!("{:?}", AuthPolicy::single("u", "p")),
        "UserPass(..)"
    );
}

#[test]
fn request_encode_round_trips() {
    for req in [
        connect("10.0.0.1:443"),
        connect("[2001:db8::1]:80"),
        connect("example.com:80"),
    ] {
        let bytes = req.encode().unwrap();
        let mut hs = no_auth();
        hs.feed(GREET_NO_AUTH).unwrap();
        assert_eq!(
            hs.feed(&bytes),
            Ok(Progress::Done {
                consumed: bytes.len(),
                request: req,
                early_data: 0
            })
        );
    }
    assert_eq!(connect("10.0.0.1:443").encode().unwrap(), REQ_V4);
    assert_eq!(connect("example.com:80").encode().unwrap(), REQ_DOMAIN);
    let too_long = Request {
        command: Command::CONNECT,
        target: TargetAddr::Domain("a".repeat(256), 1),
    };
    assert!(too_long.encode().is_err());
    let empty = Request {
        command: Command::CONNECT,
        target: TargetAddr::Domain(String::new(), 1),
    };
    assert!(empty.encode().is_err());
}

#[test]
fn size_constants() {
    assert_eq!(MAX_GREETING_LEN, 257);
    assert_eq!(MAX_AUTH_LEN, 513);
    assert_eq!(MAX_REQUEST_LEN, 262);
    assert_eq!(MAX_MESSAGE_LEN, 513);
    assert_eq!(MAX_HANDSHAKE_LEN, 1032);
}

#[test]
fn ct_eq_basics() {
    assert!(ct_eq(b"", b""));
    assert!(ct_eq(b"abc", b"abc"));
    assert!(!ct_eq(b"abc", b"abd"));
    assert!(!ct_eq(b"abc", b"ab"));
    assert!(!ct_eq(b"ab", b"abc"));
}
