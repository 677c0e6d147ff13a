//! One decoder block, written once over the backend ops of [`BlockOps`]: the step order,
//! which parts of a split layer run what, the capture points and the capture policy. The
//! CPU reference (`cpu/ops.rs`) and the CUDA backend (`cuda/ops.rs`) only implement the
//! ops. Every variation point (router scoring, activation) is an op parameter that each
//! backend matches exhaustively, so a new variant does not compile until both handle it.
//!
//! ```text
//! attention part:     ln1 = norm(h) | h          q [| gate], k, v = ln1 W^T (+ b)
//!                     q, k = qk_norm, clip, rope  attn_in_o = attention(q, k, v) [sinks]
//!                     [attn_in_o *= sigmoid(gate)]
//!                     attn_out = [norm](attn_in_o W_o^T)          h += attn_out
//!   or DeltaNet:      ln1 = norm(h)   q|k|v|z, b|a = ln1 W^T   q, k, v = silu(conv(q|k|v))
//!                     core = delta_rule(q, k, v, b, a)   attn_in_o = gated_norm(core, silu(z))
//!                     attn_out = attn_in_o W_out^T                 h += attn_out
//! feed-forward part:  ln2 = norm(h) | h          dense: down(act(gate) * up)
//!                     MoE: route, experts of the part's range, [shared expert]
//!                     (last part) mlp_out = [norm](out)   h += mlp_out -> resid_post
//! ```

mod attention;
pub(crate) mod buffers;
mod capture;
mod delta_net;
mod feed_forward;

pub(crate) use buffers::{Buf, BufferSet, MixerBuffers};
pub(crate) use capture::CapturePolicy;
pub(crate) use feed_forward::moe_block;

use crate::arch::{
    Activation, DeltaNetSpec, Mixer, ModelSpec, MoeSpec, SharedExpertSpec, WeightRole,
};
use crate::capture::CapturePoint;
use crate::error::Result;
use crate::sequences::Sequences;
use layerstream_planner::split::LayerPart;
use std::ops::Range;

/// Shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape<'a> {
    /// The micro-batch's sequences (each attends within itself only).
    pub batch: &'a Sequences,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; query head `h` reads kv head `h / (heads / kv_heads)`.
    pub kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// `Some(w)`: position p sees positions p-w+1 ..= p only.
    pub sliding_window: Option<usize>,
    /// Score scale, 1/sqrt(head_dim).
    pub scale: f32,
}

/// One piece of a [`Regroup`]: columns `from .. from + width` of every input group go to
/// columns `to + g * width ..` of the output row (group `g`).
#[derive(Debug, Clone, Copy)]
pub struct Piece {
    /// First column within an input group.
    pub from: usize,
    /// Columns per group.
    pub width: usize,
    /// First output column of group 0.
    pub to: usize,
}

/// A regrouping of columns: input rows are `groups` groups of `group_width` values, output
/// rows are `out_width` wide (gated attention's per-head `[query | gate]`, DeltaNet's per
/// key head `[q | k | v | z]` and `[b | a]`).
#[derive(Debug, Clone, Copy)]
pub struct Regroup<'a> {
    /// Groups per input row.
    pub groups: usize,
    /// Values per group.
    pub group_width: usize,
    /// Width of an output row.
    pub out_width: usize,
    /// What goes where.
    pub pieces: &'a [Piece],
}

/// An elementwise activation of a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    /// `1 / (1 + exp(-x))` (gated attention).
    Sigmoid,
    /// `x / (1 + exp(-x))` (DeltaNet's z).
    Silu,
}

/// Shape of one delta-rule call.
#[derive(Debug, Clone, Copy)]
pub struct DeltaRuleShape<'a> {
    /// The micro-batch's sequences (each from zero state).
    pub batch: &'a Sequences,
    /// The mixer.
    pub delta: DeltaNetSpec,
}

