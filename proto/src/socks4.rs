//! Sans-IO SOCKS4 and SOCKS4a request parser.
//!
//! SOCKS4 has one message each way. The client sends
//! `VN=4 | CD u8 | DSTPORT u16 | DSTIP [4] | USERID ... 00`, and SOCKS4a (when `DSTIP` is
//! `0.0.0.x` with `x ≠ 0`) appends `DOMAIN ... 00`, which the proxy resolves: here, the
//! gateway does. The server answers with eight bytes, `00 CD DSTPORT DSTIP`, where `CD` is
//! 90 (granted) or 91 (rejected or failed). SOCKS4 has no finer codes, so every refusal
//! reason maps to 91 ([`reply`]).
//!
//! [`parse_request`] is fed whatever has been buffered. It answers `Ok(None)` while the
//! message is incomplete. It never asks for more than [`MAX_REQUEST_LEN`] bytes, and it
//! decides as soon as the deciding byte has arrived.
//!
//! Choices the protocol leaves open:
//! - BIND (`CD = 2`) and unknown commands are refused with 91 ([`Socks4Error::CommandNotSupported`]).
//! - `DSTPORT = 0` is refused: nothing listens there.
//! - `0.0.0.0` is neither an address nor the SOCKS4a marker, so it is refused.
//! - The user id may be empty, and is at most 255 bytes. Under no `[auth]` it may name a
//!   gateway, as a SOCKS5 username does. The domain is 1 to 255 bytes of UTF-8.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use thiserror::Error;

use crate::target::TargetAddr;

/// The version byte of a SOCKS4 request.
pub const VERSION: u8 = 4;
/// `CD` of a CONNECT request.
pub const CONNECT: u8 = 1;
/// Longest user id or SOCKS4a domain accepted (without the terminating zero).
pub const MAX_FIELD_LEN: usize = 255;
/// Longest request: the fixed eight bytes, a user id and a domain, each with its zero.
pub const MAX_REQUEST_LEN: usize = 8 + (MAX_FIELD_LEN + 1) * 2;

/// A complete SOCKS4/4a CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    pub target: TargetAddr,
    /// The user id, as sent (may be empty).
    pub user_id: Vec<u8>,
}

/// Why a SOCKS4 request was refused. Every one is answered with [`reply`]`(false)` and a
/// close, except [`Socks4Error::BadVersion`], which is not SOCKS4 at all and gets nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Socks4Error {
    #[error("version {0:#04x} is not SOCKS4")]
    BadVersion(u8),
    #[error("SOCKS4 command {0:#04x} not supported")]
    CommandNotSupported(u8),
    #[error("destination port 0")]
    ZeroPort,
    #[error("destination address 0.0.0.0")]
    ZeroAddress,
    #[error("user id longer than 255 bytes")]
    UserIdTooLong,
    #[error("SOCKS4a domain empty or longer than 255 bytes")]
    BadDomainLength,
    #[error("SOCKS4a domain is not UTF-8")]
    DomainNotUtf8,
}

/// The eight-byte answer: granted (90) or rejected/failed (91).
pub fn reply(granted: bool) -> [u8; 8] {
    [0, if granted { 90 } else { 91 }, 0, 0, 0, 0, 0, 0]
}

/// Parses one request from the start of `input`: `Ok(None)` while incomplete, else the
/// request and the bytes it took (what follows is the app's early data).
pub fn parse_request(input: &[u8]) -> Result<Option<(Socks4Request, usize)>, Socks4Error> {
    let Some(&version) = input.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks4Error::BadVersion(version));
    }
    let Some(&command) = input.get(1) else {
        return Ok(None);
    };
    if command != CONNECT {
        return Err(Socks4Error::CommandNotSupported(command));
    }
    let Some(fixed) = input.get(..8) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ip = Ipv4Addr::new(fixed[4], fixed[5], fixed[6], fixed[7]);
    if port == 0 {
        return Err(Socks4Error::ZeroPort);
    }
    if ip.is_unspecified() {
        return Err(Socks4Error::ZeroAddress);
    }
    let rest = &input[8..];
    let Some((user_id, after_user)) = zero_terminated(rest, Socks4Error::UserIdTooLong)? else {
        return Ok(None);
    };
    let mut consumed = 8 + user_id.len() + 1;
    let octets = ip.octets();
    let target = if octets[..3] == [0, 0, 0] {
        // SOCKS4a: 0.0.0.x, x ≠ 0 (0.0.0.0 was refused above).
        let Some((domain, _)) = zero_terminated(after_user, Socks4Error::BadDomainLength)? else {
            return Ok(None);
        };
        if domain.is_empty() {
            return Err(Socks4Error::BadDomainLength);
        }
        let name = std::str::from_utf8(domain).map_err(|_| Socks4Error::DomainNotUtf8)?;
        consumed += domain.len() + 1;
        TargetAddr::Domain(name.to_owned(), port)
    } else {
        TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port)))
    };
    Ok(Some((
        Socks4Request {
            target,
            user_id: user_id.to_vec(),
        },
        consumed,
    )))
}

