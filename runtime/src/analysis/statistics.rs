//! Per (sequence, hidden dimension) statistics of one capture point of one layer, the form
//! both backends accumulate in (DESIGN §7): max |x|, count of |x| >= threshold, non-finite
//! values, and the sums of x, x^2, x^3, x^4 (f64) for mean, variance and kurtosis.

use super::point_summary::{DimMax, PointSummary};

/// Accumulated statistics, each array `(sequences, width)` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PointStatistics {
    /// Sequences of the workload.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Hidden width of the point.
    pub width: usize,
    /// Threshold the counts use.
    pub threshold: f32,
    /// Largest finite |x|.
    pub max_abs: Vec<f32>,
    /// Finite values with |x| >= threshold.
    pub count_ge: Vec<u64>,
    /// NaN or infinite values.
    pub non_finite: Vec<u64>,
    /// Sums of x, x^2, x^3, x^4 over finite values: `(4, sequences, width)`.
    pub sums: Vec<f64>,
}

impl PointStatistics {
    /// Zeroed statistics.
    pub fn new(sequences: usize, seq_len: usize, width: usize, threshold: f32) -> Self {
        let n = sequences * width;
        PointStatistics {
            sequences,
            seq_len,
            width,
            threshold,
            max_abs: vec![0.0; n],
            count_ge: vec![0; n],
            non_finite: vec![0; n],
            sums: vec![0.0; 4 * n],
        }
    }

    /// Adds `values (sequences * seq_len, width)` of sequences `first_sequence..`, as the
    /// `stats_accumulate_kernel` does on the GPU.
    pub fn accumulate(&mut self, values: &[f32], first_sequence: usize) {
        let (width, seq_len) = (self.width, self.seq_len);
        let plane = self.sequences * width;
        for (offset, sequence) in values.chunks_exact(seq_len * width).enumerate() {
            let row0 = (first_sequence + offset) * width;
            for token in sequence.chunks_exact(width) {
                for (d, &value) in token.iter().enumerate() {
                    let slot = row0 + d;
                    if !value.is_finite() {
                        self.non_finite[slot] += 1;
                        continue;
                    }
                    let magnitude = value.abs();
                    self.max_abs[slot] = self.max_abs[slot].max(magnitude);
                    self.count_ge[slot] += (magnitude >= self.threshold) as u64;
                    let (v, v2) = (value as f64, (value as f64) * (value as f64));
                    self.sums[slot] += v;
                    self.sums[plane + slot] += v2;
                    self.sums[2 * plane + slot] += v2 * v;
                    self.sums[3 * plane + slot] += v2 * v2;
                }
            }
        }
    }

    /// Largest |x| per dimension over all sequences, `(width)`.
    pub fn max_abs_per_dim(&self) -> Vec<f32> {
        let mut per_dim = vec![0f32; self.width];
        for sequence in self.max_abs.chunks_exact(self.width) {
            for (max, &value) in per_dim.iter_mut().zip(sequence) {
                *max = max.max(value);
            }
        }
        per_dim
    }

    /// The report's summary with the `top` dimensions of largest magnitude (ties: lower index).
    pub fn summary(&self, top: usize) -> PointSummary {
        let per_dim = self.max_abs_per_dim();
        let mut dims: Vec<DimMax> = per_dim
            .iter()
            .enumerate()
            .map(|(dim, &max_abs)| DimMax { dim, max_abs })
            .collect();
        dims.sort_by(|a, b| b.max_abs.total_cmp(&a.max_abs).then(a.dim.cmp(&b.dim)));
        dims.truncate(top);
        PointSummary {
            max_abs: per_dim.iter().fold(0.0, |m, &x| m.max(x)),
            count_ge_threshold: self.count_ge.iter().sum(),
            numel: (self.sequences * self.seq_len * self.width) as u64,
            non_finite: self.non_finite.iter().sum(),
            top_dims: dims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_per_sequence_and_summarises() {
        // 2 sequences of 2 tokens, width 3.
        let mut stats = PointStatistics::new(2, 2, 3, 6.0);
        stats.accumulate(&[1.0, -6.0, 2.0, 0.5, 3.0, -7.5], 0);
        stats.accumulate(&[6.5, 0.0, f32::NAN, 1.0, 1.0, 1.0], 1);
        assert_eq!(stats.max_abs, vec![1.0, 6.0, 7.5, 6.5, 1.0, 1.0]);
        assert_eq!(stats.count_ge, vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(stats.non_finite, vec![0, 0, 0, 0, 0, 1]);
        // sum of x^2 of sequence 0, dimension 1: 36 + 9.
        assert_eq!(stats.sums[6 + 1], 45.0);
        let s = stats.summary(2);
        assert_eq!(s.max_abs, 7.5);
        assert_eq!(s.count_ge_threshold, 3);
        assert_eq!(s.numel, 12);
        assert_eq!(s.non_finite, 1);
        assert_eq!(
            s.top_dims,
            vec![
                DimMax {
                    dim: 2,
                    max_abs: 7.5
                },
                DimMax {
                    dim: 0,
                    max_abs: 6.5
                }
            ]
        );
    }
}
