//! The relay mailbox path (`braid_proto::envelope`: `Registration`, `MailboxSecret`,
//! `address_of`, the per-hop addresses `via_address` / `hop_address` / `rewrite_delivery`;
//! `braid_proto::frame`: the `Mailboxes` frame), as the client, a hostile client, the
//! central, the downstreams and the relay use it. The relay's own table
//! (`node/src/relay.rs`, `Registry`) is not sans-IO, so it is not fuzzed here; its rules are
//! modelled on top of what proto hands the relay: file under `address_of(digest)`, the same
//! digest takes over, another digest for a held address is refused; a delivery on a link
//! from downstream `d` with link key `k` is for the held address `a` with
//! `hop_address(k, via_address(a, d))` equal to its mailbox.
//!
//! The first input byte picks a mode (`mode % 2`):
//!
//! 0. `flip u8 | message`: the message is one registration frame as the relay reads it.
//!    `Registration::parse` never panics; it accepts exactly the 32-byte messages and
//!    otherwise says `WrongRegistrationLen(len)`; what parses re-encodes to the input byte
//!    for byte and parses back equal (same `Hash`); the secret is the message; `digest()`
//!    is SHA-256("braid mailbox" ‖ secret) computed here with another implementation
//!    (`sha2`, not the `ring` proto uses); `address()` is its first 16 bytes, equal to
//!    `address_of(digest)` (the key the relay files under) and to `secret.address()` (the
//!    id the client announces), and not the secret's own first bytes; `Debug` never shows
//!    the secret; the message with bit `flip` flipped is another secret with another
//!    digest and another address. The same message as a delivery through
//!    `rewrite_delivery` (link key `[flip; 32]`): its first 16 bytes become
//!    `hop_address(key, them)` (HMAC-SHA256(key, address)[..16], computed here), the rest
//!    is untouched, a message under 16 bytes is left as it is.
//! 1. structured (`arbitrary`): a client's mailboxes (relay id, secret given or drawn by
//!    `MailboxSecret::generate`), up to 4 downstreams (id, link key material), forged
//!    registrations (a victim's secret with bytes changed, or built from its address),
//!    malformed registration frames, the relays the central's directory knows, a cell
//!    size. Walked end to end: the client registers each secret (`Registration::encode`)
//!    and announces `Mailbox { relay, address() }` in a `Mailboxes` frame after an ack
//!    block; the frame encodes to `encoded_len` bytes (refused exactly for ids over 255
//!    bytes or over 255 boxes) and `parse_cell_body` gives the frame back (refused exactly
//!    for ids over `MAX_NODE_ID_LEN`), and a cut frame is `Truncated`;
//!    `MailboxPolicy::sanitize` keeps exactly the directory's relays, first box of each, in
//!    order. For each kept box and each downstream: the central's envelope carries
//!    `via_address(address, downstream)` (HMAC-SHA256(address, "braid mailbox via " ‖
//!    downstream)[..16], computed here; not the address; different for different
//!    downstreams); it parses at the downstream to that relay and value; the delivery,
//!    rewritten for the link, carries `hop_address` of it and the cell unchanged (neither
//!    the address nor the downstream's value reaches the relay); parsed at the relay and
//!    resolved through its link table, it names the address the relay filed from the
//!    client's registration of that very secret (digest checked independently), after
//!    every forgery: no forged secret ever lands on a victim's address, an honest client's
//!    registration is never refused, malformed frames change nothing, and no two held
//!    addresses share a value on one link.
#![no_main]

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use arbitrary::Arbitrary;
use braid_fuzz::{structured, FuzzRng, Input};
use braid_proto::envelope::{
    address_of, encode_envelope_prefix, envelope_prefix_len, hop_address, rewrite_delivery,
    via_address, Delivery, Envelope, EnvelopeError, MailboxSecret, Registration,
    MAILBOX_SECRET_LEN,
};
use braid_proto::frame::{
    parse_cell_body, AckBlock, Frame, Mailbox, MailboxId, MAILBOX_ID_LEN, MAX_NODE_ID_LEN,
};
use braid_proto::session::MailboxPolicy;
use braid_proto::wire::{WireError, Writer};
use libfuzzer_sys::fuzz_target;
use rand_core::RngCore;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 2 {
        0 => {
            let mut inp = Input::new(rest);
            let flip = inp.u8();
            raw(flip, inp.rest());
        }
        _ => structured(rest, path),
    }
});

