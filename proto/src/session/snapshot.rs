//! A read-only picture of a session for people (`braid status`): its RTT, what it sent, and
//! each path's state and counters. Taking one changes nothing; the driver takes one when
//! asked, never per cell.

use std::time::Duration;

use super::paths::Rest;
use super::{PathId, Session, SessionStats};
use crate::cell::SessionId;

/// What one path carried (DATA cells; bare ACK cells are not counted). Kept for the life
/// of the session, across the path's link going and coming back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PathCounters {
    /// Copies sent on the path, resends included.
    pub sent: u64,
    /// Cells whose acknowledged copy went on the path.
    pub acked: u64,
    /// Copies resent on the path (a cell lost on another path, or timed out).
    pub resent: u64,
}

/// Whether a path takes cells now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// It takes its share of cells.
    InUse,
    /// Its cells timed out: it waits for its next probe.
    Rested,
    /// A probe is out on it: no other cell until the probe is answered or times out.
    Probing,
}

impl PathState {
    /// `in use`, `rested`, `probing`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::InUse => "in use",
            PathState::Rested => "rested",
            PathState::Probing => "probing",
        }
    }
}

/// One path as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSnapshot {
    pub id: PathId,
    pub state: PathState,
    /// Smoothed RTT of cells sent on it; `None` until one was measured.
    pub srtt: Option<Duration>,
    /// Cells sent on it and not acknowledged yet.
    pub in_flight: u32,
    pub counters: PathCounters,
}

/// The session as a whole, and the paths asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    pub id: SessionId,
    /// Smoothed RTT over all paths; `None` until one was measured.
    pub srtt: Option<Duration>,
    /// The retransmission timeout now.
    pub rto: Duration,
    /// DATA cells sent and not acknowledged yet.
    pub in_flight: usize,
    pub stats: SessionStats,
    pub paths: Vec<PathSnapshot>,
}

impl Session {
    /// The session now, with `paths` in the order given (the driver's live paths). A path
    /// the session has not used yet is in use with nothing counted.
    pub fn snapshot(&self, paths: impl IntoIterator<Item = PathId>) -> SessionSnapshot {
        let paths = paths
            .into_iter()
            .map(|id| {
                let health = self.paths.get(&id);
                let state = match health.map(|h| h.rest) {
                    None | Some(Rest::InUse) => PathState::InUse,
                    Some(Rest::ProbeDue { .. }) => PathState::Rested,
                    Some(Rest::Probing { .. }) => PathState::Probing,
                };
                PathSnapshot {
                    id,
                    state,
                    srtt: health.and_then(|h| h.srtt),
                    in_flight: health.map_or(0, |h| h.inflight),
                    counters: self.path_counters.get(&id).copied().unwrap_or_default(),
                }
            })
            .collect();
        SessionSnapshot {
            id: self.id,
            srtt: self.rtt.srtt(),
            rto: self.rto(),
            in_flight: self.inflight.len(),
            stats: self.stats.clone(),
            paths,
        }
    }

    pub(super) fn count_path(&mut self, path: PathId) -> &mut PathCounters {
        self.path_counters.entry(path).or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{pair_seeded, tick, Wire};
    use super::super::{PathId, SessionConfig};
    use super::*;

    /// A transfer over two paths, the second of which dies after 300 ms: the snapshot shows
    /// the first in use with most cells acknowledged on it and the resends, the second
    /// rested or probing with cells sent and never acknowledged.
    #[test]
    fn a_snapshot_shows_each_paths_state_and_counters() {
        let (mut c, mut s, t0) = pair_seeded(SessionConfig::with_cell_size(1024), 3);
        let at = |m: u64| t0 + Duration::from_millis(m);
        let paths = [PathId(1), PathId(2)];
        let fresh = c.snapshot(paths);
        assert_eq!(fresh.id, c.id());
        assert_eq!((fresh.srtt, fresh.in_flight), (None, 0));
        for p in &fresh.paths {
            assert_eq!(
                (p.state, p.counters),
                (PathState::InUse, Default::default())
            );
        }
        c.open_stream(1, "gw");
        let data = vec![5u8; 8 << 20];
        let mut off = 0;
        let mut wire = Wire::new();
        for m in 0..3000 {
            let now = at(m);
            off += c.send(1, &data[off..]);
            for _ in 0..4 {
                let Some(t) = c.poll_transmit(now, &paths) else {
                    break;
                };
                if t.path == PathId(1) || m < 300 {
                    wire.push((now + Duration::from_millis(2), t.cell));
                }
            }
            tick(&mut c, &mut s, &mut wire, &paths, now, at(m + 1));
        }
        let snap = c.snapshot([PathId(2), PathId(1), PathId(9)]);
        let ids: Vec<PathId> = snap.paths.iter().map(|p| p.id).collect();
        assert_eq!(ids, [PathId(2), PathId(1), PathId(9)], "in the order asked");
        let (dead, live, unknown) = (&snap.paths[0], &snap.paths[1], &snap.paths[2]);
        assert_eq!(live.state, PathState::InUse);
        assert!(live.srtt.is_some_and(|r| r >= Duration::from_millis(2)));
        assert!(live.counters.acked > 1000, "{live:?}");
        assert!(
            live.counters.resent > 0,
            "the dead path's cells went here: {live:?}"
        );
        assert!(live.counters.sent >= live.counters.acked, "{live:?}");
        assert_ne!(dead.state, PathState::InUse, "{dead:?}");
        assert!(dead.counters.sent > dead.counters.acked, "{dead:?}");
        assert_eq!(
            dead.counters.resent, 0,
            "resends avoid the path they were lost on"
        );
        assert_eq!(
            (unknown.state, unknown.counters.sent),
            (PathState::InUse, 0)
        );
        let stats = c.stats();
        assert_eq!(snap.stats, *stats);
        let sent: u64 = snap.paths.iter().map(|p| p.counters.sent).sum();
        assert_eq!(sent, stats.data_cells_sent + stats.retransmits);
        let resent: u64 = snap.paths.iter().map(|p| p.counters.resent).sum();
        assert_eq!(resent, stats.retransmits);
        assert!(snap.srtt.is_some() && snap.rto >= Duration::from_millis(200));
        // The counters outlive the link: a path lost and back keeps what it carried.
        c.path_lost(PathId(2));
        let again = c.snapshot([PathId(2)]);
        assert_eq!(again.paths[0].counters, dead.counters);
        assert_eq!(again.paths[0].state, PathState::InUse);
    }
}
