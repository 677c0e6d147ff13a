//! A mixture-of-experts block on the CPU: route, group tokens by expert (permute), run each
//! chosen expert once on its tokens, and add the weighted outputs back (unpermute) in
//! ascending expert order, the order transformers sums them in. No per-token loop runs an
//! expert; this is the shape the GPU path takes.

use super::layer::LayerWeights;
use super::linear::linear;
use super::mlp::{GatedMlpWeights, gated_mlp};
use super::ops::CpuOps;
use super::rope::RopeTable;
use crate::arch::{Activation, MoeSpec, SharedExpertSpec, WeightRole};
use crate::block::{self, Buf, BufferSet, MixerBuffers};
use crate::capture::Routing;
use layerstream_planner::memory::{
    BufferName, LayerShapes, MoeShapes, ScratchFor, ScratchManifest,
};
use std::ops::Range;

/// The MoE block's buffers of one micro-batch on the CPU, as the planner's manifest lists
/// them.
pub struct MoeScratch {
    pub(crate) logits: Vec<f32>, // (rows, experts)
    positions: Vec<u32>,         // (rows, top_k): each assignment's row in the grouped buffers
    counts: Vec<u32>,            // (experts)
    offsets: Vec<u32>,           // (experts)
    gathered: Vec<f32>,          // (rows * top_k, hidden), grouped by expert
    expert_out: Vec<f32>,        // (rows * top_k, hidden), grouped by expert
    gate: Vec<f32>,              // (rows, expert_intermediate): an expert sees a token at most once
    up: Vec<f32>,                // (rows, expert_intermediate)
    pub(crate) shared: Option<SharedScratch>,
}

/// The shared expert's buffers.
pub struct SharedScratch {
    gate: Vec<f32>,        // (rows, shared_intermediate)
    up: Vec<f32>,          // (rows, shared_intermediate)
    out: Vec<f32>,         // (rows, hidden)
    gate_logits: Vec<f32>, // (rows)
}

impl SharedScratch {
    /// Buffers for `rows` tokens.
    pub fn new(rows: usize, intermediate: usize, hidden: usize) -> Self {
        SharedScratch {
            gate: vec![0.0; rows * intermediate],
            up: vec![0.0; rows * intermediate],
            out: vec![0.0; rows * hidden],
            gate_logits: vec![0.0; rows],
        }
    }
}

impl MoeScratch {
    /// The MoE buffers `manifest` lists. (The chosen experts and weights live in the
    /// [`Routing`] handed to the observer.)
    pub fn new(manifest: &ScratchManifest) -> Self {
        use BufferName::*;
        let f32s = |name| vec![0f32; manifest.count(name)];
        let u32s = |name| vec![0u32; manifest.count(name)];
        MoeScratch {
            logits: f32s(RouterLogits),
            positions: u32s(Positions),
            counts: u32s(ExpertCounts),
            offsets: u32s(ExpertOffsets),
            gathered: f32s(Gathered),
            expert_out: f32s(ExpertOut),
            gate: f32s(ExpertGate),
            up: f32s(ExpertUp),
            shared: manifest.lists(SharedGate).then(|| SharedScratch {
                gate: f32s(SharedGate),
                up: f32s(SharedUp),
                out: f32s(SharedOut),
                gate_logits: f32s(SharedGateLogits),
            }),
        }
    }

    /// Bytes its buffers hold, with the routing's chosen experts and weights.
    pub fn allocated_bytes(&self) -> u64 {
        let f32s = self.logits.len() + self.gathered.len() + self.expert_out.len();
        let f32s = f32s + self.gate.len() + self.up.len();
        let u32s = self.positions.len() + self.counts.len() + self.offsets.len();
        let shared = self.shared.as_ref().map_or(0, |s| {
            s.gate.len() + s.up.len() + s.out.len() + s.gate_logits.len()
        });
        // The chosen experts and weights, (rows, top_k) each, as the Routing holds them.
        let chosen = 2 * self.positions.len();
        4 * (f32s + u32s + shared + chosen) as u64
    }
}

/// One routed expert's gated MLP on its tokens' rows `input (n, hidden)` into
/// `output (n, hidden)`; `gate` and `up` are `(n, expert_intermediate)` scratch.
#[allow(clippy::too_many_arguments)]
pub fn expert_mlp(
    weights: &LayerWeights,
    expert: usize,
    moe: &MoeSpec,
    activation: Activation,
    input: &[f32],      // (n, hidden)
    gate: &mut [f32],   // (n, expert_intermediate)
    up: &mut [f32],     // (n, expert_intermediate)
    output: &mut [f32], // (n, hidden)
    threads: usize,
) {
    use WeightRole::*;
    let mlp = GatedMlpWeights {
        gate: weights.get(ExpertGate(expert)),
        gate_bias: weights.maybe(ExpertGateBias(expert)),
        up: weights.get(ExpertUp(expert)),
        up_bias: weights.maybe(ExpertUpBias(expert)),
        down: weights.get(ExpertDown(expert)),
        down_bias: weights.maybe(ExpertDownBias(expert)),
    };
    let hidden = mlp.gate.len() / moe.expert_intermediate;
    gated_mlp(
        input,
        &mlp,
        gate,
        up,
        output,
        hidden,
        moe.expert_intermediate,
        activation,
        threads,
    );
}

