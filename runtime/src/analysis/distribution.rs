//! Per-layer distribution statistics of one capture point: max |x|, the kurtosis of the
//! per-dimension RMS (He et al. 2024), max / median |x| (median from the histogram), per
//! dimension max / mean / std summaries, and the distribution of per-sequence maxima (a
//! maximum is never bootstrapped).

use super::resample::quantile;
use super::statistics::{PointStatistics, histogram_bin_start, weighted_tokens};
use crate::sequences::Sequences;
use serde::{Deserialize, Serialize};

/// Where a per-dimension quantity sits across dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcrossDims {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
    /// The dimension with the largest.
    pub argmax: usize,
}

impl AcrossDims {
    fn of(values: &[f64]) -> Self {
        let argmax = (0..values.len())
            .max_by(|&a, &b| values[a].total_cmp(&values[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        AcrossDims {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            median: quantile(values, 0.5),
            max: values.get(argmax).copied().unwrap_or(f64::NAN),
            argmax,
        }
    }
}

/// Quantiles of the per-sequence maxima.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceMaxima {
    /// Smallest sequence maximum.
    pub min: f64,
    /// 25th percentile.
    pub p25: f64,
    /// Median.
    pub median: f64,
    /// 75th percentile.
    pub p75: f64,
    /// Largest (the point's max |x|).
    pub max: f64,
}

/// The distribution statistics of one point of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Largest |x|.
    pub max_abs: f64,
    /// Kurtosis of the per-dimension RMS: mean(s^4) / mean(s^2)^2 with s_j = sqrt(mean_t
    /// x_tj^2) (He et al. 2024); 1 when every dimension has the same RMS.
    pub rms_kurtosis: f64,
    /// Median |x| from the histogram (interpolated within a bin 1/32 octave wide: within
    /// about 3% of the exact median).
    pub median_abs: f64,
    /// max_abs / median_abs.
    pub max_over_median: f64,
    /// Per-dimension max |x| across dimensions.
    pub dim_max_abs: AcrossDims,
    /// Per-dimension mean across dimensions.
    pub dim_mean: AcrossDims,
    /// Per-dimension standard deviation across dimensions.
    pub dim_std: AcrossDims,
    /// Per-sequence max |x| across sequences.
    pub sequence_max: SequenceMaxima,
}

/// Kurtosis of the per-dimension RMS with sequences weighted by `weights`.
pub fn rms_kurtosis(stats: &PointStatistics, weights: &[u32]) -> f64 {
    let (width, plane) = (stats.width, stats.sequences * stats.width);
    let tokens = stats.weighted_tokens(weights);
    let mut square_sums = vec![0f64; width];
    for (s, &w) in weights.iter().enumerate() {
        if w == 0 {
            continue;
        }
        let row = &stats.sums[plane + s * width..plane + (s + 1) * width];
        for (total, &v) in square_sums.iter_mut().zip(row) {
            *total += w as f64 * v;
        }
    }
    // s_j^2 = mean of squares; mean(s^4) / mean(s^2)^2.
    let (mut m2, mut m4) = (0.0, 0.0);
    for total in square_sums {
        let ms = total / tokens.max(1.0);
        m2 += ms;
        m4 += ms * ms;
    }
    let n = width as f64;
    if m2 == 0.0 {
        return f64::NAN;
    }
    (m4 / n) / ((m2 / n) * (m2 / n))
}

/// [`rms_kurtosis`] for many resamples of sequences at once. With a_sd = sequence s's sum
/// of x^2 in dimension d, the resampled mean squares are m_d = sum_s w_s a_sd / tokens, so
/// sum_d m_d = sum_s w_s r_s / tokens (r_s = sum_d a_sd) and sum_d m_d^2 = w^T G w / tokens^2
/// (G = A A^T, sequences x sequences): each resample costs sequences^2 instead of
/// sequences x width.
pub struct RmsKurtosisResampler {
    sequences: usize,
    rows: Sequences,
    width: usize,
    /// `(sequences)`: r_s.
    row_sums: Vec<f64>,
    /// `(sequences, sequences)`: G.
    gram: Vec<f64>,
}

impl RmsKurtosisResampler {
    /// Precomputes r and G from a point's statistics.
    pub fn new(stats: &PointStatistics) -> Self {
        let (sequences, width) = (stats.sequences, stats.width);
        let plane = sequences * width;
        let row = |s: usize| &stats.sums[plane + s * width..plane + (s + 1) * width];
        let row_sums = (0..sequences).map(|s| row(s).iter().sum()).collect();
        // G's upper triangle by rows on all cores (sequences^2 x width / 2 products: the
        // report's largest cost at thousands of sequences), each product the same sum as one
        // after the other; then mirrored.
        let mut gram = vec![0f64; sequences * sequences];
        let threads = crate::cpu::threads::default_thread_count();
        crate::cpu::threads::for_each_chunk_mut(&mut gram, sequences, threads, |s, g_row| {
            let mut t = s;
            while t + LANES <= sequences {
                let rows: [&[f64]; LANES] = std::array::from_fn(|j| row(t + j));
                g_row[t..t + LANES].copy_from_slice(&dots_in_order(row(s), rows));
                t += LANES;
            }
            for (t, g) in g_row.iter_mut().enumerate().skip(t) {
                *g = dots_in_order(row(s), [row(t)])[0];
            }
        });
        for s in 0..sequences {
            for t in 0..s {
                gram[s * sequences + t] = gram[t * sequences + s];
            }
        }
        RmsKurtosisResampler {
            sequences,
            rows: stats.rows.clone(),
            width,
            row_sums,
            gram,
        }
    }

