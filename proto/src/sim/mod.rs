//! A whole overlay in memory: client, upstreams, central, gateway, downstreams and relay
//! mixes as plain values on a virtual clock, wired by links with latency, bandwidth, jitter
//! and (optionally) duplication. Everything random is seeded, so a failing run replays.
//!
//! The forwarding values do what the real nodes do and no more: upstreams pass cells to the
//! central unchanged, the central braids them with its `Session` and hands stream bytes to the
//! gateway, downstreams carry the central's cells to the relay named by a mailbox, and relays
//! hold them in a Poisson `MixPool` before passing them to the client. The client and the
//! central name their paths with the driver's [`PathTable`](crate::session::PathTable).
//!
//! Test support only (the `test-util` feature): it panics on anything unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::mix::MixPool;

mod central;
mod client;
mod gateway;
mod net;
mod overlay;

pub use central::Central;
pub use client::{Client, ClientStream};
pub use gateway::{Gateway, GwStream};
pub use net::Link;
pub use overlay::Overlay;

/// The gateway every simulated stream is opened to.
pub const GATEWAY: &str = "gw-1";
pub const MS: Duration = Duration::from_millis(1);
pub const MIB: usize = 1 << 20;
/// Every cell link moves this many bytes per second (200 Mbit/s): a transfer takes virtual
/// time, so "halfway through" is a moment at which cells are still queued on every link.
const LINK_BYTES_PER_SEC: u64 = 25_000_000;
/// How much a node queues on a cell link before it stops offering that path (~6 cells).
const LINK_BUFFER: Duration = Duration::from_millis(1);
/// The gateway link is faster, so that the overlay's cell links are the bottleneck.
const GATEWAY_BYTES_PER_SEC: u64 = 100_000_000;
/// Bytes of the upload that ride in the stream's first handshake message (0-RTT).
const EARLY_DATA: usize = crate::inner::MAX_EARLY_DATA;
/// How far the client seals records ahead of what the session accepted (a socket buffer).
const SEAL_AHEAD: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Opts {
    pub seed: u64,
    pub upstreams: usize,
    pub downstreams: usize,
    pub relays: usize,
    pub cell_size: usize,
    pub mix_mean: Duration,
    /// Extra latency drawn uniformly from `[0, jitter)` per cell on every cell link.
    pub jitter: Duration,
    /// Chance that a cell link delivers a cell twice.
    pub dup_rate: f64,
    /// Whether forwarding values keep every byte they see (for `who_knows_what`).
    pub log_bytes: bool,
}

impl Opts {
    pub fn new(seed: u64) -> Self {
        Opts {
            seed,
            upstreams: 3,
            downstreams: 2,
            relays: 2,
            cell_size: 4096,
            mix_mean: 2 * MS,
            jitter: MS / 2,
            dup_rate: 0.0,
            log_bytes: false,
        }
    }
}

/// A node a test can kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Upstream(usize),
    Downstream(usize),
    Relay(usize),
}

/// Everything a node saw, as bytes, searched afterwards for what it must not know.
#[derive(Debug, Default)]
pub struct ByteLog {
    on: bool,
    pub bytes: Vec<u8>,
}

impl ByteLog {
    fn new(on: bool) -> Self {
        ByteLog {
            on,
            bytes: Vec::new(),
        }
    }

    fn add(&mut self, b: &[u8]) {
        if self.on {
            self.bytes.extend_from_slice(b);
        }
    }

    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }
}

/// An upstream or a downstream: forwards cells unchanged and counts them.
#[derive(Debug, Default)]
pub struct Forwarder {
    dead: bool,
    pub cells: u64,
    pub log: ByteLog,
}

pub struct Relay {
    pub fwd: Forwarder,
    pool: MixPool<([u8; 16], Vec<u8>)>,
}

pub fn relay_name(r: usize) -> String {
    format!("relay-{r}")
}

fn relay_index(name: &str) -> usize {
    name.strip_prefix("relay-").unwrap().parse().unwrap()
}

/// `n` bytes drawn from a generator seeded with `seed`.
pub fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    ChaCha20Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}
