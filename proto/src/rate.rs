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
}
