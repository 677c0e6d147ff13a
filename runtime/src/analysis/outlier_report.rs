//! The report's outlier-feature section for one group of points: the outlier dimensions
//! under every reading with their numbers, bootstrap intervals and selection probabilities,
//! the systematic / probabilistic classification, and the cross-batch overlap.

use super::outliers::{LayerReading, Outlier, OutlierCounts, PositionReading, READINGS};
use super::resample::{Interval, map_resamples, quantile};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One outlier dimension under one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierDim {
    /// Hidden dimension.
    pub dim: usize,
    /// Layers (as the reading counts them) where it reaches the threshold, as a fraction.
    pub layer_fraction: f64,
    /// Positions (as the reading counts them), as a fraction.
    pub position_fraction: f64,
    /// Largest |x| in it over the group's points and layers.
    pub max_abs: f32,
    /// Mean |x| of its values >= threshold.
    pub mean_abs: f64,
    /// Of its values >= threshold, the positive fraction.
    pub positive_fraction: f64,
    /// |2 * positive_fraction - 1|: 1 when they all have one sign.
    pub sign_consistency: f64,
    /// Fraction of the analysed layers whose own positions reach 6% (layer agreement).
    pub layer_agreement: f64,
    /// Fraction of sequences in which it reaches the threshold in >= 25% of the layers.
    pub sequence_agreement: f64,
    /// Fraction of bootstrap resamples in which it is an outlier (null without resamples).
    pub selection_probability: Option<f64>,
}

/// The outlier dimensions under one reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingReport {
    /// How layers are counted.
    pub layer_reading: LayerReading,
    /// How positions are counted.
    pub position_reading: PositionReading,
    /// Whether this is the reading plots and `compare` use.
    pub primary: bool,
    /// Number of outlier dimensions, with its interval.
    pub count: Interval,
    /// Mean layer fraction of the outlier dimensions, with its interval.
    pub mean_layer_fraction: Interval,
    /// Mean position fraction of the outlier dimensions, with its interval.
    pub mean_position_fraction: Interval,
    /// The outlier dimensions, ascending.
    pub dims: Vec<OutlierDim>,
    /// Dimensions that are outliers in some resample but not on all data, with their
    /// selection probability.
    pub unstable_dims: Vec<(usize, f64)>,
}

/// Systematic (recurring in most layers and sequences) or probabilistic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// `systematic`, `probabilistic`, or `none` (no layer has a dimension at 6% of its
    /// positions).
    pub kind: String,
    /// The rule that decided it.
    pub rule: String,
    /// Outlier dimensions under the primary reading.
    pub outlier_dims: usize,
    /// Median layer agreement of those dimensions.
    pub median_layer_agreement: f64,
    /// Median sequence agreement of those dimensions.
    pub median_sequence_agreement: f64,
    /// Per analysed layer, the dimensions at >= 6% of its positions (count).
    pub per_layer_dims: Vec<usize>,
    /// Mean Jaccard overlap of those per-layer sets over pairs of layers (null when every
    /// set is empty).
    pub mean_layer_jaccard: Option<f64>,
}

/// Outlier sets of disjoint batches of sequences and their overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossBatch {
    /// Per batch: its sequences `[start, end)` and outlier dimensions (primary reading).
    pub batches: Vec<BatchOutliers>,
    /// Jaccard overlap of every pair of batches, in order (0,1), (0,2), ..., (1,2), ...
    pub jaccard: Vec<f64>,
    /// Their mean.
    pub mean_jaccard: f64,
}

/// One batch's outlier set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchOutliers {
    /// First sequence.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// Outlier dimensions (primary reading).
    pub dims: Vec<usize>,
}

/// Largest |x| per layer of the dimensions worth showing: every outlier dimension (any
/// reading), then the largest others, up to [`HEATMAP_DIMS`] (the report's heatmap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerDimMagnitudes {
    /// The dimensions, ascending.
    pub dims: Vec<usize>,
    /// `(layers, dims)`: largest |x| over the group's points.
    pub max_abs: Vec<Vec<f32>>,
}

/// Columns of the heatmap at most.
pub const HEATMAP_DIMS: usize = 48;

