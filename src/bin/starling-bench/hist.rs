//! A fixed-size log-linear histogram of u64 values (nanoseconds here): exact below 128, then
//! 128 sub-buckets per power of two, so every recorded value is known to within 0.8%.
//! Mergeable, constant memory (~58 KiB), so every task can keep its own and the scenario
//! merges them at the end.

const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS; // 128
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = ((v >> shift) as usize) & (SUB - 1);
    (e - SUB_BITS + 1) as usize * SUB + mantissa
}

/// Lowest and highest value that land in bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64);
    }
    let shift = (i / SUB - 1) as u32;
    let m = (i % SUB) as u64;
    let lo = (SUB as u64 + m) << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0u64; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.count += 1;
        self.sum += v as u128;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0..=1): the midpoint of the bucket holding the
    /// ceil(q*count)-th smallest value, clamped to the exact min and max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                let mid = lo + (hi - lo) / 2;
                return Some(mid.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

/// One histogram shared by many tasks: a few mutex-guarded shards, so thousands of tasks
/// (muc receivers) can record without each owning ~58 KiB. A task records a batch at a time
/// into the shard its id picks, so the locks are taken rarely and seldom contended.
pub struct ShardedHistogram {
    shards: Vec<std::sync::Mutex<Histogram>>,
}

impl ShardedHistogram {
    pub fn new(shards: usize) -> Self {
        ShardedHistogram {
            shards: (0..shards.max(1))
                .map(|_| std::sync::Mutex::new(Histogram::new()))
                .collect(),
        }
    }

    /// Record every value of `batch` into shard `id % shards`, and empty `batch`.
    pub fn record_batch(&self, id: usize, batch: &mut Vec<u64>) {
        if batch.is_empty() {
            return;
        }
        let shard = &self.shards[id % self.shards.len()];
        // Recording cannot leave a histogram half-updated in a way that matters.
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        for v in batch.drain(..) {
            h.record(v);
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram {
        let mut out = Histogram::new();
        for s in &self.shards {
            out.merge(&s.lock().unwrap_or_else(|e| e.into_inner()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            123_456_789,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v} not in [{lo},{hi}]");
            assert!((hi - lo) as f64 <= (v as f64) / 127.0 + 1.0);
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        assert!((p50 - 5_000_000.0).abs() / 5_000_000.0 < 0.01, "{p50}");
        assert_eq!(h.quantile(1.0), Some(10_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
    }

    #[test]
    fn sharded_merges_every_shard() {
        let h = ShardedHistogram::new(4);
        let mut batch = Vec::new();
        for id in 0..10usize {
            batch.extend([id as u64 * 10, id as u64 * 10 + 1]);
            h.record_batch(id, &mut batch);
            assert!(batch.is_empty());
        }
        let m = h.merged();
        assert_eq!(m.count(), 20);
        assert_eq!(m.min(), Some(0));
        assert_eq!(m.max(), Some(91));
    }
}
