//! One decoder layer on the device for one micro-batch, the same steps as `cpu/layer.rs`.

use super::linear::{Bf16Scratch, linear};
use super::moe::{DeviceRouting, MoeBuffers, moe_block};
use super::weights::DeviceLayer;
use crate::allocation::{Budget, Reservation};
use crate::arch::{FeedForward, ModelSpec, QkNorm, WeightRole};
use crate::capture::CapturePoint;
use crate::error::Result;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::attention::{AttentionDims, causal_attention};
use layerstream_kernels::ops::{elementwise, norm, rope};
use layerstream_kernels::{Gpu, KernelError};
use layerstream_planner::memory::{LayerShapes, activation_bytes};
use layerstream_planner::split::LayerPart;
use std::sync::Arc;

/// Receives one layer's captures of one micro-batch as device views.
pub trait DeviceCaptureSink {
    /// Activations at `point`, `(tokens, width)`.
    fn activation(
        &mut self,
        point: CapturePoint,
        values: &CudaView<f32>,
        width: usize,
    ) -> Result<()>;
    /// The router's decisions (MoE layers).
    fn routing(&mut self, routing: &DeviceRouting) -> Result<()>;
    /// The MoE block's input `(tokens, width)` once more, after `resid_post` (see
    /// `LayerCaptureSink::moe_input`).
    fn moe_input(&mut self, _values: &CudaView<f32>, _width: usize) -> Result<()> {
        Ok(())
    }
}

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
        let zeros = |width: usize| {
            gpu.stream
                .alloc_zeros::<f32>((rows * width).max(1))
                .map_err(KernelError::from)
        };
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
            bf16: Bf16Scratch::new(
                gpu.stream
                    .alloc_zeros::<u16>((rows * widest).max(1))
                    .map_err(KernelError::from)?,
            ),
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

/// Runs `part` of decoder layer `layer` on one micro-batch, the same steps as
/// `cpu::layer::run_part`. `accumulator (rows, hidden)` holds the micro-batch's
/// feed-forward output across parts when the layer's experts are split over several parts
/// (`None`: the part computes the whole feed-forward block).
#[allow(clippy::too_many_arguments)]
pub fn run_part(
    gpu: &Gpu,
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &DeviceLayer,
    inv_freq: &CudaSlice<f32>,
    batch: DeviceMicroBatch,
    accumulator: Option<&mut CudaViewMut<f32>>,
    scratch: &mut DeviceScratch,
    capture: &mut dyn DeviceCaptureSink,
) -> Result<()> {
    let DeviceMicroBatch {
        hidden,
        sequences,
        seq_len,
    } = batch;
    if part.runs_attention() {
        attention(
            gpu, spec, layer, weights, inv_freq, hidden, sequences, seq_len, scratch, capture,
        )?;
    }
    if part.runs_feed_forward() {
        feed_forward(
            gpu,
            spec,
            layer,
            part,
            weights,
            hidden,
            accumulator,
            scratch,
            capture,
        )?;
    }
    Ok(())
}

