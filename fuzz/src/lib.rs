//! Helpers shared by the fuzz targets and by `examples/gen_seeds.rs`.
//!
//! Everything here is deterministic: the fuzz targets rebuild the same keys and the same
//! "known good" handshake messages that the seed generator wrote into `seeds/`, so a target
//! can tell an input that *is* one of those honest messages (which must be accepted) from
//! anything else (which must be refused: a mutation cannot carry a valid AEAD tag).

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use braid_proto::aead::AeadAlgorithm;
use braid_proto::cell::{
    handshake_message, Direction, DirectionKeys, HEADER_LEN, MAX_CELL_SIZE, MIN_CELL_SIZE,
};
use braid_proto::frame::Mailbox;
use braid_proto::inner::{self, OpenRequest, OpenStatus, RecordOpener, RecordSealer};
use braid_proto::noise::{self, NkInitiator, StaticKeypair};
use braid_proto::session::{PendingSession, SessionConfig, SessionHello};
use braid_proto::TargetAddr;
use rand_core::{CryptoRng, RngCore};

/// A deterministic RNG (SplitMix64). Only for fuzzing: the protocol code takes its
/// randomness as an argument, so the targets can replay a handshake exactly.
#[derive(Debug, Clone)]
pub struct FuzzRng(u64);

impl FuzzRng {
    pub fn new(seed: u64) -> Self {
        FuzzRng(seed ^ 0x6a09_e667_f3bc_c908)
    }
}

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

impl CryptoRng for FuzzRng {}

/// A little reader over the fuzz input for targets that take raw bytes with a few
/// parameters in front (so that seeds stay readable byte strings).
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Runs `f` on the whole of `bytes` decoded as a `T` (`arbitrary_take_rest`), for the
/// structured modes of a target; bytes that do not decode are skipped.
pub fn structured<'a, T: Arbitrary<'a>>(bytes: &'a [u8], f: impl FnOnce(T)) {
    if let Ok(value) = T::arbitrary_take_rest(Unstructured::new(bytes)) {
        f(value);
    }
}

// ---------------------------------------------------------------------------------------
// Cells

/// The base key of the fixed cell keys (`cell` target, raw mode).
pub const CELL_BASE: [u8; 32] = [0x42; 32];
/// A small epoch so that raw cells exercise the epoch check and the key cache.
pub const CELL_EPOCH_CELLS: u64 = 16;
/// Direction of the fixed cell keys.
pub const CELL_DIR: Direction = Direction::ClientToCentral;

/// A valid cell size from any `u16`: `MIN_CELL_SIZE..=MAX_CELL_SIZE`.
pub fn cell_size(x: u16) -> usize {
    MIN_CELL_SIZE + usize::from(x) % (MAX_CELL_SIZE - MIN_CELL_SIZE + 1)
}

/// Where a handshake cell's message ends: the header, the `u16` length and the message.
pub fn handshake_msg_end(cell: &[u8]) -> usize {
    HEADER_LEN + 2 + handshake_message(cell).expect("a handshake cell").len()
}

pub fn cell_keys() -> DirectionKeys {
    DirectionKeys::new(
        CELL_BASE,
        AeadAlgorithm::Aes256Gcm,
        CELL_DIR,
        CELL_EPOCH_CELLS,
    )
}

// ---------------------------------------------------------------------------------------
// Noise NK

pub const HS_PROLOGUE: &[u8] = b"braid fuzz prologue";

/// The responder of the raw handshake modes.
pub fn hs_responder() -> StaticKeypair {
    StaticKeypair::from_secret([7; 32])
}

/// Honest message-1 payloads of the known handshakes.
pub const HS_PAYLOADS: [&[u8]; 4] = [b"", b"hello", b"open example.com:443", &[0u8; 300]];

/// Honest message 1 number `i` (RNG seed `i`, payload `HS_PAYLOADS[i]`).
pub fn hs_msg1(i: usize) -> Vec<u8> {
    let (_, m) = noise::initiate(
        &mut FuzzRng::new(i as u64),
        &hs_responder().public(),
        HS_PROLOGUE,
        HS_PAYLOADS[i],
    )
    .expect("honest initiate");
    m
}

pub fn known_msg1s() -> &'static [Vec<u8>] {
    static K: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    K.get_or_init(|| (0..HS_PAYLOADS.len()).map(hs_msg1).collect())
}

/// RNG seeds of the fixed initiator (raw message-2 mode) and of the honest responder.
pub const HS_INIT_SEED: u64 = 100;
pub const HS_REPLY_SEED: u64 = 200;

/// The fixed initiator waiting for message 2, and its message 1.
pub fn hs_initiator() -> (NkInitiator, Vec<u8>) {
    noise::initiate(
        &mut FuzzRng::new(HS_INIT_SEED),
        &hs_responder().public(),
        HS_PROLOGUE,
        b"",
    )
    .expect("honest initiate")
}

/// The honest message 2 for the fixed initiator, carrying `payload`.
pub fn hs_honest_msg2(payload: &[u8]) -> Vec<u8> {
    let (_, m1) = hs_initiator();
    let (resp, _) = noise::respond(&hs_responder(), HS_PROLOGUE, &m1).expect("honest respond");
    let (m2, _) = resp
        .reply(&mut FuzzRng::new(HS_REPLY_SEED), payload)
        .expect("honest reply");
    m2
}

// ---------------------------------------------------------------------------------------
// Outer session

pub fn central_key() -> StaticKeypair {
    StaticKeypair::from_secret([9; 32])
}

