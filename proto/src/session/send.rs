//! The sending side: per-stream queues packed into new DATA cells, the session window, and
//! per-stream flow control (credit granted by the peer, and credit this end grants).

use std::time::Instant;

use super::recovery::Inflight;
use super::{PathId, Session, Transmit};
use crate::cell::{sealed_capacity, CellKind};
use crate::frame::{self, Frame, Mailbox, StreamId};
use crate::wire::{WireError, Writer};

/// What the application queued on a stream, in order.
pub(super) enum TxItem {
    Open(String),
    /// Bytes, and how many of them are already sent.
    Data(Vec<u8>, usize),
    End,
    Reset(u8),
}

impl Session {
    /// Bytes the application may still queue.
    pub fn send_capacity(&self) -> usize {
        self.cfg
            .max_pending_bytes
            .saturating_sub(self.pending_bytes)
    }

    /// Bytes this end keeps for sending: queued stream bytes, control frames and the
    /// cells in flight (kept for resending until acknowledged).
    pub fn send_bytes(&self) -> usize {
        self.pending_bytes
            + self.control.len() * std::mem::size_of::<Frame>()
            + self.inflight.len() * self.cfg.cell_size
    }

    /// Nothing queued and nothing unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.pending_bytes == 0
            && self.control.is_empty()
            && self.ready.is_empty()
            && self.inflight.is_empty()
    }

    fn push_item(&mut self, stream: StreamId, item: TxItem) {
        let q = self.streams.entry(stream).or_default();
        if q.is_empty() {
            self.ready.push_back(stream);
        }
        q.push_back(item);
    }

    pub fn open_stream(&mut self, stream: StreamId, gateway: &str) {
        self.pending_bytes += 16;
        self.stream_known(stream);
        self.push_item(stream, TxItem::Open(gateway.to_owned()));
    }

    /// Queues stream bytes; returns how many were taken (0 when the queue is full).
    pub fn send(&mut self, stream: StreamId, data: &[u8]) -> usize {
        let n = data.len().min(self.send_capacity());
        if n > 0 {
            self.pending_bytes += n;
            self.push_item(stream, TxItem::Data(data[..n].to_vec(), 0));
        }
        n
    }

    /// Queues all of `data`, even past the soft cap: for a driver that checked
    /// `send_capacity` before taking one bounded chunk from a stream.
    pub fn send_all(&mut self, stream: StreamId, data: Vec<u8>) {
        if !data.is_empty() {
            self.pending_bytes += data.len();
            self.push_item(stream, TxItem::Data(data, 0));
        }
    }

    pub fn end_stream(&mut self, stream: StreamId) {
        self.pending_bytes += 16;
        self.push_item(stream, TxItem::End);
    }

    pub fn reset_stream(&mut self, stream: StreamId, code: u8) {
        self.pending_bytes += 16;
        self.push_item(stream, TxItem::Reset(code));
    }

    /// Central side: tells the client of a node that joined, refreshed or is leaving (the
    /// node's signed descriptor, passed on as it is).
    pub fn send_descriptor(&mut self, bytes: Vec<u8>) {
        self.control.push_back(Frame::Descriptor { bytes });
    }

    pub fn set_mailboxes(&mut self, boxes: Vec<Mailbox>) {
        self.control.push_back(Frame::Mailboxes { boxes });
    }

    pub(super) fn can_send_new(&self) -> bool {
        let lowest = self
            .inflight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq);
        self.next_seq < self.peer_credit && self.next_seq < lowest + self.cfg.window_cells
    }

    fn has_new_frames(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// A new DATA cell of queued frames, carrying the current acknowledgement, if the
    /// window allows one. A cell that cannot be sealed fails the session.
    pub(super) fn poll_new_data(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        let keepalive = self.confirm_due || self.keepalive_at().is_some_and(|t| t <= now);
        if !(self.can_send_new() && (self.has_new_frames() || keepalive)) {
            return None;
        }
        let mut body = vec![0u8; sealed_capacity(self.cfg.cell_size)];
        let ack = self.ack_block();
        let mut w = Writer::new(&mut body);
        // A keepalive carries no frame: the ack block and padding.
        let packed = ack.write_onto(&mut w).is_ok()
            && self.pack_frames(&mut w).is_ok_and(|any| any || keepalive);
        if !packed {
            return None;
        }
        let seq = self.next_seq;
        // On failure the frames just packed are gone with it: the session cannot go on.
        let cell = self.seal_with_ack(CellKind::DATA, seq, &body)?;
        self.next_seq += 1;
        self.last_data_sent = now;
        self.confirm_due = false;
        let path = self.pick_path(now, paths, None);
        self.note_sent(path);
        self.inflight.insert(
            seq,
            Inflight {
                cell: cell.clone(),
                first_sent: now,
                sent_at: now,
                path,
                prev_path: path,
                retransmitted: false,
                backoff: 0,
            },
        );
        self.stats.data_cells_sent += 1;
        Some(Transmit { path, cell })
    }

    /// Packs queued frames after the ack block into `w`; returns whether any went in.
    fn pack_frames(&mut self, w: &mut Writer<'_>) -> Result<bool, WireError> {
        let mut any = false;
        while let Some(f) = self.control.front() {
            if f.encoded_len() > w.remaining() {
                break;
            }
            f.write_onto(w)?;
            self.control.pop_front();
            any = true;
        }
        while let Some(stream) = self.ready.pop_front() {
            let Some(q) = self.streams.get_mut(&stream) else {
                continue;
            };
            let room = w.remaining();
            let Some(item) = q.front_mut() else {
                self.streams.remove(&stream);
                continue;
            };
            let (frame, done, taken) = match item {
                TxItem::Open(gw) => (
                    Frame::StreamOpen {
                        stream,
                        gateway: gw.clone(),
                    },
                    true,
                    16,
                ),
                TxItem::End => (Frame::StreamEnd { stream }, true, 16),
                TxItem::Reset(code) => (
                    Frame::StreamReset {
                        stream,
                        code: *code,
                    },
                    true,
                    16,
                ),
                TxItem::Data(buf, off) => {
                    let (sent, max) = *self
                        .tx_credit
                        .entry(stream)
                        .or_insert((0, self.peer_stream_window));
                    let credit = usize::try_from(max.saturating_sub(sent)).unwrap_or(usize::MAX);
                    if credit == 0 {
                        // Parked until the peer grants more (StreamCredit).
                        self.credit_blocked.insert(stream);
                        continue;
                    }
                    let left = buf.len() - *off;
                    let n = left
                        .min(room.saturating_sub(frame::STREAM_DATA_OVERHEAD))
                        .min(credit);
                    if n == 0 {
                        self.ready.push_front(stream);
                        break;
                    }
                    if let Some(c) = self.tx_credit.get_mut(&stream) {
                        c.0 += n as u64;
                    }
                    let f = Frame::StreamData {
                        stream,
                        data: buf[*off..*off + n].to_vec(),
                    };
                    *off += n;
                    (f, *off == buf.len(), n)
                }
            };
            if frame.encoded_len() > room {
                self.ready.push_front(stream);
                break;
            }
            frame.write_onto(w)?;
            any = true;
            if matches!(frame, Frame::StreamEnd { .. } | Frame::StreamReset { .. }) {
                self.tx_credit.remove(&stream);
                self.credit_blocked.remove(&stream);
            }
            self.pending_bytes = self.pending_bytes.saturating_sub(taken);
            if done {
                q.pop_front();
            }
            if q.is_empty() {
                self.streams.remove(&stream);
            } else {
                self.ready.push_back(stream);
            }
        }
        Ok(any)
    }

    // ---- per-stream flow control ----------------------------------------------------------

    /// A stream is open (opened here, or by the peer): it may send up to the peer's window,
    /// and credit the peer grants for it is kept from now on.
    pub(super) fn stream_known(&mut self, stream: StreamId) {
        let window = self.peer_stream_window;
        self.tx_credit.entry(stream).or_insert((0, window));
    }

    /// The peer raised `stream`'s send limit: a stream parked for credit is ready again.
    /// Credit for a stream that is not open (never opened, or already ended or reset) is
    /// ignored and returns false: a 13-byte frame must not create state that nothing frees.
    pub(super) fn on_stream_credit(&mut self, stream: StreamId, max: u64) -> bool {
        let Some(c) = self.tx_credit.get_mut(&stream) else {
            return false;
        };
        c.1 = c.1.max(max);
        if c.1 > c.0 && self.credit_blocked.remove(&stream) && self.streams.contains_key(&stream) {
            self.ready.push_back(stream);
        }
        true
    }

    /// Streams with send-side flow-control state (tests: what a peer can make this end hold).
    pub fn tracked_streams(&self) -> usize {
        self.tx_credit.len()
    }

    /// The stream window the peer announced: how far a new stream may send before credit.
    pub fn peer_stream_window(&self) -> u64 {
        self.peer_stream_window
    }

    /// The application took `n` bytes of `stream`: grant the peer more once half the window
    /// is used (a `StreamCredit` frame rides in the next cell).
    pub fn stream_consumed(&mut self, stream: StreamId, n: usize) {
        let window = self.cfg.stream_window.max(1);
        let c = self.rx_credit.entry(stream).or_insert((0, window));
        c.0 += n as u64;
        if c.1.saturating_sub(c.0) <= window / 2 {
            c.1 = c.0 + window;
            let max = c.1;
            self.control.push_back(Frame::StreamCredit { stream, max });
        }
    }

    /// The stream is over in both directions: forget its flow-control state.
    pub fn stream_closed(&mut self, stream: StreamId) {
        self.rx_credit.remove(&stream);
        self.tx_credit.remove(&stream);
        self.credit_blocked.remove(&stream);
    }
}
