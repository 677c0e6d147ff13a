//! What a MoE layer's router did with the workload, kept per sequence so the analysis can
//! resample sequences: tokens per expert (top-k assignments), the per-token entropy of the
//! router's probabilities (the softmax of the logits; for the sigmoid router, its sigmoid
//! scores normalized to sum to 1), and for the sigmoid router what its selection bias
//! changed (the choice recomputed without it). Filled from the routing decisions both
//! backends hand over per micro-batch; a micro-batch handed over again (after an
//! out-of-memory retry) replaces its sequences' entries instead of adding to them.

use crate::arch::RouterScoring;
use crate::capture::Routing;
use crate::cpu::router::{choose_sigmoid, sigmoid};
use crate::sequences::Sequences;
use serde::{Deserialize, Serialize};

/// Bins of the per-token entropy histogram, over [0, ln E].
pub const ENTROPY_BINS: usize = 20;

/// One sequence's routing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SequenceRouting {
    /// Per expert: tokens of the sequence that chose it.
    pub tokens_per_expert: Vec<u64>,
    /// Sum over the sequence's tokens of the router entropy (nats).
    pub entropy_sum: f64,
    /// Tokens per bin of entropy / ln E (`ENTROPY_BINS` equal bins over [0, 1]).
    pub entropy_histogram: Vec<u64>,
    /// The sigmoid router's choice without its selection bias (absent for other routers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unbiased: Option<UnbiasedChoice>,
}

/// One sequence's routing had the sigmoid router chosen by its scores alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnbiasedChoice {
    /// Per expert: tokens that would have chosen it.
    pub tokens_per_expert: Vec<u64>,
    /// Tokens whose set of chosen experts the bias changed.
    pub tokens_changed: u64,
    /// Top-k assignments the bias changed (experts chosen with it, not without).
    pub assignments_changed: u64,
}

/// How a MoE layer's router spread the workload over its experts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterSummary {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Tokens routed.
    pub tokens: u64,
    /// Per expert: how many tokens chose it (top-k assignments; they sum to tokens x top_k).
    pub tokens_per_expert: Vec<u64>,
    /// Per sequence of the workload (empty entries for sequences not seen).
    pub per_sequence: Vec<SequenceRouting>,
}

/// Entropy (nats) of `scores` normalized to sum to 1 (the sigmoid router's scores).
pub fn normalized_entropy_of(scores: &[f64]) -> f64 {
    let total: f64 = scores.iter().sum();
    scores
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / total;
            -p * p.ln()
        })
        .sum()
}

/// Entropy (nats) of the router's probabilities for one token's `logits`.
fn router_entropy(logits: &[f32], scoring: RouterScoring) -> f64 {
    match scoring {
        RouterScoring::Softmax | RouterScoring::TopKSoftmax => softmax_entropy(logits),
        RouterScoring::Sigmoid { .. } => {
            let scores: Vec<f64> = logits.iter().map(|&l| sigmoid(l) as f64).collect();
            normalized_entropy_of(&scores)
        }
    }
}

/// What the sigmoid router's selection bias changed for tokens `tokens` of `routing`.
fn unbiased_choice(routing: &Routing, tokens: std::ops::Range<usize>) -> Option<UnbiasedChoice> {
    let RouterScoring::Sigmoid { .. } = routing.scoring else {
        return None;
    };
    let (experts, top_k) = (routing.num_experts, routing.top_k);
    let zero = vec![0f32; experts];
    let (mut scores, mut order) = (vec![0f32; experts], Vec::with_capacity(experts));
    let mut choice = UnbiasedChoice {
        tokens_per_expert: vec![0; experts],
        ..UnbiasedChoice::default()
    };
    for t in tokens {
        let logits = &routing.logits[t * experts..(t + 1) * experts];
        choose_sigmoid(
            logits,
            &zero,
            routing.scoring,
            top_k,
            &mut scores,
            &mut order,
        );
        let chosen = &routing.experts[t * top_k..(t + 1) * top_k];
        let changed = chosen
            .iter()
            .filter(|&&e| !order.contains(&(e as usize)))
            .count() as u64;
        for &e in &order {
            choice.tokens_per_expert[e] += 1;
        }
        choice.assignments_changed += changed;
        choice.tokens_changed += u64::from(changed > 0);
    }
    Some(choice)
}

