//! Latency recording (HDR histograms in nanoseconds) and the summaries the reports print.
//!
//! Subscribers record into a small local batch and flush it into one shared histogram, so
//! ten thousand subscribers do not each hold a histogram and do not take a lock per message.

use std::sync::Arc;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency the histograms track (60 s); anything above is clamped to it.
pub const MAX_TRACKED_NS: u64 = 60_000_000_000;
/// Samples a [`LocalRecorder`] keeps before it takes the shared lock.
const BATCH: usize = 256;

/// A fresh histogram for nanosecond latencies: 1 ns to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("static histogram bounds are valid")
}

/// The shared histogram of one measured phase.
#[derive(Clone)]
pub struct SharedHistogram(Arc<Mutex<Histogram<u64>>>);

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram(Arc::new(Mutex::new(new_histogram())))
    }
}

impl SharedHistogram {
    pub fn local(&self) -> LocalRecorder {
        LocalRecorder {
            shared: self.clone(),
            batch: Vec::with_capacity(BATCH),
        }
    }

    pub fn record(&self, ns: u64) {
        self.0.lock().saturating_record(ns.clamp(1, MAX_TRACKED_NS));
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        self.0.lock().clone()
    }
}

/// A per-task batch in front of a [`SharedHistogram`]; flushes when full and on drop.
pub struct LocalRecorder {
    shared: SharedHistogram,
    batch: Vec<u64>,
}

impl LocalRecorder {
    pub fn record(&mut self, ns: u64) {
        self.batch.push(ns);
        if self.batch.len() >= BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let mut h = self.shared.0.lock();
        for ns in self.batch.drain(..) {
            h.saturating_record(ns.clamp(1, MAX_TRACKED_NS));
        }
    }
}

impl Drop for LocalRecorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What the reports print of a latency distribution, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// Percentile points for a percentile-curve plot: `(quantile, latency_ns)` at quantiles
/// spaced evenly on the `1 / (1 - q)` scale, from 0 up to the last recorded value.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let n = h.len() as f64;
    // Beyond 1 - 1/n the curve says nothing new: it is the maximum.
    let top = (1.0 - 1.0 / n).max(0.5);
    let mut out = Vec::new();
    let steps = 200;
    let max_decades = (1.0 / (1.0 - top)).log10();
    for i in 0..=steps {
        let decades = max_decades * i as f64 / steps as f64;
        let q = 1.0 - 10f64.powf(-decades);
        out.push((q, h.value_at_quantile(q)));
    }
    out.push((top, h.max()));
    out
}

/// Formats microseconds for tables: `850us`, `12.3ms`, `1.20s`.
pub fn fmt_us(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0}us")
    } else if v < 1_000_000.0 {
        format!("{:.2}ms", v / 1000.0)
    } else {
        format!("{:.2}s", v / 1_000_000.0)
    }
}

/// Formats a rate with a thousands separator: `1,234,567`.
pub fn fmt_rate(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_percentiles_in_microseconds() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1 us .. 1000 us
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999_us - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.min_us - 1.0).abs() < 0.01, "{s:?}");
        assert!((s.mean_us - 500.5).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
        assert!(percentile_curve(&new_histogram()).is_empty());
    }

    #[test]
    fn local_batches_reach_the_shared_histogram() {
        let shared = SharedHistogram::default();
        {
            let mut local = shared.local();
            for _ in 0..(BATCH + 10) {
                local.record(2_000);
            }
            assert_eq!(shared.snapshot().len(), BATCH as u64);
        }
        assert_eq!(shared.snapshot().len(), BATCH as u64 + 10);
        // Out-of-range values are clamped, not dropped.
        shared.record(0);
        shared.record(u64::MAX);
        let h = shared.snapshot();
        assert_eq!(h.len(), BATCH as u64 + 12);
        assert!(h.max() >= MAX_TRACKED_NS);
    }

    #[test]
    fn percentile_curve_is_monotonic_and_ends_at_max() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 100).unwrap();
        }
        let c = percentile_curve(&h);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().unwrap().1, h.max());
        assert_eq!(c[0].0, 0.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(850.0), "850us");
        assert_eq!(fmt_us(12_345.0), "12.35ms");
        assert_eq!(fmt_us(1_200_000.0), "1.20s");
        assert_eq!(fmt_rate(1_234_567.4), "1,234,567");
        assert_eq!(fmt_rate(999.0), "999");
        assert_eq!(fmt_rate(1000.0), "1,000");
    }
}