/// The attention sublayer: `hidden += attention(norm(hidden))`.
#[allow(clippy::too_many_arguments)]
fn attention(
    gpu: &Gpu,
    spec: &ModelSpec,
    layer: usize,
    weights: &DeviceLayer,
    inv_freq: &CudaSlice<f32>,
    hidden: &mut CudaViewMut<f32>,
    sequences: usize,
    seq_len: usize,
    scratch: &mut DeviceScratch,
    capture: &mut dyn DeviceCaptureSink,
) -> Result<()> {
    use WeightRole::*;
    let d = spec.hidden_size;
    let rows = sequences * seq_len;
    let (q_width, kv_width) = (spec.q_width(), spec.kv_width());
    let eps = spec.block.norm_eps;
    let DeviceScratch {
        normed,
        q,
        k,
        v,
        attn,
        sublayer_out,
        bf16,
        ..
    } = scratch;
    let mut q = q.slice_mut(..rows * q_width);
    let mut k = k.slice_mut(..rows * kv_width);
    let mut v = v.slice_mut(..rows * kv_width);
    let mut attn = attn.slice_mut(..rows * q_width);
    let mut sublayer_out = sublayer_out.slice_mut(..rows * d);

    // Attention input: normed residual (pre-norm) or the residual itself (olmo2).
    if let Some(w) = weights.maybe_vector(AttnInputNorm) {
        norm::rms_norm(
            gpu,
            &hidden.as_view(),
            &w.as_view(),
            &mut normed.slice_mut(..rows * d),
            rows,
            eps,
        )?;
    }
    {
        let attn_input = match weights.maybe_vector(AttnInputNorm) {
            Some(_) => normed.slice(..rows * d),
            None => hidden.as_view(),
        };
        capture.activation(CapturePoint::Ln1, &attn_input, d)?;
        linear(
            gpu,
            &attn_input,
            &weights.matrix(QProj),
            weights.maybe_vector(QBias),
            &mut q,
            rows,
            d,
            q_width,
            bf16,
        )?;
        linear(
            gpu,
            &attn_input,
            &weights.matrix(KProj),
            weights.maybe_vector(KBias),
            &mut k,
            rows,
            d,
            kv_width,
            bf16,
        )?;
        linear(
            gpu,
            &attn_input,
            &weights.matrix(VProj),
            weights.maybe_vector(VBias),
            &mut v,
            rows,
            d,
            kv_width,
            bf16,
        )?;
    }
    match spec.block.qk_norm {
        QkNorm::None => {}
        // Width head_dim (qwen3) or all heads (olmo2, olmoe): the weight's length says which.
        QkNorm::PerHead | QkNorm::AcrossHeads => {
            let (qn, kn) = (weights.vector(QNorm), weights.vector(KNorm));
            norm::rms_norm_in_place(gpu, &mut q, &qn.as_view(), rows * q_width / qn.len(), eps)?;
            norm::rms_norm_in_place(gpu, &mut k, &kn.as_view(), rows * kv_width / kn.len(), eps)?;
        }
    }
    if let Some(limit) = spec.block.clip_qkv {
        elementwise::clamp(gpu, &mut q, limit)?;
        elementwise::clamp(gpu, &mut k, limit)?;
        elementwise::clamp(gpu, &mut v, limit)?;
    }
    rope::rope(
        gpu,
        &mut q,
        &inv_freq.as_view(),
        rows,
        spec.num_heads,
        spec.head_dim,
        seq_len,
    )?;
    rope::rope(
        gpu,
        &mut k,
        &inv_freq.as_view(),
        rows,
        spec.num_kv_heads,
        spec.head_dim,
        seq_len,
    )?;
    let dims = AttentionDims {
        sequences,
        seq_len,
        heads: spec.num_heads,
        kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        sliding_window: spec.sliding_windows[layer],
        scale: (spec.head_dim as f32).powf(-0.5),
        // bf16 GEMM weights: the attention products in bf16 too (f32 compute stays f32).
        tensor_cores: weights.matrix(QProj).is_bf16(),
    };
    causal_attention(
        gpu,
        &q.as_view(),
        &k.as_view(),
        &v.as_view(),
        &mut attn,
        dims,
    )?;
    capture.activation(CapturePoint::AttnInO, &attn.as_view(), q_width)?;
    linear(
        gpu,
        &attn.as_view(),
        &weights.matrix(OProj),
        weights.maybe_vector(OBias),
        &mut sublayer_out,
        rows,
        q_width,
        d,
        bf16,
    )?;
    if let Some(w) = weights.maybe_vector(AttnOutputNorm) {
        norm::rms_norm_in_place(gpu, &mut sublayer_out, &w.as_view(), rows, eps)?;
    }
    capture.activation(CapturePoint::AttnOut, &sublayer_out.as_view(), d)?;
    elementwise::add(gpu, hidden, &sublayer_out.as_view())?;
    Ok(())
}

