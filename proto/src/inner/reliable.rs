//! An inner stream that outlives its carrier. The carrier (a session stream through one
//! central, then a QUIC stream to the gateway) may die with its central; the stream's two
//! ends, client and gateway, may not. So each end:
//! - keeps every record it sealed, sealed, until the peer acknowledges it (an `Ack` record
//!   carries how many records its sender has opened). The buffer is bounded: past
//!   `buffer_cap` bytes the end stops reading its application until acks free room;
//! - counts the records it opened.
//!
//! On a new carrier the client sends a [`ResumeRequest`] as the first message: a one-time
//! id and how many records it opened, authenticated by a key derived from the inner
//! handshake (so nobody without the stream's keys can take it over). The gateway answers
//! with its own count. Each side then resends, byte for byte, the sealed records the other
//! has not opened. Resending the same ciphertext under the same counter reuses no nonce.
//!
//! The id is `HMAC(resume key, "id" | epoch)`: a new one for every successful move, so the
//! centrals that carry the stream before and after a move see unrelated bytes.
//!
//! A stream is done when this end has received the peer's half-close and the peer has
//! acknowledged ours: only then may either side drop what it keeps.

use std::collections::VecDeque;

use super::{first, frame_message, InnerError, Record, RecordOpener, RecordSealer, StreamKeys};
use crate::noise::hmac256;
use crate::wire::{Reader, WireError};
use zeroize::Zeroizing;

/// An end acknowledges after opening this many records without saying so (and at once on a
/// half-close). With records of at most 16 KiB, unacknowledged bytes stay far below any
/// sensible buffer cap.
pub const ACK_EVERY: u64 = 8;
/// The smallest resend buffer an end may be given: room for a full ack interval of the
/// largest records, twice over.
pub const MIN_BUFFER: usize = 2 * ACK_EVERY as usize * (super::MAX_MESSAGE + 2);

const TAG: usize = 32;
/// A resume id's length.
pub const ID_LEN: usize = 16;
/// Every answer to a resume on the wire, framed, whether the gateway holds the stream or not.
pub const RESUMED_MESSAGE_LEN: usize = 2 + 1 + 8 + TAG;

/// The client's first message on a new carrier for an existing stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRequest {
    pub id: [u8; ID_LEN],
    /// Records the client has opened.
    pub received: u64,
    mac: [u8; TAG],
}

impl ResumeRequest {
    pub(super) fn decode(b: &[u8]) -> Result<Self, InnerError> {
        let mut r = Reader::new(b);
        let req = ResumeRequest {
            id: r.array()?,
            received: r.u64()?,
            mac: r.array()?,
        };
        if r.remaining() != 0 {
            return Err(WireError::Invalid("trailing bytes after a resume").into());
        }
        Ok(req)
    }
}

mod resumed {
    pub const OK: u8 = 0;
    pub const UNKNOWN: u8 = 1;
}

/// The gateway's answer to a resume for a stream it does not hold (gone, or never was),
/// padded to the length of a successful one. It carries no key, so anyone on the carrier
/// could forge it; a carrier can end the stream by dropping it anyway.
pub fn unknown_stream_reply() -> Vec<u8> {
    let mut body = [0u8; RESUMED_MESSAGE_LEN - 2];
    body[0] = resumed::UNKNOWN;
    let mut out = Vec::with_capacity(RESUMED_MESSAGE_LEN);
    // A fixed-size body cannot fail to frame.
    let _ = frame_message(&body, &mut out);
    out
}

fn mac(key: &[u8; 32], label: &[u8], id: &[u8; ID_LEN], count: u64) -> [u8; TAG] {
    hmac256(key, &[label, id, &count.to_be_bytes()])
}

/// Compares two tags in time independent of where they differ.
fn tags_equal(a: &[u8; TAG], b: &[u8; TAG]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What one opened record means for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Data(Vec<u8>),
    /// The peer sends no more data.
    HalfClose,
    /// The peer failed the stream with this reason code.
    Error(u8),
    /// Nothing for the application (an acknowledgement).
    Nothing,
}

