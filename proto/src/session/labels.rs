//! Per-path labels toward the central, and the central's map from labels to sessions.
//!
//! A client labels each path (one upstream connection) with `HMAC(label key, index)`, a
//! fresh index whenever the path comes back after a loss, so no two upstreams, and no
//! upstream before and after a reconnect, see the same label. Only the client and the
//! central hold the label key (it comes from the handshake), so the central can expect the
//! labels without being told them, the way QUIC endpoints hold a set of connection ids.
//!
//! The central keeps, per session, the labels of the indices it expects next
//! ([`LabelTable`]): a window of [`LABELS_AHEAD`] beyond the highest index seen, at most
//! [`MAX_LABELS`] in all (the one seen least recently goes first: a path that lives long
//! keeps its label however often another reconnects), so a session costs a bounded table,
//! about 1 KiB, whatever its client does.

use std::collections::{BTreeMap, HashMap};

use zeroize::Zeroizing;

use crate::cell::{Label, SessionId};
use crate::noise::hmac256;

/// Indices the central expects beyond the highest it has seen: paths a client may open
/// (or lose and reopen) before any of their cells arrives. A client with more upstreams
/// than this finds its later paths known as soon as a cell of an earlier one arrives
/// (a cell lost meanwhile is resent).
pub const LABELS_AHEAD: u64 = 8;
/// Labels one session holds at the central at most.
pub const MAX_LABELS: usize = 64;

/// Derives a session's path labels.
#[derive(Clone)]
pub struct PathLabels {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PathLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathLabels([redacted])")
    }
}

impl PathLabels {
    /// From the client-to-central base key (both ends hold it after the handshake).
    pub(super) fn from_base(client_to_central: &[u8; 32]) -> Self {
        PathLabels {
            key: Zeroizing::new(hmac256(client_to_central, &[b"braid path labels"])),
        }
    }

    /// The label of path index `index`. Never zero (zero means "no label").
    pub fn label(&self, index: u64) -> Label {
        let mac = hmac256(&self.key[..], &[&index.to_be_bytes()]);
        let mut l = [0u8; 16];
        l.copy_from_slice(&mac[..16]);
        if l == Label::NONE.0 {
            l[0] = 1;
        }
        Label(l)
    }
}

struct SessionLabels {
    labels: PathLabels,
    /// Registered indices: their label and when each was last seen (or registered), on
    /// the session's own clock `tick`.
    held: BTreeMap<u64, (Label, u64)>,
    tick: u64,
    /// The next index to register.
    next: u64,
}

/// The central's map from labels to sessions (sans-IO; the node keeps it under its
/// sessions lock).
#[derive(Default)]
pub struct LabelTable {
    by_label: HashMap<Label, (SessionId, u64)>,
    sessions: HashMap<SessionId, SessionLabels>,
}

impl LabelTable {
    /// Registers a new session's first [`LABELS_AHEAD`] labels.
    pub fn insert(&mut self, id: SessionId, labels: PathLabels) {
        self.remove(id);
        self.sessions.insert(
            id,
            SessionLabels {
                labels,
                held: BTreeMap::new(),
                tick: 0,
                next: 0,
            },
        );
        self.extend(id, LABELS_AHEAD);
    }

    /// The session a label belongs to. Seeing index `i` registers the indices up to
    /// `i + LABELS_AHEAD` (a client's next paths), dropping the least recently seen over
    /// [`MAX_LABELS`].
    pub fn lookup(&mut self, label: Label) -> Option<SessionId> {
        let (id, index) = *self.by_label.get(&label)?;
        if let Some(s) = self.sessions.get_mut(&id) {
            s.tick += 1;
            if let Some(h) = s.held.get_mut(&index) {
                h.1 = s.tick;
            }
        }
        self.extend(id, index.saturating_add(LABELS_AHEAD + 1));
        Some(id)
    }

    /// Forgets a session's labels.
    pub fn remove(&mut self, id: SessionId) {
        if let Some(s) = self.sessions.remove(&id) {
            for (l, _) in s.held.into_values() {
                self.by_label.remove(&l);
            }
        }
    }

    /// Labels held over all sessions.
    pub fn len(&self) -> usize {
        self.by_label.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_label.is_empty()
    }

    /// Registers indices up to (not including) `until`.
    fn extend(&mut self, id: SessionId, until: u64) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        while s.next < until {
            let label = s.labels.label(s.next);
            // A collision with another session's label (2^-128) keeps the first owner.
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_label.entry(label) {
                e.insert((id, s.next));
                s.held.insert(s.next, (label, s.tick));
            }
            s.next += 1;
            while s.held.len() > MAX_LABELS {
                // The least recently seen goes (the lowest index of those on a tie).
                let oldest = s.held.iter().min_by_key(|(_, (_, t))| *t).map(|(i, _)| *i);
                if let Some((old, _)) = oldest.and_then(|i| s.held.remove(&i)) {
                    self.by_label.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_differ_per_index_and_per_session() {
        let a = PathLabels::from_base(&[1; 32]);
        let b = PathLabels::from_base(&[2; 32]);
        assert_ne!(a.label(0), a.label(1));
        assert_ne!(a.label(0), b.label(0));
        assert_eq!(a.label(7), a.clone().label(7));
    }

    #[test]
    fn the_table_follows_a_client_that_reconnects_and_stays_bounded() {
        let mut t = LabelTable::default();
        let (id, labels) = (SessionId([5; 16]), PathLabels::from_base(&[1; 32]));
        t.insert(id, labels.clone());
        assert_eq!(t.len(), LABELS_AHEAD as usize);
        assert_eq!(t.lookup(labels.label(0)), Some(id));
        // Paths come and go: each new index is within reach of the last one seen, while
        // path 0 lives on (its label is used now and then and is never dropped).
        for i in 1..2_000 {
            assert_eq!(t.lookup(labels.label(i)), Some(id), "{i}");
            if i % 10 == 0 {
                assert_eq!(t.lookup(labels.label(0)), Some(id), "path 0 at {i}");
            }
            assert!(t.len() <= MAX_LABELS);
        }
        // Far ahead of anything seen, and long gone: unknown.
        assert_eq!(t.lookup(labels.label(2_000 + 2 * LABELS_AHEAD)), None);
        assert_eq!(t.lookup(labels.label(3)), None);
        assert_eq!(t.lookup(Label([9; 16])), None);
        t.remove(id);
        assert!(t.is_empty());
        assert_eq!(t.lookup(labels.label(1_999)), None);
    }
}
