//! A lock-free latency histogram with logarithmic buckets (about 4.4% wide,
//! 1 µs to about 1 hour), so percentiles are exact to a bucket and recording
//! is one atomic add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 512;
const GROWTH: f64 = 1.044;

#[derive(Debug)]
pub struct LatencyHistogram {
    counts: Vec<AtomicU64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

fn bucket(micros: f64) -> usize {
    if micros <= 1.0 {
        0
    } else {
        ((micros.ln() / GROWTH.ln()) as usize + 1).min(BUCKETS - 1)
    }
}

fn upper_bound_micros(bucket: usize) -> f64 {
    GROWTH.powi(bucket as i32)
}

impl LatencyHistogram {
    /// Records `weight` samples of `latency`.
    pub fn record(&self, latency: Duration, weight: u64) {
        let b = bucket(latency.as_secs_f64() * 1e6);
        self.counts[b].fetch_add(weight, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The latency below which a fraction `q` of samples fall.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= target {
                return Some(Duration::from_secs_f64(upper_bound_micros(i) / 1e6));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_a_bucket() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_millis(1), 98);
        h.record(Duration::from_millis(100), 2);
        let p50 = h.quantile(0.5).unwrap().as_secs_f64();
        assert!((0.001..0.00105).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).unwrap().as_secs_f64();
        assert!((0.1..0.105).contains(&p99), "{p99}");
    }
}
