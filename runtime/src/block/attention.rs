//! The attention sublayer: `hidden += attention(norm(hidden))`; a gated attention's heads
//! are multiplied by `sigmoid(gate)` before o_proj.

use super::{AttentionShape, BlockOps, BlockStep, Buf, GateActivation, Piece, Regroup};
use crate::arch::{QkNorm, WeightRole};
use crate::capture::CapturePoint;
use crate::error::Result;

pub(super) fn sublayer<O: BlockOps>(ops: &mut O, step: &BlockStep, gated: bool) -> Result<()> {
    use WeightRole::*;
    let spec = step.spec;
    let d = spec.hidden_size;
    let (q_width, kv_width) = (spec.q_width(), spec.kv_width());
    let eps = spec.block.norm_eps;
    // Attention input: the normed residual (pre-norm) or the residual itself (olmo2).
    let input = match ops.has(AttnInputNorm) {
        true => {
            ops.rms_norm(Buf::Hidden, AttnInputNorm, Buf::Normed, eps)?;
            Buf::Normed
        }
        false => Buf::Hidden,
    };
    step.capture.activation(ops, CapturePoint::Ln1, input, d)?;
    match gated {
        // q_proj emits per head [query (head_dim) | gate (head_dim)].
        true => {
            ops.linear(input, QProj, Some(QBias), Buf::Projected, d, 2 * q_width)?;
            let hd = spec.head_dim;
            for (out, from) in [(Buf::Q, 0), (Buf::MixerGate, hd)] {
                let heads = Regroup {
                    groups: spec.num_heads,
                    group_width: 2 * hd,
                    out_width: q_width,
                    pieces: &[Piece {
                        from,
                        width: hd,
                        to: 0,
                    }],
                };
                ops.regroup(Buf::Projected, out, &heads)?;
            }
        }
        false => ops.linear(input, QProj, Some(QBias), Buf::Q, d, q_width)?,
    }
    ops.linear(input, KProj, Some(KBias), Buf::K, d, kv_width)?;
    ops.linear(input, VProj, Some(VBias), Buf::V, d, kv_width)?;
    match spec.block.qk_norm {
        QkNorm::None => {}
        // Width head_dim (qwen3) or all heads (olmo2, olmoe): the weight's length says which.
        QkNorm::PerHead | QkNorm::AcrossHeads => {
            ops.rms_norm_in_place(Buf::Q, QNorm, eps)?;
            ops.rms_norm_in_place(Buf::K, KNorm, eps)?;
        }
    }
    if let Some(limit) = spec.block.clip_qkv {
        for values in [Buf::Q, Buf::K, Buf::V] {
            ops.clamp(values, limit)?;
        }
    }
    ops.rope(Buf::Q, spec.num_heads, spec.head_dim, step.batch)?;
    ops.rope(Buf::K, spec.num_kv_heads, spec.head_dim, step.batch)?;
    step.capture
        .activation(ops, CapturePoint::Q, Buf::Q, q_width)?;
    step.capture
        .activation(ops, CapturePoint::K, Buf::K, kv_width)?;
    let shape = AttentionShape {
        batch: step.batch,
        heads: spec.num_heads,
        kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        sliding_window: spec.sliding_windows[step.layer],
        scale: (spec.head_dim as f32).powf(-0.5),
    };
    ops.attention(shape, step.capture.captures(CapturePoint::AttnSinks))?;
    if gated {
        ops.gate_activation(Buf::MixerGate, GateActivation::Sigmoid)?;
        step.capture
            .activation(ops, CapturePoint::AttnGate, Buf::MixerGate, q_width)?;
        ops.multiply(Buf::Attn, Buf::MixerGate)?;
    }
    step.capture
        .activation(ops, CapturePoint::AttnInO, Buf::Attn, q_width)?;
    ops.linear(Buf::Attn, OProj, Some(OBias), Buf::SublayerOut, q_width, d)?;
    if ops.has(AttnOutputNorm) {
        ops.rms_norm_in_place(Buf::SublayerOut, AttnOutputNorm, eps)?;
    }
    step.capture
        .activation(ops, CapturePoint::AttnOut, Buf::SublayerOut, d)?;
    ops.add(Buf::Hidden, Buf::SublayerOut)
}
