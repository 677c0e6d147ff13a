//! A decoder layer's weights and buffers on the CPU, and one micro-batch of it run through
//! the block (`block/`, whose steps read top to bottom) over the CPU ops (`ops.rs`).

use super::moe::MoeScratch;
use super::ops::{CpuCapture, CpuOps};
use super::rope::RopeTable;
use crate::arch::{ModelSpec, WeightRole};
use crate::block::{self, BlockStep, BufferSet, MixerBuffers};
use crate::error::Result;
use crate::layer_parts::part_tensors;
use crate::sequences::Sequences;
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
    pub(crate) normed: Vec<f32>,              // (rows, hidden)
    pub(crate) q: Vec<f32>,                   // (rows, heads * head_dim)
    pub(crate) k: Vec<f32>,                   // (rows, kv_heads * head_dim)
    pub(crate) v: Vec<f32>,                   // (rows, kv_heads * head_dim)
    pub(crate) attn: Vec<f32>,                // (rows, heads * head_dim)
    pub(crate) sublayer_out: Vec<f32>,        // (rows, hidden)
    pub(crate) gate: Vec<f32>,                // (rows, dense intermediate)
    pub(crate) up: Vec<f32>,                  // (rows, dense intermediate)
    pub(crate) mixer: MixerBuffers<Vec<f32>>, // gated attention's and DeltaNet's buffers
    pub(crate) delta_state: Vec<f32>,         // (sequences, value heads, key_dim, value_dim)
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
            mixer: MixerBuffers {
                projected: zeros(Projected),
                mixer_gate: zeros(MixerGate),
                mixed: zeros(Mixed),
                beta: zeros(Beta),
                decay: zeros(Decay),
                delta_core: zeros(DeltaCore),
            },
            delta_state: zeros(DeltaState),
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
            &self.mixer.projected,
            &self.mixer.mixer_gate,
            &self.mixer.mixed,
            &self.mixer.beta,
            &self.mixer.decay,
            &self.mixer.delta_core,
            &self.delta_state,
        ];
        let block: usize = f32s.iter().map(|b| b.len() * 4).sum();
        block as u64 + self.moe.as_ref().map_or(0, MoeScratch::allocated_bytes)
    }
}

/// The first `rows` rows of a buffer holding `max_rows` rows.
fn rows_of(buffer: &mut [f32], rows: usize, max_rows: usize) -> &mut [f32] {
    let width = buffer.len() / max_rows;
    &mut buffer[..rows * width]
}

/// One micro-batch's rows of the workload.
pub struct MicroBatch<'a> {
    /// Hidden states `(rows, hidden)`, updated in place.
    pub hidden: &'a mut [f32],
    /// Its sequences (offsets from its first row).
    pub batch: &'a Sequences,
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
    let MicroBatch { hidden, batch } = batch;
    let rows = batch.tokens();
    let d = spec.hidden_size;
    let request = capture.request;
    let s = scratch;
    // Each buffer holds `s.rows` rows of this layer's width (its manifest's).
    let max_rows = s.rows.max(1);
    let mut ops = CpuOps {
        weights,
        rope,
        buffers: BufferSet {
            hidden,
            normed: rows_of(&mut s.normed, rows, max_rows),
            q: rows_of(&mut s.q, rows, max_rows),
            k: rows_of(&mut s.k, rows, max_rows),
            v: rows_of(&mut s.v, rows, max_rows),
            attn: rows_of(&mut s.attn, rows, max_rows),
            sublayer_out: rows_of(&mut s.sublayer_out, rows, max_rows),
            gate: rows_of(&mut s.gate, rows, max_rows),
            up: rows_of(&mut s.up, rows, max_rows),
            accumulator,
            mixer: MixerBuffers {
                projected: rows_of(&mut s.mixer.projected, rows, max_rows),
                mixer_gate: rows_of(&mut s.mixer.mixer_gate, rows, max_rows),
                mixed: rows_of(&mut s.mixer.mixed, rows, max_rows),
                beta: rows_of(&mut s.mixer.beta, rows, max_rows),
                decay: rows_of(&mut s.mixer.decay, rows, max_rows),
                delta_core: rows_of(&mut s.mixer.delta_core, rows, max_rows),
            },
        },
        delta_state: &mut s.delta_state,
        hidden_size: d,
        threads,
        moe: s.moe.as_mut(),
        routing: None,
        capture: Some(capture),
    };
    let step = BlockStep::new(spec, layer, part, batch, request);
    block::run_part(&mut ops, &step)
}
