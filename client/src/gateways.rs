//! Which gateway a stream exits through: a random one among those the client may use (the
//! configured one, or every gateway in the directory), skipping one the central recently
//! said it cannot reach, so that a dead gateway is routed around before a stream is opened.

use std::time::Duration;

use rand::seq::IndexedRandom;

use crate::resting::Resting;

/// A gateway a stream can exit through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: String,
    /// Its Noise static key: the inner handshake is sealed to it.
    pub noise_key: [u8; 32],
}

/// The gateways a client may use and what it learned of their health.
#[derive(Debug)]
pub struct Gateways {
    list: Vec<Gateway>,
    /// Gateways the central reported unreachable, skipped for a while.
    down: Resting,
}

impl Gateways {
    pub fn new(list: Vec<Gateway>, rest: Duration) -> Self {
        Gateways {
            list,
            down: Resting::new(rest),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// A gateway for a new stream, not one of `tried`: a random healthy one, or, when every
    /// one left is resting, a random one of those (the central may reach it again).
    pub fn pick(&self, tried: &[String]) -> Option<Gateway> {
        let untried: Vec<&Gateway> = self
            .list
            .iter()
            .filter(|g| !tried.contains(&g.id))
            .collect();
        self.down
            .prefer_healthy(&untried, |g| &g.id)
            .choose(&mut rand::rng())
            .map(|g| (*g).clone())
    }

    /// The central said it has no link to `id`: skip it for a while.
    pub fn mark_down(&self, id: &str) {
        self.down.mark(id);
    }

    /// Each gateway, and until when it rests if it does now (for `braid status`).
    pub fn health(&self) -> Vec<(String, Option<std::time::Instant>)> {
        let now = std::time::Instant::now();
        self.list
            .iter()
            .map(|g| (g.id.clone(), self.down.resting_until(&g.id, now)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(id: &str) -> Gateway {
        Gateway {
            id: id.into(),
            noise_key: [0; 32],
        }
    }

    #[test]
    fn a_gateway_marked_down_is_skipped_until_its_rest_is_over() {
        let g = Gateways::new(vec![gw("a"), gw("b")], Duration::from_millis(200));
        g.mark_down("a");
        for _ in 0..50 {
            assert_eq!(g.pick(&[]).unwrap().id, "b");
        }
        // All tried but one: that one, even if resting.
        assert_eq!(g.pick(&["b".into()]).unwrap().id, "a");
        assert_eq!(g.pick(&["a".into(), "b".into()]), None);
        std::thread::sleep(Duration::from_millis(250));
        let picked: std::collections::HashSet<String> =
            (0..200).map(|_| g.pick(&[]).unwrap().id).collect();
        assert_eq!(picked.len(), 2, "both are used again: {picked:?}");
    }
}
