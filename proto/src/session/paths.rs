//! Paths: which one a cell takes (the scheduler), and resting a path whose cells time out.

use std::str::FromStr;
use std::time::{Duration, Instant};

use super::{PathId, Session};

/// How new cells are spread over the paths that can take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathScheduler {
    /// Every path in turn: the most even spread (each node sees the least).
    #[default]
    RoundRobin,
    /// The path with the lowest expected delivery time, `(inflight + 1) × srtt`: fast
    /// paths carry more, slow ones still carry their share.
    LowestDelay,
}

impl PathScheduler {
    /// The name configuration and the command line use: `round-robin` or `rtt`.
    pub fn as_str(self) -> &'static str {
        match self {
            PathScheduler::RoundRobin => "round-robin",
            PathScheduler::LowestDelay => "rtt",
        }
    }
}

/// A scheduler name other than `round-robin` or `rtt`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown path scheduler {0:?} (expected \"round-robin\" or \"rtt\")")]
pub struct UnknownPathScheduler(pub String);

impl FromStr for PathScheduler {
    type Err = UnknownPathScheduler;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round-robin" => Ok(PathScheduler::RoundRobin),
            "rtt" => Ok(PathScheduler::LowestDelay),
            _ => Err(UnknownPathScheduler(s.to_owned())),
        }
    }
}

/// Whether a path takes cells. A rested path carries only a probe cell now and then until
/// one is acked: a path that was slow for a moment (a CPU stall, a queue) comes back within
/// an RTT of its probe; a dead one costs one delayed cell per probe, the probes backing off
/// to one per `path_rest`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) enum Rest {
    #[default]
    InUse,
    /// The next probe may go at `at`; `gap` is the current spacing.
    ProbeDue { at: Instant, gap: Duration },
    /// A probe sent at `sent` is out: no other cell until it is acked or times out.
    Probing { sent: Instant, gap: Duration },
}

#[derive(Default)]
pub(super) struct PathHealth {
    timeouts: u32,
    pub(super) rest: Rest,
    /// Smoothed RTT of cells sent on this path (for [`PathScheduler::LowestDelay`]).
    pub(super) srtt: Option<Duration>,
    /// Cells sent on this path and not yet acknowledged.
    pub(super) inflight: u32,
}

impl Session {
    fn path_usable(&self, p: PathId, now: Instant) -> bool {
        self.paths.get(&p).is_none_or(|h| match h.rest {
            Rest::InUse => true,
            Rest::ProbeDue { at, .. } => now >= at,
            Rest::Probing { .. } => false,
        })
    }

    /// Picks a path (see [`Self::choose_path`]); a rested path picked for a probe gets
    /// no other cell until the next probe is due.
    pub(super) fn pick_path(
        &mut self,
        now: Instant,
        paths: &[PathId],
        avoid: Option<PathId>,
    ) -> PathId {
        let path = self.choose_path(now, paths, avoid);
        if let Some(h) = self.paths.get_mut(&path) {
            if let Rest::ProbeDue { at, gap } = h.rest {
                if now >= at {
                    h.rest = Rest::Probing { sent: now, gap };
                }
            }
        }
        path
    }

    /// Round-robin over usable paths, avoiding `avoid` if there is any other choice.
    /// Picks a path from `paths` (non-empty): usable ones before rested ones, and any other
    /// than `avoid` before it; among those, by the scheduler. Allocates nothing (per cell).
    pub(super) fn choose_path(
        &mut self,
        now: Instant,
        paths: &[PathId],
        avoid: Option<PathId>,
    ) -> PathId {
        self.rr = self.rr.wrapping_add(1);
        let rr = self.rr;
        let in_tier = |p: &PathId, tier: u8| match tier {
            0 => self.path_usable(*p, now) && Some(*p) != avoid,
            1 => self.path_usable(*p, now),
            2 => Some(*p) != avoid,
            _ => true,
        };
        let tier = (0..3u8)
            .find(|t| paths.iter().any(|p| in_tier(p, *t)))
            .unwrap_or(3);
        let pool = || paths.iter().copied().filter(move |p| in_tier(p, tier));
        let n = pool().count().max(1);
        let start = rr % n;
        if self.cfg.scheduler == PathScheduler::LowestDelay {
            let known = pool()
                .filter_map(|p| self.paths.get(&p).and_then(|h| h.srtt))
                .min()
                .unwrap_or(Duration::from_millis(1));
            // An unmeasured path is tried as if it were the fastest, so it gets measured.
            let cost = |p: &PathId| {
                let h = self.paths.get(p);
                let rtt = h.and_then(|h| h.srtt).unwrap_or(known).as_nanos();
                rtt * (u128::from(h.map_or(0, |h| h.inflight)) + 1)
            };
            // Start the scan at a rotating offset so that equal costs still alternate.
            if let Some(best) = pool()
                .skip(start)
                .chain(pool().take(start))
                .min_by_key(cost)
            {
                return best;
            }
        }
        pool().nth(start).unwrap_or(paths[0])
    }

    pub(super) fn note_sent(&mut self, path: PathId) {
        self.paths.entry(path).or_default().inflight += 1;
        self.count_path(path).sent += 1;
    }

    pub(super) fn note_done(&mut self, path: PathId) {
        if let Some(h) = self.paths.get_mut(&path) {
            h.inflight = h.inflight.saturating_sub(1);
        }
    }

    pub(super) fn sample_path_rtt(&mut self, path: PathId, rtt: Duration) {
        if let Some(h) = self.paths.get_mut(&path) {
            h.srtt = Some(match h.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
        }
    }

    /// A copy sent on `path` was acknowledged: the path works, so it is back in use.
    pub(super) fn path_delivered(&mut self, path: PathId) {
        self.count_path(path).acked += 1;
        if let Some(h) = self.paths.get_mut(&path) {
            h.timeouts = 0;
            h.rest = Rest::InUse;
        }
    }

    /// Cells sent on `path` expired together (one failure of the path, not one per cell);
    /// `latest` is the newest send time among them. Enough failures in a row rest it.
    pub(super) fn path_timed_out(
        &mut self,
        now: Instant,
        rto: Duration,
        path: PathId,
        latest: Instant,
    ) {
        let h = self.paths.entry(path).or_default();
        match h.rest {
            Rest::InUse => {
                h.timeouts += 1;
                if h.timeouts >= self.cfg.path_failures_to_rest {
                    let gap = rto.min(self.cfg.path_rest);
                    h.rest = Rest::ProbeDue { at: now + gap, gap };
                }
            }
            // Only the probe failing backs the probes off: cells sent before the path
            // was rested keep expiring meanwhile.
            Rest::Probing { sent, gap } if latest >= sent => {
                let gap = (gap * 2).min(self.cfg.path_rest);
                h.rest = Rest::ProbeDue { at: now + gap, gap };
            }
            Rest::Probing { .. } | Rest::ProbeDue { .. } => {}
        }
    }

    /// The path will never be offered again (its mailbox is gone): forget what was kept
    /// about it, its counters too. Call [`Self::path_lost`] first if it was live.
    pub fn path_forgotten(&mut self, path: PathId) {
        self.paths.remove(&path);
        self.path_labels.remove(&path);
        self.path_counters.remove(&path);
    }

    /// The driver lost a path (its link closed): everything sent on it goes out again now.
    pub fn path_lost(&mut self, path: PathId) {
        for (seq, f) in &self.inflight {
            if f.path == path {
                self.lost.insert(*seq);
            }
        }
        self.paths.remove(&path);
        // Back again it is a new connection, perhaps from a new address: a new label.
        self.path_labels.remove(&path);
    }
}
