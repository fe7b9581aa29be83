//! The driver's map from what it can send on to the [`PathId`]s a [`Session`] schedules.
//!
//! A client path is one link (an upstream); a central path is a (link, mailbox) pair: a
//! downstream and the relay mailbox the cell is addressed to. Ids are stable: the same key
//! gets the same id for the life of the table, so a link that drops out and comes back is
//! the same path to the session. A mailbox that leaves the set is forgotten with its ids
//! (mailbox ids are random: one that comes back is new), so the table holds no more than
//! the links seen times the mailboxes in use. `L` is the caller's handle for a link (the async driver's
//! channel, the simulator's node index).
//!
//! [`Session`]: super::Session

use std::collections::{HashMap, HashSet};

use super::PathId;
use crate::frame::Mailbox;

/// A path the session may be offered now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePath<L> {
    pub id: PathId,
    /// The link's name (an upstream's id at the client, a downstream's at the central).
    pub name: String,
    /// The link the path's cells leave on.
    pub link: L,
    /// The mailbox the cells are addressed to (central side); `None` on the client.
    pub mailbox: Option<Mailbox>,
    /// Bytes put before each cell on the link (the central's envelope); empty on the client.
    pub prefix: Vec<u8>,
}

/// Stable [`PathId`]s for (link name, mailbox) keys, and the paths live now.
#[derive(Debug, Clone)]
pub struct PathTable<L> {
    ids: HashMap<(String, Option<Mailbox>), PathId>,
    next: u32,
    live: Vec<LivePath<L>>,
    /// Ids forgotten with their mailbox, not yet taken by [`Self::take_forgotten`].
    forgotten: Vec<PathId>,
}

impl<L> Default for PathTable<L> {
    fn default() -> Self {
        PathTable {
            ids: HashMap::new(),
            next: 0,
            live: Vec::new(),
            forgotten: Vec::new(),
        }
    }
}

impl<L: Clone> PathTable<L> {
    /// Replaces the live paths with those of `links`: without `mailboxes` (client side) one
    /// path per link with an empty prefix; with them (central side) one path per (link,
    /// mailbox) pair, links outermost, each with `prefix(link name, mailbox)`. Returns the ids that were
    /// live and are no longer: the caller tells the session (`Session::path_lost`).
    pub fn rebuild(
        &mut self,
        links: &[(String, L)],
        mailboxes: Option<&[Mailbox]>,
        prefix: impl Fn(&str, &Mailbox) -> Vec<u8>,
    ) -> Vec<PathId> {
        let mut live = Vec::new();
        for (name, link) in links {
            match mailboxes {
                None => live.push(self.path(name, link, None, Vec::new())),
                Some(boxes) => {
                    for b in boxes {
                        live.push(self.path(name, link, Some(b.clone()), prefix(name, b)));
                    }
                }
            }
        }
        let now: HashSet<PathId> = live.iter().map(|p| p.id).collect();
        let gone = self
            .live
            .iter()
            .map(|p| p.id)
            .filter(|id| !now.contains(id))
            .collect();
        self.live = live;
        // Pairs of a mailbox no longer in the set can never be live again: forget them.
        if let Some(boxes) = mailboxes {
            let boxes: HashSet<&Mailbox> = boxes.iter().collect();
            let forgotten = &mut self.forgotten;
            self.ids.retain(|(_, mb), id| {
                let keep = mb.as_ref().is_none_or(|b| boxes.contains(b));
                if !keep {
                    forgotten.push(*id);
                }
                keep
            });
        }
        gone
    }

    /// Ids dropped for good since the last call (their mailbox left the set): the caller
    /// tells the session ([`Session::path_forgotten`](super::Session::path_forgotten)),
    /// after `path_lost` for those that were live.
    pub fn take_forgotten(&mut self) -> Vec<PathId> {
        std::mem::take(&mut self.forgotten)
    }

    /// (link, mailbox) keys with an id: the live paths and links that may come back.
    pub fn known(&self) -> usize {
        self.ids.len()
    }

    fn path(
        &mut self,
        name: &str,
        link: &L,
        mailbox: Option<Mailbox>,
        prefix: Vec<u8>,
    ) -> LivePath<L> {
        let next = &mut self.next;
        let id = *self
            .ids
            .entry((name.to_owned(), mailbox.clone()))
            .or_insert_with(|| {
                *next += 1;
                PathId(*next)
            });
        LivePath {
            id,
            name: name.to_owned(),
            link: link.clone(),
            mailbox,
            prefix,
        }
    }
}

impl<L> PathTable<L> {
    /// The live paths, in the order [`Self::rebuild`] made them.
    pub fn live(&self) -> &[LivePath<L>] {
        &self.live
    }

    pub fn get(&self, id: PathId) -> Option<&LivePath<L>> {
        self.live.iter().find(|p| p.id == id)
    }

