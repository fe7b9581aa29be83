//! Node-to-node framings around a response cell, on its way from the central to a client.
//!
//! ```text
//! central → downstream (envelope):  relay_len u8 | relay id (1..=MAX_NODE_ID_LEN) | mailbox [16] | cell
//! downstream → relay   (delivery):  mailbox [16] | cell
//! client → relay   (registration):  secret [32]         (once, on the bi stream it reads cells from)
//! client → upstream       (route):  central_len u8 | central id   (once, first on each uni stream of cells)
//! ```
//!
//! A network may have several centrals; the route tells an upstream which one the cells of
//! that stream are sealed to. It names a node the upstream forwards to, nothing about the
//! user's streams.
//!
//! Each is one message of the transport's length-prefixed framing, so every parser here takes
//! exactly one whole message and refuses trailing or missing bytes. The cell is opaque
//! (sealed end to end); only its length is checked, against the directory's cell size. A
//! downstream forwards an envelope's tail, `mailbox | cell`, unchanged as the delivery.
//!
//! A mailbox's address (the `mailbox [16]` every downstream and the central see) is
//! `SHA-256("braid mailbox" ‖ secret)[..16]`; the secret itself goes only to the relay, over
//! the client's TLS link. The relay files a registration under the address its secret
//! hashes to, so knowing an address is not enough to take the mailbox over.
//!
//! **Per hop, like Tor's circuit ids.** The central does not write the address itself but
//! [`via_address`]`(address, downstream)`, so each downstream reads its own value, and no
//! downstream can derive another's (that takes the address). A downstream does not pass
//! it on as it got it: it delivers under [`hop_address`]`(link key, …)`, where the link
//! key comes from the TLS session of its link to the relay (an exporter both ends derive,
//! no one else). The relay, which knows each address, computes both steps for each mailbox
//! it holds and each downstream link. So no value a downstream reads reaches a relay or
//! another downstream.
//!
//! The central prepends the same envelope prefix to every cell of a path, so
//! [`write_envelope_prefix`] / [`encode_envelope_prefix`] build just the prefix once.

use rand_core::CryptoRng;
use ring::digest;
use thiserror::Error;

use crate::frame::{Mailbox, MailboxId, MAILBOX_ID_LEN, MAX_NODE_ID_LEN};
use crate::wire::{Reader, WireError};

/// Why an envelope, delivery or registration was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("truncated: the message ends inside its header")]
    Truncated,
    #[error("empty node id")]
    EmptyNodeId,
    #[error("node id of {0} bytes is longer than {MAX_NODE_ID_LEN}")]
    NodeIdTooLong(usize),
    #[error("node id is not UTF-8")]
    NodeIdNotUtf8,
    #[error("cell of {got} bytes, the cell size is {want}")]
    WrongCellSize { got: usize, want: usize },
    #[error("registration of {0} bytes, a mailbox secret is {MAILBOX_SECRET_LEN}")]
    WrongRegistrationLen(usize),
    #[error("route of {got} bytes names a central of {named} bytes")]
    WrongRouteLen { got: usize, named: usize },
}

impl From<WireError> for EnvelopeError {
    /// The parsers only read fixed fields through [`Reader`], which fails only by running out.
    fn from(_: WireError) -> Self {
        EnvelopeError::Truncated
    }
}

/// Largest envelope for this cell size (the transport's frame limit on the central →
/// downstream link): the longest relay id, the mailbox and the cell.
pub const fn max_envelope_len(cell_size: usize) -> usize {
    (1 + MAX_NODE_ID_LEN + MAILBOX_ID_LEN).saturating_add(cell_size)
}

/// The exact length of a delivery for this cell size (the downstream → relay frame limit).
pub const fn delivery_len(cell_size: usize) -> usize {
    MAILBOX_ID_LEN.saturating_add(cell_size)
}

/// Checks a relay id for the envelope: 1 to [`MAX_NODE_ID_LEN`] bytes.
fn check_relay(relay: &str) -> Result<u8, EnvelopeError> {
    check_id_len(relay.len())
}