/// One end of an inner stream after its handshake: sealing with a resend buffer, opening
/// with a count, acknowledgements, and the resume exchange. Sans-IO.
pub struct ReliableStream {
    sealer: RecordSealer,
    opener: RecordOpener,
    /// Authenticates resumes; wiped on drop.
    resume_key: Zeroizing<[u8; 32]>,
    /// Successful moves so far; the next resume uses id `epoch + 1`.
    epoch: u64,
    /// Sealed, framed records the peer has not acknowledged, oldest first.
    unacked: VecDeque<Vec<u8>>,
    unacked_bytes: usize,
    /// Records the peer acknowledged (the index of `unacked[0]`).
    peer_acked: u64,
    /// Records opened.
    received: u64,
    /// The first opened record whose data the owner has not yet passed to its application
    /// ([`Self::hold_from`]); acknowledgements stop before it.
    held_from: Option<u64>,
    /// The count last told to the peer.
    told_peer: u64,
    /// Index of our half-close record, once sealed.
    half_close_at: Option<u64>,
    half_close_received: bool,
    /// The peer's half-close was opened and not yet acknowledged.
    ack_owed: bool,
    /// A record other than an ack was opened since the last ack we sent.
    unacked_content: bool,
    buffer_cap: usize,
}

impl ReliableStream {
    /// `buffer_cap`: unacknowledged bytes past which [`Self::can_take_data`] says no (at
    /// least [`MIN_BUFFER`]).
    pub fn new(keys: StreamKeys, buffer_cap: usize) -> Self {
        ReliableStream {
            sealer: keys.sealer,
            opener: keys.opener,
            resume_key: keys.resume_key,
            epoch: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            peer_acked: 0,
            received: 0,
            held_from: None,
            told_peer: 0,
            half_close_at: None,
            half_close_received: false,
            ack_owed: false,
            unacked_content: false,
            buffer_cap: buffer_cap.max(MIN_BUFFER),
        }
    }

    /// Whether this end may read more application data: it has not half-closed and its
    /// resend buffer has room.
    pub fn can_take_data(&self) -> bool {
        self.half_close_at.is_none() && self.unacked_bytes < self.buffer_cap
    }

    pub fn half_closed(&self) -> bool {
        self.half_close_at.is_some()
    }

    pub fn half_close_received(&self) -> bool {
        self.half_close_received
    }

    /// Bytes kept for resending.
    pub fn buffered(&self) -> usize {
        self.unacked_bytes
    }

    /// The most bytes this end keeps unacknowledged: the cap given at creation (at least
    /// [`MIN_BUFFER`]), which [`Self::can_take_data`] may pass by one record.
    pub fn buffer_cap(&self) -> usize {
        self.buffer_cap
    }

    /// Records opened so far; the last one opened has index `received() - 1`.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Says that the data of record `first` (and of any later one) has not reached the
    /// application yet, or with `None` that everything opened has. Acknowledgements count
    /// only records before it, so the peer keeps the rest and sends at most its buffer cap
    /// past what the application took: an owner may open records ahead of a slow
    /// application (to see the acknowledgements among them) and queue their data, and the
    /// queue stays within the peer's cap. A resume still reports every record opened: the
    /// queue is the owner's and outlives the carrier.
    pub fn hold_from(&mut self, first: Option<u64>) {
        self.held_from = first.map(|f| f.min(self.received));
    }

    /// How many records an acknowledgement may count now.
    fn ack_point(&self) -> u64 {
        self.held_from.unwrap_or(self.received)
    }

    fn sent(&self) -> u64 {
        self.peer_acked + self.unacked.len() as u64
    }

