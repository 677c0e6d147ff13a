//! `report.json` (schema in `docs/report-json.md`): per analysed layer and capture point a
//! summary and distribution statistics, router load and entropy, massive activations; over
//! the layers the outlier features under every reading, their classification, bootstrap
//! intervals and cross-batch overlap. It holds no timestamps or durations, so two runs of
//! the same command (interrupted and resumed, or not) give the same bytes. Each layer's
//! part ([`LayerReport`] and its statistics) is written when the layer finishes; the report
//! is assembled from those files ([`assemble_report`]).

use super::layer_analysis::{PointAnalysis, RouterAnalysis};
use super::massive::MassiveFinds;
use super::massive_report::TokenInfo;
use super::massive_report::{LayerMassive, MassiveEntry};
use super::outlier_report::{OutlierGroupReport, outlier_group_report};
use super::outliers::OutlierCounts;
use super::point_summary::PointSummary;
use super::resample::resample_weights;
use super::router::RouterSummary;
use super::sinks::{SinkAnalysis, SinkSummary};
use super::statistics::PointStatistics;
use crate::capture::CapturePoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the report layout; raised whenever a field changes meaning or goes away.
pub const REPORT_SCHEMA_VERSION: u32 = 3;

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
    /// Parameters in the checkpoint (from the headers).
    pub parameters: u64,
    /// Per layer, its token mixer (`attention`, `gated_attention`, `delta_net`) for models
    /// whose layers are not all plain attention (Qwen3-Next); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_mixers: Vec<String>,
}

/// The workload, as the report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// Data file given with --data (or the embedded default's name).
    pub name: String,
    /// Sequences analysed.
    pub num_sequences: usize,
    /// Tokens per sequence (with `--per-record`, the longest record's).
    pub seq_len: usize,
    /// Documents the sequences were packed from (with `--per-record`, the records).
    pub documents: usize,
    /// With `--shard`: which shard of the packed data the sequences are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ReportShard>,
    /// With `--per-record`: one sequence per record, each of its own length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_record: Option<ReportRecords>,
}

/// The records of a `--per-record` analysis (statistics count their real tokens only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecords {
    /// Tokens of all the records.
    pub tokens: usize,
    /// The shortest record's tokens.
    pub shortest: usize,
    /// The longest record's tokens.
    pub longest: usize,
    /// Records cut at `max_length`.
    pub truncated: usize,
    /// `--max-length` as applied.
    pub max_length: usize,
}

/// A shard's place in the whole packed data (or a merge of consecutive shards').
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportShard {
    /// Zero-based index (absent for a merge of several shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Shards in all (absent for a merge of several shards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Its first sequence in the whole data.
    pub first_sequence: usize,
    /// Sequences of the whole data.
    pub total_sequences: usize,
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
    /// Attention-sink sums, when `attn_sinks` is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<SinkSummary>,
}

impl LayerReport {
    /// The report part of a finished layer.
    pub fn from_statistics(
        layer: usize,
        statistics: &BTreeMap<CapturePoint, PointStatistics>,
        router: Option<RouterSummary>,
        sinks: Option<SinkSummary>,
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
            sinks,
        }
    }
}

/// What the analysis used, as the report states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSettings {
    /// Magnitude counted as an outlier value (`|x| >= threshold`).
    pub threshold: f32,
    /// Fraction of layers an outlier feature reaches the threshold in.
    pub min_layer_fraction: f64,
    /// Fraction of positions it reaches it at.
    pub min_position_fraction: f64,
    /// A massive activation's |x| is above this...
    pub massive_min_magnitude: f32,
    /// ...and at least this many times a median |x|.
    pub massive_median_ratio: f32,
    /// Which median the primary reading uses: `per_sequence` (over the sequence's whole
    /// hidden state at the layer, Sun et al.'s); `per_token_median` in each layer is the
    /// second reading (the token's own hidden state).
    pub massive_median: String,
    /// Bootstrap resamples of the sequences (0: no intervals).
    pub bootstrap_resamples: usize,
    /// Their seed.
    pub seed: u64,
    /// Disjoint batches of sequences for the cross-batch overlap.
    pub batches: usize,
    /// Intervals are percentile intervals at this coverage.
    pub interval: String,
}