/// A node id's length on the wire: 1 to [`MAX_NODE_ID_LEN`] bytes, as its `u8` prefix.
fn check_id_len(len: usize) -> Result<u8, EnvelopeError> {
    match len {
        0 => Err(EnvelopeError::EmptyNodeId),
        n if n > MAX_NODE_ID_LEN => Err(EnvelopeError::NodeIdTooLong(n)),
        // MAX_NODE_ID_LEN < 256.
        n => Ok(n as u8),
    }
}

/// Length of the envelope prefix for this relay id (`1 + relay + mailbox`).
pub fn envelope_prefix_len(relay: &str) -> usize {
    1 + relay.len() + MAILBOX_ID_LEN
}

/// Appends the envelope prefix `relay_len | relay | mailbox` for `to` to `out`; the cell
/// follows it. Nothing is written if the relay id is empty or too long.
pub fn write_envelope_prefix(to: &Mailbox, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    write_prefix(&to.relay, &to.id, out)
}

/// The envelope prefix for `to`, as [`write_envelope_prefix`] writes it.
pub fn encode_envelope_prefix(to: &Mailbox) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(envelope_prefix_len(&to.relay));
    write_envelope_prefix(to, &mut out)?;
    Ok(out)
}

fn write_prefix(relay: &str, mailbox: &MailboxId, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
    let len = check_relay(relay)?;
    out.reserve(envelope_prefix_len(relay));
    push_prefix(len, relay, mailbox, out);
    Ok(())
}

/// The prefix of a checked relay id (`len` is its length).
fn push_prefix(len: u8, relay: &str, mailbox: &MailboxId, out: &mut Vec<u8>) {
    out.push(len);
    out.extend_from_slice(relay.as_bytes());
    out.extend_from_slice(mailbox);
}

/// A central → downstream envelope, borrowed from the received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The relay to hand the cell to.
    pub relay: &'a str,
    /// The client's mailbox at that relay.
    pub mailbox: MailboxId,
    /// The sealed cell.
    pub cell: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Parses one whole envelope; the cell must be exactly `cell_size` bytes.
    pub fn parse(buf: &'a [u8], cell_size: usize) -> Result<Self, EnvelopeError> {
        let mut r = Reader::new(buf);
        let len = usize::from(r.u8()?);
        if len == 0 {
            return Err(EnvelopeError::EmptyNodeId);
        }
        if len > MAX_NODE_ID_LEN {
            return Err(EnvelopeError::NodeIdTooLong(len));
        }
        let relay = std::str::from_utf8(r.bytes(len)?).map_err(|_| EnvelopeError::NodeIdNotUtf8)?;
        // The rest is exactly the delivery the downstream forwards.
        let Delivery { mailbox, cell } = Delivery::parse(r.rest(), cell_size)?;
        Ok(Envelope {
            relay,
            mailbox,
            cell,
        })
    }

    /// Bytes [`encode_into`](Self::encode_into) appends.
    pub fn encoded_len(&self) -> usize {
        envelope_prefix_len(self.relay) + self.cell.len()
    }

    /// Appends the envelope to `out`; nothing is written if the relay id is empty or too long.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let len = check_relay(self.relay)?;
        out.reserve(self.encoded_len());
        push_prefix(len, self.relay, &self.mailbox, out);
        out.extend_from_slice(self.cell);
        Ok(())
    }

    /// The envelope as one message.
    pub fn to_vec(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// What the downstream hands the relay: the mailbox and the cell.
    pub fn delivery(&self) -> Delivery<'a> {
        Delivery {
            mailbox: self.mailbox,
            cell: self.cell,
        }
    }
}

/// A downstream → relay delivery, borrowed from the received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The client's mailbox at this relay.
    pub mailbox: MailboxId,
    /// The sealed cell.
    pub cell: &'a [u8],
}

