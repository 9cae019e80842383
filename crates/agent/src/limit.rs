//! The bandwidth limit of a copy leaving a site: the site's
//! [`BandwidthSchedule`], asked for the rate before every batch, so a copy
//! that runs past the end of a window speeds up, and one that runs into a
//! window slows down at its next batch.
//!
//! A batch of `n` bytes books the link for `n / rate` seconds: it waits
//! until the batches before it have had their time, then goes whole (at
//! the speed of the link). [`RateLimit::drained`] waits for the last
//! booking to end, so a copy that finishes with it averages at most the
//! rate. Outside every window a batch books nothing and goes at once.

use std::time::Duration;

use standby_types::config::BandwidthSchedule;
use tokio::time::Instant;

pub struct RateLimit {
    schedule: BandwidthSchedule,
    /// When the link is free again for the next batch.
    next: std::sync::Mutex<Instant>,
}

impl RateLimit {
    pub fn new(schedule: BandwidthSchedule) -> RateLimit {
        RateLimit {
            schedule,
            next: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Book the link for `bytes` at the rate in force now: when they may
    /// go, and the rate (none: unlimited).
    fn book(&self, bytes: u64) -> (Instant, Option<u64>) {
        let rate = self.schedule.limit_at(chrono::Utc::now());
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let start = (*next).max(now);
        *next = match rate {
            Some(r) => start + Duration::from_secs_f64(bytes as f64 / r.max(1) as f64),
            // Unlimited: what was booked before still holds the link.
            None => start,
        };
        (start, rate)
    }

    /// Wait until `bytes` may go; the rate they were booked at.
    pub async fn take(&self, bytes: u64) -> Option<u64> {
        let (start, rate) = self.book(bytes);
        tokio::time::sleep_until(start).await;
        rate
    }

    /// [`RateLimit::take`] on a blocking thread.
    pub fn take_blocking(&self, bytes: u64) -> Option<u64> {
        let (start, rate) = self.book(bytes);
        std::thread::sleep(start.saturating_duration_since(Instant::now()));
        rate
    }

    /// When every booking so far has had its time.
    pub fn free_at(&self) -> Instant {
        *self.next.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until every booking so far has had its time.
    pub async fn drained(&self) {
        tokio::time::sleep_until(self.free_at()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;
    use standby_types::config::{BandwidthWindow, ByteSize, Day};

    /// A window of `limit` around the current minute (or away from it).
    fn schedule(limit: u64, covering_now: bool) -> BandwidthSchedule {
        let now = chrono::Utc::now();
        let minute = (now.hour() * 60 + now.minute()) as i32;
        let at = |m: i32| {
            let m = m.rem_euclid(24 * 60);
            format!("{:02}:{:02}", m / 60, m % 60).parse().unwrap()
        };
        let (from, to) = if covering_now {
            (at(minute - 60), at(minute + 60))
        } else {
            (at(minute + 60), at(minute + 180))
        };
        BandwidthSchedule {
            timezone: "UTC".into(),
            windows: vec![BandwidthWindow {
                limit: ByteSize(limit),
                days: Day::ALL.to_vec(),
                from,
                to,
            }],
        }
    }

    #[tokio::test]
    async fn batches_are_paced_at_the_rate_of_the_window_in_force() {
        let l = RateLimit::new(schedule(100 << 20, true));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.take(10 << 20).await, Some(100 << 20));
        }
        // The fifth 10 MiB batch starts once the first four had their
        // time at 100 MiB/s: after 0.4 s, not at once; and the copy is
        // done when the fifth had its time too.
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(399), "{waited:?}");
        l.drained().await;
        let drained = t0.elapsed();
        assert!(drained >= Duration::from_millis(499), "{drained:?}");
        assert!(drained < Duration::from_secs(5), "{drained:?}");
    }

    #[test]
    fn outside_every_window_batches_go_at_once() {
        let l = RateLimit::new(schedule(1 << 10, false));
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(l.take_blocking(10 << 20), None);
        }
        assert!(l.free_at() <= Instant::now());
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{:?}",
            t0.elapsed()
        );
    }
}
