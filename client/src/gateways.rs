//! Which gateway a stream exits through. In order:
//!
//! 1. **Pinned**: the app named a gateway by its SOCKS5 username (or the config names the
//!    only one the client may use). The stream goes there or nowhere: a pin outside the
//!    configured gateway is refused (`NOT_ALLOWED`), and a pinned gateway the central cannot
//!    reach fails the stream (`NO_GATEWAY`) rather than sending it elsewhere.
//! 2. **Sticky** (`gateway_choice = "sticky"`): the gateway this destination host was given
//!    less than `sticky_secs` ago, while it is not resting; else a new pick, remembered.
//! 3. **Random** among the gateways not resting (one the central recently said it cannot
//!    reach), so that a dead gateway is routed around before a stream is opened; when every
//!    one left rests, a random one of those (the central may reach it again).
//!
//! The sticky map holds at most [`STICKY_ENTRIES`] entries (the oldest goes first) and keys
//! them by a keyed hash of the host, so it neither grows with what apps visit nor keeps
//! destination names. Nothing here logs a destination.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use braid_config::GatewayChoice;
use braid_proto::{Reason, TargetAddr};
use rand::seq::IndexedRandom;
use rand::Rng;

use crate::resting::Resting;

/// Most destinations the sticky choice remembers; beyond it the oldest is forgotten.
pub const STICKY_ENTRIES: usize = 4096;

/// A gateway a stream can exit through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: String,
    /// Its Noise static key: the inner handshake is sealed to it.
    pub noise_key: [u8; 32],
}

/// How the client chooses gateways, from its config.
#[derive(Debug, Clone, Copy)]
pub struct ChoicePolicy {
    pub choice: GatewayChoice,
    /// How long a destination stays on its gateway under `Sticky`.
    pub sticky: Duration,
    /// How long a gateway the central cannot reach is skipped.
    pub rest: Duration,
}

impl Default for ChoicePolicy {
    fn default() -> Self {
        ChoicePolicy {
            choice: GatewayChoice::Random,
            sticky: Duration::from_secs(600),
            rest: Duration::from_secs(5),
        }
    }
}

/// Why no gateway was picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoGateway {
    /// Every usable gateway was tried (and the central could reach none).
    #[error("the central reaches none of the gateways")]
    AllTried,
    /// The stream's pinned gateway was tried and the central cannot reach it.
    #[error("the central cannot reach the pinned gateway {0}")]
    PinnedUnreachable(String),
    /// The stream is pinned to a gateway the config does not let this client use.
    #[error("gateway {0} is not one this client may use (config `gateway`)")]
    PinNotAllowed(String),
}

impl NoGateway {
    /// Why, as a stream-end reason (and so as a SOCKS5 reply).
    pub fn reason(&self) -> Reason {
        match self {
            NoGateway::AllTried | NoGateway::PinnedUnreachable(_) => Reason::NO_GATEWAY,
            NoGateway::PinNotAllowed(_) => Reason::NOT_ALLOWED,
        }
    }
}

/// The gateways a client may use and what it learned of their health.
#[derive(Debug)]
pub struct Gateways {
    /// The gateways streams may exit through: the configured one, or every one.
    list: Vec<Gateway>,
    /// Every gateway in the directory: the names a SOCKS5 username may pin.
    named: Vec<String>,
    policy: ChoicePolicy,
    /// Gateways the central reported unreachable, skipped for a while.
    down: Resting,
    sticky: Mutex<StickyMap>,
}