impl<'a> Delivery<'a> {
    /// Parses one whole delivery; the cell must be exactly `cell_size` bytes.
    pub fn parse(buf: &'a [u8], cell_size: usize) -> Result<Self, EnvelopeError> {
        let mut r = Reader::new(buf);
        let mailbox = r.array::<MAILBOX_ID_LEN>()?;
        let cell = r.rest();
        if cell.len() != cell_size {
            return Err(EnvelopeError::WrongCellSize {
                got: cell.len(),
                want: cell_size,
            });
        }
        Ok(Delivery { mailbox, cell })
    }

    /// Bytes [`encode_into`](Self::encode_into) appends.
    pub fn encoded_len(&self) -> usize {
        MAILBOX_ID_LEN + self.cell.len()
    }

    /// Appends `mailbox | cell` to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.mailbox);
        out.extend_from_slice(self.cell);
    }

    /// The delivery as one message.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }
}

/// Bytes in a mailbox secret.
pub const MAILBOX_SECRET_LEN: usize = 32;

/// Domain separation for the address hash.
const ADDRESS_LABEL: &[u8] = b"braid mailbox";

/// A client's secret for one mailbox at one relay: random, fresh for every session. Only
/// the relay sees it; everyone else knows the mailbox by its [`address`](Self::address).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MailboxSecret([u8; MAILBOX_SECRET_LEN]);

impl MailboxSecret {
    /// A fresh random secret.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut s = [0u8; MAILBOX_SECRET_LEN];
        rng.fill_bytes(&mut s);
        MailboxSecret(s)
    }

    pub fn from_bytes(bytes: [u8; MAILBOX_SECRET_LEN]) -> Self {
        MailboxSecret(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; MAILBOX_SECRET_LEN] {
        &self.0
    }

    /// `SHA-256("braid mailbox" ‖ secret)`: its first [`MAILBOX_ID_LEN`] bytes are the
    /// address; a relay compares whole digests to tell the same secret from a colliding one.
    pub fn digest(&self) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(ADDRESS_LABEL);
        ctx.update(&self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The mailbox id envelopes and deliveries carry: the digest's first 16 bytes.
    pub fn address(&self) -> MailboxId {
        address_of(&self.digest())
    }
}

/// The address the central writes for a mailbox in envelopes to `downstream` (see the
/// module notes).
pub fn via_address(address: &MailboxId, downstream: &str) -> MailboxId {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, address);
    let tag = ring::hmac::sign(
        &key,
        &[b"braid mailbox via ", downstream.as_bytes()].concat(),
    );
    let mut id = [0u8; MAILBOX_ID_LEN];
    id.copy_from_slice(&tag.as_ref()[..MAILBOX_ID_LEN]);
    id
}

/// The TLS exporter label of a downstream → relay link's key ([`hop_address`]).
pub const HOP_KEY_LABEL: &[u8] = b"braid mailbox hop key";

/// One downstream → relay link's key for [`hop_address`], set up once per link (the HMAC
/// key schedule is not redone per cell).
#[derive(Clone)]
pub struct HopKey(ring::hmac::Key);

impl HopKey {
    pub fn new(link_key: &[u8; 32]) -> Self {
        HopKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, link_key))
    }

    /// [`hop_address`] under this link's key.
    pub fn address(&self, address: &MailboxId) -> MailboxId {
        let tag = ring::hmac::sign(&self.0, address);
        let mut id = [0u8; MAILBOX_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..MAILBOX_ID_LEN]);
        id
    }

    /// Rewrites a delivery's mailbox in place for this link (`mailbox | cell`; a message
    /// too short to hold a mailbox is left as it is and refused by the relay).
    pub fn rewrite_delivery(&self, delivery: &mut [u8]) {
        if let Some(at) = delivery.get_mut(..MAILBOX_ID_LEN) {
            let mut address = [0u8; MAILBOX_ID_LEN];
            address.copy_from_slice(at);
            at.copy_from_slice(&self.address(&address));
        }
    }
}

/// A mailbox address as it travels on one downstream → relay link (see the module notes).
pub fn hop_address(link_key: &[u8; 32], address: &MailboxId) -> MailboxId {
    HopKey::new(link_key).address(address)
}

