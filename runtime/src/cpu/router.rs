//! A MoE router on the host: logits, then each token's top-k experts and their weights by
//! the spec's [`RouterScoring`]. The analysis reuses [`choose_sigmoid`] to tell what a
//! selection bias changed.

use super::layer::LayerWeights;
use super::linear::linear;
use crate::arch::{MoeSpec, RouterScoring, WeightRole};
use crate::capture::Routing;

/// The router's logits of `input (tokens, hidden)` into `logits (tokens, num_experts)` (with
/// the layer's router bias, GPT-OSS) and its top-k choice (with its selection bias, GLM-4.5).
pub fn route_tokens(
    input: &[f32], // (tokens, hidden)
    weights: &LayerWeights,
    logits: &mut [f32], // (>= tokens * num_experts)
    moe: &MoeSpec,
    threads: usize,
) -> Routing {
    let router = weights.get(WeightRole::Router); // (num_experts, hidden)
    let hidden = router.len() / moe.num_experts;
    let tokens = input.len() / hidden;
    let logits = &mut logits[..tokens * moe.num_experts];
    let bias = weights.maybe(WeightRole::RouterBias);
    linear(
        input,
        router,
        bias,
        logits,
        hidden,
        moe.num_experts,
        threads,
    );
    let selection_bias = weights.maybe(WeightRole::RouterSelectionBias);
    route(logits.to_vec(), moe, selection_bias)
}

/// Router logits -> top-k experts (best first) and their weights, per token.
/// `selection_bias (num_experts)`: the sigmoid router's, added to choose only.
pub fn route(
    logits: Vec<f32>, // (tokens, num_experts)
    moe: &MoeSpec,
    selection_bias: Option<&[f32]>,
) -> Routing {
    let (num_experts, top_k) = (moe.num_experts, moe.top_k);
    let tokens = logits.len() / num_experts;
    let mut experts = Vec::with_capacity(tokens * top_k);
    let mut weights = Vec::with_capacity(tokens * top_k);
    let mut scores = vec![0f32; num_experts];
    let mut order: Vec<usize> = Vec::with_capacity(num_experts);
    let mut chosen_weights = vec![0f32; top_k];
    for row in logits.chunks_exact(num_experts) {
        match moe.scoring {
            RouterScoring::Softmax => {
                softmax(row, &mut scores);
                top_k_of(&scores, top_k, &mut order);
                for (w, &e) in chosen_weights.iter_mut().zip(&order) {
                    *w = scores[e];
                }
            }
            RouterScoring::TopKSoftmax => {
                // The softmax over the chosen logits only (transformers' GptOssTopKRouter).
                top_k_of(row, top_k, &mut order);
                let chosen: Vec<f32> = order.iter().map(|&e| row[e]).collect();
                softmax(&chosen, &mut chosen_weights);
            }
            RouterScoring::Sigmoid { .. } => {
                let bias = selection_bias.expect("the sigmoid router's selection bias is loaded");
                choose_sigmoid(row, bias, moe.scoring, top_k, &mut scores, &mut order);
                for (w, &e) in chosen_weights.iter_mut().zip(&order) {
                    *w = sigmoid(row[e]);
                }
            }
        }
        normalize_and_scale(&mut chosen_weights, moe);
        experts.extend(order.iter().map(|&e| e as u32));
        weights.extend_from_slice(&chosen_weights);
    }
    Routing {
        num_experts,
        top_k,
        logits,
        experts,
        weights,
        scoring: moe.scoring,
    }
}

