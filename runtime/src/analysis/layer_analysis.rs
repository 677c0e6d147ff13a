//! The report's per-layer part: per capture point its summary and distribution (with the
//! bootstrap interval of the RMS kurtosis), the router's load and entropy (with intervals),
//! and the massive activations with their token strings and where they sit.

use super::distribution::{Distribution, RmsKurtosisResampler};
use super::massive::{MassiveFinds, MassiveValue};
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

/// Where a token sits in its sequence, as Sun et al. describe massive activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// Position 0 (the sequence's first token).
    First,
    /// The first delimiter token after it (`.`, `,`, `\n`, ... or whitespace only).
    FirstDelimiter,
    /// Anywhere else.
    Other,
}

/// One massive activation as the report lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MassiveEntry {
    /// Where and what it is.
    #[serde(flatten)]
    pub value: MassiveValue,
    /// Its token id.
    pub token_id: u32,
    /// Its token as text.
    pub token: String,
    /// Position 0, first delimiter, or other.
    pub position_kind: PositionKind,
}

/// A layer's massive activations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMassive {
    /// Found in the layer.
    pub total: u64,
    /// Tokens holding one.
    pub tokens: u64,
    /// Of the listed ones (the largest, at most 1000): at position 0, at the first delimiter,
    /// elsewhere.
    pub at_first: u64,
    /// See `at_first`.
    pub at_first_delimiter: u64,
    /// See `at_first`.
    pub elsewhere: u64,
    /// The largest ones, largest first.
    pub top: Vec<MassiveEntry>,
    /// Dimensions that hold them, with how many of the listed ones each.
    pub dims: Vec<(usize, u64)>,
    /// MoE layers: listed values with an expert attribution.
    #[serde(default)]
    pub attributed: u64,
    /// MoE layers: the routed experts that dominate attributed values (contribution of the
    /// value's sign, larger than the residual's and the shared expert's), with how many
    /// each, most first.
    #[serde(default)]
    pub dominant_experts: Vec<(usize, u64)>,
}

/// The workload's tokens, for token strings and positions.
pub struct TokenInfo<'a> {
    /// `(sequences, seq_len)`.
    pub token_ids: &'a [u32],
    /// Tokens per sequence.
    pub seq_len: usize,
    /// A token's text.
    pub text: &'a dyn Fn(u32) -> String,
}

/// Whether a token's text is a delimiter: punctuation or whitespace only.
pub fn is_delimiter(text: &str) -> bool {
    let cleaned = text.replace(['Ġ', 'Ċ', '▁'], " ");
    !cleaned.is_empty()
        && cleaned
            .chars()
            .all(|c| c.is_whitespace() || ".,;:!?\n".contains(c))
}

impl TokenInfo<'_> {
    /// The first delimiter's position of `sequence` after position 0.
    fn first_delimiter(&self, sequence: usize) -> Option<usize> {
        let ids = &self.token_ids[sequence * self.seq_len..(sequence + 1) * self.seq_len];
        (1..ids.len()).find(|&t| is_delimiter(&(self.text)(ids[t])))
    }
}

/// Number of massive activations listed per layer in the report (the attributed ones).
pub const MASSIVE_LISTED: usize = super::massive::MASSIVE_ATTRIBUTED;

impl LayerMassive {
    /// The report part of a layer's massive activations.
    pub fn of(finds: &MassiveFinds, tokens: &TokenInfo) -> Self {
        // Each sequence's first delimiter is looked up once (decoding tokens as it goes).
        let mut delimiters = std::collections::BTreeMap::new();
        let kinds: Vec<PositionKind> = finds
            .values
            .iter()
            .map(|v| match v.position {
                0 => PositionKind::First,
                p if *delimiters
                    .entry(v.sequence)
                    .or_insert_with(|| tokens.first_delimiter(v.sequence))
                    == Some(p) =>
                {
                    PositionKind::FirstDelimiter
                }
                _ => PositionKind::Other,
            })
            .collect();
        let entry = |(v, &position_kind): (&MassiveValue, &PositionKind)| {
            let token_id = tokens.token_ids[v.sequence * tokens.seq_len + v.position];
            MassiveEntry {
                value: v.clone(),
                token_id,
                token: (tokens.text)(token_id),
                position_kind,
            }
        };
        let count = |k| kinds.iter().filter(|&&x| x == k).count() as u64;
        let mut dims = std::collections::BTreeMap::new();
        for v in &finds.values {
            *dims.entry(v.dim).or_insert(0u64) += 1;
        }
        let mut dominant = std::collections::BTreeMap::new();
        let mut attributed = 0;
        for v in &finds.values {
            let Some(attribution) = &v.attribution else {
                continue;
            };
            attributed += 1;
            if let Some(expert) = attribution.dominant_expert(v.value) {
                *dominant.entry(expert).or_insert(0u64) += 1;
            }
        }
        let mut dominant_experts: Vec<(usize, u64)> = dominant.into_iter().collect();
        dominant_experts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        LayerMassive {
            total: finds.total,
            tokens: finds.tokens,
            at_first: count(PositionKind::First),
            at_first_delimiter: count(PositionKind::FirstDelimiter),
            elsewhere: count(PositionKind::Other),
            top: finds
                .values
                .iter()
                .zip(&kinds)
                .take(MASSIVE_LISTED)
                .map(entry)
                .collect(),
            dims: dims.into_iter().collect(),
            attributed,
            dominant_experts,
        }
    }
}