/// [`HopKey::rewrite_delivery`] with a one-off key.
pub fn rewrite_delivery(link_key: &[u8; 32], delivery: &mut [u8]) {
    HopKey::new(link_key).rewrite_delivery(delivery)
}

/// The address a [`MailboxSecret::digest`] stands for (its first [`MAILBOX_ID_LEN`] bytes).
pub fn address_of(digest: &[u8; 32]) -> MailboxId {
    let mut id = [0u8; MAILBOX_ID_LEN];
    id.copy_from_slice(&digest[..MAILBOX_ID_LEN]);
    id
}

/// Never prints the secret (logs must not hand out mailboxes).
impl std::fmt::Debug for MailboxSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MailboxSecret(..)")
    }
}

/// A client's mailbox registration at a relay: the mailbox secret, alone in one message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registration {
    pub secret: MailboxSecret,
}

impl Registration {
    /// The exact length of a registration message (also the relay's frame limit for it).
    pub const LEN: usize = MAILBOX_SECRET_LEN;

    /// Parses one whole registration message.
    pub fn parse(buf: &[u8]) -> Result<Self, EnvelopeError> {
        let secret = <[u8; MAILBOX_SECRET_LEN]>::try_from(buf)
            .map_err(|_| EnvelopeError::WrongRegistrationLen(buf.len()))?;
        Ok(Registration {
            secret: MailboxSecret(secret),
        })
    }

    /// The registration message.
    pub fn encode(&self) -> [u8; Self::LEN] {
        self.secret.0
    }

    /// The address this registration claims.
    pub fn address(&self) -> MailboxId {
        self.secret.address()
    }
}

/// The first message of a client's uni stream to an upstream: the central its cells go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub central: &'a str,
}

impl<'a> Route<'a> {
    /// The longest route message (the upstream's frame limit for it).
    pub const MAX_LEN: usize = 1 + MAX_NODE_ID_LEN;

    /// Parses one whole route message.
    pub fn parse(buf: &'a [u8]) -> Result<Self, EnvelopeError> {
        let (&len, id) = buf.split_first().ok_or(EnvelopeError::Truncated)?;
        if id.len() != usize::from(len) {
            return Err(EnvelopeError::WrongRouteLen {
                got: buf.len(),
                named: usize::from(len),
            });
        }
        check_id_len(id.len())?;
        let central = std::str::from_utf8(id).map_err(|_| EnvelopeError::NodeIdNotUtf8)?;
        Ok(Route { central })
    }

    /// The route message; fails if the id is empty or too long.
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let len = check_relay(self.central)?;
        let mut out = Vec::with_capacity(1 + self.central.len());
        out.push(len);
        out.extend_from_slice(self.central.as_bytes());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn route_round_trips_and_refuses_bad_lengths() {
        let r = Route {
            central: "central-2",
        };
        let bytes = r.encode().unwrap();
        assert_eq!(bytes[0], 9);
        assert_eq!(Route::parse(&bytes), Ok(r));
        assert_eq!(Route::parse(&[]), Err(EnvelopeError::Truncated));
        assert_eq!(Route::parse(&[0]), Err(EnvelopeError::EmptyNodeId));
        assert!(matches!(
            Route::parse(&bytes[..5]),
            Err(EnvelopeError::WrongRouteLen { .. })
        ));
        assert_eq!(
            Route::parse(&[2, 0xff, 0xfe]),
            Err(EnvelopeError::NodeIdNotUtf8)
        );
        assert!(Route { central: "" }.encode().is_err());
    }

    proptest! {
        #[test]
        fn route_parse_never_panics_and_round_trips(buf in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(r) = Route::parse(&buf) {
                prop_assert_eq!(r.encode().unwrap(), buf);
            }
        }
    }

    const ID: MailboxId = [7; MAILBOX_ID_LEN];

    fn mailbox(relay: &str) -> Mailbox {
        Mailbox {
            relay: relay.into(),
            id: ID,
        }
    }

