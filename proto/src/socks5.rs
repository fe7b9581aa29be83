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
//! assert_eq!(request.target.to_string(), "127.0.0.1:80");
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
//! | auth     | `PLEN` = 0                              | `EmptyPassword`           | `01 01`     |
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
//! - A domain is returned exactly as sent, even if it spells an IP literal: resolving names is
//!   the gateway's job.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::target::TargetAddr;
use crate::wire::{Reader, WireError, Writer};

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

/// A request command. Open: an unknown value still parses, and is refused by policy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command(pub u8);

impl Command {
    pub const CONNECT: Command = Command(1);
    pub const BIND: Command = Command(2);
    pub const UDP_ASSOCIATE: Command = Command(3);

    /// The RFC 1928 name, if this is one of the three standard commands.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Command::CONNECT => Some("CONNECT"),
            Command::BIND => Some("BIND"),
            Command::UDP_ASSOCIATE => Some("UDP ASSOCIATE"),
            _ => None,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "command {:#04x}", self.0),
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The `REP` field of a server reply. Open: any value can be sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyCode(pub u8);

impl ReplyCode {
    pub const SUCCEEDED: ReplyCode = ReplyCode(0);
    pub const GENERAL_FAILURE: ReplyCode = ReplyCode(1);
    pub const NOT_ALLOWED: ReplyCode = ReplyCode(2);
    pub const NETWORK_UNREACHABLE: ReplyCode = ReplyCode(3);
    pub const HOST_UNREACHABLE: ReplyCode = ReplyCode(4);
    pub const CONNECTION_REFUSED: ReplyCode = ReplyCode(5);
    pub const TTL_EXPIRED: ReplyCode = ReplyCode(6);
    pub const COMMAND_NOT_SUPPORTED: ReplyCode = ReplyCode(7);
    pub const ADDRESS_TYPE_NOT_SUPPORTED: ReplyCode = ReplyCode(8);

    /// The RFC 1928 meaning, if the value is assigned.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "succeeded",
            1 => "general SOCKS server failure",
            2 => "connection not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => return None,
        })
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "reply {:#04x}", self.0),
        }
    }
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
const fn failure_reply(code: ReplyCode) -> [u8; 10] {
    [VERSION, code.0, 0, 1, 0, 0, 0, 0, 0, 0]
}

static REPLY_GENERAL_FAILURE: [u8; 10] = failure_reply(ReplyCode::GENERAL_FAILURE);
static REPLY_COMMAND_NOT_SUPPORTED: [u8; 10] = failure_reply(ReplyCode::COMMAND_NOT_SUPPORTED);
static REPLY_ADDRESS_TYPE_NOT_SUPPORTED: [u8; 10] =
    failure_reply(ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED);
static SELECT_NO_AUTH: [u8; 2] = [VERSION, METHOD_NO_AUTH];
static SELECT_USER_PASS: [u8; 2] = [VERSION, METHOD_USER_PASS];
static SELECT_NONE: [u8; 2] = [VERSION, METHOD_NO_ACCEPTABLE];
static AUTH_OK: [u8; 2] = [AUTH_VERSION, 0x00];
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

/// Checks a username and password; both are raw bytes, 1 to 255 long.
pub type CredentialCheck = Box<dyn Fn(&[u8], &[u8]) -> bool + Send>;

/// Which authentication method the server insists on.
pub enum AuthPolicy {
    /// Method 00: no authentication. Clients must offer it.
    NoAuth,
    /// Method 02: RFC 1929 username/password, accepted when the function returns true.
    /// Clients must offer it; offering only 00 is refused.
    UserPass(CredentialCheck),
}

impl AuthPolicy {
    /// Username/password, accepting exactly one pair (compared without early exit).
    pub fn single(username: impl Into<Vec<u8>>, password: impl Into<Vec<u8>>) -> Self {
        let (u, p) = (username.into(), password.into());
        AuthPolicy::UserPass(Box::new(move |cu: &[u8], cp: &[u8]| {
            // `&` rather than `&&`: check both so timing says little about which one failed.
            ct_eq(cu, &u) & ct_eq(cp, &p)
        }))
    }

    fn method(&self) -> u8 {
        match self {
            AuthPolicy::NoAuth => METHOD_NO_AUTH,
            AuthPolicy::UserPass(_) => METHOD_USER_PASS,
        }
    }
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthPolicy::NoAuth => f.write_str("NoAuth"),
            AuthPolicy::UserPass(_) => f.write_str("UserPass(..)"),
        }
    }
}

