//! A lock-free log-linear latency histogram the client tasks share.

use super::*;

// -------------------------------------------------------------- histogram

/// Sub-buckets per power of two: values keep 6 significant bits (≤ 1.6 % error).
pub(super) const SUB_BITS: u32 = 6;
pub(super) const SUB: usize = 1 << SUB_BITS;
pub(super) const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

/// A lock-free log-linear histogram of microsecond values.
pub struct Histogram {
    pub(super) buckets: Box<[AtomicU64]>,
    pub(super) max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

pub(super) fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = (v >> shift) as usize;
    SUB + shift as usize * SUB + (mantissa - SUB)
}

/// The value a bucket stands for: the middle of its range.
pub(super) fn bucket_value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = ((i - SUB) / SUB) as u32;
    let mantissa = (SUB + (i - SUB) % SUB) as u64;
    (mantissa << shift) + ((1u64 << shift) - 1) / 2
}

impl Histogram {
    /// Counts one value.
    pub fn record(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(v, Ordering::Relaxed);
    }

    /// How many values were counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The largest value counted.
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// The `q` quantile (0..=1), or `None` if nothing was counted.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(bucket_value(i).min(self.max()));
            }
        }
        Some(self.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_their_precision() {
        for v in [0u64, 1, 63, 64, 127, 128, 129, 1000, 4095, 65_537, 1 << 40, u64::MAX] {
            let back = bucket_value(bucket_of(v));
            let error = back.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(error <= 1.0 / 64.0, "{v} → {back}");
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn percentiles() {
        let h = Histogram::default();
        assert_eq!(h.percentile(0.5), None);
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(0.5), Some(50));
        assert_eq!(h.percentile(0.99), Some(99));
        assert_eq!(h.percentile(1.0), Some(100));
        assert_eq!(h.percentile(0.0), Some(1));
        assert_eq!(h.count(), 100);
    }
}
