//! A mixture-of-experts block on the CPU: route, group tokens by expert (permute), run each
//! chosen expert once on its tokens, and add the weighted outputs back (unpermute) in
//! ascending expert order, the order transformers sums them in. No per-token loop runs an
//! expert; this is the shape the GPU path takes.

use super::layer::LayerWeights;
use super::linear::linear;
use super::mlp::{GatedMlpWeights, gated_mlp};
use super::ops::CpuOps;
use super::rope::RopeTable;
use crate::arch::{Activation, MoeSpec, RouterScoring, SharedExpertSpec, WeightRole};
use crate::block::{self, Buf, BufferSet};
use crate::capture::Routing;
use std::ops::Range;

/// Router logits -> top-k experts and weights, per token.
pub fn route(logits: Vec<f32> /* (tokens, num_experts) */, moe: &MoeSpec) -> Routing {
    let (num_experts, top_k) = (moe.num_experts, moe.top_k);
    let tokens = logits.len() / num_experts;
    let mut experts = Vec::with_capacity(tokens * top_k);
    let mut weights = Vec::with_capacity(tokens * top_k);
    let mut probabilities = vec![0f32; num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    for row in logits.chunks_exact(num_experts) {
        match moe.scoring {
            RouterScoring::Softmax => softmax(row, &mut probabilities),
        }
        order.clear();
        order.extend(0..num_experts);
        // Largest probability first; equal ones by lower expert index.
        order.sort_by(|&a, &b| {
            probabilities[b]
                .total_cmp(&probabilities[a])
                .then(a.cmp(&b))
        });
        let chosen = &order[..top_k];
        let sum: f32 = chosen.iter().map(|&e| probabilities[e]).sum();
        for &e in chosen {
            experts.push(e as u32);
            let weight = probabilities[e];
            weights.push(if moe.normalize_top_k {
                weight / sum
            } else {
                weight
            });
        }
    }
    Routing {
        num_experts,
        top_k,
        logits,
        experts,
        weights,
    }
}

fn softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f32;
    for (p, &x) in out.iter_mut().zip(logits) {
        *p = (x - max).exp();
        sum += *p;
    }
    out.iter_mut().for_each(|p| *p /= sum);
}

