//! Latency samples, percentiles and a log-bucket histogram for bench reports. Owns plain numbers
//! only; never touches clocks or sockets.

/// p50, p99 and max of a set of samples, in the unit of the samples (microseconds in reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median (nearest rank).
    pub p50: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Sorts `samples` in place and summarizes them; all zero when there are none.
    pub fn from_samples(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self {
            count: samples.len(),
            p50: percentile_sorted(samples, 50.0),
            p99: percentile_sorted(samples, 99.0),
            max: samples.last().copied().unwrap_or(0),
        }
    }
}

/// Nearest-rank percentile of ascending `sorted` samples: the smallest sample such that at least
/// `percent`% of all samples are less than or equal to it. 0 for no samples.
pub fn percentile_sorted(sorted: &[u64], percent: f64) -> u64 {
    debug_assert!((0.0..=100.0).contains(&percent), "percent {percent}");
    debug_assert!(sorted.is_sorted(), "samples not sorted");
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    // Rank is 1-based: ceil(p/100 * n), at least 1. Integer math on per-mille avoids
    // 0.99 * 100 = 98.999... rounding the rank down.
    let per_mille = (percent * 10.0).round() as u128;
    let rank = (per_mille * n as u128).div_ceil(1000).max(1) as usize;
    sorted[rank.min(n) - 1]
}

/// Sub-buckets per power of two, as a power of two: 2^7 = 128 values below 128 are exact, and
/// every larger value lands in a bucket 1/64 of its power of two wide (at most 1.6% high).
const SUB_BUCKET_BITS: u32 = 7;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
const HALF_SUB_BUCKETS: u64 = SUB_BUCKETS / 2;
/// Buckets covering all of `u64`: the exact values, then half a sub-bucket set per extra bit.
const HISTOGRAM_BUCKETS: usize =
    (SUB_BUCKETS + (64 - SUB_BUCKET_BITS as u64) * HALF_SUB_BUCKETS) as usize;

/// A log-bucket latency histogram in the spirit of HdrHistogram: constant memory (about 30 KiB),
/// O(1) per sample, no allocation after construction, mergeable across workers. Values under 128
/// are exact; larger ones are reported at their bucket's upper bound (at most 1.6% high), and the
/// maximum is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    max: u64,
}

/// p50, p99, p99.9 and max of a [`Histogram`], in the unit of its samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quantiles {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample (exact).
    pub max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; HISTOGRAM_BUCKETS],
            count: 0,
            max: 0,
        }
    }

    /// Records one sample.
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_index(value)] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Adds `other`'s samples to this one.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// Nearest-rank percentile (see [`percentile_sorted`]) at bucket resolution, never above the
    /// exact maximum. 0 when empty.
    pub fn percentile(&self, percent: f64) -> u64 {
        debug_assert!((0.0..=100.0).contains(&percent), "percent {percent}");
        if self.count == 0 {
            return 0;
        }
        let per_mille = (percent * 10.0).round() as u128;
        let rank = ((per_mille * u128::from(self.count)).div_ceil(1000) as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(index).min(self.max);
            }
        }
        self.max
    }

    /// The summary used in reports.
    pub fn quantiles(&self) -> Quantiles {
        Quantiles {
            count: self.count,
            p50: self.percentile(50.0),
            p99: self.percentile(99.0),
            p999: self.percentile(99.9),
            max: self.max,
        }
    }
}

fn bucket_index(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let bits = 64 - value.leading_zeros();
    let shift = bits - SUB_BUCKET_BITS; // >= 1 here
    let top = value >> shift; // in [SUB_BUCKETS / 2, SUB_BUCKETS)
    (SUB_BUCKETS + u64::from(shift - 1) * HALF_SUB_BUCKETS + (top - HALF_SUB_BUCKETS)) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let k = index - SUB_BUCKETS;
    let shift = k / HALF_SUB_BUCKETS + 1;
    let top = k % HALF_SUB_BUCKETS + HALF_SUB_BUCKETS;
    let low = top << shift;
    low.saturating_add((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_of_one_to_hundred_is_the_percent_itself() {
        let samples: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&samples, 50.0), 50);
        assert_eq!(percentile_sorted(&samples, 99.0), 99);
        assert_eq!(percentile_sorted(&samples, 100.0), 100);
        assert_eq!(percentile_sorted(&samples, 0.0), 1);
        assert_eq!(percentile_sorted(&samples, 99.9), 100);
    }

    #[test]
    fn small_sets_round_the_rank_up() {
        assert_eq!(percentile_sorted(&[7], 50.0), 7);
        assert_eq!(percentile_sorted(&[7], 99.0), 7);
        assert_eq!(percentile_sorted(&[1, 2], 50.0), 1);
        assert_eq!(percentile_sorted(&[1, 2, 3], 50.0), 2);
        assert_eq!(percentile_sorted(&[1, 2, 3], 99.0), 3);
        let thousand: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile_sorted(&thousand, 99.0), 990);
    }

    #[test]
    fn no_samples_give_zeros() {
        assert_eq!(percentile_sorted(&[], 50.0), 0);
        assert_eq!(Percentiles::from_samples(&mut []), Percentiles::default());
    }

    #[test]
    fn summary_sorts_unordered_samples() {
        let mut samples = vec![900, 5, 40, 3, 1000, 20, 8, 1, 70, 2];
        let p = Percentiles::from_samples(&mut samples);
        assert_eq!(
            p,
            Percentiles {
                count: 10,
                p50: 8,
                p99: 1000,
                max: 1000
            }
        );
    }

    #[test]
    fn histogram_is_exact_below_128_and_within_two_percent_above() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.quantiles().max, 100);
        for v in [
            128u64,
            129,
            1_000,
            65_537,
            10_000_000,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let index = bucket_index(v);
            assert!(index < HISTOGRAM_BUCKETS, "{v}");
            let high = bucket_high(index);
            assert!(high >= v, "{v} -> {high}");
            assert!((high - v) as f64 <= v as f64 / 64.0, "{v} -> {high}");
        }
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_ordered() {
        for index in 1..HISTOGRAM_BUCKETS {
            let low = bucket_high(index - 1) + 1;
            assert_eq!(bucket_index(low), index, "bucket {index}");
            assert_eq!(bucket_index(bucket_high(index)), index, "bucket {index}");
        }
    }

    #[test]
    fn histogram_tail_and_merge_match_sorted_samples() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        let mut all = Vec::new();
        for i in 0..10_000u64 {
            let v = i * 37 % 5_000 + if i % 1000 == 0 { 1_000_000 } else { 0 };
            all.push(v);
            if i % 2 == 0 { a.record(v) } else { b.record(v) }
        }
        a.merge(&b);
        all.sort_unstable();
        let q = a.quantiles();
        assert_eq!(q.count, 10_000);
        assert_eq!(q.max, *all.last().unwrap());
        for (got, percent) in [(q.p50, 50.0), (q.p99, 99.0), (q.p999, 99.9)] {
            let exact = percentile_sorted(&all, percent);
            assert!(
                got >= exact && got - exact <= exact / 64 + 1,
                "{percent}: {got} vs {exact}"
            );
        }
        assert_eq!(Histogram::new().quantiles(), Quantiles::default());
    }
}
