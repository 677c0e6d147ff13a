//! Attention sinks (Sun et al. 2024 §3, Xiao et al. 2023): per layer and query head, the
//! mean attention probability the queries put on the first token, on the first delimiter
//! token (as the massive-activation position classes define it, `massive_report.rs`), on a
//! learned sink (GPT-OSS's extra softmax column) and on everything else; and the share of heads whose mean mass on the first token exceeds
//! 0.5. The attention kernels sum each row's probability on those keys while they run (from
//! the row's softmax normaliser, no `T x T` matrix); here the sums of the workload are kept
//! per layer (`SinkSummary`, in the layer's record) and turned into means
//! (`SinkAnalysis`, in report.json). The mean is over every query of every sequence; a query
//! that cannot see a key (before the delimiter, or outside a sliding window) puts 0 on it.

use crate::capture::SinkMass;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Share of the first-token mass above which a head counts as a sink head.
pub const SINK_HEAD_THRESHOLD: f64 = 0.5;

/// A layer's attention-sink sums over the workload, per query head.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkSummary {
    /// Query heads.
    pub heads: usize,
    /// Queries summed per head (sequences x sequence length).
    pub queries: u64,
    /// `(heads)`: sum of the probability on position 0.
    #[serde(with = "nan_as_null")]
    pub first: Vec<f64>,
    /// `(heads)`: sum of the probability on the sequence's first delimiter.
    #[serde(with = "nan_as_null")]
    pub first_delimiter: Vec<f64>,
    /// `(heads)`: sum of the probability on the learned sink (GPT-OSS); empty for layers
    /// without one.
    #[serde(default, with = "nan_as_null", skip_serializing_if = "Vec::is_empty")]
    pub learned_sink: Vec<f64>,
    /// `(sequences, heads, 3)`: each sequence's masses in the order they were added, so the
    /// sums of consecutive shards can be added again exactly as one run adds them.
    #[serde(default, with = "nan_as_null", skip_serializing_if = "Vec::is_empty")]
    pub per_sequence: Vec<f64>,
}

impl SinkSummary {
    /// Adds one micro-batch's mass, sequence after sequence (the same order whatever the
    /// micro-batch size).
    pub fn add(&mut self, mass: &SinkMass) {
        for (sequence, &queries) in mass.mass.chunks_exact(mass.heads).zip(&mass.queries) {
            self.add_sequence(sequence, queries, mass.learned);
        }
    }

    /// Adds one sequence's `(heads)` masses over its `queries` queries.
    pub fn add_sequence(&mut self, sequence: &[[f64; 3]], queries: usize, learned: bool) {
        if self.first.is_empty() {
            let heads = sequence.len();
            self.heads = heads;
            self.first = vec![0.0; heads];
            self.first_delimiter = vec![0.0; heads];
            self.learned_sink = vec![0.0; if learned { heads } else { 0 }];
        }
        for (h, [first, delimiter, learned]) in sequence.iter().enumerate() {
            self.first[h] += first;
            self.first_delimiter[h] += delimiter;
            if let Some(sum) = self.learned_sink.get_mut(h) {
                *sum += learned;
            }
            self.per_sequence.extend([*first, *delimiter, *learned]);
        }
        self.queries += queries as u64;
    }

    /// Each added sequence's `(heads)` masses, in order.
    pub fn sequences(&self) -> Vec<Vec<[f64; 3]>> {
        self.per_sequence
            .chunks_exact(3 * self.heads.max(1))
            .map(|s| s.chunks_exact(3).map(|m| [m[0], m[1], m[2]]).collect())
            .collect()
    }

    /// Queries per sequence (the sequence length).
    pub fn queries_per_sequence(&self) -> usize {
        let sequences = self.per_sequence.len() / (3 * self.heads.max(1));
        (self.queries as usize).checked_div(sequences).unwrap_or(0)
    }

    /// Whether the layer has learned sinks.
    pub fn learned(&self) -> bool {
        !self.learned_sink.is_empty()
    }
}

/// A layer's attention sinks as report.json gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkAnalysis {
    /// `(heads)`: mean probability on position 0.
    #[serde(with = "nan_as_null")]
    pub first: Vec<f64>,
    /// `(heads)`: mean probability on the first delimiter.
    #[serde(with = "nan_as_null")]
    pub first_delimiter: Vec<f64>,
    /// `(heads)`: mean probability on the learned sink (GPT-OSS: the softmax's extra
    /// column, dropped after it); absent for layers without one.
    #[serde(default, with = "nan_as_null", skip_serializing_if = "Vec::is_empty")]
    pub learned_sink: Vec<f64>,
    /// `(heads)`: on every other key (1 minus the first token, the delimiter and the learned
    /// sink; the delimiter is looked for after position 0, so none overlap).
    #[serde(with = "nan_as_null")]
    pub other: Vec<f64>,
    /// Share of the heads whose mean probability on position 0 exceeds 0.5.
    pub sink_head_share: f64,
    /// Means over the heads of `first`, `first_delimiter`, `other`.
    #[serde(with = "nan_as_null_scalar")]
    pub mean_first: f64,
    /// See `mean_first`.
    #[serde(with = "nan_as_null_scalar")]
    pub mean_first_delimiter: f64,
    /// See `mean_first`.
    #[serde(with = "nan_as_null_scalar")]
    pub mean_other: f64,
}

