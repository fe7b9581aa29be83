//! A relay's Poisson mix: every cell waits an exponentially distributed delay before it
//! leaves, so the order and timing of cells out of a relay say little about cells in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand_core::RngCore;

/// Cells waiting in a relay, released in order of their drawn departure times.
pub struct MixPool<T> {
    mean: Duration,
    capacity: usize,
    heap: BinaryHeap<Reverse<(Instant, u64, Slot<T>)>>,
    counter: u64,
    dropped: u64,
}

/// Wrapper so the heap orders by time and arrival counter only.
struct Slot<T>(T);
impl<T> PartialEq for Slot<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Draws an exponential delay with the given mean (inverse transform sampling).
pub fn exp_delay(rng: &mut impl RngCore, mean: Duration) -> Duration {
    if mean.is_zero() {
        return Duration::ZERO;
    }
    // 53 random bits → uniform in (0, 1].
    let u = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let d = -u.ln() * mean.as_secs_f64();
    // Cap the tail at 20 means so one cell cannot stall a stream for long.
    Duration::from_secs_f64(d.min(mean.as_secs_f64() * 20.0))
}

impl<T> MixPool<T> {
    pub fn new(mean: Duration, capacity: usize) -> Self {
        MixPool {
            mean,
            capacity: capacity.max(1),
            heap: BinaryHeap::new(),
            counter: 0,
            dropped: 0,
        }
    }

    /// Adds an item; when the pool is full the item is dropped (end-to-end retransmission
    /// recovers it) so a flood cannot grow the relay's memory.
    pub fn push(&mut self, now: Instant, rng: &mut impl RngCore, item: T) -> bool {
        if self.heap.len() >= self.capacity {
            self.dropped += 1;
            return false;
        }
        let at = now + exp_delay(rng, self.mean);
        self.counter += 1;
        self.heap.push(Reverse((at, self.counter, Slot(item))));
        true
    }

    /// The next item whose time has come.
    pub fn poll_release(&mut self, now: Instant) -> Option<T> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, _, Slot(item)))| item)
            }
            _ => None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn delays_have_the_configured_mean_and_reorder() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mean = Duration::from_millis(10);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| exp_delay(&mut rng, mean).as_secs_f64())
            .sum();
        let avg = total / n as f64;
        assert!((avg - 0.010).abs() < 0.0007, "mean {avg}");

        let t0 = Instant::now();
        let mut pool = MixPool::new(mean, 1000);
        for i in 0..100u32 {
            pool.push(t0, &mut rng, i);
        }
        let mut out = Vec::new();
        while !pool.is_empty() {
            let now = pool.poll_timeout().unwrap();
            while let Some(i) = pool.poll_release(now) {
                out.push(i);
            }
        }
        assert_eq!(out.len(), 100);
        assert_ne!(out, (0..100).collect::<Vec<_>>(), "mixing reorders");
    }

    #[test]
    fn zero_mean_is_fifo_and_capacity_bounds() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut pool = MixPool::new(Duration::ZERO, 3);
        for i in 0..5 {
            pool.push(t0, &mut rng, i);
        }
        assert_eq!(pool.dropped(), 2);
        let out: Vec<_> = std::iter::from_fn(|| pool.poll_release(t0)).collect();
        assert_eq!(out, vec![0, 1, 2]);
    }
}