    /// The bytes the node wrote by hand before this module (session_task.rs
    /// `envelope_prefix`, downstream.rs, relay.rs, client overlay.rs): pinned.
    #[test]
    fn wire_layout_is_unchanged() {
        let prefix = encode_envelope_prefix(&mailbox("relay-1")).unwrap();
        let mut want = vec![7u8];
        want.extend_from_slice(b"relay-1");
        want.extend_from_slice(&[7; 16]);
        assert_eq!(prefix, want);
        assert_eq!(prefix.len(), envelope_prefix_len("relay-1"));

        let cell = [0xAB; 4];
        let env = Envelope {
            relay: "relay-1",
            mailbox: ID,
            cell: &cell,
        };
        let bytes = env.to_vec().unwrap();
        assert_eq!(bytes, [&want[..], &cell[..]].concat());
        assert_eq!(bytes.len(), env.encoded_len());
        assert_eq!(Envelope::parse(&bytes, 4), Ok(env));
        // The delivery is the envelope's tail, byte for byte.
        assert_eq!(env.delivery().to_vec(), &bytes[1 + 7..]);
        assert_eq!(Delivery::parse(&bytes[8..], 4), Ok(env.delivery()));
        let secret = MailboxSecret::from_bytes([5; 32]);
        assert_eq!(
            Registration {
                secret: secret.clone()
            }
            .encode(),
            [5; 32]
        );

        assert_eq!(MAILBOX_ID_LEN, 16);
        assert_eq!(MAX_NODE_ID_LEN, 32);
        assert_eq!(max_envelope_len(1024), 1 + 32 + 16 + 1024);
        assert_eq!(delivery_len(1024), 16 + 1024);
        assert_eq!(max_envelope_len(usize::MAX), usize::MAX);
    }

    #[test]
    fn longest_envelope_is_max_envelope_len() {
        let relay = "r".repeat(MAX_NODE_ID_LEN);
        let cell = vec![1u8; 1024];
        let env = Envelope {
            relay: &relay,
            mailbox: ID,
            cell: &cell,
        };
        let bytes = env.to_vec().unwrap();
        assert_eq!(bytes.len(), max_envelope_len(1024));
        assert_eq!(Envelope::parse(&bytes, 1024), Ok(env));
    }

    #[test]
    fn envelope_errors() {
        use EnvelopeError::*;
        let cell = [0u8; 8];
        let good = Envelope {
            relay: "ab",
            mailbox: ID,
            cell: &cell,
        }
        .to_vec()
        .unwrap();
        assert_eq!(Envelope::parse(&[], 8), Err(Truncated));
        // Cut inside the relay id and inside the mailbox.
        for cut in 1..1 + 2 + MAILBOX_ID_LEN {
            assert_eq!(Envelope::parse(&good[..cut], 8), Err(Truncated), "{cut}");
        }
        // Header complete, cell short, empty or long.
        assert_eq!(
            Envelope::parse(&good[..good.len() - 1], 8),
            Err(WrongCellSize { got: 7, want: 8 })
        );
        assert_eq!(
            Envelope::parse(&good[..3 + MAILBOX_ID_LEN], 8),
            Err(WrongCellSize { got: 0, want: 8 })
        );
        assert_eq!(
            Envelope::parse(&[&good[..], &[0]].concat(), 8),
            Err(WrongCellSize { got: 9, want: 8 })
        );
        assert_eq!(Envelope::parse(&[0; 64], 8), Err(EmptyNodeId));
        assert_eq!(Envelope::parse(&[33; 64], 8), Err(NodeIdTooLong(33)));
        assert_eq!(Envelope::parse(&[255], 8), Err(NodeIdTooLong(255)));
        let mut bad = good.clone();
        bad[1] = 0xC3;
        bad[2] = 0x28;
        assert_eq!(Envelope::parse(&bad, 8), Err(NodeIdNotUtf8));
        // Errors display something readable.
        assert_eq!(
            NodeIdTooLong(33).to_string(),
            "node id of 33 bytes is longer than 32"
        );
    }

