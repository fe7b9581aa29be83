//! Peers the client learned are down (a central that went silent, a gateway the central
//! cannot reach), each skipped until its rest is over. Shared by the central and gateway
//! choices.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Resting {
    until: Mutex<HashMap<String, Instant>>,
    rest: Duration,
}

impl Resting {
    pub fn new(rest: Duration) -> Self {
        Resting {
            until: Mutex::default(),
            rest,
        }
    }

    /// `id` is down: skip it for the rest period from now.
    pub fn mark(&self, id: &str) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.insert(id.to_string(), Instant::now() + self.rest);
    }

    /// `id` may be used again at once (it answered).
    pub fn clear(&self, id: &str) {
        let mut until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.remove(id);
    }

    /// Until when `id` rests, if it rests at `now`.
    pub fn resting_until(&self, id: &str, now: Instant) -> Option<Instant> {
        let until = self.until.lock().unwrap_or_else(|e| e.into_inner());
        until.get(id).copied().filter(|t| *t > now)
    }

    /// The items of `from` not resting at `now`; all of them when every one rests (a peer
    /// that was down may be back, and trying is better than refusing).
    pub fn prefer_healthy<'a, T>(
        &self,
        from: &[&'a T],
        id: impl Fn(&'a T) -> &'a str,
    ) -> Vec<&'a T> {
        self.prefer_healthy_at(Instant::now(), from, id)
    }

    /// [`prefer_healthy`](Self::prefer_healthy) at `now`.
    pub fn prefer_healthy_at<'a, T>(
        &self,
        now: Instant,
        from: &[&'a T],
        id: impl Fn(&'a T) -> &'a str,
    ) -> Vec<&'a T> {
        let healthy: Vec<&T> = from
            .iter()
            .copied()
            .filter(|t| self.resting_until(id(t), now).is_none())
            .collect();
        if healthy.is_empty() {
            from.to_vec()
        } else {
            healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_peer_rests_then_returns_and_all_resting_means_all() {
        let r = Resting::new(Duration::from_millis(100));
        let ids = ["a", "b"];
        let refs: Vec<&&str> = ids.iter().collect();
        r.mark("a");
        assert_eq!(r.prefer_healthy(&refs, |s| s), vec![&"b"]);
        r.mark("b");
        assert_eq!(r.prefer_healthy(&refs, |s| s).len(), 2);
        r.clear("b");
        assert_eq!(r.prefer_healthy(&refs, |s| s), vec![&"b"]);
        std::thread::sleep(Duration::from_millis(120));
        assert!(r.resting_until("a", Instant::now()).is_none());
        assert_eq!(r.prefer_healthy(&refs, |s| s).len(), 2);
    }
}