/// Entropy (nats) of the softmax of `logits`.
pub fn softmax_entropy(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let weights: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights
        .iter()
        .filter(|&&w| w > 0.0)
        .map(|&w| {
            let p = w / total;
            -p * p.ln()
        })
        .sum()
}

/// Load metrics of tokens-per-expert counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadMetrics {
    /// f_e: each expert's share of the top-k assignments (sums to 1).
    pub load: Vec<f64>,
    /// Entropy of f divided by ln E: 1 when perfectly balanced.
    pub normalized_entropy: f64,
    /// MaxVio: (max - mean) / mean of the counts.
    pub max_violation: f64,
}

impl LoadMetrics {
    /// The metrics of `counts` (per expert).
    pub fn of(counts: &[u64]) -> Self {
        let total: u64 = counts.iter().sum();
        let experts = counts.len().max(1) as f64;
        let load: Vec<f64> = counts
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect();
        let entropy: f64 = load
            .iter()
            .filter(|&&f| f > 0.0)
            .map(|&f| -f * f.ln())
            .sum();
        let mean = total as f64 / experts;
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        LoadMetrics {
            load,
            normalized_entropy: if experts > 1.0 {
                entropy / experts.ln()
            } else {
                1.0
            },
            max_violation: if mean > 0.0 { (max - mean) / mean } else { 0.0 },
        }
    }
}

/// One sequence's routing: its rows `tokens` of `routing`.
fn sequence_routing(routing: &Routing, tokens: std::ops::Range<usize>) -> SequenceRouting {
    let (experts, top_k) = (routing.num_experts, routing.top_k);
    let ln_experts = (experts as f64).ln();
    let mut entry = SequenceRouting {
        tokens_per_expert: vec![0; experts],
        entropy_sum: 0.0,
        entropy_histogram: vec![0; ENTROPY_BINS],
        unbiased: unbiased_choice(routing, tokens.clone()),
    };
    for t in tokens {
        for &e in &routing.experts[t * top_k..(t + 1) * top_k] {
            entry.tokens_per_expert[e as usize] += 1;
        }
        let logits = &routing.logits[t * experts..(t + 1) * experts];
        let entropy = router_entropy(logits, routing.scoring);
        entry.entropy_sum += entropy;
        let fraction = if ln_experts > 0.0 {
            entropy / ln_experts
        } else {
            0.0
        };
        let bin = ((fraction * ENTROPY_BINS as f64) as usize).min(ENTROPY_BINS - 1);
        entry.entropy_histogram[bin] += 1;
    }
    entry
}

impl RouterSummary {
    /// An empty summary for a router like `routing`'s.
    pub fn empty_like(routing: &Routing) -> Self {
        RouterSummary {
            num_experts: routing.num_experts,
            top_k: routing.top_k,
            tokens: 0,
            tokens_per_expert: vec![0; routing.num_experts],
            per_sequence: Vec::new(),
        }
    }

