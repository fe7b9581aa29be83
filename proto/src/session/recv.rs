//! The receiving side: opening cells, in-order delivery through the reorder window, events
//! for the application, and the acknowledgements (with session credit) this end sends.

use std::time::Instant;

use super::{PathId, Session, SessionEvent, Transmit};
use crate::cell::{CellError, CellKind};
use crate::frame::{self, AckBlock, Frame};
use crate::wire::Writer;

impl Session {
    /// What this end has received, and how far the peer may send: credit grows only while
    /// the application keeps up with delivered events.
    pub(super) fn ack_block(&mut self) -> AckBlock {
        let credit = if self.event_bytes < self.cfg.max_event_bytes {
            self.reorder.next + self.reorder.window
        } else {
            self.credit_sent
        };
        self.credit_sent = self.credit_sent.max(credit);
        AckBlock {
            cum: self.reorder.next,
            credit: self.credit_sent,
            ranges: self.reorder.sack_ranges(),
        }
    }

    /// Seals a cell whose `body` starts with the current [`ack_block`](Self::ack_block): once
    /// it is sealed the acknowledgement goes out with it, so none is due any more. A cell that
    /// cannot be sealed fails the session (`None`).
    pub(super) fn seal_with_ack(
        &mut self,
        kind: CellKind,
        seq: u64,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        match self
            .tx_keys
            .seal(self.cfg.cell_size, kind, self.id, seq, body)
        {
            Ok(cell) => {
                self.ack_due = None;
                self.unacked_received = 0;
                Some(cell)
            }
            Err(e) => {
                self.seal_failed(e);
                None
            }
        }
    }

    /// A bare ACK cell when one is due. A cell that cannot be sealed fails the session.
    pub(super) fn poll_ack(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        let due = matches!(self.ack_due, Some(t) if t <= now)
            || self.unacked_received >= self.cfg.ack_every;
        if !due {
            return None;
        }
        let ack = self.ack_block();
        let mut body = vec![0u8; frame::MAX_ACK_LEN];
        let mut w = Writer::new(&mut body);
        if ack.write_onto(&mut w).is_err() {
            return None;
        }
        let cell = self.seal_with_ack(CellKind::ACK, self.next_ack_seq, &body)?;
        self.next_ack_seq += 1;
        self.stats.ack_cells_sent += 1;
        // Not `pick_path`: a bare ack is never acknowledged, so it cannot be a probe.
        let path = self.choose_path(now, paths, None);
        Some(Transmit { path, cell })
    }

    /// Takes one cell from the peer. Errors say why it was dropped; none is fatal.
    pub fn handle_cell(&mut self, now: Instant, cell: &mut [u8]) -> Result<(), CellError> {
        let r = self.handle_cell_inner(now, cell);
        match &r {
            Ok(()) => self.stats.cells_received += 1,
            Err(CellError::Replay) => self.stats.duplicates += 1,
            Err(_) => self.stats.rejected += 1,
        }
        r
    }

    fn handle_cell_inner(&mut self, now: Instant, cell: &mut [u8]) -> Result<(), CellError> {
        if cell.len() != self.cfg.cell_size {
            return Err(CellError::Size {
                got: cell.len(),
                expected: self.cfg.cell_size,
            });
        }
        // The caller routed the cell here by its label (or mailbox); the seal checks that it
        // belongs to this session.
        let h = self.rx_keys.unprotect(self.id, cell)?;
        let is_data = h.kind == CellKind::DATA;
        if is_data {
            if let Err(e) = self.reorder.accepts(h.seq) {
                if e == CellError::Replay {
                    // Our ack may have been lost: say again what we have.
                    self.ack_due.get_or_insert(now);
                }
                return Err(e);
            }
        } else if h.kind == CellKind::ACK {
            self.ack_replay.check(h.seq)?;
        } else {
            return Err(CellError::Kind(h.kind));
        }
        let body = self
            .rx_keys
            .open_unprotected(self.cfg.cell_size, &h, cell)?;
        let (ack, frames) = frame::parse_cell_body(body)?;
        if !is_data {
            self.ack_replay.commit(h.seq);
        }
        self.last_activity = now;
        self.on_ack(now, &ack);
        if !is_data {
            return Ok(());
        }
        let in_order = h.seq == self.reorder.next;
        if !in_order && !self.reorder.has_room(&frames, self.cfg.max_reorder_bytes()) {
            // Over the byte cap (cells packed with tiny frames): dropped unacknowledged, so
            // the peer sends it again once the gap below it is filled.
            return Err(CellError::OutOfWindow);
        }
        if in_order || self.reorder.held.is_empty() {
            // Progress, or the first gap: the stall clock starts now.
            self.last_progress = now;
        }
        self.reorder.insert(h.seq, frames);
        if in_order {
            self.last_progress = now;
        }
        while let Some(frames) = self.reorder.pop_ready() {
            for f in frames {
                let ev = match f {
                    Frame::StreamOpen { stream, gateway } => {
                        self.stream_known(stream);
                        SessionEvent::StreamOpened { stream, gateway }
                    }
                    Frame::StreamData { stream, data } => SessionEvent::StreamData { stream, data },
                    Frame::StreamEnd { stream } => SessionEvent::StreamEnd { stream },
                    Frame::StreamReset { stream, code } => {
                        SessionEvent::StreamReset { stream, code }
                    }
                    Frame::Mailboxes { boxes } => SessionEvent::Mailboxes(boxes),
                    Frame::Descriptor { bytes } => SessionEvent::Descriptor(bytes),
                    Frame::StreamCredit { stream, max } => {
                        if !self.on_stream_credit(stream, max) {
                            continue;
                        }
                        SessionEvent::StreamCredit { stream, max }
                    }
                };
                self.event_bytes += ev.weight();
                self.events.push_back(ev);
            }
        }
        self.unacked_received += 1;
        if in_order {
            self.ack_due.get_or_insert(now + self.cfg.ack_delay);
        } else {
            self.ack_due = Some(now);
        }
        Ok(())
    }

    /// The next delivered frame, in order. A failure of the session comes first, once
    /// ([`SessionEvent::Failed`]).
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if self.failure_unreported {
            self.failure_unreported = false;
            return self.failed.clone().map(SessionEvent::Failed);
        }
        let ev = self.events.pop_front()?;
        if !self.cfg.manual_stream_credit {
            match &ev {
                SessionEvent::StreamData { stream, data } => {
                    let (stream, n) = (*stream, data.len());
                    self.stream_consumed(stream, n);
                }
                SessionEvent::StreamEnd { stream } | SessionEvent::StreamReset { stream, .. } => {
                    self.rx_credit.remove(stream);
                }
                _ => {}
            }
        }
        let before = self.event_bytes >= self.cfg.max_event_bytes;
        self.event_bytes = self.event_bytes.saturating_sub(ev.weight());
        // Credit was frozen and the application caught up: tell the peer soon.
        if before && self.event_bytes < self.cfg.max_event_bytes {
            self.ack_due.get_or_insert(
                self.last_activity
                    .max(self.ack_due.unwrap_or(self.last_activity)),
            );
        }
        Some(ev)
    }
}
