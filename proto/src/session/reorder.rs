//! The receiver's bounded out-of-order buffer.

use std::collections::BTreeMap;

use crate::cell::CellError;
use crate::frame::{Frame, MAX_SACK_RANGES};

/// The bounded out-of-order buffer: cells from `next` up to `next + window`.
pub(super) struct ReorderWindow {
    pub(super) next: u64,
    pub(super) window: u64,
    pub(super) held: BTreeMap<u64, Vec<Frame>>,
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

    pub(super) fn insert(&mut self, seq: u64, frames: Vec<Frame>, weight: usize) {
        self.latest = Some(seq);
        self.held_bytes += weight;
        self.held.insert(seq, frames);
    }

    pub(super) fn pop_ready(&mut self, cell_size: usize) -> Option<Vec<Frame>> {
        let frames = self.held.remove(&self.next)?;
        self.held_bytes = self.held_bytes.saturating_sub(cell_size);
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
