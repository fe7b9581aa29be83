//! The inner (client ⇄ gateway) layer: one Noise NK handshake per proxied stream, then
//! sealed records. The central carries these bytes in order and cannot read them.
//!
//! Byte stream, each message `len u16 | bytes` (version 2: the Noise prologue says
//! `braid/2 inner`, so peers of another version fail the handshake):
//! ```text
//! client → gateway:  first { 1 | NK msg1 { open payload } }                    then records
//!                 or first { 2 | Resume: id [16] | received u64 | mac [32] }    then records
//! gateway → client:  NK msg2 { reply payload }                                 then records
//!                 or Resumed: status u8 | received u64 | mac [32]             then records
//! open payload  = sent_at u64 (unix s) | target, zero-padded to 259 | early_len u16
//!                 | early data (≤ 1024) | zeros: always OPEN_PAYLOAD bytes
//! reply payload = status u8 | reason_len u16 | reason (≤ 256) | zeros: always 259 bytes
//! record = AEAD(stream key, nonce = counter,
//!               plaintext = type u8 | len u16 | payload | zeros to a bucket)
//! ```
//! Per-stream keys mean the gateway cannot link two streams of one user.
//!
//! What the central carries must not tell it about the destination or the payload, so every
//! size it sees is fixed or coarse: the open is always [`OPEN_MESSAGE_LEN`] bytes whatever
//! the target and the early data (more early data than [`MAX_EARLY_DATA`] goes in the first
//! records), the gateway's reply always [`REPLY_MESSAGE_LEN`] whatever its status and
//! reason, a resume's answer always [`reliable::RESUMED_MESSAGE_LEN`], and a record's
//! plaintext is padded to one of [`RECORD_BUCKETS`].
//!
//! The reply's reason is optional human-readable UTF-8 (why an open was refused, for the
//! client's log).
//!
//! The open is 0-RTT (sealed to the gateway's static key only), so a carrier could replay
//! it; `sent_at` and the client's ephemeral key ([`GatewayOpen::replay_key`]) let the
//! gateway refuse a replay ([`crate::replay::ReplayCache`]).
//!
//! Records are acknowledged (an `Ack` record carries how many records its sender has
//! opened) and kept sealed until then, so a stream can move to a new carrier when its
//! central dies: see [`reliable`].

use rand_core::CryptoRng;

use crate::aead::{AeadAlgorithm, CellAead, RingAead, TAG_LEN};
use crate::noise::{self, HandshakeError, NkInitiator, NkResponder, StaticKeypair};
use crate::open_enum::open_enum;
use crate::target::TargetAddr;
use crate::wire::{Reader, WireError, Writer};
use zeroize::Zeroizing;

pub mod reliable;
pub use crate::replay::{ReplayCache, ReplayRefusal};
pub use reliable::{ReliableStream, ResumeRequest};

/// The plaintext sizes a record is padded to. Measured on bulk transfers (the pump fills a
/// record with whatever its application has ready, so bulk records are full) and
/// interactive ones (keystrokes, acks: the smallest bucket): see ARCHITECTURE.md.
pub const RECORD_BUCKETS: [usize; 4] = [256, 1024, 4096, 16 * 1024];
/// A record's plaintext header: type u8 | payload length u16.
const RECORD_HEADER: usize = 3;
/// Largest record data: the header and the data fill the largest bucket.
pub const MAX_RECORD_DATA: usize = RECORD_BUCKETS[3] - RECORD_HEADER;
/// Largest message the decoder accepts (a handshake message with early data, or a record).
pub const MAX_MESSAGE: usize = MAX_RECORD_DATA + 256;
const PROLOGUE: &[u8] = b"braid/2 inner";
/// Longest reason a reply carries, in bytes; a longer one is cut at a character boundary.
pub const MAX_REASON: usize = 256;
/// Longest target encoding: `atyp | len | 255-byte name | port`.
const MAX_TARGET: usize = 1 + 1 + 255 + 2;
/// Early data an open carries at most; the client sends the rest as the first records.
pub const MAX_EARLY_DATA: usize = 1024;
/// The open payload's fixed length: `sent_at u64 | kind u8 | target | early len u16 | early`.
const OPEN_PAYLOAD: usize = 8 + 1 + MAX_TARGET + 2 + MAX_EARLY_DATA;
/// Every open on the wire, framed: `len | kind | e | sealed payload`.
pub const OPEN_MESSAGE_LEN: usize = 2 + 1 + noise::MESSAGE_OVERHEAD + OPEN_PAYLOAD;
/// The reply payload's fixed length.
const REPLY_PAYLOAD: usize = 1 + 2 + MAX_REASON;
/// Every reply to an open on the wire, framed: `len | e | sealed payload`.
pub const REPLY_MESSAGE_LEN: usize = 2 + noise::MESSAGE_OVERHEAD + REPLY_PAYLOAD;