    /// [`rms_kurtosis`] with sequence weights `weights`.
    pub fn kurtosis(&self, weights: &[u32]) -> f64 {
        let tokens = weighted_tokens(&self.rows, weights).max(1.0);
        let w: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
        let drawn: Vec<usize> = (0..self.sequences).filter(|&s| weights[s] != 0).collect();
        let g = |s: usize| &self.gram[s * self.sequences..(s + 1) * self.sequences];
        // (G w)_s for each drawn s, LANES rows at a time; then summed in s order.
        let mut gw = Vec::with_capacity(drawn.len());
        for group in drawn.chunks(LANES) {
            match group.try_into() {
                Ok(group) => {
                    let group: [usize; LANES] = group;
                    gw.extend(dots_in_order(&w, group.map(g)));
                }
                Err(_) => gw.extend(group.iter().map(|&s| dots_in_order(&w, [g(s)])[0])),
            }
        }
        let mut sum_m = 0.0;
        let mut sum_m2 = 0.0;
        for (&s, gw_s) in drawn.iter().zip(gw) {
            let ws = w[s];
            sum_m += ws * self.row_sums[s];
            sum_m2 += ws * gw_s;
        }
        let (m2, m4) = (sum_m / tokens, sum_m2 / (tokens * tokens));
        let n = self.width as f64;
        if m2 == 0.0 {
            return f64::NAN;
        }
        (m4 / n) / ((m2 / n) * (m2 / n))
    }
}

/// Rows [`dots_in_order`] takes at once.
const LANES: usize = 4;

/// `out[j] = sum_d a[d] * rows[j][d]`, each sum in index order from -0.0: bit for bit what
/// `a.iter().zip(rows[j]).map(|(x, y)| x * y).sum::<f64>()` gives, one after the other (the
/// report does not change), with the N sums' dependency chains interleaved.
fn dots_in_order<const N: usize>(a: &[f64], rows: [&[f64]; N]) -> [f64; N] {
    let rows = rows.map(|r| &r[..a.len()]);
    let mut sums = [-0.0f64; N];
    for (d, &x) in a.iter().enumerate() {
        for (sum, r) in sums.iter_mut().zip(&rows) {
            *sum += x * r[d];
        }
    }
    sums
}

/// Median of the histogram's values, interpolated linearly within its bin.
pub fn histogram_median(histogram: &[u64]) -> f64 {
    let total: u64 = histogram.iter().sum();
    if total == 0 {
        return f64::NAN;
    }
    let half = total as f64 / 2.0;
    let mut below = 0u64;
    for (bin, &count) in histogram.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= half {
            let (start, end) = (histogram_bin_start(bin), histogram_bin_start(bin + 1));
            let end = if bin + 1 == histogram.len() {
                start
            } else {
                end
            };
            return start + (end - start) * (half - below as f64) / count as f64;
        }
        below += count;
    }
    f64::NAN
}

