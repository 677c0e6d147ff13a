//! Analysis of captured activations: the statistics both backends accumulate per layer and
//! capture point ([`statistics`], [`massive`]), the per-layer summaries written as each layer
//! finishes ([`report`]), and the whole-run analysis built from the finished layers' files.

pub mod attribution;
pub mod distribution;
pub mod layer_analysis;
pub mod magnitudes;
pub mod massive;
pub mod massive_report;
pub mod merge;
pub mod non_finite;
pub mod outlier_report;
pub mod outliers;
pub mod point_summary;
pub mod position_bits;
pub mod report;
pub mod resample;
pub mod router;
pub mod sinks;
pub mod statistics;

pub use massive::{MassiveFinds, MassiveValue};
pub use point_summary::{DimMax, PointSummary};
pub use report::{ActivationReport, LayerReport};
pub use router::RouterSummary;
pub use statistics::PointStatistics;
