//! The Gated DeltaNet sublayer (Qwen3-Next's `linear_attn`), in transformers' order:
//! `hidden += out_proj(gated_norm(delta_rule(silu(conv(q|k|v)), b, a), silu(z)))` of the
//! normed hidden states. Capture points: `ln1` the mixer's input, `q` / `k` the convolved
//! queries and keys of every key head (before the L2 norm), `attn_gate` `silu(z)`,
//! `attn_in_o` the gated norm's output (out_proj's input), `attn_out` out_proj's output.

use super::{BlockOps, BlockStep, Buf, DeltaRuleShape, GateActivation, Piece, Regroup};
use crate::arch::{DeltaNetSpec, WeightRole};
use crate::capture::CapturePoint;
use crate::error::Result;

pub(super) fn sublayer<O: BlockOps>(
    ops: &mut O,
    step: &BlockStep,
    delta: &DeltaNetSpec,
) -> Result<()> {
    use WeightRole::*;
    let spec = step.spec;
    let (d, eps) = (spec.hidden_size, spec.block.norm_eps);
    let shapes = delta.shapes(step.batch.longest());
    let (kw, vw) = (shapes.key_width(), shapes.value_width());
    let (dk, dv, kh) = (delta.key_dim, delta.value_dim, delta.key_heads);
    let per_key = delta.value_heads / kh; // value heads per key head
    ops.rms_norm(Buf::Hidden, AttnInputNorm, Buf::Normed, eps)?;
    step.capture
        .activation(ops, CapturePoint::Ln1, Buf::Normed, d)?;
    // in_proj_qkvz: per key head [q (dk) | k (dk) | v (per_key dv) | z (per_key dv)]
    //   -> Mixed (rows, q of every head | k of every head | v of every head), MixerGate z.
    let qkvz = shapes.qkvz_width();
    ops.linear(Buf::Normed, DeltaInProjQkvz, None, Buf::Projected, d, qkvz)?;
    let v_width = per_key * dv;
    let group = Regroup {
        groups: kh,
        group_width: 2 * dk + 2 * v_width,
        out_width: shapes.conv_channels(),
        pieces: &[
            Piece {
                from: 0,
                width: dk,
                to: 0,
            },
            Piece {
                from: dk,
                width: dk,
                to: kw,
            },
            Piece {
                from: 2 * dk,
                width: v_width,
                to: 2 * kw,
            },
        ],
    };
    ops.regroup(Buf::Projected, Buf::Mixed, &group)?;
    let z = Regroup {
        out_width: vw,
        pieces: &[Piece {
            from: 2 * dk + v_width,
            width: v_width,
            to: 0,
        }],
        ..group
    };
    ops.regroup(Buf::Projected, Buf::MixerGate, &z)?;
    // in_proj_ba: per key head [b (per_key) | a (per_key)].
    let heads = delta.value_heads;
    ops.linear(
        Buf::Normed,
        DeltaInProjBa,
        None,
        Buf::Projected,
        d,
        2 * heads,
    )?;
    for (out, from) in [(Buf::Beta, 0), (Buf::Decay, per_key)] {
        let ba = Regroup {
            groups: kh,
            group_width: 2 * per_key,
            out_width: heads,
            pieces: &[Piece {
                from,
                width: per_key,
                to: 0,
            }],
        };
        ops.regroup(Buf::Projected, out, &ba)?;
    }
    // The convolution over q | k | v, then back to separate buffers.
    ops.causal_conv_silu(Buf::Mixed, Buf::Projected, delta, step.batch)?;
    let channels = shapes.conv_channels();
    for (out, from, width) in [(Buf::Q, 0, kw), (Buf::K, kw, kw), (Buf::V, 2 * kw, vw)] {
        let take = Regroup {
            groups: 1,
            group_width: channels,
            out_width: width,
            pieces: &[Piece { from, width, to: 0 }],
        };
        ops.regroup(Buf::Projected, out, &take)?;
    }
    step.capture.activation(ops, CapturePoint::Q, Buf::Q, kw)?;
    step.capture.activation(ops, CapturePoint::K, Buf::K, kw)?;
    ops.delta_rule(DeltaRuleShape {
        batch: step.batch,
        delta: *delta,
    })?;
    ops.gate_activation(Buf::MixerGate, GateActivation::Silu)?;
    step.capture
        .activation(ops, CapturePoint::AttnGate, Buf::MixerGate, vw)?;
    ops.gated_rms_norm(Buf::DeltaCore, Buf::MixerGate, Buf::Attn, dv, eps)?;
    step.capture
        .activation(ops, CapturePoint::AttnInO, Buf::Attn, vw)?;
    ops.linear(Buf::Attn, OProj, None, Buf::SublayerOut, vw, d)?;
    step.capture
        .activation(ops, CapturePoint::AttnOut, Buf::SublayerOut, d)?;
    ops.add(Buf::Hidden, Buf::SublayerOut)
}