impl Distribution {
    /// The statistics of `stats`.
    pub fn of(stats: &PointStatistics) -> Self {
        let (width, sequences) = (stats.width, stats.sequences);
        let plane = sequences * width;
        // Finite values per dimension.
        let mut n = vec![stats.tokens() as f64; width];
        for (i, &bad) in stats.non_finite.iter().enumerate() {
            n[i % width] -= bad as f64;
        }
        let mut sum = vec![0f64; width];
        let mut square = vec![0f64; width];
        for s in 0..sequences {
            for d in 0..width {
                sum[d] += stats.sums[s * width + d];
                square[d] += stats.sums[plane + s * width + d];
            }
        }
        let mean: Vec<f64> = (0..width).map(|d| sum[d] / n[d].max(1.0)).collect();
        let std: Vec<f64> = (0..width)
            .map(|d| {
                (square[d] / n[d].max(1.0) - mean[d] * mean[d])
                    .max(0.0)
                    .sqrt()
            })
            .collect();
        let dim_max: Vec<f64> = stats.max_abs_per_dim().iter().map(|&v| v as f64).collect();
        let sequence_max: Vec<f64> = stats
            .max_abs
            .chunks_exact(width)
            .map(|row| row.iter().fold(0f32, |m, &v| m.max(v)) as f64)
            .collect();
        let max_abs = dim_max.iter().copied().fold(0.0, f64::max);
        let median_abs = histogram_median(&stats.histogram);
        Distribution {
            max_abs,
            rms_kurtosis: rms_kurtosis(stats, &vec![1; sequences]),
            median_abs,
            max_over_median: max_abs / median_abs,
            dim_max_abs: AcrossDims::of(&dim_max),
            dim_mean: AcrossDims::of(&mean),
            dim_std: AcrossDims::of(&std),
            sequence_max: SequenceMaxima {
                min: quantile(&sequence_max, 0.0),
                p25: quantile(&sequence_max, 0.25),
                median: quantile(&sequence_max, 0.5),
                p75: quantile(&sequence_max, 0.75),
                max: quantile(&sequence_max, 1.0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CapturePoint;

    fn stats_of(values: &[f32], sequences: usize, seq_len: usize, width: usize) -> PointStatistics {
        let shape = CapturePoint::MlpOut.statistics_shape(width);
        let mut s = PointStatistics::new(sequences, seq_len, shape, 6.0);
        s.accumulate(values, 0);
        s
    }

    #[test]
    fn kurtosis_of_equal_and_of_one_large_dimension() {
        // Every dimension RMS 1: kurtosis 1.
        let equal = stats_of(&[1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0], 1, 2, 4);
        assert!((Distribution::of(&equal).rms_kurtosis - 1.0).abs() < 1e-12);
        // RMS (3, 1, 1, 1): s^2 = (9, 1, 1, 1), s^4 = (81, 1, 1, 1):
        // mean(s^4) = 21, mean(s^2)^2 = 9 -> 21 / 9.
        let one = stats_of(&[3.0, 1.0, 1.0, 1.0, -3.0, 1.0, -1.0, 1.0], 1, 2, 4);
        assert!((Distribution::of(&one).rms_kurtosis - 21.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn the_resampler_gives_the_direct_kurtosis_for_any_weights() {
        let (sequences, seq_len, width) = (5, 3, 7);
        let values: Vec<f32> = (0..sequences * seq_len * width)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * if i % 7 == 3 { 9.0 } else { 1.0 })
            .collect();
        let stats = stats_of(&values, sequences, seq_len, width);
        let resampler = RmsKurtosisResampler::new(&stats);
        for weights in [
            vec![1, 1, 1, 1, 1],
            vec![0, 2, 0, 3, 0],
            vec![5, 0, 0, 0, 0],
        ] {
            let (direct, fast) = (rms_kurtosis(&stats, &weights), resampler.kurtosis(&weights));
            assert!(
                (direct - fast).abs() <= 1e-12 * direct.abs(),
                "{weights:?}: {direct} vs {fast}"
            );
        }
        assert!(resampler.kurtosis(&[0, 0, 0, 0, 0]).is_nan());
    }

    #[test]
    fn interleaved_dot_products_are_the_plain_sums_bit_for_bit() {
        let values = |n: usize, seed: usize| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    let v = ((i * 7919 + seed * 104_729) % 1013) as f64 / 97.0 - 5.0;
                    v * 10f64.powi((i % 9) as i32 - 4)
                })
                .collect()
        };
        for n in [0, 1, 5, 64, 1031] {
            let a = values(n, 1);
            let rows: Vec<Vec<f64>> = (2..6).map(|seed| values(n, seed)).collect();
            let plain: Vec<f64> = rows
                .iter()
                .map(|r| a.iter().zip(r).map(|(x, y)| x * y).sum::<f64>())
                .collect();
            let four = dots_in_order(&a, std::array::from_fn::<_, 4, _>(|j| &rows[j][..]));
            let one = dots_in_order(&a, [&rows[2][..]]);
            for j in 0..4 {
                assert_eq!(four[j].to_bits(), plain[j].to_bits(), "n {n} row {j}");
            }
            assert_eq!(one[0].to_bits(), plain[2].to_bits(), "n {n}");
        }
        // All products -0.0: the sum is -0.0, as Iterator::sum gives.
        let zero = [0.0, 0.0];
        let negative = [-1.0, -2.0];
        let plain: f64 = zero.iter().zip(&negative).map(|(x, y)| x * y).sum();
        assert_eq!(
            dots_in_order(&zero, [&negative[..]])[0].to_bits(),
            plain.to_bits()
        );
    }

    #[test]
    fn median_max_and_per_dimension_summaries() {
        // 2 sequences x 2 tokens, width 3.
        let values = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0, 2.0, 30.0];
        let d = Distribution::of(&stats_of(&values, 2, 2, 3));
        assert_eq!(d.max_abs, 30.0);
        // |x|: four 1s, four 2s, three 3s, one 30: the median lies in the bin of 2.
        assert!(d.median_abs >= 2.0 && d.median_abs < 2.0 * (1.0 + 1.0 / 32.0));
        assert_eq!(d.dim_max_abs.argmax, 2);
        assert_eq!(d.dim_mean.max, 39.0 / 4.0);
        assert_eq!(d.dim_std.min, 0.0);
        assert_eq!((d.sequence_max.min, d.sequence_max.max), (3.0, 30.0));
    }
}
