//! Per (sequence, hidden dimension) statistics of one capture point of one layer, the form
//! both backends accumulate in (DESIGN §7): max |x|, count of |x| >= threshold (and of them
//! positive, and the sum of their |x|), non-finite values, the sums of x, x^2, x^3, x^4
//! (f64); per point a histogram of |x|; for the outlier-feature points the positions of the
//! values >= threshold (a bit per token and dimension); for the residual stream the massive
//! activations.

use super::magnitudes::{SequenceMagnitudes, lower_median_magnitude, top_magnitudes};
use super::massive::MassiveFinds;
use super::point_summary::{DimMax, PointSummary};
use super::position_bits::PositionBits;
use crate::sequences::Sequences;
use layerstream_planner::statistics::{CapturedPoint, HISTOGRAM_BINS};

/// Accumulated statistics, each per-entry array `(sequences, width)` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PointStatistics {
    /// Sequences of the workload.
    pub sequences: usize,
    /// Where each sequence's tokens sit: one length (packed data) or each record's own.
    pub rows: Sequences,
    /// Hidden width of the point.
    pub width: usize,
    /// Threshold the counts use.
    pub threshold: f32,
    /// Largest finite |x|.
    pub max_abs: Vec<f32>,
    /// Finite values with |x| >= threshold.
    pub count_ge: Vec<u64>,
    /// Of those, the positive ones.
    pub count_pos_ge: Vec<u64>,
    /// Sum of |x| over those.
    pub sum_abs_ge: Vec<f64>,
    /// NaN or infinite values.
    pub non_finite: Vec<u64>,
    /// Sums of x, x^2, x^3, x^4 over finite values: `(4, sequences, width)`.
    pub sums: Vec<f64>,
    /// Finite |x| per [`histogram_bin`], `(HISTOGRAM_BINS)`.
    pub histogram: Vec<u64>,
    /// Positions of the values >= threshold, `(width, position_words)`: bit `t % 32` of word
    /// `t / 32` of a dimension's row for the workload's token `t` (the sequence's first row
    /// plus the position); only the rows with a bit are held. Not kept (no words) when the
    /// point does not keep positions.
    pub positions: PositionBits,
    /// Massive activations, for the point that looks for them (`resid_post`).
    pub massive: Option<MassiveFinds>,
}

/// Tokens of `rows`' sequences counted `weights` times each (integers, exact in f64).
pub fn weighted_tokens(rows: &Sequences, weights: &[u32]) -> f64 {
    rows.lengths()
        .zip(weights)
        .map(|(len, &w)| w as u64 * len as u64)
        .sum::<u64>() as f64
}

/// The histogram bin of a finite magnitude: 0 below 2^-24, then the exponent and the top
/// five mantissa bits (32 linear bins per octave), the last bin from 2^24. Exact, so both
/// backends bin every value alike.
pub fn histogram_bin(magnitude: f32) -> usize {
    let bits = magnitude.to_bits();
    let exponent = (bits >> 23) as i32 - 127;
    if exponent < -24 {
        0
    } else if exponent >= 24 {
        HISTOGRAM_BINS - 1
    } else {
        1 + ((exponent + 24) as usize) * 32 + ((bits >> 18) & 31) as usize
    }
}

/// The smallest magnitude of `bin` (0 for the first).
pub fn histogram_bin_start(bin: usize) -> f64 {
    if bin == 0 {
        return 0.0;
    }
    let (octave, step) = ((bin - 1) / 32, (bin - 1) % 32);
    2f64.powi(octave as i32 - 24) * (1.0 + step as f64 / 32.0)
}

impl PointStatistics {
    /// Zeroed statistics for `point` (its width and what it keeps) of `sequences` sequences
    /// of `seq_len` tokens.
    pub fn new(sequences: usize, seq_len: usize, point: CapturedPoint, threshold: f32) -> Self {
        Self::of_rows(Sequences::uniform(sequences, seq_len), point, threshold)
    }

    /// Zeroed statistics for `point` of the sequences `rows` (each of its own length).
    pub fn of_rows(rows: Sequences, point: CapturedPoint, threshold: f32) -> Self {
        let sequences = rows.count();
        let n = sequences * point.width;
        let words = Self::words_for(rows.tokens());
        PointStatistics {
            sequences,
            rows,
            width: point.width,
            threshold,
            max_abs: vec![0.0; n],
            count_ge: vec![0; n],
            count_pos_ge: vec![0; n],
            sum_abs_ge: vec![0.0; n],
            non_finite: vec![0; n],
            sums: vec![0.0; 4 * n],
            histogram: vec![0; HISTOGRAM_BINS],
            positions: PositionBits::new(point.width, if point.positions { words } else { 0 }),
            massive: point.magnitudes.then(MassiveFinds::default),
        }
    }

    /// Words of a dimension's position bits for `tokens` tokens.
    pub fn words_for(tokens: usize) -> usize {
        tokens.div_ceil(32)
    }

    /// Words per dimension in [`Self::positions`] (0 when positions are not kept).
    pub fn position_words(&self) -> usize {
        self.positions.words()
    }

    /// Tokens of all the sequences.
    pub fn tokens(&self) -> usize {
        self.rows.tokens()
    }

    /// The length every sequence has, if they all have one.
    pub fn uniform_len(&self) -> Option<usize> {
        self.rows.uniform_len()
    }

