//! Session admission at the central, before any public-key work: Hellos wait in one bounded
//! queue per upstream link, served round-robin across links (so one upstream's flood takes
//! only its share), highest proof-of-work effort first within a link (so a client whose
//! Hello went unanswered gets ahead of a flood by trying again with more effort). Replays
//! are refused by `braid_proto::replay::ReplayCache`, the one the gateway uses for opens.

use std::collections::{BTreeMap, HashMap, VecDeque};

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

#[cfg(test)]
mod tests {
    use super::*;
    use braid_proto::cell::SessionId;

    fn hello(effort: u8, tag: u8) -> QueuedHello {
        QueuedHello {
            ticket: HelloTicket {
                id: SessionId([tag; 16]),
                ephemeral: [tag; 32],
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
}