/// Equality whose time depends on the lengths but not on where the contents differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// What the caller should do after [`Socks5Handshake::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The input does not hold the whole next message. Nothing was consumed: read more,
    /// append it, and call `feed` again with the whole buffer.
    NeedMore,
    /// One message was handled. Write `bytes` to the client, drop the first `consumed` input
    /// bytes, and call `feed` again with the rest, which may already hold the next message.
    Reply {
        consumed: usize,
        bytes: &'static [u8],
    },
    /// The request is complete and occupied the first `consumed` input bytes; the
    /// `early_data` bytes after it (`input[consumed..]`) are stream payload the client sent
    /// ahead of the reply. Nothing is written yet: act on the request, then answer with
    /// [`reply`].
    Done {
        consumed: usize,
        request: Request,
        early_data: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Auth,
    Request,
    Finished,
}

/// Server side of one SOCKS5 handshake. See the module documentation.
#[derive(Debug)]
pub struct Socks5Handshake {
    auth: AuthPolicy,
    /// Bit `n` set: command `n` is served.
    allowed: [u64; 4],
    state: State,
}

/// Why parsing one message stopped short.
enum Halt {
    NeedMore,
    Fail(Socks5Error),
}

impl From<WireError> for Halt {
    /// The reader only fails with [`WireError::Truncated`]: the message is not all here yet.
    fn from(_: WireError) -> Self {
        Halt::NeedMore
    }
}

impl From<Socks5Error> for Halt {
    fn from(e: Socks5Error) -> Self {
        Halt::Fail(e)
    }
}

impl Socks5Handshake {
    /// A handshake that serves CONNECT only; see [`allow_command`](Self::allow_command).
    pub fn new(auth: AuthPolicy) -> Self {
        Socks5Handshake {
            auth,
            allowed: [0; 4],
            state: State::Greeting,
        }
        .allow_command(Command::CONNECT)
    }

    /// Also accept requests carrying `command` instead of refusing them with 07.
    #[must_use]
    pub fn allow_command(mut self, command: Command) -> Self {
        self.allowed[usize::from(command.0 >> 6)] |= 1 << (command.0 & 63);
        self
    }

    /// Whether requests with this command are accepted.
    pub fn allows(&self, command: Command) -> bool {
        self.allowed[usize::from(command.0 >> 6)] & (1 << (command.0 & 63)) != 0
    }

    /// Whether `feed` returned `Done` or an error; any further `feed` is refused.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Handle the next client message at the front of `input`, if it is all there.
    ///
    /// # Errors
    ///
    /// A [`Socks5Error`] ends the handshake: send [`Socks5Error::reply`] (if any) and close.
    /// Every later call returns [`Socks5Error::Finished`], as does a call after `Done`.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, Socks5Error> {
        let mut r = Reader::new(input);
        let step = match self.state {
            State::Greeting => self.greeting(&mut r),
            State::Auth => self.auth(&mut r),
            State::Request => self.request(&mut r),
            State::Finished => return Err(Socks5Error::Finished),
        };
        let consumed = r.position();
        match step {
            Ok(Step::Reply(next, bytes)) => {
                self.state = next;
                Ok(Progress::Reply { consumed, bytes })
            }
            Ok(Step::Done(request)) => {
                self.state = State::Finished;
                Ok(Progress::Done {
                    consumed,
                    request,
                    early_data: input.len() - consumed,
                })
            }
            Err(Halt::NeedMore) => Ok(Progress::NeedMore),
            Err(Halt::Fail(e)) => {
                self.state = State::Finished;
                Err(e)
            }
        }
    }

    /// `VER NMETHODS METHODS`
    fn greeting(&self, r: &mut Reader<'_>) -> Result<Step, Halt> {
        let ver = r.u8()?;
        if ver != VERSION {
            return Err(Socks5Error::BadVersion(ver).into());
        }
        let n = r.u8()?;
        if n == 0 {
            return Err(Socks5Error::NoMethods.into());
        }
        let methods = r.bytes(usize::from(n))?;
        let wanted = self.auth.method();
        if !methods.contains(&wanted) {
            return Err(Socks5Error::NoAcceptableMethod.into());
        }
        Ok(match self.auth {
            AuthPolicy::NoAuth => Step::Reply(State::Request, &SELECT_NO_AUTH),
            AuthPolicy::UserPass(_) => Step::Reply(State::Auth, &SELECT_USER_PASS),
        })
    }

    /// RFC 1929: `VER ULEN UNAME PLEN PASSWD`
    fn auth(&self, r: &mut Reader<'_>) -> Result<Step, Halt> {
        let ver = r.u8()?;
        if ver != AUTH_VERSION {
            return Err(Socks5Error::BadAuthVersion(ver).into());
        }
        let ulen = r.u8()?;
        if ulen == 0 {
            return Err(Socks5Error::EmptyUsername.into());
        }
        let username = r.bytes(usize::from(ulen))?;
        let plen = r.u8()?;
        if plen == 0 {
            return Err(Socks5Error::EmptyPassword.into());
        }
        let password = r.bytes(usize::from(plen))?;
        let accepted = match &self.auth {
            AuthPolicy::UserPass(check) => check(username, password),
            // Unreachable: the greeting only moves to `Auth` under `UserPass`.
            AuthPolicy::NoAuth => false,
        };
        if !accepted {
            return Err(Socks5Error::BadCredentials.into());
        }
        Ok(Step::Reply(State::Request, &AUTH_OK))
    }

    /// `VER CMD RSV ATYP DST.ADDR DST.PORT`
    fn request(&self, r: &mut Reader<'_>) -> Result<Step, Halt> {
        let ver = r.u8()?;
        if ver != VERSION {
            return Err(Socks5Error::BadRequestVersion(ver).into());
        }
        let command = Command(r.u8()?);
        if !self.allows(command) {
            return Err(Socks5Error::CommandNotSupported(command).into());
        }
        let _reserved = r.u8()?;
        let host = match r.u8()? {
            1 => Host::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            4 => Host::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            3 => {
                let len = r.u8()?;
                if len == 0 {
                    return Err(Socks5Error::EmptyDomain.into());
                }
                let name = std::str::from_utf8(r.bytes(usize::from(len))?)
                    .map_err(|_| Socks5Error::DomainNotUtf8)?;
                Host::Domain(name)
            }
            atyp => return Err(Socks5Error::AddressTypeNotSupported(atyp).into()),
        };
        let port = r.u16()?;
        if port == 0 && command == Command::CONNECT {
            return Err(Socks5Error::ZeroPort.into());
        }
        let target = match host {
            Host::Ip(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
            Host::Domain(name) => TargetAddr::Domain(name.to_owned(), port),
        };
        Ok(Step::Done(Request { command, target }))
    }
}

