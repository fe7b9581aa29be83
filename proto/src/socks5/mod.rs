//! Sans-IO SOCKS5 server handshake: RFC 1928 plus RFC 1929 username/password.
//!
//! Bytes in, decisions out. [`Socks5Handshake`] is fed whatever the caller has buffered from
//! the client and answers with a [`Progress`]: nothing yet, a reply to write back, or the
//! finished [`Request`]. It never touches a socket, never buffers the client's bytes and never
//! looks at a clock: the caller owns the buffer, the socket and the timeout.
//!
//! # Driving it
//!
//! ```
//! use braid_proto::socks5::{AuthPolicy, Progress, Socks5Handshake};
//!
//! let mut hs = Socks5Handshake::new(AuthPolicy::NoAuth);
//! // Everything the client sent so far; here the greeting, a CONNECT and early data at once.
//! let mut buf: Vec<u8> = vec![5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 0, 80, b'h', b'i'];
//! let mut to_client = Vec::new();
//! let (request, early) = loop {
//!     match hs.feed(&buf) {
//!         Ok(Progress::NeedMore) => unreachable!("read more from the socket, append, retry"),
//!         Ok(Progress::Reply { consumed, bytes }) => {
//!             to_client.extend_from_slice(bytes);
//!             buf.drain(..consumed);
//!         }
//!         Ok(Progress::Done { consumed, request, .. }) => {
//!             break (request, buf.split_off(consumed));
//!         }
//!         Err(e) => {
//!             if let Some(bytes) = e.reply() {
//!                 to_client.extend_from_slice(bytes);
//!             }
//!             panic!("close the connection: {e}");
//!         }
//!     }
//! };
//! assert_eq!(to_client, [5, 0]);
//! assert_eq!(request.target.reveal().to_string(), "127.0.0.1:80");
//! assert_eq!(early, b"hi");
//! // Now connect, then answer with `socks5::reply(ReplyCode::SUCCEEDED, Some(bound))`.
//! ```
//!
//! `feed` handles at most one client message per call, so a reply is always written before
//! anything that answers a later message. [`Progress::NeedMore`] consumes nothing and is only
//! returned while the buffer holds less than one whole message, so a caller buffer of
//! [`MAX_MESSAGE_LEN`] bytes always suffices; the three messages together are at most
//! [`MAX_HANDSHAKE_LEN`] bytes. Checks run in wire order as soon as the deciding byte has
//! arrived, so how the input is split never changes the outcome, and a non-SOCKS client is
//! turned away on its first byte.
//!
//! # Refusals
//!
//! Each [`Socks5Error`] knows the exact bytes to send before closing ([`Socks5Error::reply`]).
//!
//! | Stage    | Condition                               | Error                     | Reply sent  |
//! |----------|-----------------------------------------|---------------------------|-------------|
//! | greeting | `VER` ≠ 5 (SOCKS4, HTTP, TLS...)        | `BadVersion`              | none, close |
//! | greeting | `NMETHODS` = 0                          | `NoMethods`               | `05 FF`     |
//! | greeting | policy's method (00/02) not offered     | `NoAcceptableMethod`      | `05 FF`     |
//! | auth     | sub-negotiation `VER` ≠ 1               | `BadAuthVersion`          | `01 01`     |
//! | auth     | `ULEN` = 0                              | `EmptyUsername`           | `01 01`     |
//! | auth     | `PLEN` = 0 (not under `AnyUserPass`)    | `EmptyPassword`           | `01 01`     |
//! | auth     | the verifier rejects the credentials    | `BadCredentials`          | `01 01`     |
//! | request  | `VER` ≠ 5                               | `BadRequestVersion`       | `05 01 ...` |
//! | request  | `CMD` unknown, or known but not allowed | `CommandNotSupported`     | `05 07 ...` |
//! | request  | `ATYP` not 1, 3 or 4                    | `AddressTypeNotSupported` | `05 08 ...` |
//! | request  | domain length 0                         | `EmptyDomain`             | `05 01 ...` |
//! | request  | domain not UTF-8                        | `DomainNotUtf8`           | `05 01 ...` |
//! | request  | `DST.PORT` = 0 on CONNECT               | `ZeroPort`                | `05 01 ...` |
//! | any      | `feed` again after `Done` or an error   | `Finished`                | none        |
//!
//! (`05 REP ...` is `05 REP 00 01 00 00 00 00 00 00`; REP 01 is general failure, 07 command not
//! supported, 08 address type not supported. After a `Done`, the caller answers with [`reply`]:
//! 00 on success, or the code for how the connection attempt failed.)
//!
//! Choices the RFCs leave open, and why:
//!
//! - An empty or non-UTF-8 domain is a malformed address of a *supported* type, so it gets
//!   general failure (01) rather than 08, which a client could read as "try another ATYP".
//! - Port 0 cannot be connected to, so CONNECT to port 0 is malformed: general failure (01).
//!   It is only checked for CONNECT: RFC 1928 tells a UDP ASSOCIATE client with nothing to say
//!   to send address and port all zeros, and other commands define their own meaning.
//! - BIND and UDP ASSOCIATE are well-formed but not served unless allowed with
//!   [`Socks5Handshake::allow_command`]; until then they are answered 07 like unknown commands.
//!   Any value may be allowed (e.g. Tor's RESOLVE, 0xF0, which shares the request layout).
//! - `RSV` is ignored rather than checked, as most servers do.
//! - A zero-length username or password is refused (RFC 1929 lengths are 1 to 255) without
//!   consulting the verifier. Lengths of 255 and domains of 255 bytes are accepted.
//! - With [`AuthPolicy::UserPass`], a client offering only "no authentication" is refused:
//!   requiring a password means no-auth is not acceptable.
//! - With [`AuthPolicy::AnyUserPass`] (a label, not a check), username/password is chosen
//!   whenever the client offers it, before "no authentication": a client that offers it has
//!   a username to tell, which [`Socks5Handshake::username`] returns. Any password is
//!   accepted, an empty one too (curl sends one for `socks5h://user@proxy`).
//! - A domain is returned exactly as sent, even if it spells an IP literal: resolving names is
//!   the gateway's job.

