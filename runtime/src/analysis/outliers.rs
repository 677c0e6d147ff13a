//! Outlier features (LLM.int8(), Dettmers et al. 2022, §4.1): a hidden dimension whose
//! values reach |x| >= threshold (6.0) in at least 25% of the layers and at least 6% of the
//! sequence positions, at the inputs of the attention projections and of the MLP.
//!
//! Two parts of that definition are read two ways each, and every reading is reported:
//! - layers: each capture point of a layer counted as its own layer (`sublayers`: ln1 and ln2
//!   give 2L), or a layer counted once when any of its points has the dimension (`layers`: L);
//! - positions: the union of the positions (sequence, token) where the dimension reaches the
//!   threshold at any counted layer, over all positions (`union`); or, per counted layer that
//!   has the dimension, its fraction of positions averaged over those layers and all
//!   sequences (`mean`).
//!
//! Everything is computed from per-sequence counts, so a bootstrap resample (sequence
//! multiplicities) evaluates the same definitions on resampled data.

use super::position_bits::PositionBits;
use super::statistics::{PointStatistics, weighted_tokens};
use crate::sequences::Sequences;
use serde::{Deserialize, Serialize};

/// Fraction of layers a dimension must reach the threshold in.
pub const MIN_LAYER_FRACTION: f64 = 0.25;
/// Fraction of sequence positions it must reach it at.
pub const MIN_POSITION_FRACTION: f64 = 0.06;

/// How layers are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerReading {
    /// Every capture point of every layer is a layer (ln1 + ln2: 2L).
    Sublayers,
    /// A layer counts once (L).
    Layers,
}

/// How positions are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionReading {
    /// Union of positions over the counted layers.
    Union,
    /// Fraction per (counted layer, sequence), averaged over the layers that have the
    /// dimension and all sequences.
    Mean,
}

/// The four readings, the first the primary one (used for plots and comparisons).
pub const READINGS: [(LayerReading, PositionReading); 4] = [
    (LayerReading::Sublayers, PositionReading::Union),
    (LayerReading::Sublayers, PositionReading::Mean),
    (LayerReading::Layers, PositionReading::Union),
    (LayerReading::Layers, PositionReading::Mean),
];

/// Per-sequence counts of one candidate dimension.
#[derive(Debug, Clone)]
struct DimCounts {
    dim: usize,
    /// `(sublayers, sequences)`: values >= threshold.
    sublayer: Vec<Vec<u32>>,
    /// `(layers, sequences)`: positions where any point of the layer reaches it.
    layer: Vec<Vec<u32>>,
    /// `(sequences)`: positions where any counted layer reaches it.
    union: Vec<u32>,
}

/// One dimension's numbers under one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingValues {
    /// Layers (as counted) that have the dimension, as a fraction.
    pub layer_fraction: f64,
    /// Positions (as counted), as a fraction.
    pub position_fraction: f64,
}

impl ReadingValues {
    /// Whether they meet the definition.
    pub fn is_outlier(&self) -> bool {
        self.layer_fraction >= MIN_LAYER_FRACTION && self.position_fraction >= MIN_POSITION_FRACTION
    }
}

/// An outlier dimension with its numbers under one reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    /// Hidden dimension.
    pub dim: usize,
    /// Its index among the candidates.
    pub index: usize,
    /// Its layer and position fractions.
    pub values: ReadingValues,
}

/// The per-sequence counts of a group of points (ln1 + ln2, or attn_in_o) over the analysed
/// layers, for the dimensions that can be outliers at all. Built a layer at a time
/// ([`OutlierCounts::add_layer`], then [`OutlierCounts::finish`]) so only counts stay in
/// memory, not every layer's statistics.
#[derive(Debug, Clone, Default)]
pub struct OutlierCounts {
    /// Analysed layers.
    pub layers: usize,
    /// Points per layer.
    pub points_per_layer: usize,
    /// Sequences.
    pub sequences: usize,
    /// Where each sequence's tokens sit.
    pub rows: Sequences,
    /// Hidden width.
    pub width: usize,
    /// Per layer and dimension: positions (all sequences) where a point of the layer reaches
    /// the threshold, `(layers, width)`.
    pub layer_positions: Vec<Vec<u64>>,
    /// Per layer and dimension: largest |x| over the layer's points, `(layers, width)`.
    pub layer_max_abs: Vec<Vec<f32>>,
    /// Per dimension over every point and layer: largest |x|.
    pub max_abs: Vec<f32>,
    /// Per dimension: values >= threshold.
    pub count_ge: Vec<u64>,
    /// Per dimension: of them positive.
    pub count_pos_ge: Vec<u64>,
    /// Per dimension: sum of their |x|.
    pub sum_abs_ge: Vec<f64>,
    /// `(sublayers, sequences * width)`: values >= threshold.
    sublayer_counts: Vec<Vec<u32>>,
    /// `(layers, sequences * width)`: positions where a point of the layer reaches it.
    layer_counts: Vec<Vec<u32>>,
    /// `(width, words)`: positions where any layer reaches it.
    union_bits: PositionBits,
    candidates: Vec<DimCounts>,
}