pub const SESSION_CELL_SIZE: usize = 1024;

pub fn session_cfg() -> SessionConfig {
    SessionConfig::with_cell_size(SESSION_CELL_SIZE)
}

pub fn known_session_hello(i: usize) -> SessionHello {
    let mailboxes = (0..i)
        .map(|j| Mailbox {
            relay: format!("relay-{j}"),
            id: [j as u8; 16],
        })
        .collect();
    SessionHello {
        window_cells: 64 << i,
        mailboxes,
        limits_pass: Vec::new(),
    }
}

/// Honest Hello cell number `i` (RNG seed `1000 + i`).
pub fn known_hello_cell(i: usize) -> Vec<u8> {
    PendingSession::start(
        &mut FuzzRng::new(1000 + i as u64),
        session_cfg(),
        &central_key().public(),
        &known_session_hello(i),
        0,
        0,
    )
    .expect("honest start")
    .hello_cell()
    .to_vec()
}

pub const KNOWN_HELLOS: usize = 3;

pub fn known_hello_cells() -> &'static [Vec<u8>] {
    static K: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    K.get_or_init(|| (0..KNOWN_HELLOS).map(known_hello_cell).collect())
}

// ---------------------------------------------------------------------------------------
// Inner (client ⇄ gateway) layer

pub fn gateway_key() -> StaticKeypair {
    StaticKeypair::from_secret([11; 32])
}

pub fn known_open_request(i: usize) -> OpenRequest {
    match i {
        0 => OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("example.com".into(), 443),
            early_data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        },
        1 => OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Ip("192.0.2.7:80".parse().expect("addr")),
            early_data: Vec::new(),
        },
        _ => OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Ip("[2001:db8::1]:8080".parse().expect("addr")),
            early_data: vec![0xAB; 64],
        },
    }
}

pub const KNOWN_OPENS: usize = 3;

/// Honest framed message 1 of stream number `i` (RNG seed `2000 + i`), with its
/// `u16` length prefix.
pub fn known_open_framed(i: usize) -> Vec<u8> {
    let (_, bytes) = inner::client_open(
        &mut FuzzRng::new(2000 + i as u64),
        &gateway_key().public(),
        &known_open_request(i),
        0,
    )
    .expect("honest client_open");
    bytes
}

pub fn known_open_msgs() -> &'static [Vec<u8>] {
    static K: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    K.get_or_init(|| {
        (0..KNOWN_OPENS)
            .map(|i| known_open_framed(i)[2..].to_vec())
            .collect()
    })
}

/// The record keys of one fixed stream: (client sealer, client opener, gateway sealer,
/// gateway opener). Deterministic, so seeds sealed with it stay valid.
pub fn record_pair() -> (RecordSealer, RecordOpener, RecordSealer, RecordOpener) {
    let (c, g) = stream_keys_pair();
    (c.sealer, c.opener, g.sealer, g.opener)
}

/// Both ends' keys of one fixed stream: (client, gateway). Deterministic.
pub fn stream_keys_pair() -> (inner::StreamKeys, inner::StreamKeys) {
    let gw = gateway_key();
    let req = known_open_request(0);
    let (c, bytes) =
        inner::client_open(&mut FuzzRng::new(300), &gw.public(), &req, 0)
            .expect("honest client_open");
    let (g, got) = inner::gateway_accept(&gw, &bytes[2..]).expect("honest gateway_accept");
    assert_eq!(got, req);
    let mut out = Vec::new();
    let g = g
        .reply(&mut FuzzRng::new(301), OpenStatus::OK, &mut out)
        .expect("honest reply");
    let (st, reason, c) = c.finish(&out[2..]).expect("honest finish");
    assert_eq!((st, reason.as_str()), (OpenStatus::OK, ""));
    (c, g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_messages_are_accepted() {
        for (i, m) in known_msg1s().iter().enumerate() {
            let (_, p) = noise::respond(&hs_responder(), HS_PROLOGUE, m).unwrap();
            assert_eq!(p, HS_PAYLOADS[i]);
        }
        let (init, _) = hs_initiator();
        let (p, _) = init.finish(&hs_honest_msg2(b"ok")).unwrap();
        assert_eq!(p, b"ok");
        for c in known_hello_cells() {
            assert_eq!(c.len(), SESSION_CELL_SIZE);
        }
        for m in known_open_msgs() {
            inner::gateway_accept(&gateway_key(), m).unwrap();
        }
        let _ = record_pair();
    }

    /// What the `handshake` target's session mode relies on (README.md, "Observed"): a
    /// Hello's epoch, seq and padding bytes are not bound by the handshake; the rest is.
    #[test]
    fn hello_binding() {
        use braid_proto::session;
        use std::time::Instant;
        let honest = known_hello_cell(1);
        let msg_end = handshake_msg_end(&honest);
        for (byte, bound) in [
            (0, true),
            (1, true),
            (5, true),
            (18, false),
            (27, false),
            (29, true),
            (msg_end - 1, true),
            (msg_end, false),
            (1023, false),
        ] {
            let mut c = honest.clone();
            c[byte] ^= 0x40;
            let r = session::accept(
                &mut FuzzRng::new(1),
                session_cfg(),
                &central_key(),
                Instant::now(),
                session::HelloClock::ANY,
                &c,
            );
            match r {
                Ok(acc) => {
                    assert!(!bound, "byte {byte} is bound but the change was accepted");
                    assert_eq!(acc.hello, known_session_hello(1));
                }
                Err(e) => assert!(bound, "byte {byte} refused: {e}"),
            }
        }
    }
}
