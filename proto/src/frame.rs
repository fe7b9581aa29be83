//! What a sealed cell carries: an acknowledgement block, then frames, then zero padding.
//!
//! ```text
//! ack:    cum u64 | credit u64 | nranges u8 | nranges × (start u64, end u64)
//! frames: type u8 | fields …      (type 0 = padding: the rest of the cell is zeros)
//! ```

use crate::wire::{Reader, WireError, Writer};

/// Most selective-ack ranges one cell reports.
pub const MAX_SACK_RANGES: usize = 8;
pub const MAX_ACK_LEN: usize = 8 + 8 + 1 + MAX_SACK_RANGES * 16;
/// Bytes a `StreamData` frame adds around its payload.
pub const STREAM_DATA_OVERHEAD: usize = 1 + 4 + 2;
/// Longest node id on the wire, in bytes: a gateway named in `StreamOpen`, a relay named in
/// a mailbox or in a central → downstream envelope. One limit for every node id.
pub const MAX_NODE_ID_LEN: usize = 32;
/// Bytes in a mailbox id.
pub const MAILBOX_ID_LEN: usize = 16;

/// A mailbox id (its address): derived from the client's mailbox secret at that relay
/// ([`crate::envelope::MailboxSecret::address`]), so knowing it does not let anyone claim
/// the mailbox. Fresh for every session.
pub type MailboxId = [u8; MAILBOX_ID_LEN];

/// Cumulative + selective acknowledgement and flow-control credit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckBlock {
    /// Every DATA seq below this has been received.
    pub cum: u64,
    /// The sender may send DATA seqs below this.
    pub credit: u64,
    /// Half-open ranges `[start, end)` above `cum` that were received.
    pub ranges: Vec<(u64, u64)>,
}

impl AckBlock {
    pub fn encoded_len(&self) -> usize {
        17 + 16 * self.ranges.len()
    }

    pub fn write_onto(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u64(self.cum)?;
        w.u64(self.credit)?;
        let n = self.ranges.len().min(MAX_SACK_RANGES);
        w.u8(n as u8)?;
        for &(s, e) in &self.ranges[..n] {
            w.u64(s)?;
            w.u64(e)?;
        }
        Ok(())
    }

    pub fn take_from(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let cum = r.u64()?;
        let credit = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_SACK_RANGES {
            return Err(WireError::Invalid("too many ack ranges"));
        }
        let mut ranges = Vec::with_capacity(n);
        for _ in 0..n {
            let (s, e) = (r.u64()?, r.u64()?);
            if s >= e || s <= cum {
                return Err(WireError::Invalid("bad ack range"));
            }
            ranges.push((s, e));
        }
        Ok(AckBlock {
            cum,
            credit,
            ranges,
        })
    }
}

/// Stream ids are chosen by the client, per session.
pub type StreamId = u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream towards the named gateway; its inner bytes follow in `StreamData`.
    StreamOpen { stream: StreamId, gateway: String },
    /// A piece of the stream's inner (gateway-sealed) byte stream.
    StreamData { stream: StreamId, data: Vec<u8> },
    /// The sender will send no more bytes on this stream.
    StreamEnd { stream: StreamId },
    /// Abort the stream in both directions; `code` is a [`Reason`](crate::reason::Reason)
    /// value (`Reason::from(code)`).
    StreamReset { stream: StreamId, code: u8 },
    /// Client → central: the relay mailboxes responses should go to now (replaces the set).
    Mailboxes { boxes: Vec<Mailbox> },
    /// The receiver of a stream lets its sender send stream bytes up to offset `max`
    /// (per-stream flow control, so one slow reader cannot stall the session's others).
    StreamCredit { stream: StreamId, max: u64 },
    /// Central → client: a node that joined, left or refreshed, as the node signed it
    /// ([`Descriptor`](crate::join::Descriptor)). The client verifies it from the operator
    /// key itself, so the central cannot make up members.
    Descriptor { bytes: Vec<u8> },
}

/// Where a client collects its responses: a relay and a mailbox id there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub relay: String,
    pub id: MailboxId,
}

mod ty {
    pub const PADDING: u8 = 0;
    pub const STREAM_OPEN: u8 = 1;
    pub const STREAM_DATA: u8 = 2;
    pub const STREAM_END: u8 = 3;
    pub const STREAM_RESET: u8 = 4;
    pub const MAILBOXES: u8 = 5;
    pub const STREAM_CREDIT: u8 = 6;
    pub const DESCRIPTOR: u8 = 7;
}

