//! Latency histograms for `/metrics`: fixed buckets, lock-free updates, rendered in the
//! Prometheus text format (`_bucket` with cumulative `le` counts, `_sum`, `_count`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds: from a fast local commit (a millisecond) to a request that waited
/// out a leader election.
pub const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// Appends this histogram's samples as `name{labels,le=...}`; `labels` is `k="v",...` or
    /// empty. The HELP and TYPE lines are the caller's (one per metric family).
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // exactly the first bound
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // above every bound
        let mut s = String::new();
        h.render("x", "g=\"1\"", &mut s);
        assert!(s.contains("x_bucket{g=\"1\",le=\"0.0005\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{g=\"1\",le=\"0.005\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{g=\"1\",le=\"10\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{g=\"1\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{g=\"1\"} 3\n"), "{s}");
        assert!(s.contains("x_sum{g=\"1\"} 60.0035\n"), "{s}");
        let mut s = String::new();
        Histogram::default().render("y", "", &mut s);
        assert!(s.contains("y_bucket{le=\"+Inf\"} 0\n") && s.contains("y_count 0\n"), "{s}");
    }
}
