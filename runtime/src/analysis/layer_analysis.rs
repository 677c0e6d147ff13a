//! The report's per-layer part: per capture point its summary and distribution (with the
//! bootstrap interval of the RMS kurtosis) and the router's load and entropy (with
//! intervals); the massive activations' part is `massive_report.rs`.

use super::distribution::{Distribution, RmsKurtosisResampler};
use super::point_summary::PointSummary;
use super::resample::{Interval, map_resamples};
use super::router::{ENTROPY_BINS, LoadMetrics, RouterSummary};
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
        }
    }
}
