//! The report's per-layer part: per capture point its summary and distribution (with the
//! bootstrap interval of the RMS kurtosis) and the router's load and entropy (with
//! intervals); the massive activations' part is `massive_report.rs`.

use super::distribution::{Distribution, RmsKurtosisResampler};
use super::point_summary::PointSummary;
use super::resample::{Interval, map_resamples};
use super::router::{ENTROPY_BINS, LoadMetrics, RouterSummary, UnbiasedChoice};
use super::statistics::PointStatistics;
use serde::{Deserialize, Serialize};

/// One capture point of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointAnalysis {
    /// Max |x|, count >= threshold, top dimensions.
    #[serde(flatten)]
    pub summary: PointSummary,
    /// Distribution statistics.
    pub distribution: Distribution,
    /// RMS kurtosis with its bootstrap interval.
    pub rms_kurtosis: Interval,
}

impl PointAnalysis {
    /// From a point's statistics and the resamples.
    pub fn of(stats: &PointStatistics, summary: PointSummary, resamples: &[Vec<u32>]) -> Self {
        let distribution = Distribution::of(stats);
        let resampler = RmsKurtosisResampler::new(stats);
        let resampled = map_resamples(resamples, |w| resampler.kurtosis(w));
        PointAnalysis {
            summary,
            rms_kurtosis: Interval::new(distribution.rms_kurtosis, &resampled),
            distribution,
        }
    }
}

/// A MoE layer's routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterAnalysis {
    /// Routed experts.
    pub num_experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Tokens routed.
    pub tokens: u64,
    /// Top-k assignments per expert.
    pub tokens_per_expert: Vec<u64>,
    /// f_e: each expert's share of the assignments.
    pub load: Vec<f64>,
    /// Entropy of f over ln E, with its interval.
    pub load_entropy: Interval,
    /// MaxVio = (max - mean) / mean of the per-expert counts, with its interval.
    pub max_violation: Interval,
    /// Mean per-token router entropy (nats), with its interval.
    pub router_entropy: Interval,
    /// The same over ln E.
    pub normalized_router_entropy: f64,
    /// Tokens per bin of per-token entropy / ln E (equal bins over [0, 1]).
    pub router_entropy_histogram: Vec<u64>,
    /// The sigmoid router's (GLM-4.5): what its selection bias changed (absent for others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_bias: Option<SelectionBiasEffect>,
}

/// What the sigmoid router's selection bias (`e_score_correction_bias`) did: the load had the
/// router chosen by its scores alone, and the choices the bias changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionBiasEffect {
    /// Top-k assignments per expert without the bias.
    pub unbiased_tokens_per_expert: Vec<u64>,
    /// Entropy over ln E of that load, with its interval.
    pub unbiased_load_entropy: Interval,
    /// Its MaxVio, with its interval.
    pub unbiased_max_violation: Interval,
    /// Tokens whose set of chosen experts the bias changed.
    pub tokens_changed: u64,
    /// Share of the top-k assignments the bias changed, with its interval.
    pub assignments_changed: Interval,
}

impl SelectionBiasEffect {
    /// From the layer's per-sequence unbiased choices (`None` unless every sequence has one).
    fn of(router: &RouterSummary, resamples: &[Vec<u32>]) -> Option<Self> {
        let choices: Vec<&UnbiasedChoice> = router
            .per_sequence
            .iter()
            .map(|s| s.unbiased.as_ref())
            .collect::<Option<_>>()?;
        let experts = router.num_experts;
        let weighted = |weights: &[u32]| {
            let (mut counts, mut changed) = (vec![0u64; experts], 0u64);
            for (choice, &w) in choices.iter().zip(weights) {
                for (c, &n) in counts.iter_mut().zip(&choice.tokens_per_expert) {
                    *c += n * w as u64;
                }
                changed += choice.assignments_changed * w as u64;
            }
            let assignments: u64 = counts.iter().sum();
            let share = changed as f64 / assignments.max(1) as f64;
            (LoadMetrics::of(&counts), share, counts)
        };
        let (metrics, share, counts) = weighted(&vec![1; choices.len()]);
        let resampled: Vec<(LoadMetrics, f64, Vec<u64>)> =
            resamples.iter().map(|w| weighted(w)).collect();
        let pick = |f: fn(&(LoadMetrics, f64, Vec<u64>)) -> f64| -> Vec<f64> {
            resampled.iter().map(f).collect()
        };
        Some(SelectionBiasEffect {
            unbiased_tokens_per_expert: counts,
            unbiased_load_entropy: Interval::new(
                metrics.normalized_entropy,
                &pick(|r| r.0.normalized_entropy),
            ),
            unbiased_max_violation: Interval::new(
                metrics.max_violation,
                &pick(|r| r.0.max_violation),
            ),
            tokens_changed: choices.iter().map(|c| c.tokens_changed).sum(),
            assignments_changed: Interval::new(share, &pick(|r| r.1)),
        })
    }
}

impl RouterAnalysis {
    /// From the layer's routing summary and the resamples.
    pub fn of(router: &RouterSummary, resamples: &[Vec<u32>]) -> Self {
        let experts = router.num_experts;
        let weighted = |weights: &[u32]| {
            let mut counts = vec![0u64; experts];
            let (mut entropy, mut tokens) = (0.0, 0u64);
            for (entry, &w) in router.per_sequence.iter().zip(weights) {
                for (c, &n) in counts.iter_mut().zip(&entry.tokens_per_expert) {
                    *c += n * w as u64;
                }
                entropy += entry.entropy_sum * w as f64;
                tokens += entry.entropy_histogram.iter().sum::<u64>() * w as u64;
            }
            (LoadMetrics::of(&counts), entropy / tokens.max(1) as f64)
        };
        let all = vec![1u32; router.per_sequence.len()];
        let (metrics, entropy) = weighted(&all);
        let resampled: Vec<(LoadMetrics, f64)> = resamples.iter().map(|w| weighted(w)).collect();
        let pick =
            |f: fn(&(LoadMetrics, f64)) -> f64| -> Vec<f64> { resampled.iter().map(f).collect() };
        let mut histogram = vec![0u64; ENTROPY_BINS];
        for entry in &router.per_sequence {
            for (h, &n) in histogram.iter_mut().zip(&entry.entropy_histogram) {
                *h += n;
            }
        }
        RouterAnalysis {
            num_experts: experts,
            top_k: router.top_k,
            tokens: router.tokens,
            tokens_per_expert: router.tokens_per_expert.clone(),
            load_entropy: Interval::new(
                metrics.normalized_entropy,
                &pick(|r| r.0.normalized_entropy),
            ),
            max_violation: Interval::new(metrics.max_violation, &pick(|r| r.0.max_violation)),
            router_entropy: Interval::new(entropy, &pick(|r| r.1)),
            normalized_router_entropy: entropy / (experts.max(2) as f64).ln(),
            load: metrics.load,
            router_entropy_histogram: histogram,
            selection_bias: SelectionBiasEffect::of(router, resamples),
        }
    }
}
