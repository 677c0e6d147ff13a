//! A decoder layer's weights and buffers on the CPU, and one micro-batch of it run through
//! the block (`block/`, whose steps read top to bottom) over the CPU ops (`ops.rs`).

use super::moe::MoeScratch;
use super::ops::{CpuCapture, CpuOps};
use super::rope::RopeTable;
use crate::arch::{ModelSpec, WeightRole};
use crate::block::{self, BlockStep, BufferSet};
use crate::error::Result;
use crate::layer_parts::part_tensors;
use crate::weights::WeightStore;
use layerstream_planner::memory::{BufferName, ScratchManifest};
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
            tensors.insert(
                tensor.role,
                crate::weights::layout::read_f32(store, &tensor)?,
            );
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

/// Work buffers of one micro-batch, reused across micro-batches of a layer: exactly the
/// buffers the planner's manifest lists for the layer ([`ScratchManifest::for_layer`]).
pub struct LayerScratch {
    rows: usize,
    pub(crate) normed: Vec<f32>,       // (rows, hidden)
    pub(crate) q: Vec<f32>,            // (rows, heads * head_dim)
    pub(crate) k: Vec<f32>,            // (rows, kv_heads * head_dim)
    pub(crate) v: Vec<f32>,            // (rows, kv_heads * head_dim)
    pub(crate) attn: Vec<f32>,         // (rows, heads * head_dim)
    pub(crate) sublayer_out: Vec<f32>, // (rows, hidden)
    pub(crate) gate: Vec<f32>,         // (rows, dense intermediate)
    pub(crate) up: Vec<f32>,           // (rows, dense intermediate)
    pub(crate) moe: Option<MoeScratch>,
}

impl LayerScratch {
    /// The buffers `manifest` lists, for micro-batches of up to `rows` tokens.
    pub fn new(manifest: &ScratchManifest, rows: usize) -> Self {
        use BufferName::*;
        let zeros = |name| vec![0f32; manifest.count(name)];
        LayerScratch {
            rows,
            normed: zeros(Normed),
            q: zeros(Q),
            k: zeros(K),
            v: zeros(V),
            attn: zeros(Attn),
            sublayer_out: zeros(SublayerOut),
            gate: zeros(Gate),
            up: zeros(Up),
            moe: manifest
                .lists(RouterLogits)
                .then(|| MoeScratch::new(manifest)),
        }
    }

    /// Bytes its buffers hold (what the CPU backend allocated for a micro-batch).
    pub fn allocated_bytes(&self) -> u64 {
        let f32s = [
            &self.normed,
            &self.q,
            &self.k,
            &self.v,
            &self.attn,
            &self.sublayer_out,
            &self.gate,
            &self.up,
        ];
        let block: usize = f32s.iter().map(|b| b.len() * 4).sum();
        block as u64 + self.moe.as_ref().map_or(0, MoeScratch::allocated_bytes)
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
        moe: s.moe.as_mut(),
        routing: None,
        capture: Some(capture),
    };
    let step = BlockStep::new(spec, layer, part, (sequences, seq_len), request);
    block::run_part(&mut ops, &step)
}