/// SHA-256("braid mailbox" ‖ secret), written from the documented layout with another
/// SHA-256 implementation than the code under test.
fn model_digest(secret: &[u8; MAILBOX_SECRET_LEN]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"braid mailbox");
    h.update(secret);
    h.finalize().into()
}

fn model_address(secret: &[u8; MAILBOX_SECRET_LEN]) -> MailboxId {
    model_digest(secret)[..MAILBOX_ID_LEN]
        .try_into()
        .expect("16 bytes")
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, independent of the `ring::hmac` proto uses.
fn model_hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha256(&[key]));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha256(&[&ipad, msg]);
    sha256(&[&opad, &inner])
}

fn first16(b: &[u8; 32]) -> MailboxId {
    b[..MAILBOX_ID_LEN].try_into().expect("16 bytes")
}

/// What `via_address(address, downstream)` is, from its code: HMAC keyed by the address.
fn model_via(address: &MailboxId, downstream: &str) -> MailboxId {
    first16(&model_hmac(
        address,
        &[&b"braid mailbox via "[..], downstream.as_bytes()].concat(),
    ))
}

/// What `hop_address(link_key, address)` is, from its code: HMAC keyed by the link key.
fn model_hop(link_key: &[u8; 32], address: &MailboxId) -> MailboxId {
    first16(&model_hmac(link_key, address))
}

fn hash_of<T: Hash>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// Everything a parsed registration must satisfy; `msg` is the frame it came from.
fn check_registration(r: &Registration, msg: &[u8]) {
    assert_eq!(msg.len(), Registration::LEN);
    assert_eq!(Registration::LEN, MAILBOX_SECRET_LEN);
    let secret: [u8; MAILBOX_SECRET_LEN] = msg.try_into().expect("32 bytes");
    // Round trip, both ways.
    assert_eq!(r.encode(), secret);
    assert_eq!(r.secret.as_bytes(), &secret);
    let again = Registration::parse(&r.encode()).expect("an encoded registration parses");
    assert_eq!(&again, r);
    assert_eq!(hash_of(&again), hash_of(r));
    assert_eq!(
        Registration {
            secret: MailboxSecret::from_bytes(secret)
        },
        *r
    );
    // The address, as every party derives it.
    let digest = r.secret.digest();
    assert_eq!(digest, model_digest(&secret), "digest is not SHA-256(label ‖ secret)");
    let want = model_address(&secret);
    assert_eq!(r.address(), want, "address is not the digest's first 16 bytes");
    assert_eq!(r.secret.address(), want);
    assert_eq!(address_of(&digest), want, "the relay files under another key");
    assert_ne!(&want[..], &secret[..MAILBOX_ID_LEN], "the address is the secret");
    // Logs never hand out the mailbox.
    assert_eq!(format!("{r:?}"), "Registration { secret: MailboxSecret(..) }");
    assert_eq!(format!("{:?}", r.secret), "MailboxSecret(..)");
}

/// The downstream's rewrite of a delivery for its link, on arbitrary bytes.
fn rewrite(key: &[u8; 32], msg: &[u8]) {
    let mut d = msg.to_vec();
    rewrite_delivery(key, &mut d);
    assert_eq!(d.len(), msg.len());
    if msg.len() < MAILBOX_ID_LEN {
        assert_eq!(d, msg, "a short message was changed");
        return;
    }
    let address: MailboxId = msg[..MAILBOX_ID_LEN].try_into().expect("16 bytes");
    let hop = hop_address(key, &address);
    assert_eq!(hop, model_hop(key, &address), "hop_address is not HMAC(link key, address)");
    assert_eq!(&d[..MAILBOX_ID_LEN], &hop[..]);
    assert_eq!(&d[MAILBOX_ID_LEN..], &msg[MAILBOX_ID_LEN..], "the cell was changed");
    assert_ne!(hop, address, "the relay sees the downstream's value");
    let parsed = Delivery::parse(&d, msg.len() - MAILBOX_ID_LEN).expect("a delivery");
    assert_eq!(parsed.mailbox, hop);
}

