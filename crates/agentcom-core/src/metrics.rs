//! A fixed-bucket histogram for Prometheus exposition.

/// Bucket upper bounds in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [
    10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS_MS`] (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS_MS.len()],
    /// Observations above the last bound.
    pub overflow: u64,
    pub sum_ms: u64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, ms: u64) {
        match LATENCY_BUCKETS_MS.iter().position(|b| ms <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
        self.sum_ms += ms;
        self.count += 1;
    }

    /// Cumulative counts per bound, as Prometheus wants them (`le` buckets).
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut total = 0;
        LATENCY_BUCKETS_MS
            .iter()
            .zip(self.buckets.iter())
            .map(|(bound, n)| {
                total += n;
                (*bound, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets() {
        let mut h = Histogram::default();
        for ms in [5, 10, 60, 400_000] {
            h.observe(ms);
        }
        let c = h.cumulative();
        assert_eq!(c[0], (10, 2));
        assert_eq!(c[2], (100, 3));
        assert_eq!(c.last().unwrap().1, 3);
        assert_eq!((h.overflow, h.count, h.sum_ms), (1, 4, 400_075));
    }
}