/// A zero-terminated field and the bytes after its zero.
type Field<'a> = (&'a [u8], &'a [u8]);

/// The bytes before the first zero and those after it; `None` while no zero has arrived
/// within [`MAX_FIELD_LEN`] bytes, `too_long` once more have.
fn zero_terminated(input: &[u8], too_long: Socks4Error) -> Result<Option<Field<'_>>, Socks4Error> {
    match input.iter().take(MAX_FIELD_LEN + 1).position(|&b| b == 0) {
        Some(i) => Ok(Some((&input[..i], &input[i + 1..]))),
        None if input.len() > MAX_FIELD_LEN => Err(too_long),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(port: u16, ip: [u8; 4], user: &[u8]) -> Vec<u8> {
        let mut m = vec![4, 1];
        m.extend_from_slice(&port.to_be_bytes());
        m.extend_from_slice(&ip);
        m.extend_from_slice(user);
        m.push(0);
        m
    }

    #[test]
    fn socks4_and_4a_requests() {
        let m = v4(80, [10, 1, 2, 3], b"alice");
        let (r, n) = parse_request(&m).unwrap().unwrap();
        assert_eq!(n, m.len());
        assert_eq!(r.user_id, b"alice");
        assert_eq!(r.target, TargetAddr::Ip("10.1.2.3:80".parse().unwrap()));

        let mut m = v4(443, [0, 0, 0, 1], b"");
        m.extend_from_slice(b"example.com\0early");
        let (r, n) = parse_request(&m).unwrap().unwrap();
        assert_eq!(&m[n..], b"early");
        assert_eq!(r.target, TargetAddr::Domain("example.com".into(), 443));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_request(b"\x05\x01"), Err(Socks4Error::BadVersion(5)));
        assert_eq!(
            parse_request(b"\x04\x02"),
            Err(Socks4Error::CommandNotSupported(2))
        );
        assert_eq!(
            parse_request(&v4(0, [1, 2, 3, 4], b"")),
            Err(Socks4Error::ZeroPort)
        );
        assert_eq!(
            parse_request(&v4(1, [0, 0, 0, 0], b"")),
            Err(Socks4Error::ZeroAddress)
        );
        let mut long = v4(1, [1, 2, 3, 4], &[b'u'; 256]);
        long.pop();
        assert_eq!(parse_request(&long), Err(Socks4Error::UserIdTooLong));
        let mut m = v4(1, [0, 0, 0, 9], b"u");
        m.push(0);
        assert_eq!(parse_request(&m), Err(Socks4Error::BadDomainLength));
        let mut m = v4(1, [0, 0, 0, 9], b"u");
        m.extend_from_slice(b"\xff\0");
        assert_eq!(parse_request(&m), Err(Socks4Error::DomainNotUtf8));
        assert_eq!(reply(true), [0, 90, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply(false)[1], 91);
    }

    #[test]
    fn longest_fields_fit_the_bound() {
        let mut m = v4(1, [0, 0, 0, 9], &[b'u'; 255]);
        m.extend_from_slice(&[b'd'; 255]);
        m.push(0);
        assert_eq!(m.len(), MAX_REQUEST_LEN);
        assert!(parse_request(&m).unwrap().is_some());
    }

    proptest! {
        /// Any input: no panic; a prefix of a whole request is incomplete, never an error,
        /// and the decision does not depend on how much arrived past it.
        #[test]
        fn prefixes_and_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                user in proptest::collection::vec(1u8..=255, 0..300),
                                domain in "[a-z]{1,300}") {
            let _ = parse_request(&bytes);
            let mut m = v4(8080, [0, 0, 0, 7], &user);
            m.extend_from_slice(domain.as_bytes());
            m.push(0);
            let whole = parse_request(&m);
            for cut in 0..m.len() {
                match parse_request(&m[..cut]) {
                    Ok(None) => {}
                    Err(e) => prop_assert_eq!(Err::<(), _>(e), whole.clone().map(|_| ())),
                    Ok(Some(_)) => prop_assert!(false, "complete at {}", cut),
                }
            }
            prop_assert_eq!(whole.is_ok(), user.len() <= 255 && domain.len() <= 255);
        }
    }
}
