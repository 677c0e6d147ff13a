//! `report.json`: per analysed layer and capture point, a [`PointSummary`]. It holds no
//! timestamps or durations, so two runs of the same command give the same bytes.

use super::point_summary::PointSummary;
use super::statistics::PointStatistics;
use crate::capture::{CapturePoint, Routing};
use crate::executor::RunObserver;
use serde::Serialize;
use std::collections::BTreeMap;

/// Version of the report layout; raised whenever a field changes meaning or goes away.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The model, as the report names it.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

/// How a MoE layer's router spread the workload over its experts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouterSummary {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Tokens routed.
    pub tokens: u64,
    /// Per expert: how many tokens chose it (top-k assignments; they sum to tokens x top_k).
    pub tokens_per_expert: Vec<u64>,
}

/// One layer's summaries, keyed by capture point name.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Layer index.
    pub layer: usize,
    /// `ln1`, `ln2`, ... -> summary.
    pub points: BTreeMap<&'static str, PointSummary>,
    /// Expert load, for MoE layers when `router` is captured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterSummary>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
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

/// Collects summaries while the executor runs (it is a [`RunObserver`]).
pub struct ActivationReportBuilder {
    threshold: f32,
    top_dims: usize,
    points: BTreeMap<(usize, CapturePoint), PointSummary>,
    routers: BTreeMap<usize, RouterSummary>,
}

impl ActivationReportBuilder {
    /// A builder for statistics counted at `threshold`, keeping the `top_dims` largest dimensions.
    pub fn new(threshold: f32, top_dims: usize) -> Self {
        ActivationReportBuilder {
            threshold,
            top_dims,
            points: BTreeMap::new(),
            routers: BTreeMap::new(),
        }
    }

    /// The finished report.
    pub fn finish(&self, model: ReportModel, data: ReportData) -> ActivationReport {
        let mut layers: BTreeMap<usize, LayerReport> = BTreeMap::new();
        let empty = |layer| LayerReport {
            layer,
            points: BTreeMap::new(),
            router: None,
        };
        for (&(layer, point), accumulator) in &self.points {
            layers
                .entry(layer)
                .or_insert_with(|| empty(layer))
                .points
                .insert(point.name(), accumulator.clone());
        }
        for (&layer, router) in &self.routers {
            layers.entry(layer).or_insert_with(|| empty(layer)).router = Some(router.clone());
        }
        ActivationReport {
            schema_version: REPORT_SCHEMA_VERSION,
            tool: format!("layerstream {}", env!("CARGO_PKG_VERSION")),
            model,
            data,
            threshold: self.threshold,
            layers: layers.into_values().collect(),
        }
    }
}

impl RunObserver for ActivationReportBuilder {
    fn on_statistics(&mut self, layer: usize, point: CapturePoint, statistics: &PointStatistics) {
        self.points
            .insert((layer, point), statistics.summary(self.top_dims));
    }

    fn on_router(&mut self, layer: usize, _first: usize, routing: &Routing) {
        let summary = self.routers.entry(layer).or_insert_with(|| RouterSummary {
            num_experts: routing.num_experts,
            top_k: routing.top_k,
            tokens: 0,
            tokens_per_expert: vec![0; routing.num_experts],
        });
        summary.tokens += (routing.experts.len() / routing.top_k) as u64;
        for &expert in &routing.experts {
            summary.tokens_per_expert[expert as usize] += 1;
        }
    }
}