    #[test]
    fn encoders_refuse_bad_relay_ids_and_write_nothing() {
        let long = "x".repeat(MAX_NODE_ID_LEN + 1);
        for (relay, err) in [
            ("", EnvelopeError::EmptyNodeId),
            (long.as_str(), EnvelopeError::NodeIdTooLong(33)),
        ] {
            let mut out = vec![9];
            assert_eq!(
                write_envelope_prefix(&mailbox(relay), &mut out),
                Err(err.clone())
            );
            assert_eq!(out, [9]);
            assert_eq!(encode_envelope_prefix(&mailbox(relay)), Err(err.clone()));
            let env = Envelope {
                relay,
                mailbox: ID,
                cell: &[1, 2],
            };
            assert_eq!(env.encode_into(&mut out), Err(err.clone()));
            assert_eq!(out, [9]);
            assert_eq!(env.to_vec(), Err(err));
        }
        // A multi-byte id counts in bytes: 11 × 3 bytes is too long.
        let wide = "€".repeat(11);
        assert_eq!(
            encode_envelope_prefix(&mailbox(&wide)),
            Err(EnvelopeError::NodeIdTooLong(33))
        );
    }

    #[test]
    fn delivery_errors() {
        use EnvelopeError::*;
        for n in 0..MAILBOX_ID_LEN {
            assert_eq!(Delivery::parse(&[0; 40][..n], 4), Err(Truncated), "{n}");
        }
        assert_eq!(
            Delivery::parse(&[0; MAILBOX_ID_LEN], 4),
            Err(WrongCellSize { got: 0, want: 4 })
        );
        assert_eq!(
            Delivery::parse(&[0; MAILBOX_ID_LEN + 5], 4),
            Err(WrongCellSize { got: 5, want: 4 })
        );
        let d = Delivery::parse(&[3; MAILBOX_ID_LEN + 4], 4).unwrap();
        assert_eq!((d.mailbox, d.cell), ([3; 16], &[3u8; 4][..]));
    }

    #[test]
    fn registration_errors() {
        for n in [0, 1, 16, 31, 33, 64] {
            assert_eq!(
                Registration::parse(&vec![0; n]),
                Err(EnvelopeError::WrongRegistrationLen(n))
            );
        }
        let r = Registration::parse(&[9; 32]).unwrap();
        assert_eq!(r.secret.as_bytes(), &[9; 32]);
        assert_eq!(r.encode(), [9; 32]);
        assert_eq!(Registration::LEN, 32);
        assert_eq!(
            EnvelopeError::WrongRegistrationLen(16).to_string(),
            "registration of 16 bytes, a mailbox secret is 32"
        );
    }

