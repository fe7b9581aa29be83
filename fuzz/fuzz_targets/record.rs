//! Frames in a cell body (`braid_proto::frame`) and the inner record layer
//! (`braid_proto::inner`: `MessageDecoder`, `RecordSealer`, `RecordOpener`).
//!
//! The first input byte picks a mode (`mode % 4`):
//!
//! 0. frames: the rest is a cell plaintext. If `parse_cell_body` accepts it, re-encoding the
//!    ack block and the frames reproduces the input's prefix byte for byte (the encoding is
//!    canonical), every `encoded_len` is exact, the parse stopped at the end or at a padding
//!    byte, and re-parsing the re-encoding gives the same value.
//! 1. decoder: the next byte is a chunking seed, the rest an inner byte stream fed to a
//!    `MessageDecoder` in chunks. After draining, it never holds more than one partial
//!    message (under `2 + len` bytes), the messages with their `u16` prefixes plus what is
//!    buffered are exactly the bytes pushed, and the result does not depend on the chunking.
//! 2. open: the rest is an inner byte stream from the client, opened by the fixed stream's
//!    gateway opener. A record opens only if the client's sealer, at the same counter,
//!    produces the same bytes for it (only the sealer can make one; seeds hold some).
//! 3. seal: arbitrary `Record`s sealed by the client and by the gateway of the fixed stream,
//!    decoded and opened on the other side: same records, in order; a flipped bit, a replay
//!    or a skipped record fails; oversize data is refused without writing anything.
#![no_main]

use arbitrary::Arbitrary;
use braid_fuzz::{record_pair, structured, FuzzRng, Input};
use braid_proto::frame::{parse_cell_body, AckBlock, Frame, MAX_SACK_RANGES};
use braid_proto::inner::{
    self, InnerError, MessageDecoder, Record, RecordOpener, RecordSealer, MAX_MESSAGE,
    MAX_RECORD_DATA,
};
use braid_proto::wire::{Reader, Writer};
use libfuzzer_sys::fuzz_target;
use rand_core::RngCore;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => frames(rest),
        1 => {
            let mut inp = Input::new(rest);
            let seed = inp.u8();
            decoder(u64::from(seed), inp.rest());
        }
        2 => open_raw(rest),
        _ => structured(rest, seal),
    }
});

fn frames(body: &[u8]) {
    let Ok((ack, frames)) = parse_cell_body(body) else {
        return;
    };
    // The ack block is well formed.
    assert!(ack.ranges.len() <= MAX_SACK_RANGES);
    for &(s, e) in &ack.ranges {
        assert!(s < e && s > ack.cum);
    }
    let mut buf = vec![0u8; body.len()];
    let mut w = Writer::new(&mut buf);
    ack.write_onto(&mut w).expect("re-encode ack");
    assert_eq!(w.position(), ack.encoded_len());
    for f in &frames {
        let before = w.position();
        f.write_onto(&mut w).expect("re-encode frame");
        assert_eq!(w.position() - before, f.encoded_len(), "{f:?}");
    }
    let n = w.position();
    // Canonical: the re-encoding is the parsed prefix of the input.
    assert_eq!(&buf[..n], &body[..n]);
    // The parse stopped at the end or at padding.
    assert!(n == body.len() || body[n] == 0);
    // Re-parse the re-encoding (zero padding after it).
    let (ack2, frames2) = parse_cell_body(&buf).expect("re-parse");
    assert_eq!(ack2, ack);
    assert_eq!(frames2, frames);
    // Parsing the ack alone consumes exactly its encoding.
    let mut r = Reader::new(body);
    let a = AckBlock::take_from(&mut r).expect("ack parses alone");
    assert_eq!(r.position(), a.encoded_len());
    // Frames parse one at a time the same way.
    let mut one = Vec::new();
    while let Some(f) = Frame::take_from(&mut r).expect("frames parse alone") {
        one.push(f);
    }
    assert_eq!(one, frames);
}

/// What a decoder yields for a stream: the messages and whether it ended in an error
/// (with the offending length).
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    messages: Vec<Vec<u8>>,
    error: Option<usize>,
    buffered: usize,
}

fn decode_chunked(stream: &[u8], chunks: &[usize]) -> Decoded {
    let mut d = MessageDecoder::default();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    let mut pushed = 0usize;
    let mut at = 0usize;
    for &len in chunks {
        let end = (at + len).min(stream.len());
        d.push(&stream[at..end]);
        pushed += end - at;
        at = end;
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    assert!(m.len() <= MAX_MESSAGE);
                    messages.push(m);
                }
                Ok(None) => break,
                Err(InnerError::TooLong(n)) => {
                    assert!(n > MAX_MESSAGE);
                    // The error names the length at the front of what is buffered.
                    let consumed: usize = messages.iter().map(|m| m.len() + 2).sum();
                    let rest = &stream[consumed..pushed];
                    assert_eq!(n, usize::from(u16::from_be_bytes([rest[0], rest[1]])));
                    assert_eq!(d.buffered(), rest.len());
                    return Decoded {
                        messages,
                        error: Some(n),
                        buffered: d.buffered(),
                    };
                }
                Err(e) => panic!("unexpected decoder error {e}"),
            }
        }
        // After draining: at most one partial message is held.
        let b = d.buffered();
        let consumed: usize = messages.iter().map(|m| m.len() + 2).sum();
        assert_eq!(consumed + b, pushed, "bytes lost or invented");
        if b >= 2 {
            let rest = &stream[consumed..pushed];
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            assert!(b < 2 + len, "a whole message left in the buffer");
            assert!(b < 2 + MAX_MESSAGE);
        }
        if at == stream.len() {
            break;
        }
    }
    // Messages with their prefixes are the stream's prefix.
    let mut re = Vec::new();
    for m in &messages {
        re.extend_from_slice(&(m.len() as u16).to_be_bytes());
        re.extend_from_slice(m);
    }
    assert_eq!(&re[..], &stream[..re.len()]);
    Decoded {
        messages,
        error: None,
        buffered: d.buffered(),
    }
}

