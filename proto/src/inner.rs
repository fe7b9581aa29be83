//! The inner (client ⇄ gateway) layer: one Noise NK handshake per proxied stream, then
//! sealed records. The central carries these bytes in order and cannot read them.
//!
//! Byte stream, each message `len u16 | bytes`:
//! ```text
//! client → gateway:  first { 1 | NK msg1 { OpenRequest: target, early data } }  then records
//!                 or first { 2 | Resume: id [16] | received u64 | mac [32] }    then records
//! gateway → client:  NK msg2 { OpenReply: status u8 | reason }                 then records
//!                 or Resumed: status u8 | received u64 | mac [32]             then records
//! record = AEAD(stream key, nonce = counter, plaintext = type u8 | payload)
//! ```
//! Per-stream keys mean the gateway cannot link two streams of one user.
//!
//! The reply's reason is optional human-readable UTF-8 (why an open was refused, for the
//! client's log); a reply of the status byte alone has an empty reason.
//!
//! Records are acknowledged (an `Ack` record carries how many records its sender has
//! opened) and kept sealed until then, so a stream can move to a new carrier when its
//! central dies: see [`reliable`].

use rand_core::CryptoRng;

use crate::aead::{AeadAlgorithm, CellAead, RingAead, TAG_LEN};
use crate::noise::{self, HandshakeError, NkInitiator, NkResponder, StaticKeypair};
use crate::target::TargetAddr;
use crate::wire::{Reader, WireError, Writer};
use zeroize::Zeroizing;

pub mod reliable;
pub use reliable::{ReliableStream, ResumeRequest};

/// Largest record plaintext: keeps a message under the u16 length with room for overhead.
pub const MAX_RECORD_DATA: usize = 16 * 1024;
/// Largest message the decoder accepts (a handshake message with early data, or a record).
pub const MAX_MESSAGE: usize = MAX_RECORD_DATA + 256;
const PROLOGUE: &[u8] = b"braid/1 inner";
/// Longest reason a reply carries, in bytes; a longer one is cut at a character boundary.
pub const MAX_REASON: usize = 256;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub target: TargetAddr,
    pub early_data: Vec<u8>,
}

impl OpenRequest {
    fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut buf = vec![0u8; 262 + self.early_data.len()];
        let mut w = Writer::new(&mut buf);
        self.target.write_onto(&mut w)?;
        w.bytes(&self.early_data)?;
        let n = w.position();
        buf.truncate(n);
        Ok(buf)
    }
    fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(b);
        let target = TargetAddr::take_from(&mut r)?;
        Ok(OpenRequest {
            target,
            early_data: r.rest().to_vec(),
        })
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
    /// Appends the framed, sealed record to `out`.
    pub fn seal(&mut self, rec: &Record, out: &mut Vec<u8>) -> Result<(), InnerError> {
        let mut plain = Vec::with_capacity(1 + TAG_LEN + 16);
        match rec {
            Record::Data(d) => {
                if d.len() > MAX_RECORD_DATA {
                    return Err(InnerError::TooLong(d.len()));
                }
                plain.reserve(d.len());
                plain.push(rt::DATA);
                plain.extend_from_slice(d);
            }
            Record::HalfClose => plain.push(rt::HALF_CLOSE),
            Record::Close => plain.push(rt::CLOSE),
            Record::Error(c) => plain.extend_from_slice(&[rt::ERROR, *c]),
            Record::Ack(n) => {
                plain.push(rt::ACK);
                plain.extend_from_slice(&n.to_be_bytes());
            }
        }
        if self.counter == u64::MAX {
            return Err(InnerError::Exhausted);
        }
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
        Ok(match r.u8()? {
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

/// Starts a stream: returns the state and the bytes to send towards the gateway.
pub fn client_open(
    rng: &mut impl CryptoRng,
    gateway_key: &[u8; 32],
    req: &OpenRequest,
) -> Result<(ClientOpen, Vec<u8>), InnerError> {
    if req.early_data.len() > MAX_RECORD_DATA {
        return Err(InnerError::TooLong(req.early_data.len()));
    }
    let (init, msg1) = noise::initiate(rng, gateway_key, PROLOGUE, &req.encode()?)?;
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
        let reason = clean_reason(r.rest());
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
    Ok((GatewayOpen { resp }, OpenRequest::decode(&payload)?))
}

impl GatewayOpen {
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
    /// appends the framed reply to `out` and returns the stream's keys.
    pub fn reply_with_reason(
        self,
        rng: &mut impl CryptoRng,
        status: OpenStatus,
        reason: &str,
        out: &mut Vec<u8>,
    ) -> Result<StreamKeys, InnerError> {
        let reason = cut_reason(reason);
        let mut payload = Vec::with_capacity(1 + reason.len());
        payload.push(status.0);
        payload.extend_from_slice(reason.as_bytes());
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
            target: TargetAddr::Domain("example.com".into(), 443),
            early_data: b"GET /".to_vec(),
        };
        let (c, bytes) = client_open(&mut rng, &gw.public(), &req).unwrap();
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
            target: TargetAddr::Domain("localhost".into(), 22),
            early_data: Vec::new(),
        };
        let (c, bytes) = client_open(&mut rng, &gw.public(), &req).unwrap();
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