/// Divides the chosen weights by their sum when the spec normalizes (the sigmoid router's
/// sum + 1e-20, as transformers), then scales them (`routed_scaling_factor`).
fn normalize_and_scale(weights: &mut [f32], moe: &MoeSpec) {
    let sum: f32 = weights.iter().sum();
    match moe.scoring {
        RouterScoring::Sigmoid { scaling, .. } => {
            if moe.normalize_top_k {
                let denominator = sum + 1e-20;
                weights.iter_mut().for_each(|w| *w /= denominator);
            }
            weights.iter_mut().for_each(|w| *w *= scaling);
        }
        RouterScoring::Softmax | RouterScoring::TopKSoftmax => {
            if moe.normalize_top_k {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
        }
    }
}

/// `1 / (1 + e^-x)` in f32.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The sigmoid router's choice for one token, into `order` (best first by the biased score):
/// `scores (num_experts)` gets `sigmoid(logits) + bias`; groups of `E / groups` experts are
/// ranked by the sum of their two best scores, the best `top_groups` kept, and the top k of
/// the kept experts chosen (equal scores: the lower index first, for groups and experts).
pub fn choose_sigmoid(
    logits: &[f32], // (num_experts)
    bias: &[f32],   // (num_experts)
    scoring: RouterScoring,
    top_k: usize,
    scores: &mut [f32], // (num_experts)
    order: &mut Vec<usize>,
) {
    let RouterScoring::Sigmoid {
        groups, top_groups, ..
    } = scoring
    else {
        unreachable!("choose_sigmoid is called for the sigmoid router only");
    };
    for ((s, &l), &b) in scores.iter_mut().zip(logits).zip(bias) {
        *s = sigmoid(l) + b;
    }
    let per_group = logits.len() / groups;
    if groups > 1 {
        let group_score: Vec<f32> = scores
            .chunks_exact(per_group)
            .map(|group| {
                let mut best = [f32::NEG_INFINITY; 2];
                for &s in group {
                    if s > best[0] {
                        best = [s, best[0]];
                    } else if s > best[1] {
                        best[1] = s;
                    }
                }
                best[0] + best[1]
            })
            .collect();
        let mut kept = Vec::with_capacity(top_groups);
        top_k_of(&group_score, top_groups, &mut kept);
        for (g, group) in scores.chunks_exact_mut(per_group).enumerate() {
            if !kept.contains(&g) {
                group.fill(f32::NEG_INFINITY);
            }
        }
    }
    top_k_of(scores, top_k, order);
}

/// The indices of the `k` largest `values` into `order`, largest first; equal ones by the
/// lower index.
fn top_k_of(values: &[f32], k: usize, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..values.len());
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
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

    /// GPT-OSS's router: the top k of the logits, then a softmax over those k only.
    #[test]
    fn top_k_then_softmax_weighs_the_chosen_logits_only() {
        let moe = MoeSpec {
            scoring: RouterScoring::TopKSoftmax,
            ..spec(false)
        };
        let routing = route(vec![0.5, 3.0, -1.0, 2.0, 1.0, 1.0, 1.0, 0.0], &moe, None);
        assert_eq!(routing.experts, vec![1, 3, 0, 1]);
        let e = (1.0f32).exp();
        let expect = [e / (e + 1.0), 1.0 / (e + 1.0), 0.5, 0.5];
        for (got, want) in routing.weights.iter().zip(expect) {
            assert!((got - want).abs() < 1e-6, "{:?}", routing.weights);
        }
    }

    #[test]
    fn top_k_is_ordered_and_optionally_renormalised() {
        let logits = vec![0.0, 2.0, 1.0, -1.0, 3.0, 3.0, 0.0, 0.0];
        let plain = route(logits.clone(), &spec(false), None);
        assert_eq!(plain.experts, vec![1, 2, 0, 1]); // tie 3.0/3.0: lower index first
        let e: Vec<f64> = [0.0f64, 2.0, 1.0, -1.0].iter().map(|x| x.exp()).collect();
        let total: f64 = e.iter().sum();
        assert!((plain.weights[0] as f64 - e[1] / total).abs() < 1e-6);
        assert!((plain.weights[1] as f64 - e[2] / total).abs() < 1e-6);
        let normalised = route(logits, &spec(true), None);
        assert!((normalised.weights[0] + normalised.weights[1] - 1.0).abs() < 1e-6);
        assert!((normalised.weights[2] - 0.5).abs() < 1e-6);
    }

    fn sigmoid_spec(groups: usize, top_groups: usize, scaling: f32) -> MoeSpec {
        MoeSpec {
            num_experts: 8,
            top_k: 2,
            scoring: RouterScoring::Sigmoid {
                groups,
                top_groups,
                scaling,
            },
            ..spec(true)
        }
    }

    /// The bias chooses (a negative one can push an expert out) but never weighs: the
    /// weights are the unbiased sigmoids, normalized, times the scaling factor.
    #[test]
    fn the_selection_bias_chooses_and_the_unbiased_sigmoids_weigh() {
        let logits = vec![2.0, 1.5, 1.0, 0.0, -1.0, -2.0, 0.5, 0.2];
        let bias = [-0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6];
        let moe = sigmoid_spec(1, 1, 2.5);
        let routing = route(logits.clone(), &moe, Some(&bias));
        // Biased: 0: 0.38, 1: 0.82, 2: 0.73, 7: 1.15.
        assert_eq!(routing.experts, vec![7, 1]);
        let (s7, s1) = (sigmoid(0.2), sigmoid(1.5));
        let expect = [2.5 * s7 / (s7 + s1 + 1e-20), 2.5 * s1 / (s7 + s1 + 1e-20)];
        for (got, want) in routing.weights.iter().zip(expect) {
            assert!((got - want).abs() < 1e-6, "{:?}", routing.weights);
        }
    }

    /// Two groups of four: group 1 (experts 4..8) has the larger sum of its two best biased
    /// scores although expert 0 alone is the best; with one group kept, expert 0 cannot win.
    #[test]
    fn groups_are_ranked_by_their_two_best_and_the_others_excluded() {
        let logits = vec![4.0, -3.0, -3.0, -3.0, 1.0, 1.2, -3.0, 0.9];
        let bias = [0.0; 8];
        let grouped = route(logits.clone(), &sigmoid_spec(2, 1, 1.0), Some(&bias));
        assert_eq!(grouped.experts, vec![5, 4]);
        let ungrouped = route(logits, &sigmoid_spec(1, 1, 1.0), Some(&bias));
        assert_eq!(ungrouped.experts, vec![0, 5]);
    }
}
