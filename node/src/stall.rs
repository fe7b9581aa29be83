//! Stalled streams at the central: a gateway stream whose client gives no credit while the
//! gateway has more to send. Such a stream holds its gateway window (quinn's buffer for it,
//! `gateway_stream_window_kib`) and nothing else: the link's connection window covers every
//! stream's, so it cannot stall another user. What the stalled streams hold is charged to a
//! budget per session and one over all sessions; over either, the stream stalled longest
//! is reset, so memory stays bounded however many streams a client leaves unread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// At most `limit` streams stalled at once; a new one over it cuts the oldest.
#[derive(Debug)]
pub struct StallBudget {
    limit: usize,
    stalled: Mutex<Stalled>,
}

#[derive(Debug, Default)]
struct Stalled {
    next: u64,
    /// By order of stalling: the first entry has waited longest.
    by_age: BTreeMap<u64, CancellationToken>,
}

/// A stream's place in a budget while it is stalled; leaving drops it. Its token fires
/// when the budget cuts the stream.
#[derive(Debug)]
pub struct Stall {
    budget: Arc<StallBudget>,
    key: u64,
    pub cut: CancellationToken,
}

impl StallBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(StallBudget {
            limit: limit.max(1),
            stalled: Mutex::default(),
        })
    }

    /// Streams stalled now.
    pub fn stalled(&self) -> usize {
        self.stalled.lock().map(|s| s.by_age.len()).unwrap_or(0)
    }

    /// Enters a stall; over the limit, the oldest stall is cut (its token fires).
    pub fn enter(self: &Arc<Self>) -> Stall {
        let cut = CancellationToken::new();
        let mut key = 0;
        if let Ok(mut s) = self.stalled.lock() {
            key = s.next;
            s.next += 1;
            s.by_age.insert(key, cut.clone());
            while s.by_age.len() > self.limit {
                if let Some((_, oldest)) = s.by_age.pop_first() {
                    oldest.cancel();
                }
            }
        }
        Stall {
            budget: self.clone(),
            key,
            cut,
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        if let Ok(mut s) = self.budget.stalled.lock() {
            s.by_age.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_the_oldest_stall_is_cut() {
        let b = StallBudget::new(2);
        let first = b.enter();
        let second = b.enter();
        assert_eq!(b.stalled(), 2);
        let third = b.enter();
        assert!(first.cut.is_cancelled());
        assert!(!second.cut.is_cancelled() && !third.cut.is_cancelled());
        assert_eq!(b.stalled(), 2);
        drop(second);
        let fourth = b.enter();
        assert!(!third.cut.is_cancelled() && !fourth.cut.is_cancelled());
        drop((first, third, fourth));
        assert_eq!(b.stalled(), 0);
    }
}