/// Routed experts `experts` of `routing` on `input (tokens, hidden)`, their weighted outputs
/// added into `output (tokens, hidden)` in ascending expert order (the first part of a
/// layer, `experts.start == 0`, overwrites `output` first). Assignments are grouped by
/// expert, tokens ascending within an expert (permute); each expert runs once on its rows;
/// each token then adds its experts' rows, lowest expert first (unpermute), the order
/// transformers sums them in.
#[allow(clippy::too_many_arguments)]
pub fn run_experts(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    moe: &MoeSpec,
    routing: &Routing,
    experts: Range<usize>,
    activation: Activation,
    output: &mut [f32], // (tokens, hidden)
    buffers: &mut MoeScratch,
    threads: usize,
) {
    let (top_k, inter) = (moe.top_k, moe.expert_intermediate);
    let assignments = routing.experts.len();
    let hidden = input.len() / (assignments / top_k).max(1);
    let b = buffers;
    // Permute: counts, offsets, then each assignment's grouped row.
    let counts = &mut b.counts[..moe.num_experts];
    let offsets = &mut b.offsets[..moe.num_experts];
    counts.fill(0);
    routing
        .experts
        .iter()
        .for_each(|&e| counts[e as usize] += 1);
    let mut next = 0;
    for (offset, &count) in offsets.iter_mut().zip(counts.iter()) {
        *offset = next;
        next += count;
    }
    counts.copy_from_slice(offsets); // now the next free row of each expert
    for (i, &e) in routing.experts.iter().enumerate() {
        let row = counts[e as usize] as usize;
        counts[e as usize] += 1;
        b.positions[i] = row as u32;
        if experts.contains(&(e as usize)) {
            let token = i / top_k;
            b.gathered[row * hidden..(row + 1) * hidden]
                .copy_from_slice(&input[token * hidden..(token + 1) * hidden]);
        }
    }
    for expert in experts.clone() {
        let (start, end) = (offsets[expert] as usize, counts[expert] as usize);
        let n = end - start;
        if n == 0 {
            continue;
        }
        expert_mlp(
            weights,
            expert,
            moe,
            activation,
            &b.gathered[start * hidden..end * hidden],
            &mut b.gate[..n * inter],
            &mut b.up[..n * inter],
            &mut b.expert_out[start * hidden..end * hidden],
            threads,
        );
    }
    // Unpermute: each token adds its experts' weighted rows, lowest expert first.
    if experts.start == 0 {
        output.fill(0.0);
    }
    for (token, out) in output.chunks_exact_mut(hidden).enumerate() {
        let slots = token * top_k..(token + 1) * top_k;
        let mut done = 0u64; // bit s: slot s added (top_k <= 64)
        for _ in 0..top_k {
            let Some(slot) = slots
                .clone()
                .filter(|&i| done >> (i - slots.start) & 1 == 0)
                .min_by_key(|&i| routing.experts[i])
            else {
                break;
            };
            done |= 1 << (slot - slots.start);
            if !experts.contains(&(routing.experts[slot] as usize)) {
                continue;
            }
            let row = b.positions[slot] as usize;
            let (weight, y) = (
                routing.weights[slot],
                &b.expert_out[row * hidden..(row + 1) * hidden],
            );
            out.iter_mut().zip(y).for_each(|(o, &v)| *o += v * weight);
        }
    }
}

/// Runs the MoE block on `input (tokens, hidden)` into `output (tokens, hidden)` with the
/// block's step order (`block::moe_block`) and returns the routing it used. Only routed
/// experts in `experts` run (a split layer's part), as there.
pub fn moe_block(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    moe: &MoeSpec,
    hidden: usize,
    output: &mut [f32], // (tokens, hidden)
    experts: Range<usize>,
    threads: usize,
) -> Routing {
    let mut input = input.to_vec();
    let tokens = input.len() / hidden;
    let rope = RopeTable::new(&[], 0, 1.0);
    let shapes = LayerShapes {
        hidden,
        q_width: 0,
        kv_width: 0,
        dense_intermediate: 0,
        mixer: layerstream_planner::memory::MixerShapes::Attention { gated: false },
        moe: Some(MoeShapes {
            experts: moe.num_experts,
            top_k: moe.top_k,
            expert_intermediate: moe.expert_intermediate,
            shared_intermediate: moe.shared_expert.map_or(0, |s| s.intermediate),
        }),
        tensors: Default::default(),
    };
    let mut buffers = MoeScratch::new(&ScratchManifest::for_layer(
        &shapes,
        tokens,
        ScratchFor::Cpu,
    ));
    let mut ops = CpuOps {
        weights,
        rope: &rope,
        buffers: BufferSet {
            hidden: &mut [],
            normed: &mut input,
            q: &mut [],
            k: &mut [],
            v: &mut [],
            attn: &mut [],
            sublayer_out: &mut [],
            gate: &mut [],
            up: &mut [],
            accumulator: Some(output),
            mixer: MixerBuffers {
                projected: &mut [],
                mixer_gate: &mut [],
                mixed: &mut [],
                beta: &mut [],
                decay: &mut [],
                delta_core: &mut [],
            },
        },
        delta_state: &mut [],
        hidden_size: hidden,
        threads,
        moe: Some(&mut buffers),
        routing: None,
        capture: None,
    };
    let run = block::moe_block(
        &mut ops,
        moe,
        Buf::Normed,
        experts,
        Activation::Silu,
        Buf::FeedForwardOut,
    );
    run.expect("the CPU ops do not fail");
    ops.routing.expect("the block routed")
}

