//! The one replay cache, for handshakes a carrier could record and send again: the
//! gateway's 0-RTT opens (sealed to its static key, so a central that recorded one could
//! watch what the gateway does with it again) and the central's Hellos (an upstream could
//! replay a client's). Each carries the time it was sent and a fresh ephemeral key (both
//! authenticated by the handshake), so the receiver refuses:
//! - an open whose `sent_at` is more than `window` seconds from its own clock;
//! - an open whose ephemeral key it has seen within the window.
//!
//! A key must be remembered as long as its open could still pass the time check: until
//! `sent_at + window`, at most `2 × window` after it was first seen. Keys live in two
//! generations: new keys go into the current one, which becomes the previous one after
//! `2 × window` and is dropped `2 × window` later, so every key is kept at least
//! `2 × window`. Each generation holds at most `cap` keys; when the current one is full, new
//! opens are refused (resource limit) until it rotates, so memory stays bounded whatever
//! the rate of opens.
//!
//! Sans-IO: the caller passes the clock (unix seconds).

use std::collections::HashSet;

/// Why an open was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    #[error(
        "the open was sent at {sent_at}, more than {window} s from the gateway's clock ({now})"
    )]
    Stale { sent_at: u64, now: u64, window: u64 },
    #[error("the open was seen before (a replay)")]
    Replayed,
    #[error("the gateway's replay cache is full")]
    Full,
}

/// Ephemeral keys of the opens accepted lately.
#[derive(Debug)]
pub struct ReplayCache {
    window: u64,
    cap: usize,
    current: HashSet<[u8; 32]>,
    previous: HashSet<[u8; 32]>,
    /// When `current` started (unix seconds).
    rotated_at: u64,
}

impl ReplayCache {
    /// Accepts opens sent within `window` seconds of the clock; each of the two generations
    /// holds at most `cap` keys.
    pub fn new(window: u64, cap: usize, now: u64) -> Self {
        ReplayCache {
            window,
            cap,
            current: HashSet::new(),
            previous: HashSet::new(),
            rotated_at: now,
        }
    }

    /// Whether `key` was admitted lately: a cheap check before the handshake's public-key
    /// work (the handshake then authenticates the time, and [`Self::admit`] decides).
    pub fn seen(&self, key: &[u8; 32]) -> bool {
        self.current.contains(key) || self.previous.contains(key)
    }

    /// Keys held now, over both generations.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits an open (its ephemeral key and its authenticated `sent_at`) at `now`, or says
    /// why not. An admitted key is refused from then on, for at least `2 × window`.
    pub fn admit(&mut self, key: [u8; 32], sent_at: u64, now: u64) -> Result<(), ReplayRefusal> {
        if sent_at.abs_diff(now) > self.window {
            return Err(ReplayRefusal::Stale {
                sent_at,
                now,
                window: self.window,
            });
        }
        // One step at a time: a key moved to `previous` now was inserted after the last
        // rotation, so it stays until the next one, 2 × window from now.
        if now
            >= self
                .rotated_at
                .saturating_add(self.window.saturating_mul(2))
        {
            self.previous = std::mem::take(&mut self.current);
            self.rotated_at = now;
        }
        if self.current.contains(&key) || self.previous.contains(&key) {
            return Err(ReplayRefusal::Replayed);
        }
        if self.current.len() >= self.cap {
            return Err(ReplayRefusal::Full);
        }
        self.current.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    #[test]
    fn a_key_is_admitted_once_and_stale_opens_are_refused() {
        let mut c = ReplayCache::new(120, 100, 1_000);
        assert_eq!(c.admit(key(1), 1_000, 1_000), Ok(()));
        assert_eq!(c.admit(key(1), 1_000, 1_001), Err(ReplayRefusal::Replayed));
        // Client clocks a little off either way are fine; beyond the window they are not.
        assert_eq!(c.admit(key(2), 880, 1_000), Ok(()));
        assert_eq!(c.admit(key(3), 1_120, 1_000), Ok(()));
        assert!(matches!(
            c.admit(key(4), 879, 1_000),
            Err(ReplayRefusal::Stale { .. })
        ));
        assert!(matches!(
            c.admit(key(4), 1_121, 1_000),
            Err(ReplayRefusal::Stale { .. })
        ));
        // A stale refusal remembers nothing.
        assert_eq!(c.admit(key(4), 1_000, 1_000), Ok(()));
    }

    /// Whenever a replay could still pass the time check, its key is still held, across
    /// any number of rotations; keys whose opens have gone stale are dropped.
    #[test]
    fn a_key_is_held_as_long_as_its_open_is_fresh() {
        let w = 10u64;
        let mut c = ReplayCache::new(w, 1_000, 0);
        // (key, sent_at) of every open admitted so far.
        let mut seen: Vec<([u8; 32], u64)> = Vec::new();
        for now in 0..100u64 {
            // Every open admitted before is replayed while it is fresh.
            for &(k, sent) in &seen {
                let got = c.admit(k, sent, now);
                if sent + w >= now {
                    assert_eq!(got, Err(ReplayRefusal::Replayed), "sent {sent} at {now}");
                } else {
                    assert!(matches!(got, Err(ReplayRefusal::Stale { .. })));
                }
            }
            // New opens from clients a window early, on time and a window late.
            for (j, sent) in [now.saturating_sub(w), now, now + w]
                .into_iter()
                .enumerate()
            {
                let k = key((now * 3 + j as u64) as u32);
                assert_eq!(c.admit(k, sent, now), Ok(()), "sent {sent} at {now}");
                seen.push((k, sent));
            }
        }
        // Memory: only the last 4 windows' keys at most.
        assert!(c.len() <= 3 * 4 * w as usize, "{}", c.len());
    }

    #[test]
    fn a_full_generation_refuses_rather_than_grows() {
        let mut c = ReplayCache::new(5, 3, 0);
        for i in 0..3 {
            c.admit(key(i), 0, 0).unwrap();
        }
        assert_eq!(c.admit(key(9), 0, 1), Err(ReplayRefusal::Full));
        assert_eq!(c.admit(key(0), 0, 1), Err(ReplayRefusal::Replayed));
        // After a rotation (2 × window) the full generation is the previous one: new keys go
        // in, old ones are still refused.
        assert_eq!(c.admit(key(9), 10, 10), Ok(()));
        assert_eq!(c.admit(key(0), 5, 10), Err(ReplayRefusal::Replayed));
        assert!(c.len() <= 2 * 3);
    }
}