/// Set bits of `bits` in the bit range `start..end`, a word at a time.
fn popcount_range(bits: &[u32], start: usize, end: usize) -> u32 {
    let mut count = 0;
    let mut t = start;
    while t < end {
        let (word, offset) = (t / 32, t % 32);
        let take = (32 - offset).min(end - t);
        let mask = if take == 32 {
            u32::MAX
        } else {
            ((1u32 << take) - 1) << offset
        };
        count += (bits[word] & mask).count_ones();
        t += take;
    }
    count
}

impl OutlierCounts {
    /// Counts from `layers[l][p]`: the statistics of point p of analysed layer l.
    pub fn new(layers: &[Vec<&PointStatistics>]) -> Self {
        let mut counts = OutlierCounts::default();
        for points in layers {
            counts.add_layer(points);
        }
        counts.finish();
        counts
    }

    /// Adds the next analysed layer: its points' statistics (positions kept; every layer
    /// the same points).
    pub fn add_layer(&mut self, points: &[&PointStatistics]) {
        let first = points[0];
        let (sequences, width) = (first.sequences, first.width);
        let words = first.position_words();
        if self.layers == 0 {
            *self = OutlierCounts {
                points_per_layer: points.len(),
                sequences,
                rows: first.rows.clone(),
                width,
                max_abs: vec![0.0; width],
                count_ge: vec![0; width],
                count_pos_ge: vec![0; width],
                sum_abs_ge: vec![0.0; width],
                union_bits: PositionBits::new(width, words),
                ..OutlierCounts::default()
            };
        }
        self.layers += 1;
        // Position bits are only set in dimensions with a count >= threshold: the others
        // (usually nearly all) are skipped below.
        let marked: Vec<usize> = (0..width)
            .filter(|&d| {
                points
                    .iter()
                    .any(|p| (0..sequences).any(|s| p.count_ge[s * width + d] > 0))
            })
            .collect();
        // The points' position bits OR-ed, `(marked, words)`: a row per marked dimension.
        let mut or = vec![0u32; marked.len() * words];
        let mut layer_max = vec![0f32; width];
        for p in points {
            for (d, m) in p.max_abs_per_dim().into_iter().enumerate() {
                layer_max[d] = layer_max[d].max(m);
            }
            for (i, &d) in marked.iter().enumerate() {
                let Some(row) = p.positions.row(d) else {
                    continue;
                };
                for (o, &b) in or[i * words..(i + 1) * words].iter_mut().zip(row) {
                    *o |= b;
                }
            }
            self.sublayer_counts
                .push(p.count_ge.iter().map(|&c| c as u32).collect());
            for i in 0..sequences * width {
                let d = i % width;
                self.max_abs[d] = self.max_abs[d].max(p.max_abs[i]);
                self.count_ge[d] += p.count_ge[i];
                self.count_pos_ge[d] += p.count_pos_ge[i];
                self.sum_abs_ge[d] += p.sum_abs_ge[i];
            }
        }
        let mut per_sequence = vec![0u32; sequences * width];
        let mut positions = vec![0u64; width];
        for (i, &d) in marked.iter().enumerate() {
            let row = &or[i * words..(i + 1) * words];
            self.union_bits.set_row(d, row);
            for s in 0..sequences {
                let span = first.rows.span(s);
                let n = popcount_range(row, span.start, span.end);
                per_sequence[s * width + d] = n;
                positions[d] += n as u64;
            }
        }
        self.layer_counts.push(per_sequence);
        self.layer_max_abs.push(layer_max);
        self.layer_positions.push(positions);
    }

    /// Picks the candidate dimensions once every layer is added: those with enough layers
    /// under the looser of the two layer readings (resampling sequences can only take
    /// layers away).
    pub fn finish(&mut self) {
        let (sequences, width, rows) = (self.sequences, self.width, &self.rows);
        // A dimension without a row has no position at the threshold.
        let no_bits = vec![0u32; self.union_bits.words()];
        let affected = |unit: &Vec<u32>, d: usize| (0..sequences).any(|s| unit[s * width + d] > 0);
        let column =
            |unit: &Vec<u32>, d: usize| (0..sequences).map(|s| unit[s * width + d]).collect();
        self.candidates = (0..width)
            .filter(|&d| {
                let layers = self.layer_counts.iter().filter(|u| affected(u, d)).count();
                let sublayers = self
                    .sublayer_counts
                    .iter()
                    .filter(|u| affected(u, d))
                    .count();
                layers as f64 >= MIN_LAYER_FRACTION * self.layers as f64
                    || sublayers as f64 >= MIN_LAYER_FRACTION * self.sublayer_counts.len() as f64
            })
            .map(|d| {
                let row = self.union_bits.row(d).unwrap_or(&no_bits);
                DimCounts {
                    dim: d,
                    sublayer: self.sublayer_counts.iter().map(|u| column(u, d)).collect(),
                    layer: self.layer_counts.iter().map(|u| column(u, d)).collect(),
                    union: rows
                        .spans()
                        .map(|span| popcount_range(row, span.start, span.end))
                        .collect(),
                }
            })
            .collect();
        self.sublayer_counts = Vec::new();
        self.layer_counts = Vec::new();
        self.union_bits = PositionBits::default();
    }