fn raw(flip: u8, msg: &[u8]) {
    rewrite(&[flip; 32], msg);
    match Registration::parse(msg) {
        Ok(r) => {
            check_registration(&r, msg);
            // One bit more or less of the secret: another mailbox altogether.
            let mut other = r.encode();
            other[usize::from(flip) / 8] ^= 1 << (flip % 8);
            let o = Registration::parse(&other).expect("32 bytes parse");
            check_registration(&o, &other);
            assert_ne!(o, r);
            assert_ne!(o.secret.digest(), r.secret.digest());
            assert_ne!(o.address(), r.address(), "one flipped bit keeps the address");
            // Cut or extended by a byte: refused.
            for bad in [&msg[..msg.len() - 1], &[msg, &[flip][..]].concat()[..]] {
                assert_eq!(
                    Registration::parse(bad),
                    Err(EnvelopeError::WrongRegistrationLen(bad.len()))
                );
            }
        }
        Err(e) => {
            assert_ne!(msg.len(), Registration::LEN, "a 32-byte registration refused");
            assert_eq!(e, EnvelopeError::WrongRegistrationLen(msg.len()));
            assert!(e.to_string().contains(&msg.len().to_string()), "{e}");
        }
    }
}

#[derive(Debug, Arbitrary)]
enum SecretSrc {
    Bytes([u8; MAILBOX_SECRET_LEN]),
    /// `MailboxSecret::generate` with `FuzzRng::new(seed)`, as the client draws them.
    Drawn(u64),
}

#[derive(Debug, Arbitrary)]
struct ClientBox {
    relay: String,
    secret: SecretSrc,
}