/// The section for one group of points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierGroupReport {
    /// Points whose values count (`ln1`, `ln2`), or `attn_in_o`.
    pub points: Vec<String>,
    /// Analysed layers.
    pub layers: usize,
    /// Every reading, the primary first.
    pub readings: Vec<ReadingReport>,
    /// Systematic or probabilistic.
    pub classification: Classification,
    /// With two or more batches.
    pub cross_batch: Option<CrossBatch>,
    /// Per layer, the magnitudes of the dimensions worth showing.
    pub heatmap: LayerDimMagnitudes,
    /// The kind of mixer whose layers the group covers, when the model names them
    /// (`attn_in_o` of a hybrid model is one group per kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixer: Option<String>,
    /// The layers the group covers when they are not all the analysed ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_indices: Vec<usize>,
}

/// Jaccard overlap of two sets (1 when both are empty).
pub fn jaccard(a: &BTreeSet<usize>, b: &BTreeSet<usize>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        1.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Builds the section from finished counts, the resamples and the number of batches.
pub fn outlier_group_report(
    points: Vec<String>,
    counts: &OutlierCounts,
    resamples: &[Vec<u32>],
    batches: usize,
) -> OutlierGroupReport {
    let total_positions = counts.rows.tokens() as f64;
    // Per-layer sets: dimensions at >= 6% of the layer's positions.
    let per_layer: Vec<BTreeSet<usize>> = counts
        .layer_positions
        .iter()
        .map(|l| {
            (0..l.len())
                .filter(|&d| {
                    l[d] as f64 / total_positions >= super::outliers::MIN_POSITION_FRACTION
                })
                .collect()
        })
        .collect();
    let readings: Vec<ReadingReport> = READINGS
        .iter()
        .enumerate()
        .map(|(r, &reading)| reading_report(counts, resamples, &per_layer, reading, r == 0))
        .collect();
    let classification = classify(&readings[0], &per_layer);
    let cross_batch =
        (batches >= 2 && counts.sequences >= batches).then(|| cross_batch(counts, batches));
    let heatmap = heatmap(counts, &readings);
    OutlierGroupReport {
        points,
        layers: counts.layers,
        readings,
        classification,
        cross_batch,
        heatmap,
        mixer: None,
        layer_indices: Vec::new(),
    }
}

/// One reading's outlier dimensions, with bootstrap intervals and selection probabilities.
fn reading_report(
    counts: &OutlierCounts,
    resamples: &[Vec<u32>],
    per_layer: &[BTreeSet<usize>],
    reading: (LayerReading, PositionReading),
    primary: bool,
) -> ReadingReport {
    let all = vec![1u32; counts.sequences];
    let layer_agreement = |d: usize| {
        per_layer.iter().filter(|set| set.contains(&d)).count() as f64 / counts.layers as f64
    };
    let selected = counts.outlier_values(reading, &all);
    let summary = |outliers: &[Outlier]| -> (f64, f64) {
        (
            mean(outliers.iter().map(|o| o.values.layer_fraction)),
            mean(outliers.iter().map(|o| o.values.position_fraction)),
        )
    };
    let mut selections = vec![0usize; counts.width];
    let (mut n, mut layer_f, mut position_f) = (Vec::new(), Vec::new(), Vec::new());
    for outliers in map_resamples(resamples, |w| counts.outlier_values(reading, w)) {
        for o in &outliers {
            selections[o.dim] += 1;
        }
        n.push(outliers.len() as f64);
        if !outliers.is_empty() {
            let (l, p) = summary(&outliers);
            layer_f.push(l);
            position_f.push(p);
        }
    }
    let probability =
        |d: usize| (!resamples.is_empty()).then(|| selections[d] as f64 / resamples.len() as f64);
    let (l, p) = summary(&selected);
    let dims = selected
        .iter()
        .map(|o| {
            let d = o.dim;
            let positive = counts.count_pos_ge[d] as f64 / counts.count_ge[d].max(1) as f64;
            OutlierDim {
                dim: d,
                layer_fraction: o.values.layer_fraction,
                position_fraction: o.values.position_fraction,
                max_abs: counts.max_abs[d],
                mean_abs: counts.sum_abs_ge[d] / counts.count_ge[d].max(1) as f64,
                positive_fraction: positive,
                sign_consistency: (2.0 * positive - 1.0).abs(),
                layer_agreement: layer_agreement(d),
                sequence_agreement: counts.sequence_agreement(o.index),
                selection_probability: probability(d),
            }
        })
        .collect();
    let unstable_dims = (0..counts.width)
        .filter(|&d| selections[d] > 0 && !selected.iter().any(|o| o.dim == d))
        .map(|d| (d, probability(d).unwrap_or(0.0)))
        .collect();
    ReadingReport {
        layer_reading: reading.0,
        position_reading: reading.1,
        primary,
        count: Interval::new(selected.len() as f64, &n),
        mean_layer_fraction: Interval::new(l, &layer_f),
        mean_position_fraction: Interval::new(p, &position_f),
        dims,
        unstable_dims,
    }
}

/// The primary reading's outlier sets of disjoint batches of sequences and their overlap.
fn cross_batch(counts: &OutlierCounts, batches: usize) -> CrossBatch {
    let size = counts.sequences / batches;
    let sets: Vec<BatchOutliers> = (0..batches)
        .map(|b| {
            let (start, end) = (
                b * size,
                if b + 1 == batches {
                    counts.sequences
                } else {
                    (b + 1) * size
                },
            );
            let weights: Vec<u32> = (0..counts.sequences)
                .map(|s| (start..end).contains(&s) as u32)
                .collect();
            BatchOutliers {
                start,
                end,
                dims: counts.outliers(READINGS[0], &weights),
            }
        })
        .collect();
    let mut pairs = Vec::new();
    for a in 0..sets.len() {
        for b in a + 1..sets.len() {
            let set = |i: usize| sets[i].dims.iter().copied().collect::<BTreeSet<_>>();
            pairs.push(jaccard(&set(a), &set(b)));
        }
    }
    CrossBatch {
        mean_jaccard: mean(pairs.iter().copied()),
        batches: sets,
        jaccard: pairs,
    }
}

/// Max |x| per layer of the dimensions every reading selects, topped up with the largest.
fn heatmap(counts: &OutlierCounts, readings: &[ReadingReport]) -> LayerDimMagnitudes {
    let mut shown: BTreeSet<usize> = readings
        .iter()
        .flat_map(|r| r.dims.iter().map(|d| d.dim))
        .collect();
    let mut by_magnitude: Vec<usize> = (0..counts.width).collect();
    by_magnitude.sort_by(|&a, &b| {
        counts.max_abs[b]
            .total_cmp(&counts.max_abs[a])
            .then(a.cmp(&b))
    });
    for d in by_magnitude {
        if shown.len() >= HEATMAP_DIMS.max(shown.len()) {
            break;
        }
        shown.insert(d);
    }
    let dims: Vec<usize> = shown.into_iter().collect();
    LayerDimMagnitudes {
        max_abs: counts
            .layer_max_abs
            .iter()
            .map(|l| dims.iter().map(|&d| l[d]).collect())
            .collect(),
        dims,
    }
}

/// Agreement at or above which outlier dimensions count as recurring.
pub const SYSTEMATIC_AGREEMENT: f64 = 0.5;

fn classify(primary: &ReadingReport, per_layer: &[BTreeSet<usize>]) -> Classification {
    let agreement: Vec<f64> = primary.dims.iter().map(|d| d.layer_agreement).collect();
    let sequences: Vec<f64> = primary.dims.iter().map(|d| d.sequence_agreement).collect();
    let median = |v: &[f64]| if v.is_empty() { 0.0 } else { quantile(v, 0.5) };
    let (median_layer, median_sequence) = (median(&agreement), median(&sequences));
    let mut pairs = Vec::new();
    for a in 0..per_layer.len() {
        for b in a + 1..per_layer.len() {
            if !(per_layer[a].is_empty() && per_layer[b].is_empty()) {
                pairs.push(jaccard(&per_layer[a], &per_layer[b]));
            }
        }
    }
    let any_layer = per_layer.iter().any(|s| !s.is_empty());
    let kind = if !any_layer {
        "none"
    } else if !primary.dims.is_empty()
        && median_layer >= SYSTEMATIC_AGREEMENT
        && median_sequence >= SYSTEMATIC_AGREEMENT
    {
        "systematic"
    } else {
        "probabilistic"
    };
    Classification {
        kind: kind.to_string(),
        rule: format!(
            "systematic: outlier dimensions (primary reading) exist and their median layer agreement and median sequence agreement are both >= {SYSTEMATIC_AGREEMENT}; none: no layer has a dimension at >= 6% of its positions; otherwise probabilistic"
        ),
        outlier_dims: primary.dims.len(),
        median_layer_agreement: median_layer,
        median_sequence_agreement: median_sequence,
        per_layer_dims: per_layer.iter().map(BTreeSet::len).collect(),
        mean_layer_jaccard: (!pairs.is_empty()).then(|| mean(pairs.iter().copied())),
    }
}
