//! An independent reference of the analysis definitions, written from the papers and not
//! from the runtime's code, applied to the activations `--save-activations` writes. Plain
//! loops and full sorts, no selection tricks, no shared helpers with the runtime:
//!
//! - massive activations (Sun et al. 2024, and their `main_llm.py`): per sequence and layer
//!   the median |x| over all `T x d` values of the layer output (`torch.median`: the lower
//!   middle value of the sorted magnitudes); a value is massive when |x| > 100 and
//!   |x| >= 1000 x that median. The second reading compares with the token's own median
//!   (numpy's: the mean of the two middle values for an even width). The layer-wise figure:
//!   the three largest |x| and the median per sequence, averaged over sequences.
//! - outlier features (LLM.int8(), Dettmers et al. 2022 §4.1): a dimension with |x| >= 6 in
//!   at least 25% of the layers and at least 6% of the sequence positions; the layers read as
//!   sublayers (every point of every layer) or layers, the positions as the union over the
//!   layers or the mean fraction over the layers that have the dimension.

use safetensors::SafeTensors;
use std::path::Path;

/// One `--save-activations` file.
pub struct SavedActivations {
    /// Sequences.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Width of the point.
    pub width: usize,
    /// `(sequences, seq_len, width)`.
    pub values: Vec<f32>,
}

impl SavedActivations {
    /// Reads a layer and point's shards of `OUT/activations/` (every token saved) through
    /// `index.json`, in row order.
    pub fn read(out: &Path, layer: usize, point: &str) -> Self {
        let dir = out.join("activations");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let layout = &index["layout"];
        let (sequences, seq_len) = (
            layout["sequences"].as_u64().unwrap() as usize,
            layout["seq_len"].as_u64().unwrap() as usize,
        );
        let mut values = Vec::new();
        let mut width = 0;
        for shard in index["shards"].as_array().unwrap() {
            if shard["layer"] != layer || shard["point"] != point {
                continue;
            }
            let path = dir.join(shard["path"].as_str().unwrap());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let file = SafeTensors::deserialize(&bytes).unwrap();
            let tensor = file.tensor("activations").unwrap();
            width = tensor.shape()[1];
            assert_eq!(
                values.len(),
                shard["first_row"].as_u64().unwrap() as usize * width
            );
            values.extend(read_values(&tensor));
        }
        assert_eq!(
            values.len(),
            sequences * seq_len * width,
            "layer {layer} {point}: every token saved"
        );
        SavedActivations {
            sequences,
            seq_len,
            width,
            values,
        }
    }

    /// Value at (sequence, position, dim).
    pub fn at(&self, s: usize, t: usize, d: usize) -> f32 {
        self.values[(s * self.seq_len + t) * self.width + d]
    }
}

/// A saved `activations` tensor's values (F32, or BF16 widened exactly).
pub fn read_values(tensor: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match tensor.dtype() {
        safetensors::Dtype::F32 => tensor
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::BF16 => tensor
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32())
            .collect(),
        other => panic!("activations saved as {other:?}"),
    }
}

/// Sorted finite magnitudes, smallest first.
fn sorted_magnitudes(values: &[f32]) -> Vec<f32> {
    let mut m: Vec<f32> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    m.sort_by(|a, b| a.partial_cmp(b).unwrap());
    m
}

/// One massive activation: (sequence, position, dim, value).
pub type Found = (usize, usize, usize, f32);

/// What the definitions give for one layer's `resid_post`.
#[derive(Debug, Clone, PartialEq)]
pub struct MassiveReference {
    /// By the sequence's median: every one found, largest |value| first (ties: sequence,
    /// position, dim).
    pub by_sequence: Vec<Found>,
    /// Tokens holding one (by the sequence's median).
    pub tokens: usize,
    /// By the token's own median.
    pub by_token: Vec<Found>,
    /// Tokens holding one (by the token's median).
    pub tokens_by_token: usize,
    /// Mean over sequences of the top-1, top-2, top-3 and median |x|.
    pub magnitudes: [f64; 4],
}