/// `output += [sigmoid(x . w_gate)] * shared_mlp(x)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_shared_expert(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    shared: SharedExpertSpec,
    activation: Activation,
    hidden: usize,
    output: &mut [f32], // (tokens, hidden)
    buffers: &mut SharedScratch,
    threads: usize,
) {
    use WeightRole::*;
    let (tokens, intermediate) = (input.len() / hidden, shared.intermediate);
    let mlp = GatedMlpWeights {
        gate: weights.get(SharedGate),
        gate_bias: None,
        up: weights.get(SharedUp),
        up_bias: None,
        down: weights.get(SharedDown),
        down_bias: None,
    };
    let shared_out = &mut buffers.out[..tokens * hidden]; // (tokens, hidden)
    gated_mlp(
        input,
        &mlp,
        &mut buffers.gate[..tokens * intermediate],
        &mut buffers.up[..tokens * intermediate],
        shared_out,
        hidden,
        intermediate,
        activation,
        threads,
    );
    if !shared.sigmoid_gate {
        output
            .iter_mut()
            .zip(shared_out.iter())
            .for_each(|(o, &v)| *o += v);
        return;
    }
    let scale = &mut buffers.gate_logits[..tokens]; // (tokens)
    linear(
        input,
        weights.get(SharedExpertGate),
        None,
        scale,
        hidden,
        1,
        threads,
    );
    scale
        .iter_mut()
        .for_each(|g| *g = 1.0 / (1.0 + (-*g).exp()));
    for ((out, y), g) in output
        .chunks_exact_mut(hidden)
        .zip(shared_out.chunks_exact(hidden))
        .zip(scale.iter())
    {
        out.iter_mut().zip(y).for_each(|(o, &v)| *o += g * v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{ExpertNaming, RouterScoring};

    fn spec(normalize_top_k: bool) -> MoeSpec {
        MoeSpec {
            num_experts: 4,
            top_k: 2,
            expert_intermediate: 8,
            scoring: RouterScoring::Softmax,
            normalize_top_k,
            shared_expert: None,
            naming: ExpertNaming::MlpExperts,
        }
    }

    #[test]
    fn expert_groups_add_up_to_the_whole_block_bit_for_bit() {
        let (hidden, inter, tokens) = (16, 8, 9);
        let moe = MoeSpec {
            shared_expert: Some(crate::arch::SharedExpertSpec {
                intermediate: 12,
                sigmoid_gate: true,
                module: "shared_expert",
            }),
            ..spec(false)
        };
        let mut state = 12345u32;
        let mut values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let mut tensors = std::collections::BTreeMap::new();
        tensors.insert(WeightRole::Router, values(4 * hidden));
        for e in 0..4 {
            tensors.insert(WeightRole::ExpertGate(e), values(inter * hidden));
            tensors.insert(WeightRole::ExpertUp(e), values(inter * hidden));
            tensors.insert(WeightRole::ExpertDown(e), values(hidden * inter));
        }
        tensors.insert(WeightRole::SharedGate, values(12 * hidden));
        tensors.insert(WeightRole::SharedUp, values(12 * hidden));
        tensors.insert(WeightRole::SharedDown, values(hidden * 12));
        tensors.insert(WeightRole::SharedExpertGate, values(hidden));
        let weights = LayerWeights::from_tensors(tensors);
        let input = values(tokens * hidden);
        let mut whole = vec![0f32; tokens * hidden];
        let routing = moe_block(&input, &weights, &moe, hidden, &mut whole, 0..4, 2);
        let mut grouped = vec![f32::NAN; tokens * hidden];
        for group in [0..1, 1..3, 3..4] {
            let again = moe_block(&input, &weights, &moe, hidden, &mut grouped, group, 2);
            assert_eq!(again.experts, routing.experts);
        }
        assert_eq!(grouped, whole);
    }
}