/// The whole report (`docs/report-json.md`).
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
    /// Definitions and resampling.
    pub settings: AnalysisSettings,
    /// Analysed layers, in order.
    pub layers: Vec<LayerAnalysis>,
    /// Outlier features at ln1 + ln2, and at attn_in_o (separately), when captured.
    pub outlier_features: Vec<OutlierGroupReport>,
    /// Massive activations over all layers.
    pub massive_activations: MassiveOverview,
    /// NaN and infinite values, left out of every statistic above.
    #[serde(default)]
    pub non_finite: super::non_finite::NonFiniteOverview,
}

/// One analysed layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerAnalysis {
    /// Layer index.
    pub layer: usize,
    /// Capture point name -> summary and distribution.
    pub points: BTreeMap<String, PointAnalysis>,
    /// MoE layers with `router` captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterAnalysis>,
    /// With `resid_post` captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub massive: Option<LayerMassive>,
    /// With `attn_sinks` captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_sinks: Option<SinkAnalysis>,
    /// Its token mixer, for models that name them ([`ReportModel::layer_mixers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixer: Option<String>,
}

/// Massive activations over the analysed layers (the primary reading, with the second
/// reading's counts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MassiveOverview {
    /// Whether resid_post was captured (else nothing was looked for).
    pub looked_for: bool,
    /// Found in all layers.
    pub total: u64,
    /// Layers with at least one.
    pub layers_with: Vec<usize>,
    /// The per-token-median reading: found in all layers.
    pub per_token_median_total: u64,
    /// The per-token-median reading: layers with at least one.
    pub per_token_median_layers_with: Vec<usize>,
    /// Dimensions holding them in any layer, with the number of layers each.
    pub dims: Vec<(usize, usize)>,
    /// The largest |value| and its layer.
    pub largest: Option<(usize, MassiveEntry)>,
}

/// A layer's files and what can be computed from them alone.
type LoadedLayer = (
    LayerReport,
    BTreeMap<CapturePoint, PointStatistics>,
    BTreeMap<String, PointAnalysis>,
    Option<RouterAnalysis>,
);

/// Statistics bytes of the layers read at once (each thread reads and analyses one).
const PARALLEL_LAYER_BYTES: u64 = 2 << 30;

/// Reads layer `layer` with `load` and analyses each of its points and its router.
fn load_layer(
    layer: usize,
    load: &(impl Fn(usize) -> crate::error::Result<LayerFiles> + Sync),
    resamples: &[Vec<u32>],
) -> crate::error::Result<LoadedLayer> {
    let (report, statistics) = load(layer)?;
    let points = report
        .points
        .iter()
        .filter_map(|(name, summary)| {
            let point: CapturePoint = name.parse().ok()?;
            let stats = statistics.get(&point)?;
            Some((
                name.clone(),
                PointAnalysis::of(stats, summary.clone(), resamples),
            ))
        })
        .collect();
    let router = report
        .router
        .as_ref()
        .map(|r| RouterAnalysis::of(r, resamples));
    Ok((report, statistics, points, router))
}

/// A layer's summary and statistics, as `load(layer)` gives them.
pub type LayerFiles = (LayerReport, BTreeMap<CapturePoint, PointStatistics>);