    /// The live paths' ids.
    pub fn ids(&self) -> impl Iterator<Item = PathId> + '_ {
        self.live.iter().map(|p| p.id)
    }

    /// The ids of the live paths whose link `has_room` (what to offer `poll_transmit`).
    pub fn writable(&self, mut has_room: impl FnMut(&L) -> bool) -> Vec<PathId> {
        self.live
            .iter()
            .filter(|p| has_room(&p.link))
            .map(|p| p.id)
            .collect()
    }
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

    fn links(names: &[&str]) -> Vec<(String, usize)> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), i))
            .collect()
    }

    fn no_prefix(_: &str, _: &Mailbox) -> Vec<u8> {
        Vec::new()
    }

    #[test]
    fn client_ids_are_stable_across_rebuilds() {
        let mut t = PathTable::default();
        assert!(t
            .rebuild(&links(&["a", "b", "c"]), None, no_prefix)
            .is_empty());
        let first: Vec<PathId> = t.ids().collect();
        assert_eq!(first, [PathId(1), PathId(2), PathId(3)]);
        // Same names, new order and new handles: same ids, the new handles.
        let reordered = vec![
            ("c".to_owned(), 7),
            ("a".to_owned(), 8),
            ("b".to_owned(), 9),
        ];
        assert!(t.rebuild(&reordered, None, no_prefix).is_empty());
        assert_eq!(
            t.ids().collect::<Vec<_>>(),
            [PathId(3), PathId(1), PathId(2)]
        );
        let a = t.get(PathId(1)).unwrap();
        assert_eq!((a.link, a.mailbox.as_ref(), a.prefix.len()), (8, None, 0));
        assert_eq!(a.name, "a");
        assert_eq!(t.writable(|l| *l != 9), [PathId(3), PathId(1)]);
    }

    #[test]
    fn gone_ids_are_reported_once() {
        let mut t = PathTable::default();
        t.rebuild(&links(&["a", "b", "c"]), None, no_prefix);
        assert_eq!(t.rebuild(&links(&["a", "c"]), None, no_prefix), [PathId(2)]);
        assert!(t.get(PathId(2)).is_none());
        assert!(t.rebuild(&links(&["a", "c"]), None, no_prefix).is_empty());
        assert_eq!(t.rebuild(&[], None, no_prefix), [PathId(1), PathId(3)]);
        assert!(t.live().is_empty());
    }

    #[test]
    fn central_paths_are_link_mailbox_pairs() {
        let mut t = PathTable::default();
        let boxes = [mb("relay-0", 1), mb("relay-1", 2)];
        let prefix = |_: &str, b: &Mailbox| b.relay.as_bytes().to_vec();
        t.rebuild(&links(&["d0", "d1"]), Some(&boxes), prefix);
        let live: Vec<(PathId, usize, &str)> = t
            .live()
            .iter()
            .map(|p| (p.id, p.link, p.mailbox.as_ref().unwrap().relay.as_str()))
            .collect();
        assert_eq!(
            live,
            [
                (PathId(1), 0, "relay-0"),
                (PathId(2), 0, "relay-1"),
                (PathId(3), 1, "relay-0"),
                (PathId(4), 1, "relay-1"),
            ]
        );
        assert_eq!(t.get(PathId(4)).unwrap().prefix, b"relay-1");
        // A mailbox dropped: every pair with it goes, the others keep their ids.
        let gone = t.rebuild(&links(&["d0", "d1"]), Some(&boxes[..1]), prefix);
        assert_eq!(gone, [PathId(2), PathId(4)]);
        assert_eq!(t.ids().collect::<Vec<_>>(), [PathId(1), PathId(3)]);
        // A new mailbox gets new ids.
        let gone = t.rebuild(&links(&["d0"]), Some(&[mb("relay-0", 3)]), prefix);
        assert_eq!(gone, [PathId(1), PathId(3)]);
        assert_eq!(t.ids().collect::<Vec<_>>(), [PathId(5)]);
    }

    /// A client that sends set after set of fresh mailboxes leaves only the set in use in
    /// the table (the old code kept an id for every pair it ever saw).
    #[test]
    fn mailboxes_that_leave_are_forgotten() {
        let mut t = PathTable::default();
        let l = links(&["d0", "d1"]);
        for round in 0..1000u32 {
            let boxes: Vec<Mailbox> = (0..4u32)
                .map(|r| {
                    let mut id = [0u8; 16];
                    id[..4].copy_from_slice(&(round * 4 + r).to_le_bytes());
                    Mailbox {
                        relay: format!("relay-{r}"),
                        id,
                    }
                })
                .collect();
            t.rebuild(&l, Some(&boxes), no_prefix);
            assert_eq!(t.live().len(), 8);
        }
        assert_eq!(t.ids.len(), 8, "ids kept after 1000 sets of 4 mailboxes");
        assert_eq!(t.take_forgotten().len(), 999 * 8);
        assert!(t.take_forgotten().is_empty());
    }

    #[test]
    fn a_link_that_comes_back_gets_its_old_id() {
        let mut t = PathTable::default();
        let boxes = [mb("relay-0", 1)];
        t.rebuild(&links(&["d0", "d1"]), Some(&boxes), no_prefix);
        assert_eq!(
            t.rebuild(&links(&["d0"]), Some(&boxes), no_prefix),
            [PathId(2)]
        );
        assert!(t
            .rebuild(&links(&["d0", "d1"]), Some(&boxes), no_prefix)
            .is_empty());
        assert_eq!(t.ids().collect::<Vec<_>>(), [PathId(1), PathId(2)]);

        let mut c = PathTable::default();
        c.rebuild(&links(&["u0", "u1"]), None, no_prefix);
        c.rebuild(&links(&["u0"]), None, no_prefix);
        c.rebuild(&links(&["u0", "u1", "u2"]), None, no_prefix);
        assert_eq!(
            c.ids().collect::<Vec<_>>(),
            [PathId(1), PathId(2), PathId(3)]
        );
    }
}