    /// The dimensions that can be outliers in some resample.
    pub fn candidate_dims(&self) -> Vec<usize> {
        self.candidates.iter().map(|c| c.dim).collect()
    }

    /// Candidate `index`'s numbers under `reading`, with sequences weighted by `weights`
    /// (multiplicities; all ones for the data as it is).
    pub fn values(
        &self,
        index: usize,
        reading: (LayerReading, PositionReading),
        weights: &[u32],
    ) -> ReadingValues {
        let c = &self.candidates[index];
        let units = match reading.0 {
            LayerReading::Sublayers => &c.sublayer,
            LayerReading::Layers => &c.layer,
        };
        let weighted = |counts: &[u32]| -> u64 {
            counts
                .iter()
                .zip(weights)
                .map(|(&c, &w)| c as u64 * w as u64)
                .sum()
        };
        let positions = weighted_tokens(&self.rows, weights) as u64;
        let unit_counts: Vec<u64> = units.iter().map(|u| weighted(u)).collect();
        let affected: Vec<u64> = unit_counts.iter().copied().filter(|&n| n > 0).collect();
        let layer_fraction = affected.len() as f64 / units.len().max(1) as f64;
        let position_fraction = match reading.1 {
            PositionReading::Union => weighted(&c.union) as f64 / positions.max(1) as f64,
            PositionReading::Mean if affected.is_empty() => 0.0,
            PositionReading::Mean => {
                affected.iter().sum::<u64>() as f64
                    / (affected.len() as u64 * positions.max(1)) as f64
            }
        };
        ReadingValues {
            layer_fraction,
            position_fraction,
        }
    }

    /// The outlier dimensions under `reading` with `weights`.
    pub fn outliers(
        &self,
        reading: (LayerReading, PositionReading),
        weights: &[u32],
    ) -> Vec<usize> {
        self.outlier_values(reading, weights)
            .into_iter()
            .map(|o| o.dim)
            .collect()
    }

    /// The outliers under `reading` with `weights`, with their candidate index and numbers.
    pub fn outlier_values(
        &self,
        reading: (LayerReading, PositionReading),
        weights: &[u32],
    ) -> Vec<Outlier> {
        (0..self.candidates.len())
            .map(|index| Outlier {
                dim: self.candidates[index].dim,
                index,
                values: self.values(index, reading, weights),
            })
            .filter(|o| o.values.is_outlier())
            .collect()
    }

    /// Fraction of sequences in which candidate `index` reaches the threshold in at least
    /// [`MIN_LAYER_FRACTION`] of the layers (the `layers` reading, within that sequence).
    pub fn sequence_agreement(&self, index: usize) -> f64 {
        let c = &self.candidates[index];
        let recurring = (0..self.sequences)
            .filter(|&s| {
                let layers = c.layer.iter().filter(|l| l[s] > 0).count();
                layers as f64 >= MIN_LAYER_FRACTION * self.layers as f64
            })
            .count();
        recurring as f64 / self.sequences.max(1) as f64
    }

