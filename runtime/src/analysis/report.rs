//! `report.json`: per analysed layer and capture point, a [`PointSummary`], and for MoE
//! layers the expert load. It holds no timestamps or durations, so two runs of the same
//! command (interrupted and resumed, or not) give the same bytes. Each layer's part is
//! written as `layers/layer_{l}.json` when the layer finishes; the report is assembled from
//! those files.

use super::massive::MassiveFinds;
use super::point_summary::PointSummary;
use super::router::RouterSummary;
use super::statistics::PointStatistics;
use crate::capture::CapturePoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the report layout; raised whenever a field changes meaning or goes away.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// Dimensions listed per capture point.
pub const TOP_DIMS: usize = 5;

/// The model, as the report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportModel {
    /// Folder given with --model (or the embedded default's name).
    pub name: String,
    /// config.json's model_type.
    pub model_type: String,
    /// Decoder layers.
    pub num_layers: usize,
    /// Residual width.
    pub hidden_size: usize,
}

/// The workload, as the report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// Data file given with --data (or the embedded default's name).
    pub name: String,
    /// Sequences analysed.
    pub num_sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Documents the sequences were packed from.
    pub documents: usize,
}

/// One layer's summaries, keyed by capture point name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    /// Layer index.
    pub layer: usize,
    /// `ln1`, `ln2`, ... -> summary.
    pub points: BTreeMap<String, PointSummary>,
    /// Expert load, for MoE layers when `router` is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterSummary>,
    /// Massive activations of `resid_post`, when captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub massive: Option<MassiveFinds>,
}

impl LayerReport {
    /// The report part of a finished layer.
    pub fn from_statistics(
        layer: usize,
        statistics: &BTreeMap<CapturePoint, PointStatistics>,
        router: Option<RouterSummary>,
    ) -> Self {
        LayerReport {
            layer,
            points: statistics
                .iter()
                .map(|(point, stats)| (point.name().to_string(), stats.summary(TOP_DIMS)))
                .collect(),
            router,
            massive: statistics
                .get(&CapturePoint::ResidPost)
                .and_then(|s| s.massive.clone()),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationReport {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `layerstream <version>`.
    pub tool: String,
    /// The model.
    pub model: ReportModel,
    /// The workload.
    pub data: ReportData,
    /// Magnitude counted as an outlier (`|x| >= threshold`).
    pub threshold: f32,
    /// Analysed layers, in order.
    pub layers: Vec<LayerReport>,
}

impl ActivationReport {
    /// A report of the given layers.
    pub fn new(
        model: ReportModel,
        data: ReportData,
        threshold: f32,
        layers: Vec<LayerReport>,
    ) -> Self {
        ActivationReport {
            schema_version: REPORT_SCHEMA_VERSION,
            tool: format!("layerstream {}", env!("CARGO_PKG_VERSION")),
            model,
            data,
            threshold,
            layers,
        }
    }
}