#[derive(Debug, Arbitrary)]
enum Forgery {
    /// The victim's secret with `xor` applied (all-zero `xor` is the victim itself: the
    /// same client reconnected, which may take over).
    Near { victim: u8, xor: [u8; MAILBOX_SECRET_LEN] },
    /// Someone who knows the victim's address (every downstream and the central do) and
    /// builds a secret from it.
    FromAddress { victim: u8, tail: [u8; MAILBOX_ID_LEN] },
    /// A registration frame of any length at any relay of the client's.
    Frame { relay: u8, bytes: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
struct Downstream {
    id: String,
    /// Stands for the downstream's TLS sessions: the key of its link to relay `r` is
    /// SHA-256(key ‖ r).
    key: [u8; 8],
}

#[derive(Debug, Arbitrary)]
struct PathInput {
    boxes: Vec<ClientBox>,
    /// The first 4 are used; none means one fixed downstream.
    downstreams: Vec<Downstream>,
    /// Box `i`'s relay is in the directory iff bit `i % 64` is set.
    known: u64,
    ack: (u64, u64),
    /// Zero bytes after the frame (padding) and where to cut it.
    pad: u8,
    cut: u16,
    cell_size: u8,
    cell_fill: u8,
    forgeries: Vec<Forgery>,
}

/// The relay's filing rule (node/src/relay.rs `Registry::register`, by address), over the
/// digests proto computes: `address_of(digest)` is the key; the same digest takes over,
/// another digest for a held address is refused.
#[derive(Default)]
struct RelayModel {
    boxes: HashMap<MailboxId, [u8; 32]>,
}

/// The link key of downstream `d`'s link to `relay` (distinct TLS sessions, distinct keys).
fn link_key(d: &Downstream, relay: &str) -> [u8; 32] {
    sha256(&[&d.key, relay.as_bytes()])
}

impl RelayModel {
    /// What the relay does with one registration frame: parse, digest, file. `Ok(true)`
    /// if filed, `Ok(false)` if held by another digest, `Err` if malformed.
    fn register(&mut self, frame: &[u8]) -> Result<bool, EnvelopeError> {
        let r = Registration::parse(frame)?;
        check_registration(&r, frame);
        let digest = r.secret.digest();
        let address = address_of(&digest);
        match self.boxes.get(&address) {
            Some(held) if *held != digest => Ok(false),
            _ => {
                self.boxes.insert(address, digest);
                Ok(true)
            }
        }
    }

    /// The relay's link table for one downstream link (node: `Registry::add_link`,
    /// `link_address`): the value each held address arrives under on it. No two held
    /// addresses may share one (the relay could not tell their cells apart).
    fn link_table(&self, key: &[u8; 32], downstream: &str) -> HashMap<MailboxId, MailboxId> {
        let mut t = HashMap::new();
        for address in self.boxes.keys() {
            let hop = hop_address(key, &via_address(address, downstream));
            let clash = t.insert(hop, *address);
            assert!(clash.is_none(), "two mailboxes under one address on a link");
        }
        t
    }
}

fn secret_of(src: &SecretSrc) -> MailboxSecret {
    match src {
        SecretSrc::Bytes(b) => MailboxSecret::from_bytes(*b),
        SecretSrc::Drawn(seed) => {
            let s = MailboxSecret::generate(&mut FuzzRng::new(*seed));
            let mut want = [0u8; MAILBOX_SECRET_LEN];
            FuzzRng::new(*seed).fill_bytes(&mut want);
            assert_eq!(s.as_bytes(), &want, "generate is not the RNG's 32 bytes");
            s
        }
    }
}

fn path(inp: PathInput) {
    // Client: one secret per box, registered at its relay, announced by address.
    let secrets: Vec<MailboxSecret> = inp.boxes.iter().map(|b| secret_of(&b.secret)).collect();
    let announced: Vec<Mailbox> = inp
        .boxes
        .iter()
        .zip(&secrets)
        .map(|(b, s)| {
            let reg = Registration { secret: s.clone() };
            let id = reg.address();
            assert_eq!(id, s.address());
            Mailbox {
                relay: b.relay.clone(),
                id,
            }
        })
        .collect();
    let mut relays: HashMap<&str, RelayModel> = HashMap::new();
    for (b, s) in inp.boxes.iter().zip(&secrets) {
        let frame = Registration { secret: s.clone() }.encode();
        let filed = relays.entry(&b.relay).or_default().register(&frame);
        // An honest client's registration is never refused: its other secrets at this
        // relay have other addresses, and the same secret takes over.
        assert_eq!(filed, Ok(true), "honest registration refused");
    }

    // Client → central: the Mailboxes frame after an ack block.
    let Some(announced) = mailboxes_frame(&inp, announced) else {
        return;
    };

    // Central: the directory's relays, first box of each.
    let known: HashSet<&str> = inp
        .boxes
        .iter()
        .enumerate()
        .filter(|(i, _)| inp.known >> (i % 64) & 1 == 1)
        .map(|(_, b)| b.relay.as_str())
        .collect();
    let mut seen = HashSet::new();
    let kept_idx: Vec<usize> = (0..announced.len())
        .filter(|&i| known.contains(announced[i].relay.as_str()) && seen.insert(&announced[i].relay))
        .collect();
    let kept = MailboxPolicy::sanitize(announced.clone(), |r| known.contains(r));
    let want: Vec<Mailbox> = kept_idx.iter().map(|&i| announced[i].clone()).collect();
    assert_eq!(kept, want, "sanitize");

    // Hostile registrations at the relays, before any cell arrives.
    for f in &inp.forgeries {
        forge(f, &inp, &secrets, &mut relays);
    }

    // Central → each downstream → relay, for every kept box.
    let fixed = [Downstream {
        id: "downstream-1".into(),
        key: [0; 8],
    }];
    let downstreams = match inp.downstreams.len() {
        0 => &fixed[..],
        n => &inp.downstreams[..n.min(4)],
    };
    let cell_size = usize::from(inp.cell_size);
    let cell = vec![inp.cell_fill; cell_size];
    // The relay's link tables, by (relay, downstream), built after every registration.
    let mut tables: HashMap<(&str, usize), HashMap<MailboxId, MailboxId>> = HashMap::new();
    for (&i, mb) in kept_idx.iter().zip(&kept) {
        let mut vias: HashMap<&str, MailboxId> = HashMap::new();
        for (j, ds) in downstreams.iter().enumerate() {
            // The central writes the downstream's own value for the mailbox.
            let via = via_address(&mb.id, &ds.id);
            assert_eq!(via, model_via(&mb.id, &ds.id), "via_address is not HMAC(address, label ‖ downstream)");
            assert_ne!(via, mb.id, "the downstream reads the address itself");
            if let Some(other) = vias.insert(&ds.id, via) {
                assert_eq!(other, via);
            }
            let to = Mailbox {
                relay: mb.relay.clone(),
                id: via,
            };
            let prefix = match encode_envelope_prefix(&to) {
                Ok(p) => p,
                Err(e) => {
                    // The frame carries 0..=MAX_NODE_ID_LEN bytes; the envelope needs one.
                    assert!(mb.relay.is_empty());
                    assert_eq!(e, EnvelopeError::EmptyNodeId);
                    continue;
                }
            };
            assert_eq!(prefix.len(), envelope_prefix_len(&mb.relay));
            let bytes = [&prefix[..], &cell[..]].concat();
            // Downstream: parse, cut the delivery, rewrite it for its link to the relay.
            let env = Envelope::parse(&bytes, cell_size).expect("the central's envelope parses");
            assert_eq!((env.relay, env.mailbox, env.cell), (&mb.relay[..], via, &cell[..]));
            let mut delivery = env.delivery().to_vec();
            assert_eq!(&delivery[..], &bytes[1 + mb.relay.len()..]);
            let key = link_key(ds, &mb.relay);
            rewrite_delivery(&key, &mut delivery);
            let hop = model_hop(&key, &via);
            assert_eq!(&delivery[..MAILBOX_ID_LEN], &hop[..], "rewrite_delivery");
            assert_eq!(&delivery[MAILBOX_ID_LEN..], &cell[..], "the cell was changed");
            assert_ne!(hop, via, "the relay sees the downstream's value");
            assert_ne!(hop, mb.id, "the relay sees the central's address on the wire");
            // Relay: parse, resolve through the link's table, find the registration.
            let d = Delivery::parse(&delivery, cell_size).expect("the delivery parses");
            let relay = relays.get(mb.relay.as_str()).expect("the client registered there");
            let address = tables
                .entry((mb.relay.as_str(), j))
                .or_insert_with(|| relay.link_table(&key, &ds.id))
                .get(&d.mailbox)
                .copied()
                .expect("the relay resolves the delivery");
            assert_eq!(address, mb.id, "resolved to another mailbox");
            let held = relay.boxes.get(&address).expect("the mailbox is filed");
            assert_eq!(*held, model_digest(secrets[i].as_bytes()), "the cell goes to another secret");
        }
        // Distinct downstreams read distinct values.
        let distinct: HashSet<MailboxId> = vias.values().copied().collect();
        assert_eq!(distinct.len(), vias.len(), "two downstreams read one value");
    }
}

/// Encodes the client's boxes as a `Mailboxes` frame after an ack block and parses the cell
/// body back as the central does; returns the boxes the central reads, if any.
fn mailboxes_frame(inp: &PathInput, boxes: Vec<Mailbox>) -> Option<Vec<Mailbox>> {
    let ack = AckBlock {
        cum: inp.ack.0,
        credit: inp.ack.1,
        ranges: Vec::new(),
    };
    let frame = Frame::Mailboxes { boxes };
    let Frame::Mailboxes { boxes } = &frame else {
        unreachable!()
    };
    let len = frame.encoded_len();
    let head = ack.encoded_len();
    let mut buf = vec![0u8; head + len + usize::from(inp.pad % 4)];
    let mut w = Writer::new(&mut buf);
    ack.write_onto(&mut w).expect("ack fits");
    let wire_ok = boxes.len() <= 255 && boxes.iter().all(|b| b.relay.len() <= 255);
    match frame.write_onto(&mut w) {
        Ok(()) => {
            assert!(wire_ok);
            assert_eq!(w.position(), head + len, "encoded_len");
        }
        Err(e) => {
            assert!(!wire_ok, "Mailboxes frame refused: {e:?}");
            assert_eq!(e, WireError::TooLong);
            return None;
        }
    }
    let parsed = parse_cell_body(&buf);
    let first_long = boxes.iter().position(|b| b.relay.len() > MAX_NODE_ID_LEN);
    match (&parsed, first_long) {
        (Ok((a, frames)), None) => {
            assert_eq!(a, &ack);
            assert_eq!(frames, &[frame.clone()], "Mailboxes frame round trip");
        }
        (Err(e), Some(_)) => assert_eq!(e, &WireError::TooLong),
        _ => panic!("parse_cell_body {parsed:?}, first long id {first_long:?}"),
    }
    // Cut inside the frame (after its type byte): truncated, or the long id before the cut.
    if len > 1 {
        let cut = head + 1 + usize::from(inp.cut) % (len - 1);
        let got = parse_cell_body(&buf[..cut]);
        match first_long {
            None => assert_eq!(got, Err(WireError::Truncated), "cut at {cut}"),
            Some(_) => assert!(
                matches!(got, Err(WireError::Truncated) | Err(WireError::TooLong)),
                "{got:?}"
            ),
        }
    }
    parsed.ok().map(|_| boxes.clone())
}

fn forge(
    f: &Forgery,
    inp: &PathInput,
    secrets: &[MailboxSecret],
    relays: &mut HashMap<&str, RelayModel>,
) {
    let n = secrets.len();
    if n == 0 {
        return;
    }
    let (v, forged) = match f {
        Forgery::Near { victim, xor } => {
            let v = usize::from(*victim) % n;
            let mut b = *secrets[v].as_bytes();
            b.iter_mut().zip(xor).for_each(|(x, m)| *x ^= m);
            (v, b)
        }
        Forgery::FromAddress { victim, tail } => {
            let v = usize::from(*victim) % n;
            let mut b = [0u8; MAILBOX_SECRET_LEN];
            b[..MAILBOX_ID_LEN].copy_from_slice(&secrets[v].address());
            b[MAILBOX_ID_LEN..].copy_from_slice(tail);
            (v, b)
        }
        Forgery::Frame { relay, bytes } => {
            let b = &inp.boxes[usize::from(*relay) % n];
            let model = relays.get_mut(b.relay.as_str()).expect("registered");
            let before = model.boxes.clone();
            match model.register(bytes) {
                Err(e) => {
                    assert_eq!(e, EnvelopeError::WrongRegistrationLen(bytes.len()));
                    assert_eq!(model.boxes, before, "a malformed frame changed the relay");
                }
                Ok(_) => assert_eq!(bytes.len(), Registration::LEN),
            }
            return;
        }
    };
    let victim = &secrets[v];
    let model = relays
        .get_mut(inp.boxes[v].relay.as_str())
        .expect("registered");
    let frame = Registration {
        secret: MailboxSecret::from_bytes(forged),
    }
    .encode();
    let filed = model.register(&frame).expect("32 bytes parse");
    let r = Registration::parse(&frame).expect("32 bytes parse");
    if forged == *victim.as_bytes() {
        // The victim itself, reconnecting: takes over its own address.
        assert!(filed);
        assert_eq!(r.address(), victim.address());
    } else {
        assert_ne!(r.secret.digest(), victim.digest());
        assert_ne!(r.address(), victim.address(), "a forged secret hits the victim's address");
        // So it lands elsewhere (or is refused there), and the victim's mailbox still holds
        // the victim's digest.
        assert_eq!(
            model.boxes.get(&victim.address()),
            Some(&model_digest(victim.as_bytes()))
        );
    }
}