/// The smallest bucket that holds `n` plaintext bytes (`n` ≤ the largest).
fn bucket_for(n: usize) -> usize {
    RECORD_BUCKETS
        .into_iter()
        .find(|&b| b >= n)
        .unwrap_or(RECORD_BUCKETS[3])
}

/// Bytes a record of `data` bytes takes on the wire, framed (what the carrier sees).
pub fn sealed_record_len(data: usize) -> usize {
    2 + bucket_for(RECORD_HEADER + data) + TAG_LEN
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InnerError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("malformed inner message: {0}")]
    Wire(#[from] WireError),
    #[error("record failed authentication")]
    Auth,
    #[error("inner message of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("record counter exhausted")]
    Exhausted,
    #[error("the peer acknowledged records it was never sent")]
    BadAck,
    #[error("the resume did not authenticate")]
    ResumeAuth,
    #[error("the gateway no longer knows the stream")]
    ResumeRefused,
}

/// Status a gateway returns for an open: a [`Reason`](crate::reason::Reason), `OK` on
/// success. Its values 0–8 are the SOCKS5 reply values, as they always were on the wire.
pub use crate::reason::Reason as OpenStatus;

open_enum! {
    /// What a stream carries, named in its open.
    pub struct StreamKind(u8) {
        /// A TCP connection to the target (SOCKS CONNECT, HTTP CONNECT and forwarding).
        CONNECT = 0 => "connect",
        /// A UDP association (SOCKS5 UDP ASSOCIATE): datagrams framed by
        /// [`crate::datagram`], each with its own destination; the target is unused.
        UDP = 1 => "udp",
        /// DNS queries resolved at the gateway: messages framed as DNS over TCP (a u16
        /// length each); the target is unused.
        DNS = 2 => "dns",
    }
    unknown = "stream kind {:#04x}";
    debug = display;
}

impl Default for StreamKind {
    fn default() -> Self {
        StreamKind::CONNECT
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub target: TargetAddr,
    pub early_data: Vec<u8>,
    /// What the stream carries; the gateway refuses kinds it does not serve.
    pub kind: StreamKind,
}

impl OpenRequest {
    /// The fixed-length open payload: the same size whatever the target and early data.
    fn encode(&self, sent_at: u64) -> Result<Vec<u8>, WireError> {
        let mut buf = vec![0u8; OPEN_PAYLOAD];
        let (head, rest) = buf.split_at_mut(8);
        head.copy_from_slice(&sent_at.to_be_bytes());
        let (kind, rest) = rest.split_at_mut(1);
        kind[0] = self.kind.0;
        let (target, rest) = rest.split_at_mut(MAX_TARGET);
        self.target.write_onto(&mut Writer::new(target))?;
        let mut w = Writer::new(rest);
        let early = u16::try_from(self.early_data.len()).map_err(|_| WireError::TooLong)?;
        w.u16(early)?;
        w.bytes(&self.early_data)?;
        Ok(buf)
    }

