//! A micro-batch's device buffers, and one micro-batch of a layer part run through the
//! block (`block/`) over the CUDA ops (`ops.rs`).

use super::capture::CudaCapture;
use super::linear::HalfScratch;
use super::moe::MoeBuffers;
use super::ops::CudaOps;
use super::ops::RaggedDevice;
use super::weights::DeviceLayer;
use crate::allocation::{Budget, Reservation};
use crate::arch::ModelSpec;
use crate::block::{self, BlockStep, BufferSet, MixerBuffers};
use crate::error::Result;
use crate::plan::block_widths;
use crate::sequences::Sequences;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaViewMut};
use layerstream_kernels::ops::delta_net::ChunkBuffers;
use layerstream_planner::memory::{BufferName, LayerShapes, ScratchFor, ScratchManifest};
use layerstream_planner::split::LayerPart;
use std::sync::Arc;

/// Every buffer one micro-batch of `rows` tokens needs, taken before its hidden states
/// change (so an out-of-memory can be retried with a smaller micro-batch): the planner's
/// `activations` and `moe` regions.
pub struct DeviceScratch {
    normed: CudaSlice<f32>,       // (rows, hidden)
    q: CudaSlice<f32>,            // (rows, heads * head_dim)
    k: CudaSlice<f32>,            // (rows, kv_heads * head_dim)
    v: CudaSlice<f32>,            // (rows, kv_heads * head_dim)
    attn: CudaSlice<f32>,         // (rows, heads * head_dim)
    sublayer_out: CudaSlice<f32>, // (rows, hidden)
    gate: CudaSlice<f32>,         // (rows, dense intermediate)
    up: CudaSlice<f32>,           // (rows, dense intermediate)
    dense_width: usize,
    mixer: MixerBuffers<CudaSlice<f32>>, // gated attention's and DeltaNet's block buffers
    delta: DeltaScratch,
    /// 16-bit copies of GEMM inputs, `(rows, widest input)`, and the f16 overflow guard.
    pub half: HalfScratch,
    moe: Option<MoeBuffers>,
    _reservation: Reservation,
}

impl DeviceScratch {
    /// Reserves and allocates the buffers of micro-batches of up to `rows` tokens: the
    /// planner's manifest for every layer of the model ([`ScratchManifest::for_layers`]),
    /// reserved as its sum. (A buffer the manifest lists with no elements is allocated as one
    /// element: the driver allocates no empty buffers.)
    pub fn new(
        gpu: &Gpu,
        shapes: &[LayerShapes],
        rows: usize,
        budget: &Arc<Budget>,
        layer: usize,
    ) -> Result<Self> {
        let manifest = ScratchManifest::for_layers(shapes, rows, ScratchFor::Gpu);
        let reservation = budget.reserve(
            &format!("the micro-batch buffers ({rows} tokens, made at layer {layer})"),
            manifest.total_bytes(),
        )?;
        let f32s = |name| gpu.stream.alloc_zeros::<f32>(manifest.count(name).max(1));
        use BufferName::*;
        Ok(DeviceScratch {
            normed: f32s(Normed)?,
            q: f32s(Q)?,
            k: f32s(K)?,
            v: f32s(V)?,
            attn: f32s(Attn)?,
            sublayer_out: f32s(SublayerOut)?,
            gate: f32s(Gate)?,
            up: f32s(Up)?,
            dense_width: manifest.count(Gate) / rows.max(1),
            mixer: MixerBuffers {
                projected: f32s(Projected)?,
                mixer_gate: f32s(MixerGate)?,
                mixed: f32s(Mixed)?,
                beta: f32s(Beta)?,
                decay: f32s(Decay)?,
                delta_core: f32s(DeltaCore)?,
            },
            delta: DeltaScratch {
                q: f32s(DeltaChunkQ)?,
                k: f32s(DeltaChunkK)?,
                w: f32s(DeltaChunkW)?,
                u: f32s(DeltaChunkU)?,
                t: f32s(DeltaChunkT)?,
                a: f32s(DeltaChunkA)?,
                g: f32s(DeltaChunkG)?,
                beta: f32s(DeltaChunkBeta)?,
                out: f32s(DeltaChunkOut)?,
                state: f32s(DeltaState)?,
            },
            half: HalfScratch::new(
                gpu.stream
                    .alloc_zeros::<u16>(manifest.count(Bf16Inputs).max(1))?,
                gpu.stream
                    .alloc_zeros::<u32>(manifest.count(HalfGuard).max(1))?,
            ),
            moe: match manifest.lists(RouterLogits) {
                true => Some(MoeBuffers::new(gpu, &manifest)?),
                false => None,
            },
            _reservation: reservation,
        })
    }
}

