//! A lock-free latency histogram with fixed buckets: recorded on hot paths (the store's
//! commits, the engine's transform batches) and read by `/metrics`. It lives with the
//! store because the store is the lowest layer that records one; the engine reuses it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`), from 10 µs to 10 s: a
/// transform takes microseconds per message, an fsync on an SD card tens of milliseconds.
pub const BUCKETS: [f64; 13] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];

/// Counts of observations per bucket, their number and their sum. Recording is a few
/// relaxed atomic adds; a reader may see a count and a sum from slightly different moments,
/// which Prometheus tolerates.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot counts those above every
    /// bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts, one per bound of [`BUCKETS`] (`le`), without `+Inf`.
    pub cumulative: Vec<u64>,
    /// Every observation (`+Inf`).
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        self.observe_many(elapsed, 1);
    }

    /// Records `n` observations of `total / n` each (a batch of `n` messages that took
    /// `total`): one bucket update, so a batch costs what one message does.
    pub fn observe_many(&self, total: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let each = total.as_secs_f64() / n as f64;
        let slot = BUCKETS
            .iter()
            .position(|bound| each <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        let nanos = u64::try_from(total.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = BUCKETS
            .iter()
            .enumerate()
            .map(|(i, _)| {
                running += self.buckets[i].load(Ordering::Relaxed);
                running
            })
            .collect();
        let above = self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative,
            // At least the buckets' sum, so `+Inf` is never below the last bound even
            // when `count` is read before a concurrent update reached it.
            count: self.count.load(Ordering::Relaxed).max(running + above),
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        h.observe_many(Duration::from_micros(40), 4); // 10 µs each: on the first bound
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        assert_eq!(s.cumulative[0], 5);
        assert_eq!(
            s.cumulative[BUCKETS.iter().position(|b| *b == 0.005).unwrap()],
            6
        );
        assert_eq!(*s.cumulative.last().unwrap(), 6);
        assert!((s.sum_seconds - 20.003_045).abs() < 1e-9);
    }
}
