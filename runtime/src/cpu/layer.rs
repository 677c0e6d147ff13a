//! A decoder layer's weights and buffers on the CPU, and one micro-batch of it run through
//! the block (`block/`, whose steps read top to bottom) over the CPU ops (`ops.rs`).

use super::ops::{CpuCapture, CpuOps};
use super::rope::RopeTable;
use crate::arch::{FeedForward, ModelSpec, WeightRole};
use crate::block::{self, BlockStep, BufferSet, CapturePolicy};
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
    rows: usize,
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
            rows,
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

/// Runs `part` of decoder layer `layer` on one micro-batch (the steps in `block/`).
/// `accumulator (rows, hidden)` holds the micro-batch's feed-forward output across parts
/// when the layer's experts are split over several parts (`None`: the part computes the
/// whole feed-forward block).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_part(
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &LayerWeights,
    rope: &RopeTable,
    batch: MicroBatch,
    accumulator: Option<&mut [f32]>,
    scratch: &mut LayerScratch,
    threads: usize,
    capture: CpuCapture,
) -> Result<()> {
    let MicroBatch {
        hidden,
        sequences,
        seq_len,
    } = batch;
    let rows = sequences * seq_len;
    let (d, q_width, kv_width) = (spec.hidden_size, spec.q_width(), spec.kv_width());
    let dense_width = scratch.gate.len() / scratch.rows.max(1);
    let request = capture.request;
    let s = scratch;
    let mut ops = CpuOps {
        weights,
        rope,
        buffers: BufferSet {
            hidden,
            normed: &mut s.normed[..rows * d],
            q: &mut s.q[..rows * q_width],
            k: &mut s.k[..rows * kv_width],
            v: &mut s.v[..rows * kv_width],
            attn: &mut s.attn[..rows * q_width],
            sublayer_out: &mut s.sublayer_out[..rows * d],
            gate: &mut s.gate[..rows * dense_width],
            up: &mut s.up[..rows * dense_width],
            accumulator,
        },
        hidden_size: d,
        seq_len,
        threads,
        routing: None,
        capture: Some(capture),
    };
    let step = BlockStep {
        spec,
        layer,
        part,
        sequences,
        seq_len,
        capture: CapturePolicy { request, layer },
    };
    block::run_part(&mut ops, &step)
}
