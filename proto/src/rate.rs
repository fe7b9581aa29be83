//! A token bucket: the one rate limiter (stream opens per session, Hellos per link). Sans-IO:
//! the caller passes the time.

use std::time::Instant;

/// `rate` events per second on average, with bursts of up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. A `burst` of 0 is taken as 1, so the limiter always lets something by.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// A full bucket of `rate` tokens per second (bytes, say) holding at most `burst`.
    pub fn with_rate(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` tokens whether or not they are there (the balance may go below zero) and
    /// returns how long the taker should wait for the balance to be paid back: callers
    /// that wait it out pass, together, at the rate on average, whatever their sizes.
    pub fn take_paced(&mut self, n: f64, now: Instant) -> std::time::Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64(-self.tokens / self.rate)
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..20).filter(|_| b.try_take(t0)).count(), 5);
        // One second refills ten, but never above the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.try_take(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(250);
        assert_eq!((0..20).filter(|_| b.try_take(t2)).count(), 2);
        // Time going backwards takes nothing and gives nothing.
        assert!(!b.try_take(t0));
    }

    #[test]
    fn paced_takers_pass_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::with_rate(1000.0, 100.0, t0);
        // The burst passes at once; past it, each taker waits for its own debt.
        assert_eq!(b.take_paced(100.0, t0), Duration::ZERO);
        assert_eq!(b.take_paced(500.0, t0), Duration::from_millis(500));
        assert_eq!(b.take_paced(500.0, t0), Duration::from_millis(1000));
        // A taker that waited its time finds the debt paid.
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(b.take_paced(0.0, t1), Duration::ZERO);
        // Ten seconds of takers at the rate: each waits at most a take's worth.
        let mut t = t1;
        let mut passed = 0.0;
        while t < t1 + Duration::from_secs(10) {
            t += b.take_paced(250.0, t);
            passed += 250.0;
        }
        let rate = passed / (t - t1).as_secs_f64();
        assert!((rate - 1000.0).abs() < 30.0, "{rate}");
    }
}
