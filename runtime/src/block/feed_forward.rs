//! The feed-forward sublayer, or the share of it a split layer's part holds:
//! `hidden += mlp(norm(hidden))` once the part finishing the block has run.

use super::{BlockOps, BlockStep, Buf};
use crate::arch::{Activation, FeedForward, MoeSpec, WeightRole};
use crate::capture::CapturePoint;
use crate::error::Result;
use std::ops::Range;

pub(super) fn sublayer<O: BlockOps>(ops: &mut O, step: &BlockStep) -> Result<()> {
    use WeightRole::*;
    let spec = step.spec;
    let (d, part) = (spec.hidden_size, step.part);
    let eps = spec.block.norm_eps;
    let activation = spec.block.activation;
    let num_experts = spec.moe(step.layer).map_or(0, |m| m.num_experts);
    let out = Buf::FeedForwardOut;
    // MLP input: the normed residual (pre-norm) or the residual itself (olmo2).
    let input = match ops.has(MlpInputNorm) {
        true => {
            ops.rms_norm(Buf::Hidden, MlpInputNorm, Buf::Normed, eps)?;
            Buf::Normed
        }
        false => Buf::Hidden,
    };
    if part.starts_feed_forward() {
        step.capture.activation(ops, CapturePoint::Ln2, input, d)?;
    }
    match &spec.feed_forward[step.layer] {
        FeedForward::Dense { intermediate } => {
            let inter = *intermediate;
            ops.linear(input, GateProj, Some(GateBias), Buf::Gate, d, inter)?;
            ops.linear(input, UpProj, Some(UpBias), Buf::Up, d, inter)?;
            ops.gated_activation(Buf::Gate, Buf::Up, activation)?;
            ops.linear(Buf::Gate, DownProj, Some(DownBias), out, inter, d)?;
        }
        FeedForward::Moe(moe) => {
            moe_block(ops, moe, input, part.experts(num_experts), activation, out)?;
            if part.starts_feed_forward() {
                step.capture.routing(ops)?;
            }
        }
    }
    if !part.finishes_feed_forward(num_experts) {
        return Ok(());
    }
    if ops.has(MlpOutputNorm) {
        ops.rms_norm_in_place(out, MlpOutputNorm, eps)?;
    }
    step.capture.activation(ops, CapturePoint::MlpOut, out, d)?;
    ops.add(Buf::Hidden, out)?;
    step.capture
        .activation(ops, CapturePoint::ResidPost, Buf::Hidden, d)?;
    if num_experts > 0 && input == Buf::Normed {
        ops.keep_moe_input(Buf::Normed, d)?;
    }
    Ok(())
}

/// The mixture-of-experts block on `input (rows, hidden)` into `out (rows, hidden)`. Only
/// routed experts in `experts` run (a split layer's part): the first part overwrites `out`,
/// later ones add to it in ascending expert order, and the last adds the shared expert, so
/// the sums are bit for bit the unsplit ones.
pub(crate) fn moe_block<O: BlockOps>(
    ops: &mut O,
    moe: &MoeSpec,
    input: Buf,
    experts: Range<usize>,
    activation: Activation,
    out: Buf,
) -> Result<()> {
    ops.route(input, moe)?;
    let finishes = experts.end == moe.num_experts;
    ops.experts(input, moe, experts, activation, out)?;
    if let Some(shared) = moe.shared_expert.filter(|_| finishes) {
        ops.shared_expert(input, shared, activation, out)?;
    }
    Ok(())
}