/// The feed-forward sublayer, or the share of it `part` holds: `hidden += mlp(norm(hidden))`
/// once the part finishing the block has run.
#[allow(clippy::too_many_arguments)]
fn feed_forward(
    gpu: &Gpu,
    spec: &ModelSpec,
    layer: usize,
    part: &LayerPart,
    weights: &DeviceLayer,
    hidden: &mut CudaViewMut<f32>,
    accumulator: Option<&mut CudaViewMut<f32>>,
    scratch: &mut DeviceScratch,
    capture: &mut dyn DeviceCaptureSink,
) -> Result<()> {
    use WeightRole::*;
    let d = spec.hidden_size;
    let rows = hidden.len() / d;
    let eps = spec.block.norm_eps;
    let num_experts = spec.moe(layer).map_or(0, |m| m.num_experts);
    let DeviceScratch {
        normed,
        sublayer_out,
        gate,
        up,
        bf16,
        moe,
        ..
    } = scratch;
    let mut out = match accumulator {
        Some(accumulator) => accumulator.slice_mut(..rows * d),
        None => sublayer_out.slice_mut(..rows * d),
    };
    if let Some(w) = weights.maybe_vector(MlpInputNorm) {
        norm::rms_norm(
            gpu,
            &hidden.as_view(),
            &w.as_view(),
            &mut normed.slice_mut(..rows * d),
            rows,
            eps,
        )?;
    }
    {
        let mlp_input = match weights.maybe_vector(MlpInputNorm) {
            Some(_) => normed.slice(..rows * d),
            None => hidden.as_view(),
        };
        if part.starts_feed_forward() {
            capture.activation(CapturePoint::Ln2, &mlp_input, d)?;
        }
        match &spec.feed_forward[layer] {
            FeedForward::Dense { intermediate } => {
                let inter = *intermediate;
                let mut gate = gate.slice_mut(..rows * inter);
                let mut up = up.slice_mut(..rows * inter);
                linear(
                    gpu,
                    &mlp_input,
                    &weights.matrix(GateProj),
                    weights.maybe_vector(GateBias),
                    &mut gate,
                    rows,
                    d,
                    inter,
                    bf16,
                )?;
                linear(
                    gpu,
                    &mlp_input,
                    &weights.matrix(UpProj),
                    weights.maybe_vector(UpBias),
                    &mut up,
                    rows,
                    d,
                    inter,
                    bf16,
                )?;
                elementwise::silu_mul(gpu, &mut gate, &up.as_view())?;
                linear(
                    gpu,
                    &gate.as_view(),
                    &weights.matrix(DownProj),
                    weights.maybe_vector(DownBias),
                    &mut out,
                    rows,
                    inter,
                    d,
                    bf16,
                )?;
            }
            FeedForward::Moe(spec_moe) => {
                let buffers = moe
                    .as_mut()
                    .expect("MoE buffers exist for a model with MoE layers");
                let routing = moe_block(
                    gpu,
                    &mlp_input,
                    weights,
                    spec_moe,
                    d,
                    part.experts(num_experts),
                    &mut out,
                    buffers,
                    bf16,
                )?;
                if part.starts_feed_forward() {
                    capture.routing(&routing)?;
                }
            }
        }
    }
    if !part.finishes_feed_forward(num_experts) {
        return Ok(());
    }
    if let Some(w) = weights.maybe_vector(MlpOutputNorm) {
        norm::rms_norm_in_place(gpu, &mut out, &w.as_view(), rows, eps)?;
    }
    capture.activation(CapturePoint::MlpOut, &out.as_view(), d)?;
    elementwise::add(gpu, hidden, &out.as_view())?;
    capture.activation(CapturePoint::ResidPost, &hidden.as_view(), d)?;
    if num_experts > 0 && weights.maybe_vector(MlpInputNorm).is_some() {
        capture.moe_input(&normed.slice(..rows * d), d)?;
    }
    Ok(())
}
