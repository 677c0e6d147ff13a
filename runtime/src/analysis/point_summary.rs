//! Per (layer, capture point) summary of activations, accumulated micro-batch by
//! micro-batch: the largest magnitude, how many values reach the outlier threshold, and
//! the largest magnitude per hidden dimension.

use serde::Serialize;

/// Summary of one capture point of one layer.
#[derive(Debug, Clone)]
pub struct PointAccumulator {
    threshold: f32,
    max_abs_per_dim: Vec<f32>, // (width)
    count_at_or_above: u64,
    values_seen: u64,
    non_finite: u64,
}

/// A dimension and its largest magnitude.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DimMax {
    /// Hidden dimension index.
    pub dim: usize,
    /// Largest |x| seen in it.
    pub max_abs: f32,
}

/// What the report says about one capture point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PointSummary {
    /// Largest |x| over all tokens and dimensions.
    pub max_abs: f32,
    /// Number of values with |x| >= threshold.
    pub count_ge_threshold: u64,
    /// Number of values seen.
    pub numel: u64,
    /// Number of NaN or infinite values seen (always 0 in a healthy run).
    pub non_finite: u64,
    /// Dimensions with the largest max |x|, largest first.
    pub top_dims: Vec<DimMax>,
}

impl PointAccumulator {
    /// An empty summary for activations `width` wide.
    pub fn new(width: usize, threshold: f32) -> Self {
        PointAccumulator {
            threshold,
            max_abs_per_dim: vec![0.0; width],
            count_at_or_above: 0,
            values_seen: 0,
            non_finite: 0,
        }
    }

    /// Adds a micro-batch of activations `(rows, width)`.
    pub fn add(&mut self, values: &[f32]) {
        let width = self.max_abs_per_dim.len();
        for row in values.chunks_exact(width) {
            for (max, &x) in self.max_abs_per_dim.iter_mut().zip(row) {
                let magnitude = x.abs();
                if !magnitude.is_finite() {
                    self.non_finite += 1;
                    continue;
                }
                if magnitude > *max {
                    *max = magnitude;
                }
                if magnitude >= self.threshold {
                    self.count_at_or_above += 1;
                }
            }
        }
        self.values_seen += values.len() as u64;
    }

    /// The summary with the `top` dimensions of largest magnitude (ties: lower index first).
    pub fn finish(&self, top: usize) -> PointSummary {
        let mut dims: Vec<DimMax> = self
            .max_abs_per_dim
            .iter()
            .enumerate()
            .map(|(dim, &max_abs)| DimMax { dim, max_abs })
            .collect();
        dims.sort_by(|a, b| b.max_abs.total_cmp(&a.max_abs).then(a.dim.cmp(&b.dim)));
        dims.truncate(top);
        PointSummary {
            max_abs: self.max_abs_per_dim.iter().fold(0.0, |m, &x| m.max(x)),
            count_ge_threshold: self.count_at_or_above,
            numel: self.values_seen,
            non_finite: self.non_finite,
            top_dims: dims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_threshold_inclusive_and_ranks_dims() {
        let mut acc = PointAccumulator::new(3, 6.0);
        acc.add(&[1.0, -6.0, 2.0, 0.5, 3.0, -7.5]);
        acc.add(&[6.5, 0.0, 0.0]);
        let s = acc.finish(2);
        assert_eq!(s.max_abs, 7.5);
        assert_eq!(s.count_ge_threshold, 3);
        assert_eq!(s.numel, 9);
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
