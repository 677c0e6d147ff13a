//! Analysis of captured activations. For now: per layer and capture point, the largest
//! magnitude, the count of values at or above the outlier threshold, and the dimensions
//! with the largest magnitudes.

pub mod point_summary;
pub mod report;
pub mod statistics;

pub use point_summary::{DimMax, PointSummary};
pub use report::{ActivationReport, LayerReport, RouterSummary};
pub use statistics::PointStatistics;