    /// Tokens of the sequences counted `weights` times each (a bootstrap resample).
    pub fn weighted_tokens(&self, weights: &[u32]) -> f64 {
        weighted_tokens(&self.rows, weights)
    }

    /// Adds `values (rows, width)` of whole sequences `first_sequence..`, as the
    /// `stats_accumulate_kernel` does on the GPU (and the host's massive-activation scan).
    pub fn accumulate(&mut self, values: &[f32], first_sequence: usize) {
        let width = self.width;
        let plane = self.sequences * width;
        let words = self.position_words();
        let mut rest = values;
        let mut offset = 0;
        while !rest.is_empty() {
            let len = self.rows.len_of(first_sequence + offset);
            let (sequence, after) = rest.split_at(len * width);
            rest = after;
            let first_row = self.rows.start(first_sequence + offset);
            let row0 = (first_sequence + offset) * width;
            // The primary massive reading compares with the whole sequence's median.
            let sequence_median = self.massive.as_mut().map_or(0.0, |massive| {
                let magnitudes = SequenceMagnitudes {
                    sequence: first_sequence + offset,
                    top: top_magnitudes(sequence),
                    median: lower_median_magnitude(sequence),
                };
                massive.add_sequence(magnitudes);
                magnitudes.median
            });
            for (position, token) in sequence.chunks_exact(width).enumerate() {
                let global = first_row + position;
                for (d, &value) in token.iter().enumerate() {
                    let slot = row0 + d;
                    if !value.is_finite() {
                        self.non_finite[slot] += 1;
                        continue;
                    }
                    let magnitude = value.abs();
                    self.max_abs[slot] = self.max_abs[slot].max(magnitude);
                    self.histogram[histogram_bin(magnitude)] += 1;
                    if magnitude >= self.threshold {
                        self.count_ge[slot] += 1;
                        self.count_pos_ge[slot] += (value > 0.0) as u64;
                        self.sum_abs_ge[slot] += magnitude as f64;
                        if words > 0 {
                            self.positions.set(d, global);
                        }
                    }
                    let (v, v2) = (value as f64, (value as f64) * (value as f64));
                    self.sums[slot] += v;
                    self.sums[plane + slot] += v2;
                    self.sums[2 * plane + slot] += v2 * v;
                    self.sums[3 * plane + slot] += v2 * v2;
                }
                if let Some(massive) = &mut self.massive {
                    massive.scan_row(token, first_sequence + offset, position, sequence_median);
                }
            }
            offset += 1;
        }
    }

    /// Puts what was found in its final order once the layer is done.
    pub fn finish(&mut self) {
        if let Some(massive) = &mut self.massive {
            massive.finish();
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
            numel: (self.tokens() * self.width) as u64,
            non_finite: self.non_finite.iter().sum(),
            top_dims: dims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(width: usize, positions: bool) -> CapturedPoint {
        CapturedPoint {
            width,
            positions,
            magnitudes: false,
        }
    }

    #[test]
    fn accumulates_per_sequence_and_summarises() {
        // 2 sequences of 2 tokens, width 3.
        let mut stats = PointStatistics::new(2, 2, point(3, true), 6.0);
        stats.accumulate(&[1.0, -6.0, 2.0, 0.5, 3.0, -7.5], 0);
        stats.accumulate(&[6.5, 0.0, f32::NAN, 1.0, 1.0, 1.0], 1);
        assert_eq!(stats.max_abs, vec![1.0, 6.0, 7.5, 6.5, 1.0, 1.0]);
        assert_eq!(stats.count_ge, vec![0, 1, 1, 1, 0, 0]);
        assert_eq!(stats.count_pos_ge, vec![0, 0, 0, 1, 0, 0]);
        assert_eq!(stats.sum_abs_ge, vec![0.0, 6.0, 7.5, 6.5, 0.0, 0.0]);
        assert_eq!(stats.non_finite, vec![0, 0, 0, 0, 0, 1]);
        // Positions: dim 0 at token 2, dim 1 at token 0, dim 2 at token 1.
        assert_eq!(
            stats.positions,
            PositionBits::from_dense(3, 1, &[0b100, 0b001, 0b010])
        );
        // sum of x^2 of sequence 0, dimension 1: 36 + 9.
        assert_eq!(stats.sums[6 + 1], 45.0);
        assert_eq!(stats.histogram.iter().sum::<u64>(), 11);
        assert_eq!(stats.histogram[histogram_bin(1.0)], 4);
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

    #[test]
    fn histogram_bins_are_exact_and_ordered() {
        assert_eq!(histogram_bin(0.0), 0);
        assert_eq!(histogram_bin(1e-9), 0);
        assert_eq!(histogram_bin(1e9), HISTOGRAM_BINS - 1);
        for value in [2f32.powi(-24), 0.3, 1.0, 6.0, 100.0, 2f32.powi(24) * 0.99] {
            let bin = histogram_bin(value);
            let (start, next) = (histogram_bin_start(bin), histogram_bin_start(bin + 1));
            assert!(start <= value as f64 && (value as f64) < next, "{value}");
        }
        assert_eq!(histogram_bin_start(histogram_bin(1.0)), 1.0);
        assert_eq!(histogram_bin_start(histogram_bin(1.5)), 1.5);
    }
}