mod handshake;
mod reply;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod udp;

use crate::open_enum::open_enum;
use crate::target::TargetAddr;
use crate::wire::{WireError, Writer};

pub use handshake::{AuthPolicy, CredentialCheck, Progress, Socks5Handshake};
pub use reply::{reply, ReplyCode, Socks5Error};

/// SOCKS protocol version byte.
pub const VERSION: u8 = 5;
/// RFC 1929 sub-negotiation version byte.
pub const AUTH_VERSION: u8 = 1;
/// Method "no authentication required".
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method "username/password" (RFC 1929).
pub const METHOD_USER_PASS: u8 = 0x02;
/// Method-selection answer "no acceptable methods".
pub const METHOD_NO_ACCEPTABLE: u8 = 0xFF;

/// Longest greeting: `VER NMETHODS METHODS[255]`.
pub const MAX_GREETING_LEN: usize = 2 + 255;
/// Longest RFC 1929 message: `VER ULEN UNAME[255] PLEN PASSWD[255]`.
pub const MAX_AUTH_LEN: usize = 1 + 1 + 255 + 1 + 255;
/// Longest request: `VER CMD RSV ATYP=3 LEN DOMAIN[255] PORT`.
pub const MAX_REQUEST_LEN: usize = 4 + 1 + 255 + 2;
/// Longest single client message. [`Progress::NeedMore`] is never returned for an input at
/// least this long, so a caller buffer of this size always suffices.
pub const MAX_MESSAGE_LEN: usize = MAX_AUTH_LEN;
/// Longest complete handshake (greeting, authentication and request), excluding early data.
pub const MAX_HANDSHAKE_LEN: usize = MAX_GREETING_LEN + MAX_AUTH_LEN + MAX_REQUEST_LEN;

open_enum! {
    /// A request command. Open: an unknown value still parses, and is refused by policy.
    /// [`name`](Self::name) is the RFC 1928 name of the three standard commands.
    pub struct Command(u8) {
        CONNECT = 1 => "CONNECT",
        BIND = 2 => "BIND",
        UDP_ASSOCIATE = 3 => "UDP ASSOCIATE",
    }
    unknown = "command {:#04x}";
    debug = display;
}

/// A parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: TargetAddr,
}

impl Request {
    /// The client's wire form: `05 CMD 00 ATYP DST.ADDR DST.PORT`.
    ///
    /// # Errors
    ///
    /// [`WireError`] if the domain is empty or longer than 255 bytes.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut buf = [0u8; MAX_REQUEST_LEN];
        let mut w = Writer::new(&mut buf);
        w.bytes(&[VERSION, self.command.0, 0])?;
        self.target.write_onto(&mut w)?;
        let n = w.position();
        Ok(buf[..n].to_vec())
    }
}