    /// Seals `rec` and keeps a copy until it is acknowledged; returns the framed record to
    /// send.
    pub fn seal(&mut self, rec: &Record) -> Result<Vec<u8>, InnerError> {
        let mut out = Vec::new();
        self.sealer.seal(rec, &mut out)?;
        if matches!(rec, Record::HalfClose | Record::Close) && self.half_close_at.is_none() {
            self.half_close_at = Some(self.sent());
        }
        if let Record::Ack(n) = rec {
            self.told_peer = *n;
            // An ack that stops at a held record leaves the rest owed.
            if *n >= self.received {
                self.ack_owed = false;
                self.unacked_content = false;
            }
        }
        self.unacked_bytes += out.len();
        self.unacked.push_back(out.clone());
        Ok(out)
    }

    /// An acknowledgement to send now, if the peer has not been told everything opened.
    pub fn seal_ack(&mut self) -> Result<Option<Vec<u8>>, InnerError> {
        let at = self.ack_point();
        // After a resume the peer was told every record opened; never count back.
        if at <= self.told_peer {
            return Ok(None);
        }
        self.seal(&Record::Ack(at)).map(Some)
    }

    /// Whether an acknowledgement is owed: enough records opened since the last one.
    pub fn ack_due(&self) -> bool {
        self.ack_point().saturating_sub(self.told_peer) >= ACK_EVERY
    }

    /// Whether a record other than an ack was opened and not acknowledged yet (an ack goes
    /// out after a short delay even below [`ACK_EVERY`]: a peer held back by its buffer or
    /// its process's budget may be waiting for it). Acks alone never call for one, so two
    /// idle ends do not acknowledge each other's acks forever.
    pub fn ack_pending(&self) -> bool {
        self.unacked_content && self.ack_point() > self.told_peer
    }

    fn acked(&mut self, n: u64) -> Result<(), InnerError> {
        if n > self.sent() {
            return Err(InnerError::BadAck);
        }
        while self.peer_acked < n {
            if let Some(r) = self.unacked.pop_front() {
                self.unacked_bytes -= r.len();
            }
            self.peer_acked += 1;
        }
        Ok(())
    }

    /// Opens one received message (without its length prefix). After a half-close an
    /// acknowledgement is owed at once ([`Self::ack_due`] or [`Self::seal_ack`]).
    pub fn open(&mut self, msg: &[u8]) -> Result<Delivery, InnerError> {
        let rec = self.opener.open(msg)?;
        self.received += 1;
        // Acks of acks would never end: only other records call for one by themselves.
        if !matches!(rec, Record::Ack(_)) {
            self.unacked_content = true;
        }
        Ok(match rec {
            Record::Data(d) => Delivery::Data(d),
            Record::HalfClose | Record::Close => {
                self.half_close_received = true;
                // Owed at once: the peer may be waiting for it to finish.
                self.ack_owed = true;
                Delivery::HalfClose
            }
            Record::Error(c) => Delivery::Error(c),
            Record::Ack(n) => {
                self.acked(n)?;
                Delivery::Nothing
            }
        })
    }

    /// Whether an acknowledgement must go out now, not at the next interval: the peer's
    /// half-close was opened and not yet acknowledged.
    pub fn ack_urgent(&self) -> bool {
        self.ack_owed
    }

    /// Both directions are over and the peer has everything of ours: nothing left to keep.
    pub fn is_done(&self) -> bool {
        self.half_close_received && self.half_close_at.is_some_and(|at| self.peer_acked > at)
    }