impl SinkAnalysis {
    /// Means from a layer's sums.
    pub fn of(summary: &SinkSummary) -> Self {
        let queries = summary.queries.max(1) as f64;
        let first: Vec<f64> = summary.first.iter().map(|s| s / queries).collect();
        let first_delimiter: Vec<f64> = summary
            .first_delimiter
            .iter()
            .map(|s| s / queries)
            .collect();
        let learned_sink: Vec<f64> = summary.learned_sink.iter().map(|s| s / queries).collect();
        let other: Vec<f64> = (0..first.len())
            .map(|h| {
                let learned = learned_sink.get(h).copied().unwrap_or(0.0);
                (1.0 - first[h] - first_delimiter[h] - learned).max(0.0)
            })
            .collect();
        let heads = summary.heads.max(1) as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / heads;
        let sinks = first.iter().filter(|&&f| f > SINK_HEAD_THRESHOLD).count();
        SinkAnalysis {
            sink_head_share: sinks as f64 / heads,
            mean_first: mean(&first),
            mean_first_delimiter: mean(&first_delimiter),
            mean_other: mean(&other),
            first,
            first_delimiter,
            learned_sink,
            other,
        }
    }
}

/// Sums over non-finite attention (a NaN upstream) are NaN: written as null (JSON has no
/// NaN) and read back as NaN.
mod nan_as_null {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(values.iter().map(|v| (!v.is_nan()).then_some(*v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let values: Vec<Option<f64>> = Deserialize::deserialize(d)?;
        Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }
}

/// [`nan_as_null`] for one number.
mod nan_as_null_scalar {
    use super::*;

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        (!value.is_nan()).then_some(*value).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_head_and_means_over_queries() {
        let mut summary = SinkSummary::default();
        // 2 sequences x 2 heads, 4 queries each.
        summary.add(&SinkMass {
            heads: 2,
            queries: vec![4, 4],
            learned: false,
            mass: vec![
                [3.0, 0.5, 0.0],
                [1.0, 0.0, 0.0],
                [2.0, 1.0, 0.0],
                [0.5, 0.5, 0.0],
            ],
        });
        assert_eq!(summary.queries, 8);
        assert_eq!(summary.first, vec![5.0, 1.5]);
        let a = SinkAnalysis::of(&summary);
        assert_eq!(a.first, vec![5.0 / 8.0, 1.5 / 8.0]);
        assert_eq!(a.first_delimiter, vec![1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a.other[0], 1.0 - 5.0 / 8.0 - 1.5 / 8.0);
        assert_eq!(a.sink_head_share, 0.5);
        assert!(a.learned_sink.is_empty());
        assert!(!serde_json::to_string(&a).unwrap().contains("learned_sink"));
        // A layer with learned sinks: their mass is its own column, out of `other`.
        let mut learned = SinkSummary::default();
        learned.add(&SinkMass {
            heads: 1,
            queries: vec![2],
            learned: true,
            mass: vec![[1.0, 0.2, 0.4]],
        });
        let a = SinkAnalysis::of(&learned);
        assert_eq!(a.learned_sink, vec![0.2]);
        assert!((a.other[0] - (1.0 - 0.5 - 0.1 - 0.2)).abs() < 1e-12);
    }

    #[test]
    fn nan_sums_survive_the_layer_file() {
        let summary = SinkSummary {
            heads: 2,
            queries: 4,
            first: vec![f64::NAN, 1.0],
            first_delimiter: vec![0.0, f64::NAN],
            learned_sink: Vec::new(),
            per_sequence: vec![f64::NAN, 0.0, 0.0, 1.0, f64::NAN, 0.0],
        };
        let json = serde_json::to_string(&summary).unwrap();
        assert!(json.contains("[null,1.0]"), "{json}");
        let back: SinkSummary = serde_json::from_str(&json).unwrap();
        assert!(back.first[0].is_nan() && back.first[1] == 1.0 && back.first_delimiter[1].is_nan());
        let analysis = SinkAnalysis::of(&back);
        let json = serde_json::to_string(&analysis).unwrap();
        let again: SinkAnalysis = serde_json::from_str(&json).unwrap();
        assert!(again.mean_first.is_nan() && again.first[1] == 0.25);
    }
}