/// The router's logits of `input (tokens, hidden)` and its top-k choice.
pub fn route_tokens(
    input: &[f32],  // (tokens, hidden)
    router: &[f32], // (num_experts, hidden)
    moe: &MoeSpec,
    threads: usize,
) -> Routing {
    let hidden = router.len() / moe.num_experts;
    let tokens = input.len() / hidden;
    let mut logits = vec![0f32; tokens * moe.num_experts]; // (tokens, num_experts)
    linear(
        input,
        router,
        None,
        &mut logits,
        hidden,
        moe.num_experts,
        threads,
    );
    route(logits, moe)
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
        gate_bias: None,
        up: weights.get(ExpertUp(expert)),
        up_bias: None,
        down: weights.get(ExpertDown(expert)),
        down_bias: None,
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
/// layer, `experts.start == 0`, overwrites `output` first). Tokens are grouped by expert
/// (permute), each expert runs once on its group, and the rows go back weighted (unpermute).
#[allow(clippy::too_many_arguments)]
pub fn run_experts(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    moe: &MoeSpec,
    routing: &Routing,
    experts: Range<usize>,
    activation: Activation,
    output: &mut [f32], // (tokens, hidden)
    threads: usize,
) {
    let tokens = routing.experts.len() / moe.top_k;
    let hidden = input.len() / tokens.max(1);
    // Permute: assignments grouped by expert, tokens ascending within an expert.
    let mut per_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); moe.num_experts];
    for token in 0..tokens {
        for slot in 0..moe.top_k {
            let i = token * moe.top_k + slot;
            per_expert[routing.experts[i] as usize].push((token, routing.weights[i]));
        }
    }
    let busiest = per_expert.iter().map(Vec::len).max().unwrap_or(0);
    let inter = moe.expert_intermediate;
    let mut gathered = vec![0f32; busiest * hidden]; // (expert tokens, hidden)
    let mut expert_out = vec![0f32; busiest * hidden]; // (expert tokens, hidden)
    let mut gate = vec![0f32; busiest * inter]; // (expert tokens, expert_intermediate)
    let mut up = vec![0f32; busiest * inter]; // (expert tokens, expert_intermediate)
    if experts.start == 0 {
        output.fill(0.0);
    }
    for (expert, assigned) in per_expert
        .iter()
        .enumerate()
        .take(experts.end)
        .skip(experts.start)
    {
        let n = assigned.len();
        if n == 0 {
            continue;
        }
        for (row, &(token, _)) in gathered.chunks_exact_mut(hidden).zip(assigned) {
            row.copy_from_slice(&input[token * hidden..(token + 1) * hidden]);
        }
        expert_mlp(
            weights,
            expert,
            moe,
            activation,
            &gathered[..n * hidden],
            &mut gate[..n * inter],
            &mut up[..n * inter],
            &mut expert_out[..n * hidden],
            threads,
        );
        // Unpermute: weighted add into each token's row.
        for (y, &(token, weight)) in expert_out.chunks_exact(hidden).zip(assigned) {
            let out = &mut output[token * hidden..(token + 1) * hidden];
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
    let rope = RopeTable::new(&[], 0);
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
        },
        hidden_size: hidden,
        seq_len: 1,
        threads,
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
pub(crate) fn add_shared_expert(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    shared: SharedExpertSpec,
    activation: Activation,
    hidden: usize,
    output: &mut [f32], // (tokens, hidden)
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
    let mut gate = vec![0f32; tokens * intermediate]; // (tokens, intermediate)
    let mut up = vec![0f32; tokens * intermediate]; // (tokens, intermediate)
    let mut shared_out = vec![0f32; tokens * hidden]; // (tokens, hidden)
    gated_mlp(
        input,
        &mlp,
        &mut gate,
        &mut up,
        &mut shared_out,
        hidden,
        intermediate,
        activation,
        threads,
    );
    let mut scale = vec![1f32; tokens]; // (tokens)
    if shared.sigmoid_gate {
        linear(
            input,
            weights.get(SharedExpertGate),
            None,
            &mut scale,
            hidden,
            1,
            threads,
        );
        scale
            .iter_mut()
            .for_each(|g| *g = 1.0 / (1.0 + (-*g).exp()));
    }
    for ((out, y), g) in output
        .chunks_exact_mut(hidden)
        .zip(shared_out.chunks_exact(hidden))
        .zip(&scale)
    {
        out.iter_mut().zip(y).for_each(|(o, &v)| *o += g * v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ExpertNaming;

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
    fn top_k_is_ordered_and_optionally_renormalised() {
        let logits = vec![0.0, 2.0, 1.0, -1.0, 3.0, 3.0, 0.0, 0.0];
        let plain = route(logits.clone(), &spec(false));
        assert_eq!(plain.experts, vec![1, 2, 0, 1]); // tie 3.0/3.0: lower index first
        let e: Vec<f64> = [0.0f64, 2.0, 1.0, -1.0].iter().map(|x| x.exp()).collect();
        let total: f64 = e.iter().sum();
        assert!((plain.weights[0] as f64 - e[1] / total).abs() < 1e-6);
        assert!((plain.weights[1] as f64 - e[2] / total).abs() < 1e-6);
        let normalised = route(logits, &spec(true));
        assert!((normalised.weights[0] + normalised.weights[1] - 1.0).abs() < 1e-6);
        assert!((normalised.weights[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn expert_groups_add_up_to_the_whole_block_bit_for_bit() {
        let (hidden, inter, tokens) = (16, 8, 9);
        let moe = MoeSpec {
            shared_expert: Some(crate::arch::SharedExpertSpec {
                intermediate: 12,
                sigmoid_gate: true,
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