    /// The address is `SHA-256("braid mailbox" ‖ secret)[..16]`, pinned; the secret never
    /// shows in Debug output.
    #[test]
    fn address_is_the_pinned_hash_of_the_secret() {
        let secret = MailboxSecret::from_bytes([0; 32]);
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"braid mailbox");
        ctx.update(&[0; 32]);
        let want = ctx.finish();
        assert_eq!(&secret.digest()[..], want.as_ref());
        assert_eq!(&secret.address()[..], &want.as_ref()[..16]);
        assert_eq!(address_of(&secret.digest()), secret.address());
        // Known answer (computed independently: Python's hashlib).
        assert_eq!(
            secret.address(),
            [
                0xac, 0xe1, 0x3e, 0x36, 0x31, 0xe4, 0x5b, 0x8d, 0x96, 0x77, 0x5d, 0xce, 0xd8, 0xad,
                0x16, 0xf9
            ]
        );
        let r = Registration {
            secret: secret.clone(),
        };
        assert_eq!(r.address(), secret.address());
        assert_eq!(
            format!("{r:?}"),
            "Registration { secret: MailboxSecret(..) }"
        );
        // Fresh secrets give unrelated addresses.
        let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::seed_from_u64(3);
        let a = MailboxSecret::generate(&mut rng);
        let b = MailboxSecret::generate(&mut rng);
        assert_ne!(a, b);
        assert_ne!(a.address(), b.address());
        assert_ne!(
            a.address()[..],
            a.as_bytes()[..16],
            "the address is not the secret"
        );
    }

    /// A relay id of 1..=MAX_NODE_ID_LEN bytes, multi-byte characters included.
    fn arb_relay() -> impl Strategy<Value = String> {
        "[a-z0-9.é€😀-]{1,32}".prop_filter("fits in MAX_NODE_ID_LEN bytes", |s| {
            s.len() <= MAX_NODE_ID_LEN
        })
    }

    proptest! {
        #[test]
        fn envelope_round_trips(
            relay in arb_relay(),
            mailbox in any::<MailboxId>(),
            cell in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let env = Envelope { relay: &relay, mailbox, cell: &cell };
            let bytes = env.to_vec().unwrap();
            prop_assert_eq!(bytes.len(), env.encoded_len());
            prop_assert!(bytes.len() <= max_envelope_len(cell.len()));
            prop_assert_eq!(Envelope::parse(&bytes, cell.len()), Ok(env));
            // Prefix then cell is the same message.
            let mut alt = encode_envelope_prefix(&Mailbox { relay: relay.clone(), id: mailbox }).unwrap();
            alt.extend_from_slice(&cell);
            prop_assert_eq!(&alt, &bytes);
            // The delivery the downstream forwards is the envelope's tail.
            let d = env.delivery().to_vec();
            prop_assert_eq!(&d[..], &bytes[1 + relay.len()..]);
            prop_assert_eq!(Delivery::parse(&d, cell.len()), Ok(env.delivery()));
            // Any other cell size is refused.
            prop_assert!(Envelope::parse(&bytes, cell.len() + 1).is_err());
        }

        #[test]
        fn delivery_and_registration_round_trip(
            mailbox in any::<MailboxId>(),
            cell in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let d = Delivery { mailbox, cell: &cell };
            let bytes = d.to_vec();
            prop_assert_eq!(bytes.len(), delivery_len(cell.len()));
            prop_assert_eq!(Delivery::parse(&bytes, cell.len()), Ok(d));
            let r = Registration { secret: MailboxSecret::from_bytes([mailbox, mailbox].concat().try_into().unwrap()) };
            prop_assert_eq!(Registration::parse(&r.encode()), Ok(r));
        }

        /// Arbitrary bytes: every parser returns a value or a typed error, never panics, and
        /// what parses re-encodes to exactly the input.
        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cell_size in 0usize..256,
        ) {
            match Envelope::parse(&bytes, cell_size) {
                Ok(env) => {
                    prop_assert_eq!(env.to_vec().unwrap(), bytes.clone());
                    prop_assert!(bytes.len() <= max_envelope_len(cell_size));
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            if let Ok(d) = Delivery::parse(&bytes, cell_size) {
                prop_assert_eq!(d.to_vec(), bytes.clone());
                prop_assert_eq!(bytes.len(), delivery_len(cell_size));
            }
            if let Ok(r) = Registration::parse(&bytes) {
                prop_assert_eq!(&r.encode()[..], &bytes[..]);
            }
        }

        /// Well-formed headers with arbitrary relay bytes and lengths: parse accepts exactly
        /// the valid ones.
        #[test]
        fn header_fields_are_checked(
            len in any::<u8>(),
            relay in proptest::collection::vec(any::<u8>(), 0..40),
            cell_size in 0usize..64,
        ) {
            let mut bytes = vec![len];
            bytes.extend_from_slice(&relay);
            bytes.extend_from_slice(&ID);
            bytes.resize(bytes.len() + cell_size, 0);
            let got = Envelope::parse(&bytes, cell_size);
            let n = usize::from(len);
            let valid = (1..=MAX_NODE_ID_LEN).contains(&n)
                && n == relay.len()
                && std::str::from_utf8(&relay).is_ok();
            prop_assert_eq!(got.is_ok(), valid, "{:?}", got);
        }
    }
}
