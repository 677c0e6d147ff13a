//! What the report says about one capture point of one layer: the largest magnitude, how
//! many values reach the outlier threshold, and the dimensions with the largest magnitudes.
//! Computed from [`super::statistics::PointStatistics`].

use serde::{Deserialize, Serialize};

/// A dimension and its largest magnitude.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DimMax {
    /// Hidden dimension index.
    pub dim: usize,
    /// Largest |x| seen in it.
    pub max_abs: f32,
}

/// What the report says about one capture point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
