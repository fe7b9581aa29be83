//! The handshake state machine: greeting, RFC 1929 authentication, request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::reply::{AUTH_OK, SELECT_NO_AUTH, SELECT_USER_PASS};
use super::{
    Command, Request, Socks5Error, AUTH_VERSION, METHOD_NO_AUTH, METHOD_USER_PASS, VERSION,
};
use crate::target::TargetAddr;
use crate::wire::{Reader, WireError};

/// Checks a username and password; both are raw bytes, 1 to 255 long.
pub type CredentialCheck = Box<dyn Fn(&[u8], &[u8]) -> bool + Send>;

/// Which authentication method the server insists on.
pub enum AuthPolicy {
    /// Method 00: no authentication. Clients must offer it.
    NoAuth,
    /// Method 02: RFC 1929 username/password, accepted when the function returns true.
    /// Clients must offer it; offering only 00 is refused.
    UserPass(CredentialCheck),
    /// Method 02 when the client offers it, accepting any credentials (an empty password
    /// too): the username is only a label the caller reads back with
    /// [`Socks5Handshake::username`] (the client uses it to pin a stream to a gateway).
    /// Otherwise method 00, so clients that send no credentials work as with `NoAuth`.
    AnyUserPass,
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

    /// The method chosen among those the client offers, if one is acceptable.
    fn select(&self, offered: &[u8]) -> Option<u8> {
        let wanted: &[u8] = match self {
            AuthPolicy::NoAuth => &[METHOD_NO_AUTH],
            AuthPolicy::UserPass(_) => &[METHOD_USER_PASS],
            // Username/password first: a client that offers it has a username to tell.
            AuthPolicy::AnyUserPass => &[METHOD_USER_PASS, METHOD_NO_AUTH],
        };
        wanted.iter().copied().find(|m| offered.contains(m))
    }
}

impl fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthPolicy::NoAuth => f.write_str("NoAuth"),
            AuthPolicy::UserPass(_) => f.write_str("UserPass(..)"),
            AuthPolicy::AnyUserPass => f.write_str("AnyUserPass"),
        }
    }
}

/// Equality whose time depends on the lengths but not on where the contents differ.
pub(super) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// [`reply`](fn@super::reply).
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
    /// The RFC 1929 username, once accepted.
    username: Option<Vec<u8>>,
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
            username: None,
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

    /// The username of an accepted RFC 1929 sub-negotiation; `None` under method 00.
    pub fn username(&self) -> Option<&[u8]> {
        self.username.as_deref()
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
        version(r, VERSION, Socks5Error::BadVersion)?;
        let methods = non_empty(r, Socks5Error::NoMethods)?;
        match self.auth.select(methods) {
            Some(METHOD_USER_PASS) => Ok(Step::Reply(State::Auth, &SELECT_USER_PASS)),
            Some(_) => Ok(Step::Reply(State::Request, &SELECT_NO_AUTH)),
            None => Err(Socks5Error::NoAcceptableMethod.into()),
        }
    }

    /// RFC 1929: `VER ULEN UNAME PLEN PASSWD`
    fn auth(&mut self, r: &mut Reader<'_>) -> Result<Step, Halt> {
        version(r, AUTH_VERSION, Socks5Error::BadAuthVersion)?;
        let username = non_empty(r, Socks5Error::EmptyUsername)?;
        let accepted = match &self.auth {
            AuthPolicy::UserPass(check) => {
                check(username, non_empty(r, Socks5Error::EmptyPassword)?)
            }
            // The password means nothing here; curl sends an empty one for `user@proxy`.
            AuthPolicy::AnyUserPass => {
                let len = r.u8()?;
                r.bytes(usize::from(len))?;
                true
            }
            // Unreachable: the greeting only moves to `Auth` under the user/pass policies.
            AuthPolicy::NoAuth => false,
        };
        if !accepted {
            return Err(Socks5Error::BadCredentials.into());
        }
        self.username = Some(username.to_vec());
        Ok(Step::Reply(State::Request, &AUTH_OK))
    }

    /// `VER CMD RSV ATYP DST.ADDR DST.PORT`
    fn request(&self, r: &mut Reader<'_>) -> Result<Step, Halt> {
        version(r, VERSION, Socks5Error::BadRequestVersion)?;
        let command = Command(r.u8()?);
        if !self.allows(command) {
            return Err(Socks5Error::CommandNotSupported(command).into());
        }
        let _reserved = r.u8()?;
        let host = match r.u8()? {
            1 => Host::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            4 => Host::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            3 => {
                let name = std::str::from_utf8(non_empty(r, Socks5Error::EmptyDomain)?)
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

/// A version byte (`VER`), refused with `bad(ver)` unless it is `want`.
fn version(r: &mut Reader<'_>, want: u8, bad: fn(u8) -> Socks5Error) -> Result<(), Halt> {
    let ver = r.u8()?;
    if ver != want {
        return Err(bad(ver).into());
    }
    Ok(())
}

/// A length byte and that many bytes (`NMETHODS METHODS`, `ULEN UNAME`, `PLEN PASSWD`,
/// `LEN DOMAIN`): a length of 0 is refused with `empty` as soon as it arrives.
fn non_empty<'a>(r: &mut Reader<'a>, empty: Socks5Error) -> Result<&'a [u8], Halt> {
    let len = r.u8()?;
    if len == 0 {
        return Err(empty.into());
    }
    Ok(r.bytes(usize::from(len))?)
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
