//! The receiver's bounded out-of-order buffer.

use std::collections::BTreeMap;

use crate::cell::CellError;
use crate::frame::{self, Frame, MAX_SACK_RANGES};

/// The bounded out-of-order buffer: cells from `next` up to `next + window`.
pub(super) struct ReorderWindow {
    pub(super) next: u64,
    pub(super) window: u64,
    /// Held cells' frames, each with the bytes it is charged ([`frame::frames_mem_size`]).
    pub(super) held: BTreeMap<u64, (Vec<Frame>, usize)>,
    /// What the held frames take in memory (not cells times the cell size: a cell packed
    /// with tiny frames decodes into many times its size).
    pub(super) held_bytes: usize,
    /// The most recently received sequence number held out of order.
    pub(super) latest: Option<u64>,
}

impl ReorderWindow {
    pub(super) fn new(window: u64) -> Self {
        ReorderWindow {
            next: 0,
            window,
            held: BTreeMap::new(),
            held_bytes: 0,
            latest: None,
        }
    }

    pub(super) fn accepts(&self, seq: u64) -> Result<(), CellError> {
        if seq < self.next || self.held.contains_key(&seq) {
            Err(CellError::Replay)
        } else if seq >= self.next + self.window {
            Err(CellError::OutOfWindow)
        } else {
            Ok(())
        }
    }

    /// Whether holding `frames` out of order keeps the window's memory within `cap`.
    pub(super) fn has_room(&self, frames: &Vec<Frame>, cap: usize) -> bool {
        self.held_bytes + frame::frames_mem_size(frames) <= cap
    }

    pub(super) fn insert(&mut self, seq: u64, frames: Vec<Frame>) {
        self.latest = Some(seq);
        let weight = frame::frames_mem_size(&frames);
        self.held_bytes += weight;
        if let Some((_, old)) = self.held.insert(seq, (frames, weight)) {
            // `accepts` refuses a held seq; kept exact anyway.
            self.held_bytes -= old;
        }
    }

    pub(super) fn pop_ready(&mut self) -> Option<Vec<Frame>> {
        let (frames, weight) = self.held.remove(&self.next)?;
        self.held_bytes = self.held_bytes.saturating_sub(weight);
        self.next += 1;
        Some(frames)
    }

    /// Up to `MAX_SACK_RANGES` received ranges above `next`: the one holding the latest
    /// arrival first, then the highest others (RFC 2018 §4), so that cells far above a run of
    /// gaps (a dead path under round-robin) are still acknowledged.
    pub(super) fn sack_ranges(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = Vec::new();
        for &s in self.held.keys() {
            match all.last_mut() {
                Some((_, e)) if *e == s => *e = s + 1,
                _ => all.push((s, s + 1)),
            }
        }
        let mut out = Vec::with_capacity(MAX_SACK_RANGES);
        if let Some(i) = self
            .latest
            .and_then(|l| all.iter().position(|&(s, e)| s <= l && l < e))
        {
            out.push(all.remove(i));
        }
        let room = MAX_SACK_RANGES - out.len();
        out.extend(all.into_iter().rev().take(room));
        out
    }
}