fn write_name(w: &mut Writer<'_>, s: &str) -> Result<(), WireError> {
    let len = u8::try_from(s.len()).map_err(|_| WireError::TooLong)?;
    w.u8(len)?;
    w.bytes(s.as_bytes())
}

fn take_name(r: &mut Reader<'_>) -> Result<String, WireError> {
    let len = usize::from(r.u8()?);
    if len > MAX_NODE_ID_LEN {
        return Err(WireError::TooLong);
    }
    std::str::from_utf8(r.bytes(len)?)
        .map(str::to_owned)
        .map_err(|_| WireError::Invalid("name is not UTF-8"))
}

pub fn mailboxes_len(boxes: &[Mailbox]) -> usize {
    2 + boxes
        .iter()
        .map(|b| 1 + b.relay.len() + MAILBOX_ID_LEN)
        .sum::<usize>()
}

impl Frame {
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::StreamOpen { gateway, .. } => 1 + 4 + 1 + gateway.len(),
            Frame::StreamData { data, .. } => STREAM_DATA_OVERHEAD + data.len(),
            Frame::StreamEnd { .. } => 5,
            Frame::StreamReset { .. } => 6,
            Frame::Mailboxes { boxes } => mailboxes_len(boxes),
            Frame::StreamCredit { .. } => 1 + 4 + 8,
            Frame::Descriptor { bytes } => 1 + 2 + bytes.len(),
        }
    }

    pub fn write_onto(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            Frame::StreamOpen { stream, gateway } => {
                w.u8(ty::STREAM_OPEN)?;
                w.u32(*stream)?;
                write_name(w, gateway)
            }
            Frame::StreamData { stream, data } => {
                w.u8(ty::STREAM_DATA)?;
                w.u32(*stream)?;
                w.u16(u16::try_from(data.len()).map_err(|_| WireError::TooLong)?)?;
                w.bytes(data)
            }
            Frame::StreamEnd { stream } => {
                w.u8(ty::STREAM_END)?;
                w.u32(*stream)
            }
            Frame::StreamReset { stream, code } => {
                w.u8(ty::STREAM_RESET)?;
                w.u32(*stream)?;
                w.u8(*code)
            }
            Frame::StreamCredit { stream, max } => {
                w.u8(ty::STREAM_CREDIT)?;
                w.u32(*stream)?;
                w.u64(*max)
            }
            Frame::Descriptor { bytes } => {
                if bytes.len() > crate::join::MAX_DESCRIPTOR_LEN {
                    return Err(WireError::TooLong);
                }
                w.u8(ty::DESCRIPTOR)?;
                w.u16(bytes.len() as u16)?;
                w.bytes(bytes)
            }
            Frame::Mailboxes { boxes } => {
                w.u8(ty::MAILBOXES)?;
                w.u8(u8::try_from(boxes.len()).map_err(|_| WireError::TooLong)?)?;
                for b in boxes {
                    write_name(w, &b.relay)?;
                    w.bytes(&b.id)?;
                }
                Ok(())
            }
        }
    }

    /// Reads the next frame; `None` at padding or the end of the cell.
    pub fn take_from(r: &mut Reader<'_>) -> Result<Option<Self>, WireError> {
        if r.remaining() == 0 {
            return Ok(None);
        }
        Ok(Some(match r.u8()? {
            ty::PADDING => return Ok(None),
            ty::STREAM_OPEN => Frame::StreamOpen {
                stream: r.u32()?,
                gateway: take_name(r)?,
            },
            ty::STREAM_DATA => {
                let stream = r.u32()?;
                let len = usize::from(r.u16()?);
                Frame::StreamData {
                    stream,
                    data: r.bytes(len)?.to_vec(),
                }
            }
            ty::STREAM_END => Frame::StreamEnd { stream: r.u32()? },
            ty::STREAM_RESET => Frame::StreamReset {
                stream: r.u32()?,
                code: r.u8()?,
            },
            ty::STREAM_CREDIT => Frame::StreamCredit {
                stream: r.u32()?,
                max: r.u64()?,
            },
            ty::DESCRIPTOR => {
                let len = usize::from(r.u16()?);
                if len > crate::join::MAX_DESCRIPTOR_LEN {
                    return Err(WireError::TooLong);
                }
                Frame::Descriptor {
                    bytes: r.bytes(len)?.to_vec(),
                }
            }
            ty::MAILBOXES => {
                let n = usize::from(r.u8()?);
                let mut boxes = Vec::with_capacity(n.min(16));
                for _ in 0..n {
                    boxes.push(Mailbox {
                        relay: take_name(r)?,
                        id: r.array()?,
                    });
                }
                Frame::Mailboxes { boxes }
            }
            _ => return Err(WireError::Invalid("unknown frame type")),
        }))
    }
}