/// The massive activations of one layer's `resid_post`.
pub fn massive_reference(resid: &SavedActivations) -> MassiveReference {
    let (n, t, d) = (resid.sequences, resid.seq_len, resid.width);
    let mut by_sequence = Vec::new();
    let mut by_token = Vec::new();
    let (mut tokens, mut tokens_by_token) = (0, 0);
    let mut magnitudes = [0f64; 4];
    for s in 0..n {
        let sequence = &resid.values[s * t * d..(s + 1) * t * d];
        let sorted = sorted_magnitudes(sequence);
        let median = if sorted.is_empty() {
            0.0
        } else {
            sorted[(sorted.len() - 1) / 2]
        };
        let top = |i: usize| match sorted.len() > i {
            true => sorted[sorted.len() - 1 - i] as f64,
            false => 0.0,
        };
        for (k, v) in [top(0), top(1), top(2), median as f64]
            .into_iter()
            .enumerate()
        {
            magnitudes[k] += v / n as f64;
        }
        for p in 0..t {
            let token = &sequence[p * d..(p + 1) * d];
            let row = sorted_magnitudes(token);
            let token_median = match row.len() {
                0 => 0.0,
                m if m % 2 == 1 => row[m / 2],
                m => ((row[m / 2 - 1] as f64 + row[m / 2] as f64) / 2.0) as f32,
            };
            let (mut here, mut here_by_token) = (false, false);
            for (dim, &x) in token.iter().enumerate() {
                if !x.is_finite() || x.abs() <= 100.0 {
                    continue;
                }
                if x.abs() >= 1000.0 * median {
                    by_sequence.push((s, p, dim, x));
                    here = true;
                }
                if x.abs() >= 1000.0 * token_median {
                    by_token.push((s, p, dim, x));
                    here_by_token = true;
                }
            }
            tokens += here as usize;
            tokens_by_token += here_by_token as usize;
        }
    }
    let order = |a: &Found, b: &Found| {
        b.3.abs()
            .partial_cmp(&a.3.abs())
            .unwrap()
            .then((a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
    };
    by_sequence.sort_by(order);
    by_token.sort_by(order);
    MassiveReference {
        by_sequence,
        tokens,
        by_token,
        tokens_by_token,
        magnitudes,
    }
}

/// The outlier dimensions under each of the four readings, in the order
/// (sublayers, union), (sublayers, mean), (layers, union), (layers, mean);
/// `layers[l][p]` is point p of analysed layer l.
pub fn outlier_reference(layers: &[Vec<SavedActivations>], threshold: f32) -> [Vec<usize>; 4] {
    let first = &layers[0][0];
    let (n, t, d) = (first.sequences, first.seq_len, first.width);
    let positions = n * t;
    let reaches = |a: &SavedActivations, s: usize, p: usize, dim: usize| {
        let x = a.at(s, p, dim);
        x.is_finite() && x.abs() >= threshold
    };
    let mut readings: [Vec<usize>; 4] = Default::default();
    for dim in 0..d {
        // Per sublayer and per layer: the positions where the dimension reaches it.
        let mut sublayer_counts = Vec::new();
        let mut layer_counts = Vec::new();
        let mut union = vec![false; positions];
        for points in layers {
            let mut layer_hit = vec![false; positions];
            for a in points {
                let mut count = 0;
                for s in 0..n {
                    for p in 0..t {
                        if reaches(a, s, p, dim) {
                            count += 1;
                            layer_hit[s * t + p] = true;
                            union[s * t + p] = true;
                        }
                    }
                }
                sublayer_counts.push(count);
            }
            layer_counts.push(layer_hit.iter().filter(|&&h| h).count());
        }
        let union_fraction = union.iter().filter(|&&h| h).count() as f64 / positions as f64;
        for (k, counts) in [
            &sublayer_counts,
            &sublayer_counts,
            &layer_counts,
            &layer_counts,
        ]
        .into_iter()
        .enumerate()
        {
            let affected: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
            let layer_fraction = affected.len() as f64 / counts.len() as f64;
            let position_fraction = match k % 2 {
                0 => union_fraction,
                _ if affected.is_empty() => 0.0,
                _ => affected.iter().sum::<usize>() as f64 / (affected.len() * positions) as f64,
            };
            if layer_fraction >= 0.25 && position_fraction >= 0.06 {
                readings[k].push(dim);
            }
        }
    }
    readings
}
