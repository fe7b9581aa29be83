//! Server replies: the `REP` codes, the reply encoder, the fixed answers to refusals and
//! [`Socks5Error`], which knows which of them to send.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

use super::{
    Command, AUTH_VERSION, METHOD_NO_ACCEPTABLE, METHOD_NO_AUTH, METHOD_USER_PASS, VERSION,
};
use crate::open_enum::open_enum;

open_enum! {
    /// The `REP` field of a server reply. Open: any value can be sent.
    /// [`name`](Self::name) is the RFC 1928 meaning of an assigned value.
    pub struct ReplyCode(u8) {
        SUCCEEDED = 0 => "succeeded",
        GENERAL_FAILURE = 1 => "general SOCKS server failure",
        NOT_ALLOWED = 2 => "connection not allowed by ruleset",
        NETWORK_UNREACHABLE = 3 => "network unreachable",
        HOST_UNREACHABLE = 4 => "host unreachable",
        CONNECTION_REFUSED = 5 => "connection refused",
        TTL_EXPIRED = 6 => "TTL expired",
        COMMAND_NOT_SUPPORTED = 7 => "command not supported",
        ADDRESS_TYPE_NOT_SUPPORTED = 8 => "address type not supported",
    }
    unknown = "reply {:#04x}";
}

impl fmt::Debug for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyCode({:#04x}", self.0)?;
        if let Some(n) = self.name() {
            write!(f, " {n}")?;
        }
        f.write_str(")")
    }
}

/// Encode a full server reply: `05 REP 00 ATYP BND.ADDR BND.PORT`.
///
/// `bound` is the address the server bound for the client (for CONNECT, the local end of the
/// outgoing connection, which an anonymity proxy has no reason to reveal); `None` encodes
/// `0.0.0.0:0`, giving the 10-byte form `05 REP 00 01 00 00 00 00 00 00`.
#[must_use]
pub fn reply(code: ReplyCode, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut out = Vec::with_capacity(4 + 16 + 2);
    out.extend_from_slice(&[VERSION, code.0, 0]);
    match bound.ip() {
        IpAddr::V4(ip) => {
            out.push(1);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// `05 REP 00 01 00 00 00 00 00 00`, as a constant.
pub(super) const fn failure_reply(code: ReplyCode) -> [u8; 10] {
    [VERSION, code.0, 0, 1, 0, 0, 0, 0, 0, 0]
}

static REPLY_GENERAL_FAILURE: [u8; 10] = failure_reply(ReplyCode::GENERAL_FAILURE);
static REPLY_COMMAND_NOT_SUPPORTED: [u8; 10] = failure_reply(ReplyCode::COMMAND_NOT_SUPPORTED);
static REPLY_ADDRESS_TYPE_NOT_SUPPORTED: [u8; 10] =
    failure_reply(ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED);
pub(super) static SELECT_NO_AUTH: [u8; 2] = [VERSION, METHOD_NO_AUTH];
pub(super) static SELECT_USER_PASS: [u8; 2] = [VERSION, METHOD_USER_PASS];
static SELECT_NONE: [u8; 2] = [VERSION, METHOD_NO_ACCEPTABLE];
pub(super) static AUTH_OK: [u8; 2] = [AUTH_VERSION, 0x00];
static AUTH_FAILED: [u8; 2] = [AUTH_VERSION, 0x01];

/// Why a handshake was refused. See the module documentation for the full table.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Socks5Error {
    #[error("greeting version {0:#04x} is not SOCKS5")]
    BadVersion(u8),
    #[error("client offered no authentication methods")]
    NoMethods,
    #[error("client offered no acceptable authentication method")]
    NoAcceptableMethod,
    #[error("username/password sub-negotiation version {0:#04x} is not 1")]
    BadAuthVersion(u8),
    #[error("empty username")]
    EmptyUsername,
    #[error("empty password")]
    EmptyPassword,
    #[error("username/password rejected")]
    BadCredentials,
    #[error("request version {0:#04x} is not SOCKS5")]
    BadRequestVersion(u8),
    #[error("{0} not supported")]
    CommandNotSupported(Command),
    #[error("address type {0:#04x} not supported")]
    AddressTypeNotSupported(u8),
    #[error("empty domain name")]
    EmptyDomain,
    #[error("domain name is not UTF-8")]
    DomainNotUtf8,
    #[error("destination port 0")]
    ZeroPort,
    #[error("handshake already finished")]
    Finished,
}

impl Socks5Error {
    /// The exact bytes to send the client before closing, if any.
    pub fn reply(&self) -> Option<&'static [u8]> {
        use Socks5Error::*;
        Some(match self {
            BadVersion(_) | Finished => return None,
            NoMethods | NoAcceptableMethod => &SELECT_NONE,
            BadAuthVersion(_) | EmptyUsername | EmptyPassword | BadCredentials => &AUTH_FAILED,
            BadRequestVersion(_) | EmptyDomain | DomainNotUtf8 | ZeroPort => &REPLY_GENERAL_FAILURE,
            CommandNotSupported(_) => &REPLY_COMMAND_NOT_SUPPORTED,
            AddressTypeNotSupported(_) => &REPLY_ADDRESS_TYPE_NOT_SUPPORTED,
        })
    }
}