/// The ops a backend runs for the block, on the buffers [`Buf`] names (each cut to the
/// micro-batch's rows). A weight role the layer part does not hold is a bug in the block or
/// the spec's tensor table, except where an op says it is optional.
pub(crate) trait BlockOps {
    /// Whether the part's weights hold `role` (norms and biases some configurations have).
    fn has(&self, role: WeightRole) -> bool;
    /// `out = rms_norm(input) * weight`, rows of the weight's width.
    fn rms_norm(&mut self, input: Buf, weight: WeightRole, out: Buf, eps: f32) -> Result<()>;
    /// The same in place.
    fn rms_norm_in_place(&mut self, values: Buf, weight: WeightRole, eps: f32) -> Result<()>;
    /// `out (rows, out_features) = input (rows, in_features) @ weight^T (+ bias)`; `bias` is
    /// used when the part holds it.
    fn linear(
        &mut self,
        input: Buf,
        weight: WeightRole,
        bias: Option<WeightRole>,
        out: Buf,
        in_features: usize,
        out_features: usize,
    ) -> Result<()>;
    /// Clamps every value to `[-limit, limit]`.
    fn clamp(&mut self, values: Buf, limit: f32) -> Result<()>;
    /// Rotary embedding of `heads` heads per row, each row at its position in its sequence
    /// of `batch`.
    fn rope(&mut self, values: Buf, heads: usize, head_dim: usize, batch: &Sequences)
    -> Result<()>;
    /// `Attn = softmax(Q K^T * scale + mask) V` per sequence and head; with `sinks`, also
    /// hands each head's attention mass on position 0 and on each sequence's first delimiter
    /// (summed over queries) to the run's observer. `SublayerOut` is free scratch here.
    fn attention(&mut self, shape: AttentionShape<'_>, sinks: bool) -> Result<()>;
    /// `gate = act(gate) * up`.
    fn gated_activation(&mut self, gate: Buf, up: Buf, activation: Activation) -> Result<()>;
    /// `accumulator += addend`.
    fn add(&mut self, accumulator: Buf, addend: Buf) -> Result<()>;
    /// The router's logits of `input` and its top-k choice, kept for `experts` and the
    /// routing capture.
    fn route(&mut self, input: Buf, moe: &MoeSpec) -> Result<()>;
    /// Routed experts `experts` (of the last `route`) on their tokens of `input`, their
    /// weighted outputs added into `out` in ascending expert order; the first part of a
    /// layer (`experts.start == 0`) overwrites `out` instead.
    fn experts(
        &mut self,
        input: Buf,
        moe: &MoeSpec,
        experts: Range<usize>,
        activation: Activation,
        out: Buf,
    ) -> Result<()>;
    /// `out += [sigmoid(input . w_gate)] * shared_mlp(input)`.
    fn shared_expert(
        &mut self,
        input: Buf,
        shared: SharedExpertSpec,
        activation: Activation,
        out: Buf,
    ) -> Result<()>;
    /// Copies columns of `input` into `out` as `layout` says (`out` columns no piece names
    /// are left as they are).
    fn regroup(&mut self, input: Buf, out: Buf, layout: &Regroup) -> Result<()>;
    /// `values = act(values)`.
    fn gate_activation(&mut self, values: Buf, activation: GateActivation) -> Result<()>;
    /// `values *= gate`, elementwise.
    fn multiply(&mut self, values: Buf, gate: Buf) -> Result<()>;
    /// DeltaNet's depthwise causal convolution and SiLU of `input (rows, channels)` into
    /// `out (rows, channels)`, per sequence from zero history: `out[t, c] = silu(sum_j
    /// w[c, j] input[t - kernel + 1 + j, c])`, with the `DeltaConv` weight.
    fn causal_conv_silu(
        &mut self,
        input: Buf,
        out: Buf,
        delta: &DeltaNetSpec,
        batch: &Sequences,
    ) -> Result<()>;
    /// The gated delta rule of every sequence and value head, from zero state: reads `Q`,
    /// `K` (rows, key width), `V` (rows, value width), `Beta` (b) and `Decay` (a) with
    /// `DeltaALog` and `DeltaDtBias`; writes `DeltaCore (rows, value width)`.
    fn delta_rule(&mut self, shape: DeltaRuleShape<'_>) -> Result<()>;
    /// `out = (DeltaNorm * rms_norm(values)) * gate` over each `head_width` slice of a row.
    fn gated_rms_norm(
        &mut self,
        values: Buf,
        gate: Buf,
        out: Buf,
        head_width: usize,
        eps: f32,
    ) -> Result<()>;
    /// Hands the values at `point`, `(rows, width)`, to the run's observer.
    fn hand_over(&mut self, point: CapturePoint, values: Buf, width: usize) -> Result<()>;
    /// Adds the values at `point` to the layer's statistics.
    fn accumulate(
        &mut self,
        point: CapturePoint,
        values: Buf,
        width: usize,
        threshold: f32,
    ) -> Result<()>;
    /// Hands the last `route`'s decisions to the run's observer.
    fn hand_over_routing(&mut self) -> Result<()>;
    /// Keeps the MoE inputs of the tokens holding massive activations at `resid_post` (for
    /// the expert attribution at the layer's end).
    fn keep_moe_input(&mut self, values: Buf, width: usize) -> Result<()>;
}

/// What one call of [`run_part`] computes.
pub(crate) struct BlockStep<'a> {
    /// The model.
    pub spec: &'a ModelSpec,
    /// The decoder layer.
    pub layer: usize,
    /// Which part of it (a whole layer, attention, or a group of experts).
    pub part: &'a LayerPart,
    /// The micro-batch's sequences (offsets from its first row).
    pub batch: &'a Sequences,
    /// What to capture.
    pub capture: CapturePolicy<'a>,
}

impl<'a> BlockStep<'a> {
    /// `part` of `layer` on a micro-batch of `batch`'s sequences, capturing what `request`
    /// asks for.
    pub fn new(
        spec: &'a ModelSpec,
        layer: usize,
        part: &'a LayerPart,
        batch: &'a Sequences,
        request: &'a crate::executor::RunRequest,
    ) -> Self {
        BlockStep {
            spec,
            layer,
            part,
            batch,
            capture: CapturePolicy { request, layer },
        }
    }
}

/// Runs `step.part` of a decoder layer on one micro-batch (`Buf::Hidden`, updated in place).
pub(crate) fn run_part<O: BlockOps>(ops: &mut O, step: &BlockStep) -> Result<()> {
    if step.part.runs_attention() {
        match &step.spec.mixers[step.layer] {
            Mixer::Attention { gated } => attention::sublayer(ops, step, *gated)?,
            Mixer::DeltaNet(delta) => delta_net::sublayer(ops, step, delta)?,
        }
    }
    if step.part.runs_feed_forward() {
        feed_forward::sublayer(ops, step)?;
    }
    Ok(())
}
