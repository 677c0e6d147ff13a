//! One decoder layer on the CPU, top to bottom, for one micro-batch. Every supported family
//! runs through this function; the [`ModelSpec`] says which norms, biases and windows apply.

use super::attention::{AttentionShape, causal_attention};
use super::linear::linear;
use super::mlp::{GatedMlpWeights, gated_mlp};
use super::moe::moe_block;
use super::norm::{rms_norm, rms_norm_rows_in_place};
use super::rope::RopeTable;
use crate::arch::{FeedForward, ModelSpec, QkNorm, WeightRole};
use crate::capture::{CapturePoint, LayerCaptureSink};
use crate::error::Result;
use crate::layer_parts::part_tensors;
use crate::weights::WeightStore;
use layerstream_planner::split::LayerPart;
use std::collections::BTreeMap;

/// A layer's weights converted to f32, alive only while the layer runs.
pub struct LayerWeights {
    tensors: BTreeMap<WeightRole, Vec<f32>>,
}

impl LayerWeights {
    /// Weights given directly (tests, other backends' checks).
    pub fn from_tensors(tensors: BTreeMap<WeightRole, Vec<f32>>) -> Self {
        LayerWeights { tensors }
    }

    /// Reads and converts the tensors `part` of `layer` needs (shapes were checked when the
    /// model opened).
    pub fn load(
        store: &WeightStore,
        spec: &ModelSpec,
        layer: usize,
        part: &LayerPart,
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for tensor in part_tensors(spec, layer, part) {
            tensors.insert(tensor.role, store.read_f32(&tensor.name)?);
        }
        Ok(LayerWeights { tensors })
    }

    /// A tensor the spec's table lists for this layer.
    pub(crate) fn get(&self, role: WeightRole) -> &[f32] {
        self.maybe(role)
            .unwrap_or_else(|| panic!("{role:?} is in the spec's tensor table"))
    }

    /// A tensor that only some configurations have (biases, norms).
    pub(crate) fn maybe(&self, role: WeightRole) -> Option<&[f32]> {
        self.tensors.get(&role).map(Vec::as_slice)
    }
}

/// Work buffers of one micro-batch, reused across micro-batches of a layer.
pub struct LayerScratch {
    normed: Vec<f32>,       // (rows, hidden)
    q: Vec<f32>,            // (rows, heads * head_dim)
    k: Vec<f32>,            // (rows, kv_heads * head_dim)
    v: Vec<f32>,            // (rows, kv_heads * head_dim)
    attn: Vec<f32>,         // (rows, heads * head_dim)
    sublayer_out: Vec<f32>, // (rows, hidden)
    gate: Vec<f32>,         // (rows, dense intermediate)
    up: Vec<f32>,           // (rows, dense intermediate)
}

impl LayerScratch {
    /// Buffers for micro-batches of up to `rows` tokens.
    pub fn new(spec: &ModelSpec, rows: usize) -> Self {
        let zeros = |width: usize| vec![0f32; rows * width];
        // MoE blocks keep their own buffers, sized by their expert token counts.
        let dense_width = spec
            .feed_forward
            .iter()
            .map(|f| match f {
                FeedForward::Dense { intermediate } => *intermediate,
                FeedForward::Moe(_) => 0,
            })
            .max()
            .unwrap_or(0);
        LayerScratch {
            normed: zeros(spec.hidden_size),
            q: zeros(spec.q_width()),
            k: zeros(spec.kv_width()),
            v: zeros(spec.kv_width()),
            attn: zeros(spec.q_width()),
            sublayer_out: zeros(spec.hidden_size),
            gate: zeros(dense_width),
            up: zeros(dense_width),
        }
    }
}

/// One micro-batch's rows of the workload.
pub struct MicroBatch<'a> {
    /// Hidden states `(sequences * seq_len, hidden)`, updated in place.
    pub hidden: &'a mut [f32],
    /// Sequences in it.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
}

/// Runs `part` of decoder layer `layer` on one micro-batch. `accumulator (rows, hidden)`
/// holds the micro-batch's feed-forward output across parts when the layer's experts are
/// split over several parts (`None`: the part computes the whole feed-forward block).
#[allow(clippy::too_many_arguments)]
pub fn run_part(
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &LayerWeights,
    rope: &RopeTable,
    batch: MicroBatch,
    accumulator: Option<&mut [f32]>,
    scratch: &mut LayerScratch,
    threads: usize,
    capture: &mut dyn LayerCaptureSink,
) {
    let MicroBatch {
        hidden,
        sequences,
        seq_len,
    } = batch;
    if part.runs_attention() {
        attention(
            spec, layer, weights, rope, hidden, sequences, seq_len, scratch, threads, capture,
        );
    }
    if part.runs_feed_forward() {
        feed_forward(
            spec,
            layer,
            part,
            weights,
            hidden,
            accumulator,
            scratch,
            threads,
            capture,
        );
    }
}

