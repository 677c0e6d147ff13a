//! Bootstrap over sequences: a small deterministic generator (SplitMix64), resamples as
//! per-sequence multiplicities, and percentile intervals. Every statistic of one report uses
//! the same resamples, so a seed fixes all of them.

use serde::{Deserialize, Serialize};

/// SplitMix64 (Steele, Lea, Flood 2014): fixed output for a seed on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-32 for any n here).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// `resamples` bootstrap resamples of `sequences` sequences: how often each sequence is drawn
/// (each row sums to `sequences`).
pub fn resample_weights(sequences: usize, resamples: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64::new(seed);
    (0..resamples)
        .map(|_| {
            let mut weights = vec![0u32; sequences];
            for _ in 0..sequences {
                weights[rng.below(sequences)] += 1;
            }
            weights
        })
        .collect()
}

/// `f` of every resample, in resample order, computed over the CPU's threads
/// (`LAYERSTREAM_THREADS`, else every core): the results do not depend on the thread count.
pub fn map_resamples<T: Send + Default + Clone>(
    resamples: &[Vec<u32>],
    f: impl Fn(&[u32]) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); resamples.len()];
    let threads = crate::cpu::threads::default_thread_count();
    let chunk = resamples.len().div_ceil(threads.max(1)).max(1);
    crate::cpu::threads::for_each_chunk_mut(&mut out, chunk, threads, |index, results| {
        for (i, result) in results.iter_mut().enumerate() {
            *result = f(&resamples[index * chunk + i]);
        }
    });
    out
}

/// The `q` quantile (0..=1) of `values` with linear interpolation between order statistics
/// (numpy's default); NaN for none.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (position.floor() as usize, position.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (position - low as f64)
}

/// A point estimate with its 95% bootstrap percentile interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// On all sequences.
    pub estimate: f64,
    /// 2.5th percentile over the resamples (null without resamples).
    pub low: Option<f64>,
    /// 97.5th percentile over the resamples.
    pub high: Option<f64>,
}

impl Interval {
    /// `estimate` with the percentile interval of `resampled` (none when empty).
    pub fn new(estimate: f64, resampled: &[f64]) -> Self {
        let finite: Vec<f64> = resampled
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        let bound = |q| (!finite.is_empty()).then(|| quantile(&finite, q));
        Interval {
            estimate,
            low: bound(0.025),
            high: bound(0.975),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_fixed_by_its_seed() {
        // Reference values of SplitMix64 from seed 0 (the published test vector).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(resample_weights(7, 3, 42), resample_weights(7, 3, 42));
        assert_ne!(resample_weights(7, 3, 42), resample_weights(7, 3, 43));
        for row in resample_weights(7, 20, 1) {
            assert_eq!(row.iter().sum::<u32>(), 7);
        }
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.025) - 1.075).abs() < 1e-12);
        let interval = Interval::new(2.0, &v);
        assert_eq!(interval.low, Some(quantile(&v, 0.025)));
        assert_eq!(Interval::new(1.0, &[]).low, None);
    }
}