impl Frame {
    /// Bytes the decoded frame takes in memory: itself and what it owns on the heap. A cell
    /// of 5-byte frames decodes into many times its size; buffers charge this, not the cell.
    pub fn mem_size(&self) -> usize {
        let heap = match self {
            Frame::StreamOpen { gateway, .. } => gateway.capacity(),
            Frame::StreamData { data, .. } => data.capacity(),
            Frame::Descriptor { bytes } => bytes.capacity(),
            Frame::Mailboxes { boxes } => {
                boxes.capacity() * std::mem::size_of::<Mailbox>()
                    + boxes.iter().map(|b| b.relay.capacity()).sum::<usize>()
            }
            Frame::StreamEnd { .. } | Frame::StreamReset { .. } | Frame::StreamCredit { .. } => 0,
        };
        std::mem::size_of::<Frame>() + heap
    }
}

/// Bytes a decoded cell's frames take in memory (the vector's capacity and each frame).
pub fn frames_mem_size(frames: &Vec<Frame>) -> usize {
    let spare = frames.capacity() - frames.len();
    spare * std::mem::size_of::<Frame>() + frames.iter().map(Frame::mem_size).sum::<usize>()
}

/// Parses a whole cell plaintext.
pub fn parse_cell_body(body: &[u8]) -> Result<(AckBlock, Vec<Frame>), WireError> {
    let mut r = Reader::new(body);
    let ack = AckBlock::take_from(&mut r)?;
    let mut frames = Vec::new();
    while let Some(f) = Frame::take_from(&mut r)? {
        frames.push(f);
    }
    Ok((ack, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let name = "[a-z0-9-]{1,32}";
        prop_oneof![
            (any::<u32>(), name)
                .prop_map(|(stream, gateway)| Frame::StreamOpen { stream, gateway }),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..600))
                .prop_map(|(stream, data)| Frame::StreamData { stream, data }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(stream, max)| Frame::StreamCredit { stream, max }),
            any::<u32>().prop_map(|stream| Frame::StreamEnd { stream }),
            proptest::collection::vec(any::<u8>(), 0..=crate::join::MAX_DESCRIPTOR_LEN)
                .prop_map(|bytes| Frame::Descriptor { bytes }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(stream, code)| Frame::StreamReset { stream, code }),
            proptest::collection::vec((name, any::<[u8; 16]>()), 0..4).prop_map(|v| {
                Frame::Mailboxes {
                    boxes: v
                        .into_iter()
                        .map(|(relay, id)| Mailbox { relay, id })
                        .collect(),
                }
            }),
        ]
    }

    fn arb_ack() -> impl Strategy<Value = AckBlock> {
        (
            0u64..1 << 40,
            any::<u64>(),
            proptest::collection::vec((1u64..1000, 1u64..1000), 0..=MAX_SACK_RANGES),
        )
            .prop_map(|(cum, credit, gaps)| {
                let mut ranges = Vec::new();
                let mut at = cum;
                for (gap, len) in gaps {
                    let s = at + gap;
                    ranges.push((s, s + len));
                    at = s + len;
                }
                AckBlock {
                    cum,
                    credit,
                    ranges,
                }
            })
    }

    proptest! {
        #[test]
        fn cell_body_round_trips(ack in arb_ack(), frames in proptest::collection::vec(arb_frame(), 0..5)) {
            let mut buf = vec![0u8; 16 * 1024];
            let mut w = Writer::new(&mut buf);
            ack.write_onto(&mut w).unwrap();
            for f in &frames {
                let before = w.position();
                f.write_onto(&mut w).unwrap();
                prop_assert_eq!(w.position() - before, f.encoded_len());
            }
            prop_assert_eq!(ack.encoded_len(), 17 + 16 * ack.ranges.len());
            let (a2, f2) = parse_cell_body(&buf).unwrap();
            prop_assert_eq!(a2, ack);
            prop_assert_eq!(f2, frames);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_cell_body(&bytes);
        }
    }
}