    /// The request and its `sent_at`.
    fn decode(b: &[u8]) -> Result<(Self, u64), WireError> {
        if b.len() != OPEN_PAYLOAD {
            return Err(WireError::Invalid("open payload of the wrong size"));
        }
        let mut r = Reader::new(b);
        let sent_at = r.u64()?;
        let kind = StreamKind(r.u8()?);
        let target = TargetAddr::take_from(&mut Reader::new(r.bytes(MAX_TARGET)?))?;
        let n = usize::from(r.u16()?);
        if n > MAX_EARLY_DATA {
            return Err(WireError::Invalid("early data over the budget"));
        }
        let early_data = r.bytes(n)?.to_vec();
        Ok((
            OpenRequest {
                target,
                early_data,
                kind,
            },
            sent_at,
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data(Vec<u8>),
    /// No more data from the sender (TCP half-close).
    HalfClose,
    /// The stream is done in both directions.
    Close,
    /// The far side failed; the code is a [`Reason`](crate::reason::Reason) value.
    Error(u8),
    /// The sender has opened this many records of the other direction.
    Ack(u64),
}

mod rt {
    pub const DATA: u8 = 1;
    pub const HALF_CLOSE: u8 = 2;
    pub const CLOSE: u8 = 3;
    pub const ERROR: u8 = 4;
    pub const ACK: u8 = 5;
}

/// The first byte of a stream's first message: what the client asks of the gateway.
mod first {
    pub const OPEN: u8 = 1;
    pub const RESUME: u8 = 2;
}

/// A gateway stream's first message, by kind.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstMessage {
    /// A new stream: pass the whole message to [`gateway_accept`].
    Open,
    /// An existing stream moving to this carrier.
    Resume(ResumeRequest),
}

/// Reads the kind of a stream's first message (its body, without the length prefix).
pub fn first_message(msg: &[u8]) -> Result<FirstMessage, InnerError> {
    let mut r = Reader::new(msg);
    match r.u8()? {
        first::OPEN => Ok(FirstMessage::Open),
        first::RESUME => Ok(FirstMessage::Resume(ResumeRequest::decode(r.rest())?)),
        _ => Err(WireError::Invalid("unknown first message").into()),
    }
}

fn frame_message(body: &[u8], out: &mut Vec<u8>) -> Result<(), InnerError> {
    let len = u16::try_from(body.len()).map_err(|_| InnerError::TooLong(body.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Seals records in one direction of a stream.
pub struct RecordSealer {
    aead: RingAead,
    counter: u64,
}

/// Opens records in one direction of a stream; they arrive in order, so the counter is
/// implicit and a replayed, dropped or reordered record fails authentication.
pub struct RecordOpener {
    aead: RingAead,
    counter: u64,
}

fn record_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

impl RecordSealer {
    /// Appends the framed, sealed record to `out`, its plaintext padded to a bucket.
    pub fn seal(&mut self, rec: &Record, out: &mut Vec<u8>) -> Result<(), InnerError> {
        let ack;
        let (kind, body): (u8, &[u8]) = match rec {
            Record::Data(d) => {
                if d.len() > MAX_RECORD_DATA {
                    return Err(InnerError::TooLong(d.len()));
                }
                (rt::DATA, d)
            }
            Record::HalfClose => (rt::HALF_CLOSE, &[]),
            Record::Close => (rt::CLOSE, &[]),
            Record::Error(c) => (rt::ERROR, std::slice::from_ref(c)),
            Record::Ack(n) => {
                ack = n.to_be_bytes();
                (rt::ACK, &ack)
            }
        };
        if self.counter == u64::MAX {
            return Err(InnerError::Exhausted);
        }
        let bucket = bucket_for(RECORD_HEADER + body.len());
        let mut plain = Vec::with_capacity(bucket + TAG_LEN);
        plain.push(kind);
        // At most MAX_RECORD_DATA: fits.
        plain.extend_from_slice(&(body.len() as u16).to_be_bytes());
        plain.extend_from_slice(body);
        plain.resize(bucket, 0);
        let tag = self.aead.seal(record_nonce(self.counter), &[], &mut plain);
        self.counter += 1;
        plain.extend_from_slice(&tag);
        frame_message(&plain, out)
    }
}

impl RecordOpener {
    /// Opens one message body (without its length prefix).
    pub fn open(&mut self, msg: &[u8]) -> Result<Record, InnerError> {
        if msg.len() < 1 + TAG_LEN {
            return Err(WireError::Truncated.into());
        }
        let (ct, tag) = msg.split_at(msg.len() - TAG_LEN);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let mut plain = ct.to_vec();
        self.aead
            .open(record_nonce(self.counter), &[], &mut plain, &t)
            .map_err(|_| InnerError::Auth)?;
        self.counter += 1;
        let mut r = Reader::new(&plain);
        let kind = r.u8()?;
        let len = usize::from(r.u16()?);
        // What follows the body is padding.
        let mut r = Reader::new(r.bytes(len)?);
        Ok(match kind {
            rt::DATA => Record::Data(r.rest().to_vec()),
            rt::HALF_CLOSE => Record::HalfClose,
            rt::CLOSE => Record::Close,
            rt::ERROR => Record::Error(r.u8()?),
            rt::ACK => Record::Ack(r.u64()?),
            _ => return Err(WireError::Invalid("unknown record type").into()),
        })
    }
}

/// What a finished inner handshake gives each end: its record keys, and the key that
/// authorises moving the stream to another carrier.
pub struct StreamKeys {
    pub sealer: RecordSealer,
    pub opener: RecordOpener,
    /// Wiped on drop. (The record keys live inside ring's `LessSafeKey`, which we cannot
    /// wipe; the raw bytes they were made from are wiped with the handshake's keys.)
    pub resume_key: Zeroizing<[u8; 32]>,
}

fn stream_keys(send: &[u8; 32], recv: &[u8; 32], handshake_hash: &[u8; 32]) -> StreamKeys {
    let alg = AeadAlgorithm::Aes256Gcm;
    StreamKeys {
        sealer: RecordSealer {
            aead: RingAead::new(alg, send),
            counter: 0,
        },
        opener: RecordOpener {
            aead: RingAead::new(alg, recv),
            counter: 0,
        },
        resume_key: Zeroizing::new(noise::hmac256(
            handshake_hash,
            &[b"braid/1 inner resume key"],
        )),
    }
}

/// Splits an inner byte stream back into messages, holding at most one partial message.
#[derive(Default)]
pub struct MessageDecoder {
    buf: Vec<u8>,
}

impl MessageDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, InnerError> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len > MAX_MESSAGE {
            return Err(InnerError::TooLong(len));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        let msg = self.buf[2..2 + len].to_vec();
        self.buf.drain(..2 + len);
        Ok(Some(msg))
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// A client stream waiting for the gateway's answer.
pub struct ClientOpen {
    init: NkInitiator,
}

/// Starts a stream at `now` (unix seconds; the gateway refuses opens far from its own
/// clock): returns the state and the bytes to send towards the gateway, always
/// [`OPEN_MESSAGE_LEN`] of them. At most [`MAX_EARLY_DATA`] early data.
pub fn client_open(
    rng: &mut impl CryptoRng,
    gateway_key: &[u8; 32],
    req: &OpenRequest,
    now: u64,
) -> Result<(ClientOpen, Vec<u8>), InnerError> {
    if req.early_data.len() > MAX_EARLY_DATA {
        return Err(InnerError::TooLong(req.early_data.len()));
    }
    let (init, msg1) = noise::initiate(rng, gateway_key, PROLOGUE, &req.encode(now)?)?;
    let mut body = Vec::with_capacity(msg1.len() + 1);
    body.push(first::OPEN);
    body.extend_from_slice(&msg1);
    let mut out = Vec::with_capacity(body.len() + 2);
    frame_message(&body, &mut out)?;
    Ok((ClientOpen { init }, out))
}

impl ClientOpen {
    /// Reads the gateway's reply message: its status, its reason (empty if none; at most
    /// [`MAX_REASON`] bytes, control characters replaced, so it is safe to log) and the
    /// stream's keys.
    pub fn finish(self, msg2: &[u8]) -> Result<(OpenStatus, String, StreamKeys), InnerError> {
        let (payload, keys) = self.init.finish(msg2)?;
        let mut r = Reader::new(&payload);
        let status = OpenStatus(r.u8()?);
        let n = usize::from(r.u16()?);
        let reason = clean_reason(r.bytes(n)?);
        Ok((
            status,
            reason,
            stream_keys(
                &keys.initiator_to_responder,
                &keys.responder_to_initiator,
                &keys.handshake_hash,
            ),
        ))
    }
}

/// The longest prefix of `s` within [`MAX_REASON`] bytes that ends on a char boundary.
fn cut_reason(s: &str) -> &str {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A received reason as loggable text: lossy UTF-8, bounded, no control characters.
fn clean_reason(bytes: &[u8]) -> String {
    // Replace first, then cut on a character boundary: U+FFFD is 3 bytes, so cutting first
    // could triple the length (fuzz finding).
    let mut out = String::new();
    for c in String::from_utf8_lossy(bytes).chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        out.push(c);
    }
    out
}

/// The gateway after reading a stream's first message.
pub struct GatewayOpen {
    resp: NkResponder,
    sent_at: u64,
    ephemeral: [u8; 32],
}

/// Reads an open (a first message of kind [`FirstMessage::Open`], its body without the
/// length prefix).
pub fn gateway_accept(
    key: &StaticKeypair,
    msg1: &[u8],
) -> Result<(GatewayOpen, OpenRequest), InnerError> {
    let Some((&first::OPEN, msg1)) = msg1.split_first() else {
        return Err(WireError::Invalid("not an open").into());
    };
    let (resp, payload) = noise::respond(key, PROLOGUE, msg1)?;
    let (req, sent_at) = OpenRequest::decode(&payload)?;
    let mut ephemeral = [0u8; 32];
    // respond() checked msg1 holds at least the key and a tag.
    if let Some(e) = msg1.get(..32) {
        ephemeral.copy_from_slice(e);
    }
    Ok((
        GatewayOpen {
            resp,
            sent_at,
            ephemeral,
        },
        req,
    ))
}

impl GatewayOpen {
    /// When the client says it sent the open (unix seconds, authenticated).
    pub fn sent_at(&self) -> u64 {
        self.sent_at
    }

    /// What identifies this open among replays of it: the client's ephemeral key (any change
    /// to it fails the handshake, and an honest client never uses one twice).
    pub fn replay_key(&self) -> [u8; 32] {
        self.ephemeral
    }

    /// Answers the open with no reason; appends the framed reply to `out` and returns the
    /// stream's keys.
    pub fn reply(
        self,
        rng: &mut impl CryptoRng,
        status: OpenStatus,
        out: &mut Vec<u8>,
    ) -> Result<StreamKeys, InnerError> {
        self.reply_with_reason(rng, status, "", out)
    }

    /// Answers the open with a human-readable reason (cut to [`MAX_REASON`] bytes);
    /// appends the framed reply, always [`REPLY_MESSAGE_LEN`] bytes, to `out` and returns
    /// the stream's keys.
    pub fn reply_with_reason(
        self,
        rng: &mut impl CryptoRng,
        status: OpenStatus,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Result<StreamKeys, InnerError> {
        let reason = cut_reason(reason);
        let mut payload = Vec::with_capacity(REPLY_PAYLOAD);
        payload.push(status.0);
        // At most MAX_REASON bytes: fits.
        payload.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        payload.resize(REPLY_PAYLOAD, 0);
        let (msg2, keys) = self.resp.reply(rng, &payload)?;
        frame_message(&msg2, out)?;
        Ok(stream_keys(
            &keys.responder_to_initiator,
            &keys.initiator_to_responder,
            &keys.handshake_hash,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn open_pair() -> (RecordSealer, RecordOpener, RecordSealer, RecordOpener) {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let gw = StaticKeypair::generate(&mut rng);
        let req = OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("example.com".into(), 443),
            early_data: b"GET /".to_vec(),
        };
        let (c, bytes) = client_open(&mut rng, &gw.public(), &req, 1_000).unwrap();
        let mut dec = MessageDecoder::default();
        dec.push(&bytes);
        let m1 = dec.next_message().unwrap().unwrap();
        let (g, got) = gateway_accept(&gw, &m1).unwrap();
        assert_eq!(got, req);
        let mut out = Vec::new();
        let g = g.reply(&mut rng, OpenStatus::OK, &mut out).unwrap();
        dec.push(&out);
        let m2 = dec.next_message().unwrap().unwrap();
        let (st, reason, c) = c.finish(&m2).unwrap();
        assert_eq!(st, OpenStatus::OK);
        assert_eq!(reason, "");
        assert_eq!(
            c.resume_key, g.resume_key,
            "both ends derive one resume key"
        );
        (c.sealer, c.opener, g.sealer, g.opener)
    }

    /// Runs one open answered with `status` and `reason`; what the client reads.
    fn refused_with(status: OpenStatus, reason: &str) -> (OpenStatus, String) {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let gw = StaticKeypair::generate(&mut rng);
        let req = OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("localhost".into(), 22),
            early_data: Vec::new(),
        };
        let (c, bytes) = client_open(&mut rng, &gw.public(), &req, 1_000).unwrap();
        let (g, _) = gateway_accept(&gw, &bytes[2..]).unwrap();
        let mut out = Vec::new();
        g.reply_with_reason(&mut rng, status, reason, &mut out)
            .unwrap();
        let (st, why, _) = c.finish(&out[2..]).unwrap();
        (st, why)
    }

    #[test]
    fn reasons_are_bounded_in_bytes() {
        let (_, why) = refused_with(OpenStatus::NOT_ALLOWED, &"\0".repeat(88));
        assert!(why.len() <= MAX_REASON, "{} bytes", why.len());
        let (_, why) = refused_with(OpenStatus::NOT_ALLOWED, &"é".repeat(300));
        assert!(why.len() <= MAX_REASON && why.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reply_carries_a_reason() {
        let (st, why) = refused_with(OpenStatus::NOT_ALLOWED, "127.0.0.1 is loopback");
        assert_eq!(st, OpenStatus::NOT_ALLOWED);
        assert_eq!(why, "127.0.0.1 is loopback");
        // Control characters cannot forge log lines.
        let (_, why) = refused_with(OpenStatus::NOT_ALLOWED, "a\nINFO fake\x1b[31m");
        assert_eq!(why, "a\u{fffd}INFO fake\u{fffd}[31m");
        // Bounded, and cut on a character boundary.
        let long = "é".repeat(MAX_REASON);
        let (_, why) = refused_with(OpenStatus::NOT_ALLOWED, &long);
        assert_eq!(why, "é".repeat(MAX_REASON / 2));
    }

    #[test]
    fn records_flow_both_ways_and_tampering_fails() {
        let (mut cs, mut co, mut gs, mut go) = open_pair();
        let mut wire = Vec::new();
        for r in [
            Record::Data(b"abc".to_vec()),
            Record::HalfClose,
            Record::Error(5),
            Record::Ack(7),
        ] {
            cs.seal(&r, &mut wire).unwrap();
        }
        let mut dec = MessageDecoder::default();
        dec.push(&wire);
        assert_eq!(
            go.open(&dec.next_message().unwrap().unwrap()).unwrap(),
            Record::Data(b"abc".to_vec())
        );
        let m = dec.next_message().unwrap().unwrap();
        // Skipping or replaying a record fails: the counter is implicit.
        let m3 = dec.next_message().unwrap().unwrap();
        assert_eq!(go.open(&m3), Err(InnerError::Auth));
        let mut go2 = go;
        assert_eq!(go2.open(&m).unwrap(), Record::HalfClose);
        assert_eq!(go2.open(&m3).unwrap(), Record::Error(5));
        let m4 = dec.next_message().unwrap().unwrap();
        assert_eq!(go2.open(&m4).unwrap(), Record::Ack(7));
        let mut back = Vec::new();
        gs.seal(&Record::Close, &mut back).unwrap();
        assert_eq!(co.open(&back[2..]).unwrap(), Record::Close);
        let mut back = Vec::new();
        gs.seal(&Record::Data(vec![1; 10]), &mut back).unwrap();
        back[5] ^= 1;
        assert_eq!(co.open(&back[2..]), Err(InnerError::Auth));
    }

    /// The central learns nothing from an open's length: not the host name's, not the
    /// early data's. A message of another size does not open.
    #[test]
    fn every_open_has_one_length() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let gw = StaticKeypair::generate(&mut rng);
        let opens = [
            (TargetAddr::Domain("a.io".into(), 80), Vec::new()),
            (
                TargetAddr::Domain("b".repeat(255), 443),
                vec![7u8; MAX_EARLY_DATA],
            ),
            (
                TargetAddr::Ip("[2001:db8::1]:22".parse().unwrap()),
                b"SSH-2.0".to_vec(),
            ),
            (
                TargetAddr::Ip("192.0.2.1:25".parse().unwrap()),
                vec![1u8; 300],
            ),
        ];
        for (target, early_data) in opens {
            let req = OpenRequest {
                target,
                early_data,
                kind: StreamKind::UDP,
            };
            let (_, bytes) = client_open(&mut rng, &gw.public(), &req, 77).unwrap();
            assert_eq!(bytes.len(), OPEN_MESSAGE_LEN, "{}", req.target);
            let (g, got) = gateway_accept(&gw, &bytes[2..]).unwrap();
            assert_eq!(got, req);
            assert_eq!(g.sent_at(), 77);
            assert_eq!(
                &g.replay_key()[..],
                &bytes[3..35],
                "the client's ephemeral key"
            );
        }
        // Over the early-data budget: the caller sends the rest as records.
        let req = OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("a.io".into(), 80),
            early_data: vec![0; MAX_EARLY_DATA + 1],
        };
        assert!(matches!(
            client_open(&mut rng, &gw.public(), &req, 0),
            Err(InnerError::TooLong(_))
        ));
    }

    /// A refusal with a long reason, a short one, and a success: one length.
    #[test]
    fn every_reply_has_one_length() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let gw = StaticKeypair::generate(&mut rng);
        let req = OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("localhost".into(), 22),
            early_data: Vec::new(),
        };
        for (status, reason) in [
            (OpenStatus::OK, ""),
            (
                OpenStatus::CONNECTION_REFUSED,
                "connecting to 192.0.2.1:22: refused",
            ),
            (OpenStatus::NOT_ALLOWED, &*"x".repeat(2 * MAX_REASON)),
        ] {
            let (c, bytes) = client_open(&mut rng, &gw.public(), &req, 0).unwrap();
            let (g, _) = gateway_accept(&gw, &bytes[2..]).unwrap();
            let mut out = Vec::new();
            g.reply_with_reason(&mut rng, status, reason, &mut out)
                .unwrap();
            assert_eq!(out.len(), REPLY_MESSAGE_LEN, "{status}");
            let (st, why, _) = c.finish(&out[2..]).unwrap();
            assert_eq!((st, why.len()), (status, reason.len().min(MAX_REASON)));
        }
    }

    /// What a carrier sees of a record is one of a few bucket sizes, whatever its type or
    /// length.
    #[test]
    fn records_are_padded_to_buckets() {
        let (mut cs, _, _, mut go) = open_pair();
        let wire_sizes: Vec<usize> = RECORD_BUCKETS.iter().map(|b| 2 + b + TAG_LEN).collect();
        let mut records = vec![
            Record::HalfClose,
            Record::Close,
            Record::Error(3),
            Record::Ack(u64::MAX),
        ];
        for n in [
            0,
            1,
            253,
            254,
            1000,
            1021,
            1022,
            4093,
            4094,
            9000,
            MAX_RECORD_DATA,
        ] {
            records.push(Record::Data(vec![0xa5; n]));
        }
        for r in records {
            let mut out = Vec::new();
            cs.seal(&r, &mut out).unwrap();
            assert!(wire_sizes.contains(&out.len()), "{} bytes", out.len());
            if let Record::Data(d) = &r {
                assert_eq!(out.len(), sealed_record_len(d.len()));
            }
            assert_eq!(go.open(&out[2..]).unwrap(), r);
        }
        let mut out = Vec::new();
        assert!(cs
            .seal(&Record::Data(vec![0; MAX_RECORD_DATA + 1]), &mut out)
            .is_err());
    }

    #[test]
    fn decoder_refuses_oversize() {
        let mut d = MessageDecoder::default();
        d.push(&[0xff, 0xff]);
        assert!(matches!(d.next_message(), Err(InnerError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn record_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), code in any::<u8>()) {
            let (mut cs, _, _, mut go) = open_pair();
            let mut wire = Vec::new();
            cs.seal(&Record::Data(data.clone()), &mut wire).unwrap();
            cs.seal(&Record::Error(code), &mut wire).unwrap();
            let mut dec = MessageDecoder::default();
            // Byte at a time: the decoder reassembles.
            for b in &wire { dec.push(&[*b]); }
            prop_assert_eq!(go.open(&dec.next_message().unwrap().unwrap()).unwrap(), Record::Data(data));
            prop_assert_eq!(go.open(&dec.next_message().unwrap().unwrap()).unwrap(), Record::Error(code));
            prop_assert!(dec.next_message().unwrap().is_none());
        }

        #[test]
        fn decoder_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut d = MessageDecoder::default();
            d.push(&bytes);
            while let Ok(Some(m)) = d.next_message() {
                let (mut _cs, _, _, mut go) = open_pair();
                let _ = go.open(&m);
            }
        }
    }
}