fn decoder(seed: u64, stream: &[u8]) {
    let all = decode_chunked(stream, &[stream.len()]);
    let mut rng = FuzzRng::new(seed);
    let mut chunks = Vec::new();
    let mut total = 0;
    while total < stream.len() {
        // Mostly small chunks, some large.
        let c = match rng.next_u32() % 4 {
            0 => 1,
            1 => 1 + (rng.next_u32() as usize % 3),
            2 => 1 + (rng.next_u32() as usize % 64),
            _ => 1 + (rng.next_u32() as usize % 4096),
        };
        chunks.push(c);
        total += c;
    }
    let chunked = decode_chunked(stream, &chunks);
    if all.error.is_some() || chunked.error.is_some() {
        // Both stop at the same bad length, having returned the same messages.
        assert_eq!(all.messages, chunked.messages);
        assert_eq!(all.error, chunked.error);
    } else {
        assert_eq!(all, chunked);
    }
}

fn open_raw(stream: &[u8]) {
    let (mut cs, _, _, mut go) = record_pair();
    let mut d = MessageDecoder::default();
    d.push(stream);
    while let Ok(Some(m)) = d.next_message() {
        match go.open(&m) {
            Ok(rec) => {
                let mut again = Vec::new();
                cs.seal(&rec, &mut again).expect("re-seal");
                assert_eq!(
                    &again[2..],
                    &m[..],
                    "opened a record the sealer did not make"
                );
            }
            // The stream is aborted at the first bad record.
            Err(_) => return,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum ArbRecord {
    Data(Vec<u8>),
    /// Data of `n * 97 % (MAX_RECORD_DATA + 64)` bytes, to reach the size limit cheaply.
    Big(u16, u8),
    HalfClose,
    Close,
    Error(u8),
    Ack(u64),
}

impl ArbRecord {
    fn record(&self) -> Record {
        match self {
            ArbRecord::Data(d) => Record::Data(d.clone()),
            ArbRecord::Ack(n) => Record::Ack(*n),
            ArbRecord::Big(n, b) => {
                Record::Data(vec![*b; usize::from(*n) * 97 % (MAX_RECORD_DATA + 64)])
            }
            ArbRecord::HalfClose => Record::HalfClose,
            ArbRecord::Close => Record::Close,
            ArbRecord::Error(c) => Record::Error(*c),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct SealInput {
    /// Which way the records go: client → gateway or gateway → client.
    to_client: bool,
    chunk_seed: u8,
    flip: u32,
    records: Vec<ArbRecord>,
}

fn seal(s: SealInput) {
    let (cs, co, gs, go) = record_pair();
    let (mut sealer, mut opener, fresh_opener): (RecordSealer, RecordOpener, fn() -> RecordOpener) =
        if s.to_client {
            (gs, co, || record_pair().1)
        } else {
            (cs, go, || record_pair().3)
        };
    let mut wire = Vec::new();
    let mut sent = Vec::new();
    for r in s.records.iter().take(32) {
        let rec = r.record();
        let before = wire.len();
        match sealer.seal(&rec, &mut wire) {
            Ok(()) => {
                let body = match &rec {
                    Record::Data(d) => d.len(),
                    Record::HalfClose | Record::Close => 0,
                    Record::Error(_) => 1,
                    Record::Ack(_) => 8,
                };
                // Padded to a bucket: the carrier sees only bucket sizes.
                assert_eq!(wire.len() - before, inner::sealed_record_len(body));
                sent.push(rec);
            }
            Err(InnerError::TooLong(n)) => {
                assert!(matches!(&rec, Record::Data(d) if d.len() == n && n > MAX_RECORD_DATA));
                assert_eq!(wire.len(), before, "a refused record wrote bytes");
            }
            Err(e) => panic!("unexpected seal error {e}"),
        }
    }
    // Decode in chunks and open in order.
    let mut rng = FuzzRng::new(u64::from(s.chunk_seed));
    let mut d = MessageDecoder::default();
    let mut msgs = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let end = (at + 1 + rng.next_u32() as usize % 300).min(wire.len());
        d.push(&wire[at..end]);
        at = end;
        while let Some(m) = d.next_message().expect("sealed records decode") {
            msgs.push(m);
        }
    }
    assert_eq!(d.buffered(), 0);
    assert_eq!(msgs.len(), sent.len());
    for (m, r) in msgs.iter().zip(&sent) {
        assert_eq!(&opener.open(m).expect("open sealed record"), r);
    }
    if msgs.is_empty() {
        return;
    }
    // A replay of any record fails now that the counter moved on.
    let i = s.flip as usize % msgs.len();
    assert_eq!(opener.open(&msgs[i]).err(), Some(InnerError::Auth));
    // A flipped bit fails, and (the counter did not move) the original still opens.
    let mut o = fresh_opener();
    let m = &msgs[0];
    let bit = s.flip as usize % (m.len() * 8);
    let mut bad = m.clone();
    bad[bit / 8] ^= 1 << (bit % 8);
    assert!(o.open(&bad).is_err(), "flipped bit {bit} still opened");
    assert_eq!(&o.open(m).expect("original after a failed open"), &sent[0]);
    // Skipping a record fails.
    if msgs.len() > 2 {
        let mut o = fresh_opener();
        assert_eq!(
            o.open(&msgs[1 + i % (msgs.len() - 1)]).err(),
            Some(InnerError::Auth)
        );
    }
}
