//! Session admission at the central, before any public-key work: Hellos wait in one bounded
//! queue per upstream link, served round-robin across links (so one upstream's flood takes
//! only its share), highest proof-of-work effort first within a link (so a client whose
//! Hello went unanswered gets ahead of a flood by trying again with more effort). A replay
//! cache refuses a Hello seen before; Hellos carry their time, so the cache only has to
//! remember the replay window.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use braid_proto::cell::SessionId;
use braid_proto::session::HelloTicket;

/// A Hello waiting for the handshake workers.
#[derive(Debug)]
pub struct QueuedHello {
    pub ticket: HelloTicket,
    pub cell: Vec<u8>,
}

/// Per-link queues of Hellos, each at most `per_link` long.
#[derive(Debug)]
pub struct HelloQueues {
    per_link: usize,
    next: u64,
    /// By link: Hellos keyed by (effort, newest-last order). The last entry is served first
    /// (highest effort, then oldest); the first is dropped first.
    by_link: HashMap<u64, BTreeMap<(u8, std::cmp::Reverse<u64>), QueuedHello>>,
    /// Links with Hellos waiting, in serving order.
    turn: VecDeque<u64>,
}

/// What became of a Hello offered to the queues.
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    Waiting,
    /// The link's queue was full of Hellos of at least this effort.
    Dropped,
    /// Queued, and a Hello of lower effort was dropped for it.
    Displaced,
}

impl HelloQueues {
    pub fn new(per_link: usize) -> Self {
        HelloQueues {
            per_link: per_link.max(1),
            next: 0,
            by_link: HashMap::new(),
            turn: VecDeque::new(),
        }
    }

    /// Hellos waiting over all links.
    pub fn len(&self) -> usize {
        self.by_link.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.turn.is_empty()
    }

    pub fn push(&mut self, link: u64, hello: QueuedHello) -> Queued {
        let key = (hello.ticket.effort, std::cmp::Reverse(self.next));
        self.next += 1;
        let q = self.by_link.entry(link).or_default();
        let mut outcome = Queued::Waiting;
        if q.len() >= self.per_link {
            match q.first_key_value() {
                Some((lowest, _)) if *lowest < key && lowest.0 < key.0 => {
                    q.pop_first();
                    outcome = Queued::Displaced;
                }
                _ => return Queued::Dropped,
            }
        }
        if q.is_empty() {
            self.turn.push_back(link);
        }
        q.insert(key, hello);
        outcome
    }

    /// The next Hello to serve: the next link's best.
    pub fn pop(&mut self) -> Option<QueuedHello> {
        let link = self.turn.pop_front()?;
        let q = self.by_link.get_mut(&link)?;
        let (_, hello) = q.pop_last()?;
        if q.is_empty() {
            self.by_link.remove(&link);
        } else {
            self.turn.push_back(link);
        }
        Some(hello)
    }
}

/// The ids of Hellos answered lately, in two generations of `period` each: an id stays
/// known for at least `period` after it was added. With `period` twice the Hello time
/// window, a replay is refused for as long as its Hello's time would pass. Each generation
/// holds at most `cap` ids; a full cache refuses new sessions rather than grow.
#[derive(Debug)]
pub struct ReplayCache {
    cap: usize,
    period: Duration,
    current: HashSet<SessionId>,
    previous: HashSet<SessionId>,
    rotated: Instant,
}

impl ReplayCache {
    pub fn new(cap: usize, period: Duration, now: Instant) -> Self {
        ReplayCache {
            cap: cap.max(1),
            period,
            current: HashSet::new(),
            previous: HashSet::new(),
            rotated: now,
        }
    }

    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= self.period {
            self.previous = std::mem::take(&mut self.current);
            self.rotated = now;
        }
    }

    pub fn seen(&mut self, id: &SessionId, now: Instant) -> bool {
        self.rotate(now);
        self.current.contains(id) || self.previous.contains(id)
    }

    /// Remembers `id`; false if it was known or the cache is full (refuse the session).
    pub fn insert(&mut self, id: SessionId, now: Instant) -> bool {
        self.rotate(now);
        if self.previous.contains(&id) || self.current.len() >= self.cap {
            return false;
        }
        self.current.insert(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(effort: u8, tag: u8) -> QueuedHello {
        QueuedHello {
            ticket: HelloTicket {
                id: SessionId([tag; 16]),
                effort,
            },
            cell: vec![tag],
        }
    }

    fn tags(q: &mut HelloQueues) -> Vec<u8> {
        std::iter::from_fn(|| q.pop()).map(|h| h.cell[0]).collect()
    }

    #[test]
    fn links_take_turns_and_effort_goes_first() {
        let mut q = HelloQueues::new(8);
        for t in 1..=4 {
            q.push(1, hello(0, t));
        }
        q.push(2, hello(0, 10));
        q.push(1, hello(12, 5));
        q.push(2, hello(0, 11));
        // Link 1's high-effort Hello first, then turns; oldest first at equal effort.
        assert_eq!(tags(&mut q), [5, 10, 1, 11, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_link_drops_its_lowest_effort_and_only_for_more_effort() {
        let mut q = HelloQueues::new(2);
        assert_eq!(q.push(1, hello(0, 1)), Queued::Waiting);
        assert_eq!(q.push(1, hello(0, 2)), Queued::Waiting);
        assert_eq!(q.push(1, hello(0, 3)), Queued::Dropped);
        assert_eq!(q.push(1, hello(8, 4)), Queued::Displaced);
        // Another link is not affected by link 1 being full.
        assert_eq!(q.push(2, hello(0, 5)), Queued::Waiting);
        assert_eq!(q.len(), 3);
        assert_eq!(tags(&mut q), [4, 5, 1]);
    }

    #[test]
    fn a_replay_is_refused_for_at_least_a_period_and_the_cache_is_capped() {
        let t0 = Instant::now();
        let p = Duration::from_secs(10);
        let mut c = ReplayCache::new(2, p, t0);
        let (a, b, d) = (SessionId([1; 16]), SessionId([2; 16]), SessionId([3; 16]));
        assert!(c.insert(a, t0));
        assert!(!c.insert(a, t0), "a replay");
        assert!(c.seen(&a, t0 + Duration::from_secs(9)));
        assert!(c.insert(b, t0));
        assert!(!c.insert(d, t0), "full");
        // One rotation later a is still known; two later it is forgotten.
        assert!(c.seen(&a, t0 + Duration::from_secs(15)));
        assert!(c.insert(d, t0 + Duration::from_secs(15)));
        assert!(!c.seen(&a, t0 + Duration::from_secs(26)));
    }
}