/// Outcome of one complete message.
enum Step {
    /// Write these bytes, then expect the next stage.
    Reply(State, &'static [u8]),
    Done(Request),
}

/// A destination address before its port has arrived; borrows the domain from the input.
enum Host<'a> {
    Ip(IpAddr),
    Domain(&'a str),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// What a caller following the contract ends up with.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        /// Still waiting for bytes.
        Pending,
        /// The request, and every byte after it (the early data).
        Done(Request, Vec<u8>),
        Failed(Socks5Error),
    }

    /// Acts like a real caller: appends each chunk to a buffer, then calls `feed` until it
    /// needs more. Returns everything written to the client and how it ended.
    fn drive(mut hs: Socks5Handshake, chunks: &[&[u8]]) -> (Vec<u8>, Outcome) {
        let mut buf = Vec::new();
        let mut written = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            buf.extend_from_slice(chunk);
            loop {
                match hs.feed(&buf) {
                    Ok(Progress::NeedMore) => break,
                    Ok(Progress::Reply { consumed, bytes }) => {
                        assert!(consumed > 0 && consumed <= buf.len());
                        written.extend_from_slice(bytes);
                        buf.drain(..consumed);
                    }
                    Ok(Progress::Done {
                        consumed,
                        request,
                        early_data,
                    }) => {
                        assert_eq!(consumed + early_data, buf.len());
                        assert!(hs.is_finished());
                        let mut early = buf.split_off(consumed);
                        early.extend(chunks[i + 1..].iter().flat_map(|c| c.iter()));
                        return (written, Outcome::Done(request, early));
                    }
                    Err(e) => {
                        assert!(hs.is_finished());
                        assert_eq!(hs.feed(&buf), Err(Socks5Error::Finished));
                        written.extend_from_slice(e.reply().unwrap_or_default());
                        return (written, Outcome::Failed(e));
                    }
                }
            }
        }
        (written, Outcome::Pending)
    }

    fn drive_all(policy: fn() -> Socks5Handshake, bytes: &[u8]) -> (Vec<u8>, Outcome) {
        drive(policy(), &[bytes])
    }

    fn no_auth() -> Socks5Handshake {
        Socks5Handshake::new(AuthPolicy::NoAuth)
    }

    fn user_pass() -> Socks5Handshake {
        Socks5Handshake::new(AuthPolicy::single("user", "pass"))
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    const GREET_NO_AUTH: &[u8] = &[5, 1, 0];
    const GREET_USER_PASS: &[u8] = &[5, 2, 0, 2];
    const AUTH: &[u8] = b"\x01\x04user\x04pass";
    const REQ_V4: &[u8] = &[5, 1, 0, 1, 10, 0, 0, 1, 0x01, 0xBB];
    const REQ_V6: &[u8] = &[
        5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
    ];
    const REQ_DOMAIN: &[u8] = b"\x05\x01\x00\x03\x0bexample.com\x00\x50";

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
        let (written, outcome) = drive_all(user_pass, &cat(&[&[5, 1, 2], AUTH, REQ_V4]));
        assert_eq!(written, [5, 2, 1, 0]);
        assert!(matches!(outcome, Outcome::Done(..)));
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
}
