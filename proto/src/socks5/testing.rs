//! Test support for the SOCKS5 handshake, shared by the unit tests, the property tests in
//! `proto/tests/` and the `socks5` fuzz target: client messages, the handshake policies the
//! tests try, and [`drive`], a caller that follows the documented contract of
//! [`Socks5Handshake::feed`] and checks its promises on the way.
//!
//! Compiled for this crate's tests and with the `test-util` feature; not part of the API.
//! The messages are written out as bytes, independently of the constants of the code under
//! test.

use super::{
    AuthPolicy, Command, Progress, Request, Socks5Error, Socks5Handshake, MAX_MESSAGE_LEN,
};

/// Greeting offering only "no authentication".
pub const GREET_NO_AUTH: &[u8] = &[5, 1, 0];
/// Greeting offering "no authentication" and username/password.
pub const GREET_USER_PASS: &[u8] = &[5, 2, 0, 2];
/// Greeting offering only username/password.
pub const GREET_ONLY_USER_PASS: &[u8] = &[5, 1, 2];
/// RFC 1929 credentials `user` / `pass`, the pair [`user_pass`] accepts.
pub const AUTH: &[u8] = b"\x01\x04user\x04pass";
/// CONNECT 10.0.0.1:443.
pub const REQ_V4: &[u8] = &[5, 1, 0, 1, 10, 0, 0, 1, 0x01, 0xBB];
/// CONNECT [2001:db8::1]:80.
pub const REQ_V6: &[u8] = &[
    5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80,
];
/// CONNECT example.com:80.
pub const REQ_DOMAIN: &[u8] = b"\x05\x01\x00\x03\x0bexample.com\x00\x50";

/// No authentication; CONNECT only.
pub fn no_auth() -> Socks5Handshake {
    Socks5Handshake::new(AuthPolicy::NoAuth)
}

/// Username/password, accepting `user` / `pass` ([`AUTH`]); CONNECT only.
pub fn user_pass() -> Socks5Handshake {
    Socks5Handshake::new(AuthPolicy::single("user", "pass"))
}

/// Username/password when offered, any credentials, else no authentication; CONNECT only.
pub fn any_user_pass() -> Socks5Handshake {
    Socks5Handshake::new(AuthPolicy::AnyUserPass)
}

/// No authentication; CONNECT, BIND and UDP ASSOCIATE.
pub fn all_commands() -> Socks5Handshake {
    no_auth()
        .allow_command(Command::BIND)
        .allow_command(Command::UDP_ASSOCIATE)
}

/// The policies the property tests and the fuzz target run every input through.
/// (The fuzz target picks among the first three.)
pub const POLICIES: [fn() -> Socks5Handshake; 4] =
    [no_auth, user_pass, all_commands, any_user_pass];

/// How a driven handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still waiting for bytes.
    Pending,
    /// The request, and every byte after it (the early data).
    Done(Request, Vec<u8>),
    Failed(Socks5Error),
}

/// Acts like a real caller: appends each chunk to a buffer, then calls `feed` until it needs
/// more, writing every reply (and an error's reply) to the client. Returns everything written
/// and how it ended.
///
/// Panics if `feed` breaks its contract: `NeedMore` while holding a whole message, a reply
/// consuming nothing or more than the input, `Done` not accounting for every byte, or
/// anything but `Finished` after `Done` or an error.
pub fn drive(mut hs: Socks5Handshake, chunks: &[&[u8]]) -> (Vec<u8>, Outcome) {
    let mut buf: Vec<u8> = Vec::new();
    let mut written = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        buf.extend_from_slice(chunk);
        loop {
            assert!(!hs.is_finished());
            match hs.feed(&buf) {
                Ok(Progress::NeedMore) => {
                    assert!(
                        buf.len() < MAX_MESSAGE_LEN,
                        "NeedMore holding {} bytes",
                        buf.len()
                    );
                    break;
                }
                Ok(Progress::Reply { consumed, bytes }) => {
                    assert!(consumed > 0 && consumed <= buf.len());
                    assert!(!bytes.is_empty());
                    written.extend_from_slice(bytes);
                    buf.drain(..consumed);
                }
                Ok(Progress::Done {
                    consumed,
                    request,
                    early_data,
                }) => {
                    assert!(consumed <= buf.len());
                    assert_eq!(consumed + early_data, buf.len());
                    assert!(hs.is_finished());
                    let mut early = buf.split_off(consumed);
                    early.extend(chunks[i + 1..].iter().flat_map(|c| c.iter()));
                    assert_eq!(hs.feed(&early), Err(Socks5Error::Finished));
                    assert_eq!(hs.feed(&[]), Err(Socks5Error::Finished));
                    return (written, Outcome::Done(request, early));
                }
                Err(e) => {
                    assert!(hs.is_finished());
                    written.extend_from_slice(e.reply().unwrap_or_default());
                    assert_eq!(hs.feed(&buf), Err(Socks5Error::Finished));
                    assert_eq!(Socks5Error::Finished.reply(), None);
                    return (written, Outcome::Failed(e));
                }
            }
        }
    }
    (written, Outcome::Pending)
}