impl Gateways {
    /// `list`: the gateways streams may use; `named`: every gateway id in the directory.
    pub fn new(list: Vec<Gateway>, named: Vec<String>, policy: ChoicePolicy) -> Self {
        Gateways {
            list,
            named,
            down: Resting::new(policy.rest),
            policy,
            sticky: Mutex::new(StickyMap::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The gateway a SOCKS5 username names, if it names one in the directory; any other
    /// username is no pin.
    pub fn pin_by_username(&self, username: &[u8]) -> Option<String> {
        let name = std::str::from_utf8(username).ok()?;
        self.named.iter().find(|g| *g == name).cloned()
    }

    /// A gateway for a new stream to `target`, not one of `tried`; see the module
    /// documentation for the order of the rules.
    pub fn pick(
        &self,
        target: &TargetAddr,
        pinned: Option<&str>,
        tried: &[String],
    ) -> Result<Gateway, NoGateway> {
        self.pick_at(Instant::now(), &mut rand::rng(), target, pinned, tried)
    }

    /// [`pick`](Self::pick) at `now` with `rng` (deterministic tests).
    pub fn pick_at(
        &self,
        now: Instant,
        rng: &mut impl Rng,
        target: &TargetAddr,
        pinned: Option<&str>,
        tried: &[String],
    ) -> Result<Gateway, NoGateway> {
        if let Some(id) = pinned {
            // Pinned: there or nowhere, even while it rests (it may be back; the central
            // answers at once if not).
            let Some(g) = self.list.iter().find(|g| g.id == id) else {
                return Err(NoGateway::PinNotAllowed(id.to_string()));
            };
            if tried.iter().any(|t| t == id) {
                return Err(NoGateway::PinnedUnreachable(id.to_string()));
            }
            return Ok(g.clone());
        }
        let untried: Vec<&Gateway> = self
            .list
            .iter()
            .filter(|g| !tried.contains(&g.id))
            .collect();
        let healthy = self.down.prefer_healthy_at(now, &untried, |g| &g.id);
        if self.policy.choice == GatewayChoice::Sticky {
            let key = sticky_key(target);
            let mut map = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = map.get(key, now, self.policy.sticky) {
                // Only while it is healthy (and untried): a resting gateway is left.
                if let Some(g) = untried.iter().find(|g| g.id == id) {
                    if self.down.resting_until(&g.id, now).is_none() {
                        return Ok((*g).clone());
                    }
                }
            }
            let g = healthy.choose(rng).ok_or(NoGateway::AllTried)?;
            map.insert(key, &g.id, now, self.policy.sticky);
            return Ok((*g).clone());
        }
        healthy
            .choose(rng)
            .map(|g| (*g).clone())
            .ok_or(NoGateway::AllTried)
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

    /// How many destinations the sticky choice remembers now.
    pub fn sticky_len(&self) -> usize {
        self.sticky.lock().map(|m| m.entries.len()).unwrap_or(0)
    }
}

/// The sticky map's key for a destination: its host (name or address, not the port, so a
/// site's ports share an exit), hashed with a per-process random key.
fn sticky_key(target: &TargetAddr) -> u64 {
    static KEY: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    let state = KEY.get_or_init(std::hash::RandomState::new);
    match target {
        TargetAddr::Ip(a) => state.hash_one(a.ip()),
        // Names are case-insensitive; `Example.com` and `example.com.` are one site.
        TargetAddr::Domain(name, _) => {
            state.hash_one(name.trim_end_matches('.').to_ascii_lowercase())
        }
    }
}

/// Destination (hashed) → gateway, each for `sticky` from when it was given; at most
/// [`STICKY_ENTRIES`] entries.
#[derive(Debug, Default)]
struct StickyMap {
    entries: HashMap<u64, (String, Instant)>,
}

impl StickyMap {
    fn get(&self, key: u64, now: Instant, sticky: Duration) -> Option<&str> {
        self.entries
            .get(&key)
            .filter(|(_, since)| now.saturating_duration_since(*since) < sticky)
            .map(|(id, _)| id.as_str())
    }

    fn insert(&mut self, key: u64, id: &str, now: Instant, sticky: Duration) {
        if self.entries.len() >= STICKY_ENTRIES && !self.entries.contains_key(&key) {
            // Expired ones first; then the oldest. O(n) only when full.
            self.entries
                .retain(|_, (_, since)| now.saturating_duration_since(*since) < sticky);
            if self.entries.len() >= STICKY_ENTRIES {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (id.to_string(), now));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    fn gw(id: &str) -> Gateway {
        Gateway {
            id: id.into(),
            noise_key: [0; 32],
        }
    }

    fn gateways(ids: &[&str], choice: GatewayChoice) -> Gateways {
        Gateways::new(
            ids.iter().map(|i| gw(i)).collect(),
            ids.iter().map(|i| i.to_string()).collect(),
            ChoicePolicy {
                choice,
                sticky: Duration::from_secs(600),
                rest: Duration::from_secs(60),
            },
        )
    }

    fn host(name: &str) -> TargetAddr {
        TargetAddr::Domain(name.into(), 443)
    }

    #[test]
    fn a_gateway_marked_down_is_skipped_until_its_rest_is_over() {
        let g = Gateways::new(
            vec![gw("a"), gw("b")],
            vec!["a".into(), "b".into()],
            ChoicePolicy {
                rest: Duration::from_millis(200),
                ..ChoicePolicy::default()
            },
        );
        let t = host("example.com");
        g.mark_down("a");
        for _ in 0..50 {
            assert_eq!(g.pick(&t, None, &[]).unwrap().id, "b");
        }
        // All tried but one: that one, even if resting.
        assert_eq!(g.pick(&t, None, &["b".into()]).unwrap().id, "a");
        assert_eq!(
            g.pick(&t, None, &["a".into(), "b".into()]),
            Err(NoGateway::AllTried)
        );
        std::thread::sleep(Duration::from_millis(250));
        let picked: HashSet<String> = (0..200)
            .map(|_| g.pick(&t, None, &[]).unwrap().id)
            .collect();
        assert_eq!(picked.len(), 2, "both are used again: {picked:?}");
    }

    /// Sticky: one host, one gateway, across ports and letter case, until `sticky` has
    /// passed or the gateway rests; other hosts spread over all gateways.
    #[test]
    fn sticky_keeps_a_host_on_its_gateway_while_healthy_and_for_its_time() {
        let g = gateways(&["a", "b", "c"], GatewayChoice::Sticky);
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let first = g
            .pick_at(t0, &mut rng, &host("example.com"), None, &[])
            .unwrap()
            .id;
        for (i, target) in [
            host("example.com"),
            TargetAddr::Domain("Example.COM.".into(), 80),
        ]
        .iter()
        .cycle()
        .take(50)
        .enumerate()
        {
            let at = t0 + Duration::from_secs(i as u64 * 10);
            let got = g.pick_at(at, &mut rng, target, None, &[]).unwrap().id;
            assert_eq!(got, first, "pick {i}");
        }
        // Other hosts are spread.
        let spread: HashSet<String> = (0..100)
            .map(|i| {
                g.pick_at(t0, &mut rng, &host(&format!("h{i}.test")), None, &[])
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(spread.len(), 3, "{spread:?}");
        // Its gateway rests: the host moves, and stays on the new one.
        g.mark_down(&first);
        let now = Instant::now();
        let moved = g
            .pick_at(now, &mut rng, &host("example.com"), None, &[])
            .unwrap()
            .id;
        assert_ne!(moved, first);
        for _ in 0..20 {
            let again = g.pick_at(now, &mut rng, &host("example.com"), None, &[]);
            assert_eq!(again.unwrap().id, moved);
        }
        // Tried (the central could not reach it): another, not the stuck one.
        let other = g
            .pick_at(
                now,
                &mut rng,
                &host("example.com"),
                None,
                std::slice::from_ref(&moved),
            )
            .unwrap()
            .id;
        assert!(other != moved && other != first, "{other}");
        // After `sticky`, a fresh draw: over many hosts, some land elsewhere.
        let later = now + Duration::from_secs(601);
        let before: Vec<String> = (0..50)
            .map(|i| {
                let t = host(&format!("s{i}.test"));
                g.pick_at(now, &mut rng, &t, None, &[]).unwrap().id
            })
            .collect();
        let changed = (0..50)
            .filter(|i| {
                let t = host(&format!("s{i}.test"));
                g.pick_at(later, &mut rng, &t, None, &[]).unwrap().id != before[*i]
            })
            .count();
        assert!(changed > 0, "nothing re-drawn after sticky_secs");
    }

    /// Random choice keeps no memory, so one host spreads over the gateways.
    #[test]
    fn random_choice_remembers_nothing() {
        let g = gateways(&["a", "b"], GatewayChoice::Random);
        let mut rng = StdRng::seed_from_u64(1);
        let now = Instant::now();
        let seen: HashSet<String> = (0..100)
            .map(|_| {
                g.pick_at(now, &mut rng, &host("example.com"), None, &[])
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(seen.len(), 2);
        assert_eq!(g.sticky_len(), 0);
    }

    /// The sticky map never holds more than its cap, whatever apps visit; the oldest goes.
    #[test]
    fn the_sticky_map_is_bounded_and_forgets_the_oldest() {
        let g = gateways(&["a", "b", "c", "d"], GatewayChoice::Sticky);
        let mut rng = StdRng::seed_from_u64(3);
        let t0 = Instant::now();
        let oldest = g
            .pick_at(t0, &mut rng, &host("oldest.test"), None, &[])
            .unwrap()
            .id;
        for i in 0..STICKY_ENTRIES + 100 {
            let at = t0 + Duration::from_millis(1 + i as u64);
            let t = TargetAddr::Ip(std::net::SocketAddr::from((
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                80,
            )));
            g.pick_at(at, &mut rng, &t, None, &[]).unwrap();
            assert!(g.sticky_len() <= STICKY_ENTRIES);
        }
        assert_eq!(g.sticky_len(), STICKY_ENTRIES);
        // `oldest.test` was forgotten; the newest is remembered.
        let map = g.sticky.lock().unwrap();
        assert!(
            !map.entries.contains_key(&sticky_key(&host("oldest.test"))),
            "{oldest}"
        );
        let newest = TargetAddr::Ip(std::net::SocketAddr::from(([10, 0, 16, 99], 80)));
        assert!(map.entries.contains_key(&sticky_key(&newest)));
    }

    /// Pinned: that gateway even while it rests, never another; a pin outside the
    /// configured gateway is refused; usernames that name no gateway pin nothing.
    #[test]
    fn a_pinned_stream_goes_to_its_gateway_or_fails() {
        for choice in [GatewayChoice::Random, GatewayChoice::Sticky] {
            let g = gateways(&["gateway-1", "gateway-2"], choice);
            let mut rng = StdRng::seed_from_u64(5);
            let now = Instant::now();
            let t = host("example.com");
            for _ in 0..20 {
                let p = g.pick_at(now, &mut rng, &t, Some("gateway-2"), &[]);
                assert_eq!(p.unwrap().id, "gateway-2");
            }
            g.mark_down("gateway-2");
            let p = g.pick_at(now, &mut rng, &t, Some("gateway-2"), &[]);
            assert_eq!(p.unwrap().id, "gateway-2", "tried even while resting");
            let p = g.pick_at(now, &mut rng, &t, Some("gateway-2"), &["gateway-2".into()]);
            assert_eq!(p, Err(NoGateway::PinnedUnreachable("gateway-2".into())));
            assert_eq!(p.unwrap_err().reason(), Reason::NO_GATEWAY);
        }
        let g = gateways(&["gateway-1", "gateway-2"], GatewayChoice::Random);
        assert_eq!(
            g.pin_by_username(b"gateway-2").as_deref(),
            Some("gateway-2")
        );
        for other in [
            &b"alice"[..],
            b"GATEWAY-2",
            b"gateway-",
            b"\xff\xfe",
            b"central-1",
        ] {
            assert_eq!(g.pin_by_username(other), None, "{other:?}");
        }
        // The config allows only gateway-1; the directory also names gateway-2.
        let g = Gateways::new(
            vec![gw("gateway-1")],
            vec!["gateway-1".into(), "gateway-2".into()],
            ChoicePolicy::default(),
        );
        let pin = g.pin_by_username(b"gateway-2");
        let p = g.pick(&host("x.test"), pin.as_deref(), &[]);
        assert_eq!(p, Err(NoGateway::PinNotAllowed("gateway-2".into())));
        assert_eq!(p.unwrap_err().reason(), Reason::NOT_ALLOWED);
    }
}
