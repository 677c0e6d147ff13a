//! The mixer ops of gated attention and the Gated DeltaNet on the GPU: regrouping columns,
//! the causal convolution (its weight in the GEMM dtype, used as stored), the chunked delta
//! rule (`kernels/src/ops/delta_net.rs`; TF32 tensor cores when the layer's GEMMs are bf16),
//! and the gated RMSNorm as the RMSNorm kernel over `(rows * heads, head_width)` and a
//! multiply.

use super::layer::DeltaScratch;
use super::weights::{DeviceLayer, MatrixRows};
use crate::arch::WeightRole;
use crate::block::{DeltaRuleShape, Regroup};
use crate::error::Result;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaView, CudaViewMut};
use layerstream_kernels::ops::delta_net::{self, ConvWeight, DeltaDims, DeltaInputs};
use layerstream_kernels::ops::elementwise::{self, RegroupPiece};
use layerstream_kernels::ops::norm;

/// Every piece of `layout`, from `input` into `out` (its rows: `out`'s length over its width).
pub(crate) fn regroup(
    gpu: &Gpu,
    input: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    layout: &Regroup,
) -> Result<()> {
    let rows = out.len() / layout.out_width;
    for piece in layout.pieces {
        let piece = RegroupPiece {
            groups: layout.groups,
            group_width: layout.group_width,
            out_width: layout.out_width,
            from: piece.from,
            width: piece.width,
            to: piece.to,
        };
        elementwise::regroup(gpu, input, out, rows, piece)?;
    }
    Ok(())
}

/// `out (rows, channels) = silu(conv(input))` with the layer's `DeltaConv` weight.
pub(crate) fn causal_conv_silu(
    gpu: &Gpu,
    weights: &DeviceLayer,
    input: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    (channels, kernel, seq_len): (usize, usize, usize),
) -> Result<()> {
    let rows = input.len() / channels;
    let weight = match weights.matrix(WeightRole::DeltaConv) {
        MatrixRows::F32(w) => ConvWeight::F32(w),
        MatrixRows::Bf16(w) => ConvWeight::Bf16(w),
    };
    delta_net::causal_conv_silu(gpu, input, &weight, out, (rows, channels, kernel, seq_len))?;
    Ok(())
}

/// The chunked delta rule of the micro-batch: `[q, k, v, b, a]` token-major into `core`.
pub(crate) fn delta_rule(
    gpu: &Gpu,
    weights: &DeviceLayer,
    [q, k, v, b, a]: [&CudaViewMut<f32>; 5],
    core: &mut CudaViewMut<f32>,
    scratch: &mut DeltaScratch,
    shape: DeltaRuleShape,
) -> Result<()> {
    let delta = shape.delta;
    let inputs = DeltaInputs {
        q: q.as_view(),
        k: k.as_view(),
        v: v.as_view(),
        b: b.as_view(),
        a: a.as_view(),
        a_log: weights.vector(WeightRole::DeltaALog).as_view(),
        dt_bias: weights.vector(WeightRole::DeltaDtBias).as_view(),
    };
    let dims = DeltaDims {
        sequences: shape.sequences,
        seq_len: shape.seq_len,
        heads: delta.value_heads,
        key_heads: delta.key_heads,
        key_dim: delta.key_dim,
        value_dim: delta.value_dim,
    };
    // bf16 GEMM weights: the delta rule's products on tensor cores too (TF32).
    let tf32 = weights.matrix(WeightRole::OProj).is_bf16();
    let mut buffers = scratch.views();
    delta_net::chunked_delta_rule(gpu, &inputs, &mut buffers, core, dims, tf32)?;
    Ok(())
}

/// `out = (DeltaNorm * rms_norm(values)) * gate` over every `head_width` slice.
pub(crate) fn gated_rms_norm(
    gpu: &Gpu,
    weights: &DeviceLayer,
    [values, gate]: [&CudaViewMut<f32>; 2],
    out: &mut CudaViewMut<f32>,
    eps: f32,
) -> Result<()> {
    let weight = weights.vector(WeightRole::DeltaNorm);
    let slices = values.len() / weight.len();
    norm::rms_norm(gpu, &values.as_view(), &weight.as_view(), out, slices, eps)?;
    elementwise::multiply(gpu, out, &gate.as_view())?;
    Ok(())
}