/// The Gated DeltaNet's chunked-form buffers and recurrent state (the manifest's
/// `DeltaChunk*` and `DeltaState`; one element each for models without a DeltaNet).
pub(crate) struct DeltaScratch {
    q: CudaSlice<f32>,     // (S, H, P, dk)
    k: CudaSlice<f32>,     // (S, H, P, dk)
    w: CudaSlice<f32>,     // (S, H, P, dv + dk)
    u: CudaSlice<f32>,     // (S, H, P, dv + dk)
    t: CudaSlice<f32>,     // (S, H, P, 64)
    a: CudaSlice<f32>,     // (S, H, P, 64)
    g: CudaSlice<f32>,     // (S, H, P)
    beta: CudaSlice<f32>,  // (S, H, P)
    out: CudaSlice<f32>,   // (S, H, P, dv)
    state: CudaSlice<f32>, // (S, H, dk, dv)
}

impl DeltaScratch {
    /// Views of every buffer for the chunked delta rule.
    pub fn views(&mut self) -> ChunkBuffers<'_> {
        ChunkBuffers {
            q: self.q.as_view_mut(),
            k: self.k.as_view_mut(),
            w: self.w.as_view_mut(),
            u: self.u.as_view_mut(),
            t: self.t.as_view_mut(),
            a: self.a.as_view_mut(),
            g: self.g.as_view_mut(),
            beta: self.beta.as_view_mut(),
            out: self.out.as_view_mut(),
            state: self.state.as_view_mut(),
        }
    }
}

/// One micro-batch's rows of the workload on the device.
pub(crate) struct DeviceMicroBatch<'a, 'b> {
    /// Hidden states `(rows, hidden)`, updated in place.
    pub hidden: &'a mut CudaViewMut<'b, f32>,
    /// Its sequences (offsets from its first row).
    pub batch: &'a Sequences,
    /// Sequences of their own lengths: their positions and offsets on the device.
    pub ragged: Option<RaggedDevice<'a>>,
    /// The workload's longest sequence.
    pub longest: usize,
}

/// Runs `part` of decoder layer `layer` on one micro-batch (the steps in `block/`).
/// `accumulator (rows, hidden)` holds the micro-batch's feed-forward output across parts
/// when the layer's experts are split over several parts (`None`: the part computes the
/// whole feed-forward block).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_part(
    gpu: &Gpu,
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &DeviceLayer,
    inv_freq: &CudaSlice<f32>,
    batch: DeviceMicroBatch,
    accumulator: Option<&mut CudaViewMut<f32>>,
    scratch: &mut DeviceScratch,
    capture: CudaCapture,
) -> Result<()> {
    let DeviceMicroBatch {
        hidden,
        batch,
        ragged,
        longest,
    } = batch;
    let rows = batch.tokens();
    let d = spec.hidden_size;
    let w = block_widths(spec, layer);
    let request = capture.request;
    let s = scratch;
    let dense_width = s.dense_width;
    let mut ops = CudaOps {
        gpu,
        weights,
        inv_freq,
        rope_scaling: spec.rope.attention_scaling,
        buffers: BufferSet {
            hidden: hidden.slice_mut(..),
            normed: s.normed.slice_mut(..rows * d),
            q: s.q.slice_mut(..rows * w.q),
            k: s.k.slice_mut(..rows * w.k),
            v: s.v.slice_mut(..rows * w.v),
            attn: s.attn.slice_mut(..rows * w.attn),
            sublayer_out: s.sublayer_out.slice_mut(..rows * d),
            gate: s.gate.slice_mut(..rows * dense_width),
            up: s.up.slice_mut(..rows * dense_width),
            accumulator: accumulator.map(|a| a.slice_mut(..rows * d)),
            mixer: MixerBuffers {
                projected: s.mixer.projected.slice_mut(..(rows * w.projected).max(1)),
                mixer_gate: s.mixer.mixer_gate.slice_mut(..(rows * w.mixer_gate).max(1)),
                mixed: s.mixer.mixed.slice_mut(..(rows * w.mixed).max(1)),
                beta: s.mixer.beta.slice_mut(..(rows * w.per_value_head).max(1)),
                decay: s.mixer.decay.slice_mut(..(rows * w.per_value_head).max(1)),
                delta_core: s.mixer.delta_core.slice_mut(..(rows * w.delta_core).max(1)),
            },
        },
        delta: &mut s.delta,
        half_holds: None,
        half: &mut s.half,
        moe: s.moe.as_mut(),
        hidden_size: d,
        longest,
        ragged,
        routed: None,
        capture: Some(capture),
    };
    let step = BlockStep::new(spec, layer, part, batch, request);
    block::run_part(&mut ops, &step)
}
