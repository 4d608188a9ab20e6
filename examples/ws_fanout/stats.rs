//! Latencies from several client processes, merged: a histogram of 10 µs buckets that a
//! process writes as one line of text and the coordinator adds up.

use std::collections::BTreeMap;

use super::Result;

/// Width of a bucket, in µs.
const BUCKET_US: u32 = 10;

#[derive(Default)]
pub struct Histogram {
    /// Bucket (latency / `BUCKET_US`) → deliveries.
    buckets: BTreeMap<u32, u64>,
    total: u64,
}

impl Histogram {
    pub fn add(&mut self, micros: u32) {
        *self.buckets.entry(micros / BUCKET_US).or_default() += 1;
        self.total += 1;
    }

    /// `bucket:count,bucket:count,…` (`-` when empty, so that the line has a value).
    pub fn encode(&self) -> String {
        if self.buckets.is_empty() {
            return "-".into();
        }
        let pairs: Vec<String> = self
            .buckets
            .iter()
            .map(|(b, n)| format!("{b}:{n}"))
            .collect();
        pairs.join(",")
    }

    /// Adds what `encode` wrote.
    pub fn merge(&mut self, encoded: &str) -> Result<()> {
        for pair in encoded.split(',').filter(|p| !p.is_empty() && *p != "-") {
            let (b, n) = pair
                .split_once(':')
                .ok_or("histogram: bucket:count expected")?;
            let n: u64 = n.parse()?;
            *self.buckets.entry(b.parse()?).or_default() += n;
            self.total += n;
        }
        Ok(())
    }

    /// The `p`th percentile in ms (the middle of its bucket), as the element at
    /// `total * p / 100` of the sorted latencies; 0 when empty.
    pub fn percentile_ms(&self, p: u64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = (self.total * p / 100).min(self.total - 1);
        let mut seen = 0;
        for (bucket, n) in &self.buckets {
            seen += n;
            if seen > rank {
                return (f64::from(*bucket) + 0.5) * f64::from(BUCKET_US) / 1000.0;
            }
        }
        0.0
    }
}

/// The `p`th percentile of sorted latencies (µs), as `Histogram::percentile_ms` ranks it.
pub fn percentile_sorted(sorted: &[u32], p: usize) -> Option<u32> {
    sorted
        .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_rank_like_sorted_latencies() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        (0..50).for_each(|i| a.add(i * 1000));
        (50..100).for_each(|i| b.add(i * 1000));
        let mut all = Histogram::default();
        all.merge(&a.encode()).unwrap();
        all.merge(&b.encode()).unwrap();
        assert_eq!(all.percentile_ms(50), 50.005);
        assert_eq!(all.percentile_ms(99), 99.005);
        assert_eq!(Histogram::default().percentile_ms(99), 0.0);
    }
}
