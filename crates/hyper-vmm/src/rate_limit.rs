//! Token buckets for disk I/O: bytes per second and operations per second, as
//! Firecracker's rate limiter. A bucket holds one second's worth of tokens, refills
//! continuously, and a request goes when all of its buckets can pay for it.
pub use hyper_vmm_api::config::Limits;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: rate as f64,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.rate as f64);
        self.last = now;
    }

    /// How long until `n` tokens are there (a request larger than a whole second's worth
    /// waits for a full bucket and then drives it negative, so it still goes).
    fn wait_for(&self, n: u64) -> Duration {
        let need = (n as f64).min(self.rate as f64) - self.tokens;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate as f64)
        }
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<Bucket>,
    ops: Option<Bucket>,
}

impl RateLimiter {
    /// `None` when nothing is limited.
    pub fn new(limits: Limits) -> Option<RateLimiter> {
        let now = Instant::now();
        let bucket = |r: u64| (r > 0).then(|| Bucket::new(r, now));
        let l = RateLimiter {
            bytes: bucket(limits.bytes_per_sec),
            ops: bucket(limits.ops_per_sec),
        };
        (l.bytes.is_some() || l.ops.is_some()).then_some(l)
    }

    /// Takes the tokens for one request of `bytes` if they are there; otherwise answers
    /// how long to wait before trying again.
    pub fn consume(&mut self, bytes: u64, now: Instant) -> Result<(), Duration> {
        let mut wait = Duration::ZERO;
        for (b, n) in [(&mut self.bytes, bytes), (&mut self.ops, 1)] {
            if let Some(b) = b {
                b.refill(now);
                wait = wait.max(b.wait_for(n));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for (b, n) in [(&mut self.bytes, bytes), (&mut self.ops, 1)] {
            if let Some(b) = b {
                b.tokens -= n as f64;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_pay_out_their_rate_and_refill() {
        assert!(RateLimiter::new(Limits::default()).is_none());
        let t0 = Instant::now();
        let mut l = RateLimiter::new(Limits {
            bytes_per_sec: 1000,
            ops_per_sec: 0,
        })
        .unwrap();
        assert!(l.consume(600, t0).is_ok());
        let wait = l.consume(600, t0).unwrap_err();
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200));
        assert!(l.consume(600, t0 + Duration::from_millis(200)).is_ok());
        // More than a second's worth goes once the bucket is full.
        assert!(l.consume(5000, t0 + Duration::from_secs(3)).is_ok());
        assert!(l.consume(1, t0 + Duration::from_secs(3)).is_err());

        let mut ops = RateLimiter::new(Limits {
            bytes_per_sec: 0,
            ops_per_sec: 2,
        })
        .unwrap();
        assert!(ops.consume(1 << 20, t0).is_ok());
        assert!(ops.consume(1 << 20, t0).is_ok());
        assert!(ops.consume(1, t0).is_err());
        assert!(ops.consume(1, t0 + Duration::from_millis(500)).is_ok());
    }
}