    /// Records a micro-batch of routing decisions for whole sequences `first_sequence..` of
    /// the workload's `rows` (replacing what an earlier attempt at them recorded).
    pub fn add(&mut self, routing: &Routing, first_sequence: usize, rows: &Sequences) {
        let (experts, top_k) = (routing.num_experts, routing.top_k);
        let tokens = routing.experts.len() / top_k;
        let base = rows.start(first_sequence);
        let sequences = rows.sequence_of(base + tokens) - first_sequence;
        let span = |s: usize| {
            let r = rows.span(first_sequence + s);
            r.start - base..r.end - base
        };
        if self.per_sequence.len() < first_sequence + sequences {
            self.per_sequence
                .resize(first_sequence + sequences, SequenceRouting::default());
        }
        // Sequences are independent: computed on all cores (the GPU waits for this between
        // micro-batches), each entry the same as one after the other.
        let entries = &mut self.per_sequence[first_sequence..first_sequence + sequences];
        let threads = crate::cpu::threads::default_thread_count();
        crate::cpu::threads::for_each_chunk_mut(entries, 1, threads, |s, entry| {
            entry[0] = sequence_routing(routing, span(s));
        });
        self.tokens_per_expert = vec![0; experts];
        self.tokens = 0;
        for entry in &self.per_sequence {
            for (total, &count) in self
                .tokens_per_expert
                .iter_mut()
                .zip(&entry.tokens_per_expert)
            {
                *total += count;
            }
            self.tokens += entry.entropy_histogram.iter().sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_peaked_logits() {
        assert!((softmax_entropy(&[0.0; 8]) - 8f64.ln()).abs() < 1e-12);
        assert!(softmax_entropy(&[100.0, 0.0, 0.0]) < 1e-30);
    }

    #[test]
    fn load_metrics_of_balanced_and_skewed_counts() {
        let balanced = LoadMetrics::of(&[5, 5, 5, 5]);
        assert_eq!(balanced.load, vec![0.25; 4]);
        assert!((balanced.normalized_entropy - 1.0).abs() < 1e-12);
        assert_eq!(balanced.max_violation, 0.0);
        // Mean 4, max 10: MaxVio 1.5.
        let skewed = LoadMetrics::of(&[10, 2, 2, 2]);
        assert_eq!(skewed.max_violation, 1.5);
        assert!(skewed.normalized_entropy < 1.0);
        let one_expert = LoadMetrics::of(&[0, 8, 0, 0]);
        assert!(one_expert.normalized_entropy.abs() < 1e-12);
        assert_eq!(one_expert.max_violation, 3.0);
    }

    #[test]
    fn per_sequence_counts_replace_on_retry() {
        // 2 sequences of 2 tokens, 3 experts, top-1.
        let routing = Routing {
            num_experts: 3,
            top_k: 1,
            logits: vec![0.0; 12],
            experts: vec![0, 2, 2, 2],
            weights: vec![1.0; 4],
            scoring: RouterScoring::Softmax,
        };
        let mut summary = RouterSummary::empty_like(&routing);
        let rows = Sequences::uniform(2, 2);
        summary.add(&routing, 0, &rows);
        summary.add(&routing, 0, &rows); // the same micro-batch again
        assert_eq!(summary.tokens, 4);
        assert_eq!(summary.tokens_per_expert, vec![1, 0, 3]);
        assert_eq!(summary.per_sequence[1].tokens_per_expert, vec![0, 0, 2]);
        // Uniform logits: entropy ln 3 per token, the last bin.
        assert!((summary.per_sequence[0].entropy_sum - 2.0 * 3f64.ln()).abs() < 1e-12);
        assert_eq!(
            summary.per_sequence[0].entropy_histogram[ENTROPY_BINS - 1],
            2
        );
        // Records of 1 and 3 tokens: each its own tokens.
        let mut ragged = RouterSummary::empty_like(&routing);
        ragged.add(&routing, 0, &Sequences::from_lengths([1, 3]));
        assert_eq!(ragged.per_sequence[0].tokens_per_expert, vec![1, 0, 0]);
        assert_eq!(ragged.per_sequence[1].tokens_per_expert, vec![0, 0, 3]);
    }

    #[test]
    fn the_sigmoid_routers_choice_without_its_bias_is_recorded() {
        // 1 sequence of 2 tokens, 4 experts, top-1. Token 0's best score is expert 0, but
        // the bias chose 1; token 1 chose its best, 1.
        let routing = Routing {
            num_experts: 4,
            top_k: 1,
            logits: vec![2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0],
            experts: vec![1, 1],
            weights: vec![0.5, 0.95],
            scoring: RouterScoring::Sigmoid {
                groups: 1,
                top_groups: 1,
                scaling: 1.0,
            },
        };
        let mut summary = RouterSummary::empty_like(&routing);
        summary.add(&routing, 0, &Sequences::uniform(1, 2));
        let unbiased = summary.per_sequence[0].unbiased.as_ref().unwrap();
        assert_eq!(unbiased.tokens_per_expert, vec![1, 1, 0, 0]);
        assert_eq!(
            (unbiased.tokens_changed, unbiased.assignments_changed),
            (1, 1)
        );
        // The entropy is that of the sigmoid scores normalized: token 0's are
        // (s(2), 1/2, 1/2, 1/2).
        let s = [sigmoid(2.0) as f64, 0.5, 0.5, 0.5];
        let expected = normalized_entropy_of(&s);
        let token1 = normalized_entropy_of(&[0.5, sigmoid(3.0) as f64, 0.5, 0.5]);
        let got = summary.per_sequence[0].entropy_sum;
        assert!((got - expected - token1).abs() < 1e-12, "{got}");
        // A softmax router records none.
        let softmax = Routing {
            scoring: RouterScoring::Softmax,
            ..routing
        };
        let mut summary = RouterSummary::empty_like(&softmax);
        summary.add(&softmax, 0, &Sequences::uniform(1, 2));
        assert!(summary.per_sequence[0].unbiased.is_none());
    }
}