    /// Index of `dim` among the candidates.
    pub fn candidate_index(&self, dim: usize) -> Option<usize> {
        self.candidates.iter().position(|c| c.dim == dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CapturePoint;

    #[test]
    fn popcount_of_ranges_inside_and_across_words() {
        let bits = [0xffff_ffffu32, 0b1011, 0x8000_0000];
        for (start, end) in [
            (0, 96),
            (3, 5),
            (30, 35),
            (31, 32),
            (32, 36),
            (5, 95),
            (64, 96),
            (7, 7),
        ] {
            let slow = (start..end)
                .filter(|&t| bits[t / 32] >> (t % 32) & 1 == 1)
                .count() as u32;
            assert_eq!(popcount_range(&bits, start, end), slow, "{start}..{end}");
        }
    }

    /// Statistics of one point: `planted` lists (sequence, position, dim) with |x| = 10.
    fn planted(
        sequences: usize,
        seq_len: usize,
        width: usize,
        at: &[(usize, usize, usize)],
    ) -> PointStatistics {
        let mut values = vec![0.5f32; sequences * seq_len * width];
        for &(s, t, d) in at {
            values[(s * seq_len + t) * width + d] = 10.0;
        }
        let mut stats = PointStatistics::new(
            sequences,
            seq_len,
            CapturePoint::Ln1.statistics_shape(width),
            6.0,
        );
        stats.accumulate(&values, 0);
        stats
    }

    /// 4 layers x (ln1, ln2), 2 sequences x 50 tokens, width 4.
    fn four_layers(
        plant: impl Fn(usize, usize) -> Vec<(usize, usize, usize)>,
    ) -> Vec<Vec<PointStatistics>> {
        (0..4)
            .map(|l| (0..2).map(|p| planted(2, 50, 4, &plant(l, p))).collect())
            .collect()
    }

    fn counts(layers: &[Vec<PointStatistics>]) -> OutlierCounts {
        let refs: Vec<Vec<&PointStatistics>> = layers.iter().map(|l| l.iter().collect()).collect();
        OutlierCounts::new(&refs)
    }

    #[test]
    fn the_readings_differ_where_the_definition_is_ambiguous() {
        // Dim 1 at ln1 of layers 0 and 1 only: 2 of 8 sublayers (25%: the edge, in) and 2 of
        // 4 layers. Positions: 6 of 100 (6%: the edge, in) — tokens 0..6 of sequence 0.
        // Dim 2 at ln1 of layer 0 only (1 of 8 sublayers: out; 1 of 4 layers: 25%, in), at
        // 10 positions in layer 0.
        let layers = four_layers(|l, p| {
            let mut at = Vec::new();
            if p == 0 && l < 2 {
                at.extend((0..6).map(|t| (0, t, 1)));
            }
            if p == 0 && l == 0 {
                at.extend((0..10).map(|t| (1, t, 2)));
            }
            at
        });
        let c = counts(&layers);
        let ones = vec![1; 2];
        assert_eq!(c.outliers(READINGS[0], &ones), vec![1], "sublayers, union");
        assert_eq!(c.outliers(READINGS[1], &ones), vec![1], "sublayers, mean");
        assert_eq!(c.outliers(READINGS[2], &ones), vec![1, 2], "layers, union");
        assert_eq!(c.outliers(READINGS[3], &ones), vec![1, 2], "layers, mean");
        let i = c.candidate_index(1).unwrap();
        let v = c.values(i, READINGS[0], &ones);
        assert_eq!((v.layer_fraction, v.position_fraction), (0.25, 0.06));
        assert_eq!(c.values(i, READINGS[2], &ones).layer_fraction, 0.5);
    }

    #[test]
    fn union_and_mean_positions_differ_when_layers_hit_different_tokens() {
        // Dim 0 in every layer's ln1, each layer at 4 different tokens of sequence 0:
        // union 16 of 100 positions; mean per layer 4 of 100.
        let layers = four_layers(|l, p| {
            if p == 0 {
                (0..4).map(|t| (0, 4 * l + t, 0)).collect()
            } else {
                Vec::new()
            }
        });
        let c = counts(&layers);
        let ones = vec![1; 2];
        let i = c.candidate_index(0).unwrap();
        let union = c.values(i, READINGS[0], &ones);
        let mean = c.values(i, READINGS[1], &ones);
        assert_eq!(union.position_fraction, 0.16);
        assert_eq!(mean.position_fraction, 0.04);
        assert_eq!(c.outliers(READINGS[0], &ones), vec![0]);
        assert!(c.outliers(READINGS[1], &ones).is_empty(), "4% is below 6%");
        // Just below the edges: 5 of 100 positions, or 1 of 8 sublayers.
        let below = four_layers(|l, p| {
            if p == 0 && l == 0 {
                (0..5).map(|t| (0, t, 3)).collect()
            } else {
                Vec::new()
            }
        });
        assert!(counts(&below).outliers(READINGS[2], &ones).is_empty());
    }

    #[test]
    fn weights_resample_sequences() {
        // Dim 0 at 8 positions of sequence 1 in every ln1: 8% on all data; a resample with
        // sequence 0 twice has none, with sequence 1 twice 16%.
        let layers = four_layers(|_, p| {
            if p == 0 {
                (0..8).map(|t| (1, t, 0)).collect()
            } else {
                Vec::new()
            }
        });
        let c = counts(&layers);
        assert_eq!(c.outliers(READINGS[0], &[1, 1]), vec![0]);
        assert!(c.outliers(READINGS[0], &[2, 0]).is_empty());
        let v = c.values(0, READINGS[0], &[0, 2]);
        assert_eq!(v.position_fraction, 0.16);
        assert_eq!(c.sequence_agreement(0), 0.5);
    }
}
