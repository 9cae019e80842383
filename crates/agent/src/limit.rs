//! A bandwidth limit for copies: bytes are let through at `rate` per
//! second on average (a batch waits for its turn, then goes whole).

use std::time::Duration;
use tokio::time::Instant;

pub struct RateLimit {
    /// Bytes per second.
    rate: u64,
    /// When the link is free again for the next batch.
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            rate: bytes_per_sec.max(1),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Wait until `bytes` may go.
    pub async fn take(&self, bytes: u64) {
        let start = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn batches_are_paced_at_the_rate() {
        let l = RateLimit::new(100 << 20);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.take(10 << 20).await;
        }
        // The fifth 10 MiB batch starts once the first four are through
        // at 100 MiB/s: after 0.4 s, not at once.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(399), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }
}
