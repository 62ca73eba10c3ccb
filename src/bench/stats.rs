//! Latency samples and percentiles for bench reports. Owns plain numbers only; never touches
//! clocks or sockets.

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
}
