//! A micro-batch's device buffers, and one micro-batch of a layer part run through the
//! block (`block/`) over the CUDA ops (`ops.rs`).

use super::capture::CudaCapture;
use super::linear::Bf16Scratch;
use super::moe::MoeBuffers;
use super::ops::CudaOps;
use super::weights::DeviceLayer;
use crate::allocation::{Budget, Reservation};
use crate::arch::{FeedForward, ModelSpec};
use crate::block::{self, BlockStep, BufferSet, CapturePolicy};
use crate::error::Result;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaViewMut};
use layerstream_planner::memory::{LayerShapes, activation_bytes};
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
    /// bf16 copies of GEMM inputs, `(rows, widest input)`.
    pub bf16: Bf16Scratch,
    moe: Option<MoeBuffers>,
    _reservation: Reservation,
}

impl DeviceScratch {
    /// Reserves and allocates the buffers of micro-batches of up to `rows` tokens.
    pub fn new(
        gpu: &Gpu,
        spec: &ModelSpec,
        shapes: &[LayerShapes],
        rows: usize,
        budget: &Arc<Budget>,
        layer: usize,
    ) -> Result<Self> {
        let (block, moe) = shapes
            .iter()
            .map(|s| activation_bytes(s, rows))
            .fold((0, 0), |(b, m), (b2, m2)| (b.max(b2), m.max(m2)));
        let reservation = budget.reserve(
            &format!("the micro-batch buffers ({rows} tokens, made at layer {layer})"),
            block + moe,
        )?;
        let dense_width = shapes
            .iter()
            .map(|s| s.dense_intermediate)
            .max()
            .unwrap_or(0);
        let widest = shapes
            .iter()
            .map(|s| {
                let moe = s
                    .moe
                    .map_or(0, |m| m.expert_intermediate.max(m.shared_intermediate));
                s.hidden.max(s.q_width).max(s.dense_intermediate).max(moe)
            })
            .max()
            .unwrap_or(0);
        let zeros = |width: usize| gpu.stream.alloc_zeros::<f32>((rows * width).max(1));
        let moe_spec = spec.feed_forward.iter().find_map(|f| match f {
            FeedForward::Moe(m) => Some(m),
            FeedForward::Dense { .. } => None,
        });
        Ok(DeviceScratch {
            normed: zeros(spec.hidden_size)?,
            q: zeros(spec.q_width())?,
            k: zeros(spec.kv_width())?,
            v: zeros(spec.kv_width())?,
            attn: zeros(spec.q_width())?,
            sublayer_out: zeros(spec.hidden_size)?,
            gate: zeros(dense_width)?,
            up: zeros(dense_width)?,
            dense_width,
            bf16: Bf16Scratch::new(gpu.stream.alloc_zeros::<u16>((rows * widest).max(1))?),
            moe: moe_spec
                .map(|m| MoeBuffers::new(gpu, m, spec.hidden_size, rows))
                .transpose()?,
            _reservation: reservation,
        })
    }
}

/// One micro-batch's rows of the workload on the device.
pub struct DeviceMicroBatch<'a, 'b> {
    /// Hidden states `(sequences * seq_len, hidden)`, updated in place.
    pub hidden: &'a mut CudaViewMut<'b, f32>,
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
        sequences,
        seq_len,
    } = batch;
    let rows = sequences * seq_len;
    let (d, q_width, kv_width) = (spec.hidden_size, spec.q_width(), spec.kv_width());
    let request = capture.request;
    let s = scratch;
    let dense_width = s.dense_width;
    let mut ops = CudaOps {
        gpu,
        weights,
        inv_freq,
        buffers: BufferSet {
            hidden: hidden.slice_mut(..),
            normed: s.normed.slice_mut(..rows * d),
            q: s.q.slice_mut(..rows * q_width),
            k: s.k.slice_mut(..rows * kv_width),
            v: s.v.slice_mut(..rows * kv_width),
            attn: s.attn.slice_mut(..rows * q_width),
            sublayer_out: s.sublayer_out.slice_mut(..rows * d),
            gate: s.gate.slice_mut(..rows * dense_width),
            up: s.up.slice_mut(..rows * dense_width),
            accumulator: accumulator.map(|a| a.slice_mut(..rows * d)),
        },
        bf16: &mut s.bf16,
        moe: s.moe.as_mut(),
        hidden_size: d,
        seq_len,
        routed: None,
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
