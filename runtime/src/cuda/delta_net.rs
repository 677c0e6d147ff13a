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
use crate::sequences::Sequences;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaView, CudaViewMut};
use layerstream_kernels::ops::delta_net::{self, ConvWeight, DeltaDims, DeltaInputs};
use layerstream_kernels::ops::elementwise::{self, RegroupPiece};
use layerstream_kernels::ops::norm;
use std::ops::Range;

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

/// The runs of `batch` the DeltaNet kernels take in one call each: `(rows, sequences, len)`.
/// A micro-batch of sequences of one length `longest` (what the chunk buffers are sized by)
/// is one run; otherwise each sequence is its own.
fn runs(batch: &Sequences, longest: usize) -> Vec<(Range<usize>, usize, usize)> {
    match batch.uniform_len() {
        Some(len) if len == longest => vec![(0..batch.tokens(), batch.count(), len)],
        _ => batch
            .spans()
            .map(|span| (span.clone(), 1, span.len()))
            .collect(),
    }
}

/// `out (rows, channels) = silu(conv(input))` with the layer's `DeltaConv` weight, each
/// sequence of `batch` from zero history.
pub(crate) fn causal_conv_silu(
    gpu: &Gpu,
    weights: &DeviceLayer,
    input: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    (channels, kernel): (usize, usize),
    batch: &Sequences,
) -> Result<()> {
    let weight = match weights.matrix(WeightRole::DeltaConv) {
        MatrixRows::F32(w) => ConvWeight::F32(w),
        MatrixRows::Bf16(w) => ConvWeight::Bf16(w),
        MatrixRows::F16(w) => ConvWeight::F16(w),
    };
    for (rows, _, len) in runs(batch, batch.longest()) {
        let values = rows.start * channels..rows.end * channels;
        delta_net::causal_conv_silu(
            gpu,
            &input.slice(values.clone()),
            &weight,
            &mut out.slice_mut(values),
            (rows.len(), channels, kernel, len),
        )?;
    }
    Ok(())
}

/// The chunked delta rule of the micro-batch: `[q, k, v, b, a]` token-major into `core`,
/// each sequence from zero state; `longest`: the workload's longest sequence, which the
/// chunk buffers are sized by (a micro-batch of other lengths runs sequence by sequence).
pub(crate) fn delta_rule(
    gpu: &Gpu,
    weights: &DeviceLayer,
    [q, k, v, b, a]: [&CudaViewMut<f32>; 5],
    core: &mut CudaViewMut<f32>,
    scratch: &mut DeltaScratch,
    shape: DeltaRuleShape,
    longest: usize,
) -> Result<()> {
    let delta = shape.delta;
    let key_width = delta.key_heads * delta.key_dim;
    let value_width = delta.value_heads * delta.value_dim;
    let heads = delta.value_heads;
    // bf16 GEMM weights: the delta rule's products on tensor cores too (TF32).
    let tf32 = weights.matrix(WeightRole::OProj).is_bf16();
    for (rows, sequences, seq_len) in runs(shape.batch, longest) {
        let of = |width: usize| rows.start * width..rows.end * width;
        let inputs = DeltaInputs {
            q: q.slice(of(key_width)),
            k: k.slice(of(key_width)),
            v: v.slice(of(value_width)),
            b: b.slice(of(heads)),
            a: a.slice(of(heads)),
            a_log: weights.vector(WeightRole::DeltaALog).as_view(),
            dt_bias: weights.vector(WeightRole::DeltaDtBias).as_view(),
        };
        let dims = DeltaDims {
            sequences,
            seq_len,
            heads,
            key_heads: delta.key_heads,
            key_dim: delta.key_dim,
            value_dim: delta.value_dim,
        };
        let mut buffers = scratch.views();
        let mut out = core.slice_mut(of(value_width));
        delta_net::chunked_delta_rule(gpu, &inputs, &mut buffers, &mut out, dims, tf32)?;
    }
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