    fn id(&self, epoch: u64) -> [u8; ID_LEN] {
        let full = hmac256(&self.resume_key[..], &[b"id", &epoch.to_be_bytes()]);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&full[..ID_LEN]);
        id
    }

    /// The id the next resume of this stream will carry (the gateway files the stream under
    /// it).
    pub fn next_resume_id(&self) -> [u8; ID_LEN] {
        self.id(self.epoch + 1)
    }

    /// Client: the framed first message for a new carrier. A failed attempt may be repeated
    /// with the same id; only a successful resume moves to the next.
    pub fn resume_request(&mut self) -> Vec<u8> {
        let id = self.next_resume_id();
        let mut body = Vec::with_capacity(1 + ID_LEN + 8 + TAG);
        body.push(first::RESUME);
        body.extend_from_slice(&id);
        body.extend_from_slice(&self.received.to_be_bytes());
        body.extend_from_slice(&mac(&self.resume_key, b"resume", &id, self.received));
        self.told_peer = self.received;
        self.unacked_content = false;
        let mut out = Vec::with_capacity(body.len() + 2);
        // A fixed-size body cannot fail to frame.
        let _ = frame_message(&body, &mut out);
        out
    }

    /// Gateway: checks a resume for this stream; on success returns the framed answer. The
    /// caller then sends it and [`Self::resend`].
    pub fn accept_resume(&mut self, req: &ResumeRequest) -> Result<Vec<u8>, InnerError> {
        let id = self.next_resume_id();
        let want = mac(&self.resume_key, b"resume", &id, req.received);
        if req.id != id || !tags_equal(&want, &req.mac) {
            return Err(InnerError::ResumeAuth);
        }
        if req.received < self.peer_acked {
            return Err(InnerError::BadAck);
        }
        self.acked(req.received)?;
        self.epoch += 1;
        self.told_peer = self.received;
        self.unacked_content = false;
        let mut body = Vec::with_capacity(1 + 8 + TAG);
        body.push(resumed::OK);
        body.extend_from_slice(&self.received.to_be_bytes());
        body.extend_from_slice(&mac(&self.resume_key, b"resumed", &id, self.received));
        let mut out = Vec::with_capacity(body.len() + 2);
        let _ = frame_message(&body, &mut out);
        Ok(out)
    }

    /// Client: reads the gateway's answer (without its length prefix). On success the
    /// caller sends [`Self::resend`].
    pub fn finish_resume(&mut self, msg: &[u8]) -> Result<(), InnerError> {
        let mut r = Reader::new(msg);
        match r.u8()? {
            resumed::OK => {}
            resumed::UNKNOWN => return Err(InnerError::ResumeRefused),
            _ => return Err(WireError::Invalid("unknown resume answer").into()),
        }
        let received = r.u64()?;
        let tag: [u8; TAG] = r.array()?;
        // One length only (the central sees it): nothing may follow (fuzz finding: an
        // answer with trailing bytes was taken).
        if !r.rest().is_empty() {
            return Err(WireError::Invalid("trailing bytes after a resume answer").into());
        }
        let id = self.next_resume_id();
        if !tags_equal(&mac(&self.resume_key, b"resumed", &id, received), &tag) {
            return Err(InnerError::ResumeAuth);
        }
        if received < self.peer_acked {
            return Err(InnerError::BadAck);
        }
        self.acked(received)?;
        self.epoch += 1;
        Ok(())
    }

    /// The sealed records the peer has not acknowledged, in order: after a resume, exactly
    /// those it has not opened.
    pub fn resend(&self) -> impl Iterator<Item = &[u8]> {
        self.unacked.iter().map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inner::{client_open, gateway_accept, MessageDecoder, OpenRequest, OpenStatus};
    use crate::noise::StaticKeypair;
    use crate::target::TargetAddr;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// A client and a gateway end after an honest open.
    fn ends(seed: u64) -> (ReliableStream, ReliableStream) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let gw = StaticKeypair::generate(&mut rng);
        let req = OpenRequest {
            kind: Default::default(),
            target: TargetAddr::Domain("example.com".into(), 22),
            early_data: Vec::new(),
        };
        let (c, m1) = client_open(&mut rng, &gw.public(), &req, 0).unwrap();
        let (g, _) = gateway_accept(&gw, &m1[2..]).unwrap();
        let mut out = Vec::new();
        let gk = g.reply(&mut rng, OpenStatus::OK, &mut out).unwrap();
        let (_, _, ck) = c.finish(&out[2..]).unwrap();
        (ReliableStream::new(ck, 0), ReliableStream::new(gk, 0))
    }

    /// Delivers every whole message in `wire` to `to`; returns what the application saw.
    fn deliver(to: &mut ReliableStream, wire: &[u8]) -> Vec<Delivery> {
        let mut dec = MessageDecoder::default();
        dec.push(wire);
        let mut got = Vec::new();
        while let Some(m) = dec.next_message().unwrap() {
            got.push(to.open(&m).unwrap());
        }
        got
    }

    fn data(d: &[u8]) -> Record {
        Record::Data(d.to_vec())
    }

    #[test]
    fn acks_free_the_buffer() {
        let (mut c, mut g) = ends(1);
        let mut wire = Vec::new();
        for i in 0..ACK_EVERY {
            wire.extend(c.seal(&data(&[i as u8; 100])).unwrap());
        }
        assert!(c.buffered() > 800);
        deliver(&mut g, &wire);
        assert!(g.ack_due());
        let ack = g.seal_ack().unwrap().unwrap();
        assert_eq!(g.seal_ack().unwrap(), None, "nothing new to acknowledge");
        assert_eq!(deliver(&mut c, &ack), vec![Delivery::Nothing]);
        assert_eq!(c.buffered(), 0);
    }

    /// Records opened ahead of the application are not acknowledged until the owner says
    /// their data went through; a resume still counts them (the owner's queue has them).
    #[test]
    fn acks_stop_at_the_first_record_held_for_the_application() {
        let (mut c, mut g) = ends(3);
        let mut wire = Vec::new();
        for i in 0..2 * ACK_EVERY {
            wire.extend(c.seal(&data(&[i as u8; 100])).unwrap());
        }
        let sent = c.buffered();
        deliver(&mut g, &wire);
        // The application took the first three records only.
        g.hold_from(Some(3));
        assert!(!g.ack_due(), "3 records is below the ack interval");
        let ack = g.seal_ack().unwrap().unwrap();
        deliver(&mut c, &ack);
        assert_eq!(c.buffered(), sent - 3 * (sent / (2 * ACK_EVERY as usize)));
        assert_eq!(
            g.seal_ack().unwrap(),
            None,
            "held records are not acknowledged"
        );
        // Everything went through: the rest is acknowledged.
        g.hold_from(None);
        assert!(g.ack_due());
        let ack = g.seal_ack().unwrap().unwrap();
        deliver(&mut c, &ack);
        assert_eq!(c.buffered(), 0);
        // A resume after holding reports every record opened, and acks never count back.
        let (mut c, mut g) = ends(4);
        let mut wire = Vec::new();
        for i in 0..4 {
            wire.extend(c.seal(&data(&[i; 10])).unwrap());
        }
        deliver(&mut g, &wire);
        g.hold_from(Some(1));
        let req = g.resume_request();
        let Ok(crate::inner::FirstMessage::Resume(req)) = crate::inner::first_message(&req[2..])
        else {
            panic!("the resume does not parse");
        };
        assert_eq!(req.received, 4);
        assert_eq!(g.seal_ack().unwrap(), None, "the resume told the peer more");
    }

    #[test]
    fn data_calls_for_a_late_ack_and_acks_alone_do_not() {
        let (mut c, mut g) = ends(9);
        let one = c.seal(&data(b"x")).unwrap();
        deliver(&mut g, &one);
        assert!(g.ack_pending() && !g.ack_due());
        let ack = g.seal_ack().unwrap().unwrap();
        assert!(!g.ack_pending());
        deliver(&mut c, &ack);
        assert!(!c.ack_pending(), "an ack alone is not acknowledged");
    }

    #[test]
    fn a_full_buffer_stops_taking_data() {
        let (mut c, _) = ends(2);
        let chunk = vec![7u8; super::super::MAX_RECORD_DATA];
        let mut n = 0;
        while c.can_take_data() {
            c.seal(&data(&chunk)).unwrap();
            n += 1;
        }
        assert_eq!(
            n,
            MIN_BUFFER.div_ceil(super::super::sealed_record_len(chunk.len()))
        );
        // Acks and closes still go out.
        c.seal(&Record::HalfClose).unwrap();
    }

    /// Fuzz finding (`resume`): the honest answer with bytes after it was taken. An answer
    /// has one length; anything longer is refused, and the honest one still works after.
    #[test]
    fn a_resume_answer_with_trailing_bytes_is_refused() {
        let (mut c, mut g) = ends(5);
        let req = c.resume_request();
        let Ok(crate::inner::FirstMessage::Resume(req)) = crate::inner::first_message(&req[2..])
        else {
            panic!("the resume does not parse");
        };
        let honest = g.accept_resume(&req).unwrap();
        let mut longer = honest[2..].to_vec();
        longer.extend_from_slice(&[0, 0, 0]);
        assert!(c.finish_resume(&longer).is_err());
        c.finish_resume(&honest[2..]).unwrap();
    }

    #[test]
    fn an_ack_for_records_never_sent_is_refused() {
        let (mut c, mut g) = ends(3);
        let forged = g.seal(&Record::Ack(5)).unwrap();
        let mut dec = MessageDecoder::default();
        dec.push(&forged);
        let m = dec.next_message().unwrap().unwrap();
        assert_eq!(c.open(&m), Err(InnerError::BadAck));
    }

    #[test]
    fn done_needs_both_half_closes_and_the_ack_of_ours() {
        let (mut c, mut g) = ends(4);
        let to_g = c.seal(&Record::HalfClose).unwrap();
        let to_c = g.seal(&Record::HalfClose).unwrap();
        deliver(&mut g, &to_g);
        assert!(!g.is_done(), "our half-close is not acknowledged yet");
        assert!(g.ack_urgent());
        let ack = g.seal_ack().unwrap().unwrap();
        assert_eq!(deliver(&mut c, &to_c), vec![Delivery::HalfClose]);
        deliver(&mut c, &ack);
        assert!(!c.is_done() || c.ack_urgent());
        let ack = c.seal_ack().unwrap().unwrap();
        assert!(c.is_done());
        deliver(&mut g, &ack);
        assert!(g.is_done());
    }

    /// The carrier dies with records in flight both ways, some delivered, some lost, one cut
    /// in half. After the resume each side has every byte once, in order.
    #[test]
    fn resume_resends_exactly_what_was_lost() {
        let (mut c, mut g) = ends(5);
        let mut up = Vec::new();
        for i in 0..5u8 {
            up.extend(c.seal(&data(&[i; 10])).unwrap());
        }
        let mut down = Vec::new();
        for i in 0..7u8 {
            down.extend(g.seal(&data(&[100 + i; 20])).unwrap());
        }
        // The gateway got 3 records and half of the 4th; the client got 2 of the gateway's.
        let rec = super::super::sealed_record_len(10);
        let got_g = deliver(&mut g, &up[..3 * rec + 5]);
        assert_eq!(got_g.len(), 3);
        let got_c = deliver(&mut c, &down[..2 * super::super::sealed_record_len(20)]);
        assert_eq!(got_c.len(), 2);

        let req_bytes = c.resume_request();
        let FirstMessage::Resume(req) = first_message(&req_bytes[2..]).unwrap() else {
            panic!("not a resume");
        };
        assert_eq!(req.id, g.next_resume_id());
        let reply = g.accept_resume(&req).unwrap();
        c.finish_resume(&reply[2..]).unwrap();
        let again: Vec<u8> = c.resend().flatten().copied().collect();
        let got_g: Vec<Delivery> = deliver(&mut g, &again);
        assert_eq!(
            got_g,
            vec![Delivery::Data(vec![3; 10]), Delivery::Data(vec![4; 10])]
        );
        let again: Vec<u8> = g.resend().flatten().copied().collect();
        let got_c = deliver(&mut c, &again);
        assert_eq!(got_c.len(), 5);
        assert_eq!(got_c[0], Delivery::Data(vec![102; 20]));
        // The next move uses a new id.
        assert_ne!(req.id, c.next_resume_id());
        assert_eq!(c.next_resume_id(), g.next_resume_id());
    }

    use super::super::{first_message, FirstMessage};

    #[test]
    fn a_resume_without_the_keys_is_refused() {
        let (mut c, mut g) = ends(6);
        let (mut other, _) = ends(7);
        // Another stream's resume, with this stream's id pasted in.
        let bytes = other.resume_request();
        let FirstMessage::Resume(mut req) = first_message(&bytes[2..]).unwrap() else {
            panic!()
        };
        req.id = g.next_resume_id();
        assert_eq!(g.accept_resume(&req), Err(InnerError::ResumeAuth));
        // A changed count breaks the mac.
        let bytes = c.resume_request();
        let FirstMessage::Resume(mut req) = first_message(&bytes[2..]).unwrap() else {
            panic!()
        };
        req.received += 1;
        assert_eq!(g.accept_resume(&req), Err(InnerError::ResumeAuth));
        req.received -= 1;
        let reply = g.accept_resume(&req).unwrap();
        // Known or not, the answer has one length.
        assert_eq!(reply.len(), RESUMED_MESSAGE_LEN);
        assert_eq!(unknown_stream_reply().len(), RESUMED_MESSAGE_LEN);
        // Replaying the same resume fails: the id has moved on.
        assert_eq!(g.accept_resume(&req), Err(InnerError::ResumeAuth));
        // A forged answer fails at the client; an unknown-stream answer refuses.
        let mut bad = reply.clone();
        bad[5] ^= 1;
        assert_eq!(c.finish_resume(&bad[2..]), Err(InnerError::ResumeAuth));
        assert_eq!(
            c.finish_resume(&unknown_stream_reply()[2..]),
            Err(InnerError::ResumeRefused)
        );
        c.finish_resume(&reply[2..]).unwrap();
    }

    proptest! {
        /// Any cut of the carrier, any number of times: after each resume the bytes each side
        /// received are a prefix of what the other sent, and at the end all of it.
        #[test]
        fn any_cuts_lose_and_duplicate_nothing(
            sizes in proptest::collection::vec(1usize..3000, 1..40),
            cuts in proptest::collection::vec((0usize..200_000, 0usize..200_000), 0..4),
        ) {
            let (mut c, mut g) = ends(8);
            let sent_up: Vec<u8> = sizes.iter().enumerate().flat_map(|(i, n)| vec![i as u8; *n]).collect();
            let mut wire_up = Vec::new();
            let mut wire_down = Vec::new();
            let mut off = 0;
            for n in &sizes {
                wire_up.extend(c.seal(&Record::Data(sent_up[off..off + n].to_vec())).unwrap());
                wire_down.extend(g.seal(&Record::Data(sent_up[off..off + n].iter().map(|b| !b).collect())).unwrap());
                off += n;
            }
            let mut got_up = Vec::new();
            let mut got_down = Vec::new();
            let take = |to: &mut ReliableStream, wire: &[u8], cut: usize, got: &mut Vec<u8>| {
                let mut dec = MessageDecoder::default();
                dec.push(&wire[..cut.min(wire.len())]);
                while let Some(m) = dec.next_message().unwrap() {
                    if let Delivery::Data(d) = to.open(&m).unwrap() { got.extend(d) }
                }
            };
            for (cu, cd) in cuts {
                take(&mut g, &wire_up, cu, &mut got_up);
                take(&mut c, &wire_down, cd, &mut got_down);
                prop_assert_eq!(&got_up[..], &sent_up[..got_up.len()]);
                let req = c.resume_request();
                let FirstMessage::Resume(req) = first_message(&req[2..]).unwrap() else { panic!() };
                let reply = g.accept_resume(&req).unwrap();
                c.finish_resume(&reply[2..]).unwrap();
                wire_up = c.resend().flatten().copied().collect();
                wire_down = g.resend().flatten().copied().collect();
            }
            take(&mut g, &wire_up, usize::MAX, &mut got_up);
            take(&mut c, &wire_down, usize::MAX, &mut got_down);
            prop_assert_eq!(got_up, sent_up.clone());
            let inverted: Vec<u8> = sent_up.iter().map(|b| !b).collect();
            prop_assert_eq!(got_down, inverted);
        }
    }
}