/// Builds the report from the finished layers, read by `load(layer)`: several layers at a
/// time on their own threads (as many as the CPU's threads, within [`PARALLEL_LAYER_BYTES`]
/// of statistics), then taken in layer order, so the report does not depend on it.
pub fn assemble_report(
    model: ReportModel,
    data: ReportData,
    settings: AnalysisSettings,
    layers: &[usize],
    tokens: &TokenInfo,
    load: impl Fn(usize) -> crate::error::Result<LayerFiles> + Sync,
) -> crate::error::Result<ActivationReport> {
    let resamples = resample_weights(
        data.num_sequences,
        settings.bootstrap_resamples,
        settings.seed,
    );
    let mut ln_counts = OutlierCounts::default();
    // attn_in_o per kind of mixer (its dimensions mean different things in a DeltaNet and
    // an attention layer, and their widths may differ), with the layers of each.
    let mut o_counts: BTreeMap<Option<String>, (OutlierCounts, Vec<usize>)> = BTreeMap::new();
    let mixer_of = |layer: usize| model.layer_mixers.get(layer).cloned();
    let mut analysed = Vec::new();
    let mut looked_for_massive = false;
    // About 80 bytes per (sequence, dimension) per point; four points.
    let layer_bytes = (data.num_sequences * model.hidden_size) as u64 * 80 * 4;
    let at_once = (PARALLEL_LAYER_BYTES / layer_bytes.max(1))
        .clamp(1, crate::cpu::threads::default_thread_count() as u64) as usize;
    for group in layers.chunks(at_once) {
        let loaded: Vec<crate::error::Result<LoadedLayer>> = std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .iter()
                .map(|&layer| {
                    let (load, resamples) = (&load, &resamples);
                    scope.spawn(move || load_layer(layer, load, resamples))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a layer's analysis does not panic"))
                .collect()
        });
        for (&layer, result) in group.iter().zip(loaded) {
            let (report, statistics, points, router) = result?;
            let ln: Vec<&PointStatistics> = [CapturePoint::Ln1, CapturePoint::Ln2]
                .iter()
                .filter_map(|p| statistics.get(p))
                .collect();
            if !ln.is_empty() {
                ln_counts.add_layer(&ln);
            }
            if let Some(o) = statistics.get(&CapturePoint::AttnInO) {
                let (counts, of) = o_counts.entry(mixer_of(layer)).or_default();
                counts.add_layer(&[o]);
                of.push(layer);
            }
            looked_for_massive |= report.massive.is_some();
            analysed.push(LayerAnalysis {
                layer,
                points,
                router,
                massive: report.massive.as_ref().map(|m| LayerMassive::of(m, tokens)),
                attention_sinks: report.sinks.as_ref().map(SinkAnalysis::of),
                mixer: mixer_of(layer),
            });
        }
    }
    let mut outlier_features = Vec::new();
    let groups = std::iter::once((ln_counts, vec!["ln1", "ln2"], None, Vec::new())).chain(
        o_counts.into_iter().map(|(mixer, (counts, of))| {
            // A group over some of the layers names them.
            let of = if mixer.is_some() { of } else { Vec::new() };
            (counts, vec!["attn_in_o"], mixer, of)
        }),
    );
    for (mut counts, names, mixer, of) in groups {
        if counts.layers == 0 {
            continue;
        }
        counts.finish();
        let captured: Vec<String> = names
            .iter()
            .filter(|n| analysed.first().is_some_and(|l| l.points.contains_key(**n)))
            .map(|n| n.to_string())
            .collect();
        let mut group = outlier_group_report(captured, &counts, &resamples, settings.batches);
        group.mixer = mixer;
        group.layer_indices = of;
        outlier_features.push(group);
    }
    let massive_activations = massive_overview(&analysed, looked_for_massive);
    let non_finite = super::non_finite::NonFiniteOverview::of(&analysed);
    Ok(ActivationReport {
        schema_version: REPORT_SCHEMA_VERSION,
        tool: format!("layerstream {}", env!("CARGO_PKG_VERSION")),
        model,
        data,
        settings,
        layers: analysed,
        outlier_features,
        massive_activations,
        non_finite,
    })
}

fn massive_overview(layers: &[LayerAnalysis], looked_for: bool) -> MassiveOverview {
    let mut dims: BTreeMap<usize, usize> = BTreeMap::new();
    let mut largest: Option<(usize, MassiveEntry)> = None;
    let (mut total, mut per_token_total) = (0, 0);
    let (mut layers_with, mut per_token_layers_with) = (Vec::new(), Vec::new());
    for layer in layers {
        let Some(m) = &layer.massive else { continue };
        total += m.total;
        if m.total > 0 {
            layers_with.push(layer.layer);
        }
        per_token_total += m.per_token_median.total;
        if m.per_token_median.total > 0 {
            per_token_layers_with.push(layer.layer);
        }
        for &(d, _) in &m.dims {
            *dims.entry(d).or_insert(0) += 1;
        }
        if let Some(top) = m.top.first() {
            let bigger = largest
                .as_ref()
                .is_none_or(|(_, l)| top.value.value.abs() > l.value.value.abs());
            if bigger {
                largest = Some((layer.layer, top.clone()));
            }
        }
    }
    MassiveOverview {
        looked_for,
        total,
        layers_with,
        per_token_median_total: per_token_total,
        per_token_median_layers_with: per_token_layers_with,
        dims: dims.into_iter().collect(),
        largest,
    }
}