/// The attention sublayer: `hidden += attention(norm(hidden))`.
#[allow(clippy::too_many_arguments)]
fn attention(
    spec: &ModelSpec,
    layer: usize,
    weights: &LayerWeights,
    rope: &RopeTable,
    hidden: &mut [f32], // (sequences * seq_len, hidden)
    sequences: usize,
    seq_len: usize,
    scratch: &mut LayerScratch,
    threads: usize,
    capture: &mut dyn LayerCaptureSink,
) {
    use WeightRole::*;
    let d = spec.hidden_size;
    let rows = sequences * seq_len;
    let (q_width, kv_width) = (spec.q_width(), spec.kv_width());
    let eps = spec.block.norm_eps;
    let normed = &mut scratch.normed[..rows * d];
    let q = &mut scratch.q[..rows * q_width];
    let k = &mut scratch.k[..rows * kv_width];
    let v = &mut scratch.v[..rows * kv_width];
    let attn = &mut scratch.attn[..rows * q_width];
    let sublayer_out = &mut scratch.sublayer_out[..rows * d];
    // Attention input: normed residual (pre-norm) or the residual itself (olmo2).
    let attn_input: &[f32] = match weights.maybe(AttnInputNorm) {
        Some(norm) => {
            rms_norm(hidden, norm, eps, normed, threads);
            normed
        }
        None => hidden,
    };
    capture.activation(CapturePoint::Ln1, attn_input, d);
    linear(
        attn_input,
        weights.get(QProj),
        weights.maybe(QBias),
        q,
        d,
        q_width,
        threads,
    );
    linear(
        attn_input,
        weights.get(KProj),
        weights.maybe(KBias),
        k,
        d,
        kv_width,
        threads,
    );
    linear(
        attn_input,
        weights.get(VProj),
        weights.maybe(VBias),
        v,
        d,
        kv_width,
        threads,
    );
    match spec.block.qk_norm {
        QkNorm::None => {}
        // Width head_dim (qwen3) or all heads (olmo2): the norm weight's length says which.
        QkNorm::PerHead | QkNorm::AcrossHeads => {
            rms_norm_rows_in_place(q, weights.get(QNorm), eps);
            rms_norm_rows_in_place(k, weights.get(KNorm), eps);
        }
    }
    if let Some(limit) = spec.block.clip_qkv {
        for values in [&mut *q, &mut *k, &mut *v] {
            values.iter_mut().for_each(|x| *x = x.clamp(-limit, limit));
        }
    }
    rope.apply(q, spec.num_heads, spec.head_dim, seq_len);
    rope.apply(k, spec.num_kv_heads, spec.head_dim, seq_len);
    let shape = AttentionShape {
        sequences,
        seq_len,
        heads: spec.num_heads,
        kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        sliding_window: spec.sliding_windows[layer],
        scale: (spec.head_dim as f32).powf(-0.5),
    };
    causal_attention(q, k, v, attn, shape, threads);
    capture.activation(CapturePoint::AttnInO, attn, q_width);
    linear(
        attn,
        weights.get(OProj),
        weights.maybe(OBias),
        sublayer_out,
        q_width,
        d,
        threads,
    );
    if let Some(norm) = weights.maybe(AttnOutputNorm) {
        rms_norm_rows_in_place(sublayer_out, norm, eps);
    }
    capture.activation(CapturePoint::AttnOut, sublayer_out, d);
    add_in_place(hidden, sublayer_out);
}

/// The feed-forward sublayer, or the share of it `part` holds: `hidden += mlp(norm(hidden))`
/// once the part finishing the block has run.
#[allow(clippy::too_many_arguments)]
fn feed_forward(
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &LayerWeights,
    hidden: &mut [f32], // (rows, hidden)
    accumulator: Option<&mut [f32]>,
    scratch: &mut LayerScratch,
    threads: usize,
    capture: &mut dyn LayerCaptureSink,
) {
    use WeightRole::*;
    let d = spec.hidden_size;
    let rows = hidden.len() / d;
    let eps = spec.block.norm_eps;
    let normed = &mut scratch.normed[..rows * d];
    let out: &mut [f32] = match accumulator {
        Some(accumulator) => accumulator,
        None => &mut scratch.sublayer_out[..rows * d],
    };
    let num_experts = spec.moe(layer).map_or(0, |m| m.num_experts);
    let mlp_input: &[f32] = match weights.maybe(MlpInputNorm) {
        Some(norm) => {
            rms_norm(hidden, norm, eps, normed, threads);
            normed
        }
        None => hidden,
    };
    if part.starts_feed_forward() {
        capture.activation(CapturePoint::Ln2, mlp_input, d);
    }
    match &spec.feed_forward[layer] {
        FeedForward::Dense { intermediate } => {
            let inter = *intermediate;
            let mlp = GatedMlpWeights {
                gate: weights.get(GateProj),
                gate_bias: weights.maybe(GateBias),
                up: weights.get(UpProj),
                up_bias: weights.maybe(UpBias),
                down: weights.get(DownProj),
                down_bias: weights.maybe(DownBias),
            };
            gated_mlp(
                mlp_input,
                &mlp,
                &mut scratch.gate[..rows * inter],
                &mut scratch.up[..rows * inter],
                out,
                d,
                inter,
                threads,
            );
        }
        FeedForward::Moe(moe) => {
            let experts = part.experts(num_experts);
            let routing = moe_block(mlp_input, weights, moe, d, out, experts, threads);
            if part.starts_feed_forward() {
                capture.routing(&routing);
            }
        }
    }
    if !part.finishes_feed_forward(num_experts) {
        return;
    }
    if let Some(norm) = weights.maybe(MlpOutputNorm) {
        rms_norm_rows_in_place(out, norm, eps);
    }
    capture.activation(CapturePoint::MlpOut, out, d);
    add_in_place(hidden, out);
    capture.activation(CapturePoint::ResidPost, hidden, d);
    if num_experts > 0 && weights.maybe(MlpInputNorm).is_some() {
        capture.moe_input(normed, d);
    }
}

fn add_in_place(accumulator: &mut [f32], addend: &[f32]) {
    accumulator
        .iter_mut()
        .zip(addend)
        .for_each(|(a, b)| *a += b);
}
