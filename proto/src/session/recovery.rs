//! Loss recovery: cells in flight until acknowledged, the RTT estimate and RTO, and
//! resending a cell, byte for byte, over another path when it times out.

use std::time::{Duration, Instant};

use super::{PathId, Session, Transmit};
use crate::frame::AckBlock;

/// A sealed DATA cell kept until the peer acknowledges it.
pub(super) struct Inflight {
    pub(super) cell: Vec<u8>,
    /// When its first copy went out.
    pub(super) first_sent: Instant,
    pub(super) sent_at: Instant,
    pub(super) path: PathId,
    /// Where the copy before this one went (the same as `path` until it is resent).
    pub(super) prev_path: PathId,
    pub(super) retransmitted: bool,
    pub(super) backoff: u32,
}

/// RFC 6298 smoothed RTT.
#[derive(Default)]
pub(super) struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The smallest sample seen: no copy sent later than this before an ack can be the one
    /// acknowledged.
    min_rtt: Option<Duration>,
}

impl RttEstimator {
    pub(super) fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    fn sample(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }
}

impl Session {
    pub(super) fn rto(&self) -> Duration {
        match self.rtt.srtt {
            None => self.cfg.initial_rto,
            Some(s) => (s + self.rtt.rttvar * 4).clamp(self.cfg.min_rto, self.cfg.max_rto),
        }
    }

    /// When an in-flight cell is due for resending: its RTO (from the current estimate, so
    /// cells sent before the first sample don't wait the initial RTO) with its backoff.
    fn due(&self, f: &Inflight) -> Instant {
        f.sent_at + (self.rto() * (1 << f.backoff)).min(self.cfg.max_rto)
    }

    /// The next lost cell to resend, on a path other than the one it was lost on if any.
    pub(super) fn poll_retransmit(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        while let Some(seq) = self.lost.pop_first() {
            let Some(last) = self.inflight.get(&seq).map(|f| f.path) else {
                continue;
            };
            let path = self.pick_path(now, paths, Some(last));
            self.note_done(last);
            self.note_sent(path);
            self.count_path(path).resent += 1;
            let Some(f) = self.inflight.get_mut(&seq) else {
                continue;
            };
            f.prev_path = f.path;
            f.path = path;
            f.sent_at = now;
            f.retransmitted = true;
            f.backoff = (f.backoff + 1).min(6);
            self.stats.retransmits += 1;
            return Some(Transmit {
                path,
                cell: f.cell.clone(),
            });
        }
        None
    }

    /// When `handle_timeout` (or a keepalive) should next run; never once the session has
    /// failed: it has nothing more to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        // One pass over the cells in flight: the next resend and the oldest first send.
        let mut rto: Option<Instant> = None;
        let mut oldest: Option<Instant> = None;
        for (seq, f) in &self.inflight {
            oldest = Some(oldest.map_or(f.first_sent, |o| o.min(f.first_sent)));
            if !self.lost.contains(seq) {
                let due = self.due(f);
                rto = Some(rto.map_or(due, |r| r.min(due)));
            }
        }
        let gone = oldest.and_then(|o| self.peer_gone_after(o));
        [rto, self.ack_due, self.keepalive_at(), gone]
            .into_iter()
            .flatten()
            .min()
    }

    /// When a keepalive is due: `keepalive` after the last DATA cell, with nothing in flight
    /// and room to send one (a peer that has acknowledged everything but grants no credit is
    /// alive; a keepalive could not go anyway, and a timer for it would spin).
    pub(super) fn keepalive_at(&self) -> Option<Instant> {
        let every = self.cfg.keepalive?;
        (self.inflight.is_empty() && self.can_send_new()).then(|| self.last_data_sent + every)
    }

    /// When the peer counts as gone if nothing comes from it: the peer timeout (at least 3
    /// RTOs) after both the oldest unacknowledged cell and the last cell from the peer.
    fn peer_gone_at(&self) -> Option<Instant> {
        let oldest = self.inflight.values().map(|f| f.first_sent).min()?;
        self.peer_gone_after(oldest)
    }

    /// [`peer_gone_at`](Self::peer_gone_at) given the oldest first send in flight.
    fn peer_gone_after(&self, oldest: Instant) -> Option<Instant> {
        let limit = self.cfg.peer_timeout?.max(self.rto() * 3);
        Some(oldest.max(self.last_activity) + limit)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.peer_gone_at().is_some_and(|t| t <= now) {
            self.fail(super::SessionError::PeerSilent);
            return;
        }
        let rto = self.rto();
        // Per path, the latest send time among the cells that expire now.
        let mut failed: Vec<(PathId, Instant)> = Vec::new();
        for (seq, f) in &self.inflight {
            if self.due(f) <= now && !self.lost.contains(seq) {
                self.lost.insert(*seq);
                match failed.iter_mut().find(|(p, _)| *p == f.path) {
                    Some((_, t)) => *t = (*t).max(f.sent_at),
                    None => failed.push((f.path, f.sent_at)),
                }
            }
        }
        // Cells that expire together are one failure of their path, not one each: "in a
        // row" counts timeout events.
        for (p, latest) in failed {
            self.path_timed_out(now, rto, p, latest);
        }
    }

    /// Takes the peer's acknowledgement (and credit) from any cell it sent.
    pub(super) fn on_ack(&mut self, now: Instant, ack: &AckBlock) {
        self.peer_credit = self.peer_credit.max(ack.credit);
        let mut newest: Option<(u64, Instant, bool, PathId)> = None;
        // Per acked cell: the path it was last sent on, and the path whose copy arrived.
        let mut done_paths: Vec<(PathId, PathId)> = Vec::new();
        // An ack sooner than half the smallest RTT after a resend acknowledges an earlier
        // copy: the path that carried it was slow, not dead, so it must not stay rested.
        let too_soon = self.rtt.min_rtt.map(|m| m / 2);
        let mut acked =
            |seq: u64, f: Inflight, newest: &mut Option<(u64, Instant, bool, PathId)>| {
                let earlier_copy = f.retransmitted
                    && too_soon.is_some_and(|t| now.saturating_duration_since(f.sent_at) < t);
                done_paths.push((f.path, if earlier_copy { f.prev_path } else { f.path }));
                if newest.is_none_or(|(s, ..)| seq > s) {
                    *newest = Some((seq, f.sent_at, f.retransmitted, f.path));
                }
            };
        if ack.cum > self.peer_cum {
            self.peer_cum = ack.cum;
            let rest = self.inflight.split_off(&ack.cum);
            let done = std::mem::replace(&mut self.inflight, rest);
            for (seq, f) in done {
                acked(seq, f, &mut newest);
            }
        }
        for &(s, e) in &ack.ranges {
            let e = e.min(self.next_seq);
            if e.saturating_sub(s) > self.cfg.window_cells * 2 {
                continue;
            }
            for seq in s..e {
                if let Some(f) = self.inflight.remove(&seq) {
                    acked(seq, f, &mut newest);
                }
            }
        }
        self.lost.retain(|s| self.inflight.contains_key(s));
        for (path, delivered) in done_paths {
            self.note_done(path);
            self.path_delivered(delivered);
        }
        if let Some((_, sent_at, retransmitted, path)) = newest {
            if !retransmitted {
                // Only the newest cell an ack covers was just received: older ones may have
                // waited for a cumulative ack behind a slower path, so they'd skew the sample.
                let rtt = now.saturating_duration_since(sent_at);
                self.rtt.sample(rtt);
                self.sample_path_rtt(path, rtt);
            }
        }
    }
}
