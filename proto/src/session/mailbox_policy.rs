//! What the central accepts of the client's `Mailboxes` frames. The frame is tiny and
//! may list 255 (relay, mailbox) pairs, and every change of the set rebuilds the paths and
//! resends what was in flight on the dropped ones: so only relays of the directory count,
//! one mailbox per relay, and changes apply at most once per interval (the newest set
//! waits for its turn; nothing else is kept).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::frame::Mailbox;

/// The central's view of a session's mailboxes: the set in use, and a newer one waiting
/// for the rate limit.
#[derive(Debug, Clone)]
pub struct MailboxPolicy {
    min_interval: Duration,
    last_change: Option<Instant>,
    pending: Option<Vec<Mailbox>>,
}

impl MailboxPolicy {
    /// Changes apply at most once per `min_interval`.
    pub fn new(min_interval: Duration) -> Self {
        MailboxPolicy {
            min_interval,
            last_change: None,
            pending: None,
        }
    }

    /// The pairs of `boxes` this end may use: those whose relay `known` accepts (a relay
    /// of the directory), the first mailbox of each relay, in the client's order.
    pub fn sanitize(boxes: Vec<Mailbox>, known: impl Fn(&str) -> bool) -> Vec<Mailbox> {
        let mut relays = HashSet::new();
        boxes
            .into_iter()
            .filter(|b| known(&b.relay) && relays.insert(b.relay.clone()))
            .collect()
    }

    /// The client asked for `boxes` (already sanitized) while `current` is in use. Returns
    /// the set to apply now, if any: an empty set or the current one changes nothing, and
    /// one within `min_interval` of the last change waits (see [`Self::due`]), replacing
    /// any set that waited before it.
    pub fn offer(
        &mut self,
        now: Instant,
        current: &[Mailbox],
        boxes: Vec<Mailbox>,
    ) -> Option<Vec<Mailbox>> {
        if boxes.is_empty() || boxes == current {
            self.pending = None;
            return None;
        }
        self.pending = Some(boxes);
        self.poll(now)
    }

    /// When a waiting set may apply.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref()?;
        Some(match self.last_change {
            Some(at) => at.checked_add(self.min_interval).unwrap_or(at),
            None => at_once(),
        })
    }

    /// The waiting set, if its turn has come.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<Mailbox>> {
        let ready = self
            .last_change
            .is_none_or(|at| now.saturating_duration_since(at) >= self.min_interval);
        if !ready {
            return None;
        }
        let boxes = self.pending.take()?;
        self.last_change = Some(now);
        Some(boxes)
    }
}

/// A time already past, for "due now" (any `Instant` in the past will do).
fn at_once() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(relay: &str, n: u8) -> Mailbox {
        Mailbox {
            relay: relay.into(),
            id: [n; 16],
        }
    }

    #[test]
    fn only_directory_relays_and_one_pair_per_relay() {
        let mut boxes: Vec<Mailbox> = (0..=254u8).map(|i| mb(&format!("x{i}"), i)).collect();
        boxes.push(mb("relay-1", 1));
        boxes.push(mb("relay-1", 2));
        boxes.push(mb("relay-2", 3));
        let known = |r: &str| r.starts_with("relay-");
        assert_eq!(
            MailboxPolicy::sanitize(boxes, known),
            [mb("relay-1", 1), mb("relay-2", 3)]
        );
    }

    #[test]
    fn changes_are_rate_limited_and_the_newest_set_waits() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = MailboxPolicy::new(s);
        let cur = vec![mb("relay-1", 1)];
        assert_eq!(p.offer(t0, &cur, vec![]), None, "empty: ignored");
        assert_eq!(p.offer(t0, &cur, cur.clone()), None, "same: ignored");
        assert_eq!(p.due(), None);
        let a = vec![mb("relay-1", 2)];
        assert_eq!(
            p.offer(t0, &cur, a.clone()),
            Some(a.clone()),
            "first: at once"
        );
        // A flood within the interval: nothing applies, only the newest waits.
        for i in 0..1000u32 {
            let b = vec![mb("relay-1", (i % 200) as u8 + 3)];
            assert_eq!(p.offer(t0 + Duration::from_millis(1), &a, b), None);
        }
        assert_eq!(p.due(), Some(t0 + s));
        assert_eq!(p.poll(t0 + s / 2), None);
        assert_eq!(p.poll(t0 + s), Some(vec![mb("relay-1", 202)]));
        assert_eq!(p.due(), None);
    }
}
