//! Massive activations (Sun et al. 2024, "Massive activations in large language models"):
//! values of the residual stream with |x| > 100 and at least 1000 times a median magnitude.
//! Two readings of which median, side by side:
//! - the paper's (primary): the median |x| over the whole hidden state of the sequence at
//!   the layer, all `T x d` values (their code: `torch.median(feat_abs)` of the layer
//!   output; `magnitudes.rs`);
//! - per token: the median |x| of the token's own hidden state (an earlier reading, which
//!   misses a first token whose whole vector is large).
//!
//! Found while a layer runs, on both backends, by [`MassiveFinds::scan_row`]. Everything
//! else about them (dims, positions, token strings, the expert attribution) follows the
//! primary reading: in MoE layers the MoE inputs of the tokens holding the largest ones are
//! kept ([`MassiveFinds::keep_inputs`]) so the layer's end can say which experts produced
//! them (`attribution.rs`).

use super::attribution::ExpertAttribution;
use super::magnitudes::SequenceMagnitudes;
use crate::sequences::Sequences;
use serde::{Deserialize, Serialize};

/// Magnitude a massive activation exceeds.
pub const MASSIVE_MIN_MAGNITUDE: f32 = 100.0;
/// How many times the median magnitude it is at least.
pub const MASSIVE_MEDIAN_RATIO: f32 = 1000.0;
/// Largest ones kept per layer and reading (the counts cover all).
pub const MASSIVE_KEPT: usize = 1000;
/// The largest ones per layer whose experts are named (MoE layers); the report lists these.
pub const MASSIVE_ATTRIBUTED: usize = 20;

/// One massive activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MassiveValue {
    /// Sequence of the workload.
    pub sequence: usize,
    /// Token position in it.
    pub position: usize,
    /// Hidden dimension.
    pub dim: usize,
    /// The value (signed).
    pub value: f32,
    /// Median |x| of its sequence's hidden state at the layer (the paper's reference).
    pub sequence_median: f32,
    /// Median |x| of its token's hidden state (the per-token reading's reference).
    pub token_median: f32,
    /// Which experts produced it (MoE layers; the [`MASSIVE_ATTRIBUTED`] largest of the
    /// primary reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<ExpertAttribution>,
}

/// What one reading finds in one layer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MassiveReading {
    /// Massive activations found.
    pub total: u64,
    /// Tokens holding at least one.
    pub tokens: u64,
    /// The largest |value| first (ties: sequence, position, dim), at most [`MASSIVE_KEPT`].
    pub values: Vec<MassiveValue>,
}

impl MassiveReading {
    /// Sorts (largest first) and keeps [`MASSIVE_KEPT`].
    pub(crate) fn keep_largest(&mut self) {
        self.values.sort_by(|a, b| {
            b.value
                .abs()
                .total_cmp(&a.value.abs())
                .then(a.sequence.cmp(&b.sequence))
                .then(a.position.cmp(&b.position))
                .then(a.dim.cmp(&b.dim))
        });
        self.values.truncate(MASSIVE_KEPT);
    }

    /// Adds a found value; sorts and trims now and then.
    fn add(&mut self, value: MassiveValue) {
        self.total += 1;
        self.values.push(value);
        if self.values.len() > 4 * MASSIVE_KEPT {
            self.keep_largest();
        }
    }
}

/// A token holding a massive activation, ranked by its largest one.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RankedToken {
    sequence: usize,
    position: usize,
    /// Its largest massive |value|.
    largest: f32,
}

impl RankedToken {
    /// Larger first; ties by sequence, then position (the order of the values' ties).
    fn order(&self, other: &Self) -> std::cmp::Ordering {
        other
            .largest
            .total_cmp(&self.largest)
            .then(self.sequence.cmp(&other.sequence))
            .then(self.position.cmp(&other.position))
    }
}

/// The MoE input (the `ln2` values) of a token holding massive activations.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInput {
    /// Sequence of the workload.
    pub sequence: usize,
    /// Token position in it.
    pub position: usize,
    /// Its largest massive |value|.
    pub largest: f32,
    /// `(hidden)`: the MoE block's input for the token.
    pub values: Vec<f32>,
}

/// The massive activations of one point of one layer, under both readings, and the
/// per-sequence magnitudes the primary one compares with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MassiveFinds {
    /// The paper's reading (median over the sequence's hidden state); flattened into the
    /// layer file as `total`, `tokens`, `values`.
    #[serde(flatten)]
    pub primary: MassiveReading,
    /// The per-token-median reading.
    pub per_token: MassiveReading,
    /// Per sequence: the three largest |x| and the median (sorted by sequence).
    pub sequences: Vec<SequenceMagnitudes>,
    /// Tokens found since the last [`Self::keep_inputs`], waiting for their MoE input (only
    /// the [`MASSIVE_ATTRIBUTED`] largest can be kept, so no more than a few times that).
    #[serde(skip)]
    awaiting: Vec<RankedToken>,
    /// The MoE inputs of the [`MASSIVE_ATTRIBUTED`] tokens with the largest massive
    /// activations (largest first), until the layer's end attributes them.
    #[serde(skip)]
    pub inputs: Vec<TokenInput>,
}

/// Largest finite |x| of a row (0 when there is none).
pub fn row_max_abs(row: &[f32]) -> f32 {
    row.iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Median |x| of a row (the mean of the two middle ones for an even width, as numpy does).
pub fn median_magnitude(row: &[f32]) -> f32 {
    let mut magnitudes: Vec<f32> = row.iter().map(|v| v.abs()).collect();
    if magnitudes.is_empty() {
        return 0.0;
    }
    let n = magnitudes.len();
    let (_, &mut upper, _) = magnitudes.select_nth_unstable_by(n / 2, f32::total_cmp);
    if n % 2 == 1 {
        return upper;
    }
    let lower = magnitudes[..n / 2].iter().copied().fold(f32::MIN, f32::max);
    ((lower as f64 + upper as f64) / 2.0) as f32
}

impl MassiveFinds {
    /// Whether a row whose largest finite |x| is `max_abs` can hold one (rows that cannot are
    /// never looked at again; on a GPU only the others are copied to the host).
    pub fn row_may_hold(max_abs: f32) -> bool {
        max_abs > MASSIVE_MIN_MAGNITUDE
    }

    /// Records the magnitudes of a sequence (its top three and median |x|).
    pub fn add_sequence(&mut self, magnitudes: SequenceMagnitudes) {
        self.sequences.push(magnitudes);
    }

    /// Looks for massive activations in the hidden state `row` of token `position` of
    /// `sequence`, whose whole hidden state has median |x| `sequence_median`.
    pub fn scan_row(
        &mut self,
        row: &[f32],
        sequence: usize,
        position: usize,
        sequence_median: f32,
    ) {
        if !Self::row_may_hold(row_max_abs(row)) {
            return;
        }
        let token_median = median_magnitude(row);
        let (before, before_per_token) = (self.primary.total, self.per_token.total);
        let mut largest = 0f32;
        for (dim, &value) in row.iter().enumerate() {
            let magnitude = value.abs();
            if !value.is_finite() || magnitude <= MASSIVE_MIN_MAGNITUDE {
                continue;
            }
            let found = MassiveValue {
                sequence,
                position,
                dim,
                value,
                sequence_median,
                token_median,
                attribution: None,
            };
            if magnitude >= MASSIVE_MEDIAN_RATIO * token_median {
                self.per_token.add(found.clone());
            }
            if magnitude >= MASSIVE_MEDIAN_RATIO * sequence_median {
                largest = largest.max(magnitude);
                self.primary.add(found);
            }
        }
        self.per_token.tokens += (self.per_token.total > before_per_token) as u64;
        if self.primary.total > before {
            self.primary.tokens += 1;
            self.awaiting.push(RankedToken {
                sequence,
                position,
                largest,
            });
            if self.awaiting.len() > 4 * MASSIVE_ATTRIBUTED {
                self.awaiting.sort_by(RankedToken::order);
                self.awaiting.truncate(MASSIVE_ATTRIBUTED);
            }
        }
    }

    /// Puts both readings' values and the sequences in their final order (the layer is
    /// done).
    pub fn finish(&mut self) {
        self.primary.keep_largest();
        self.per_token.keep_largest();
        self.sequences.sort_by_key(|s| s.sequence);
        self.awaiting.clear();
    }

    /// Keeps the MoE inputs of the tokens found since the last call (a micro-batch of
    /// sequences `first_sequence..` with rows `spans`, offsets from 0) that rank among the
    /// [`MASSIVE_ATTRIBUTED`] largest so far; `input_row(r)` gives micro-batch row `r`'s
    /// input. The tokens of the largest [`MASSIVE_ATTRIBUTED`] values are among the kept
    /// ones whatever the micro-batch size.
    pub fn keep_inputs<E>(
        &mut self,
        first_sequence: usize,
        spans: &Sequences,
        mut input_row: impl FnMut(usize) -> Result<Vec<f32>, E>,
    ) -> Result<(), E> {
        let mut awaiting = std::mem::take(&mut self.awaiting);
        awaiting.sort_by(RankedToken::order);
        for token in awaiting.into_iter().take(MASSIVE_ATTRIBUTED) {
            let ranked = |input: &TokenInput| RankedToken {
                sequence: input.sequence,
                position: input.position,
                largest: input.largest,
            };
            let full = self.inputs.len() >= MASSIVE_ATTRIBUTED;
            if full
                && self
                    .inputs
                    .last()
                    .is_some_and(|worst| token.order(&ranked(worst)).is_gt())
            {
                break;
            }
            let row = spans.start(token.sequence - first_sequence) + token.position;
            self.inputs.push(TokenInput {
                sequence: token.sequence,
                position: token.position,
                largest: token.largest,
                values: input_row(row)?,
            });
            self.inputs.sort_by(|a, b| ranked(a).order(&ranked(b)));
            self.inputs.truncate(MASSIVE_ATTRIBUTED);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_rows() {
        assert_eq!(median_magnitude(&[3.0, -1.0, 2.0]), 2.0);
        assert_eq!(median_magnitude(&[4.0, -1.0, 2.0, -3.0]), 2.5);
    }

    #[test]
    fn both_conditions_at_their_edges_under_both_readings() {
        // Width 5, token median 0.1 (ratio edge 100.0 = 1000 x 0.1 is not > 100).
        let mut finds = MassiveFinds::default();
        finds.scan_row(&[0.1, -0.1, 0.1, 100.0, 0.05], 0, 0, 0.01);
        assert_eq!(
            (finds.primary.total, finds.per_token.total),
            (0, 0),
            "100 is not above 100"
        );
        // Token median 0.25: 150 is above 100 but below 1000 x 0.25 = 250; -250 is exactly
        // 1000x. Sequence median 0.15: 150 is exactly 1000x, -250 above.
        finds.scan_row(&[0.25, 150.0, -250.0, 0.25, 0.25], 1, 7, 0.15);
        let value = |dim, value| MassiveValue {
            sequence: 1,
            position: 7,
            dim,
            value,
            sequence_median: 0.15,
            token_median: 0.25,
            attribution: None,
        };
        assert_eq!(finds.per_token.values, vec![value(2, -250.0)]);
        assert_eq!(
            finds.primary.values,
            vec![value(1, 150.0), value(2, -250.0)]
        );
        assert_eq!((finds.primary.tokens, finds.per_token.tokens), (1, 1));
        // Non-finite values are never massive.
        finds.scan_row(&[0.0, f32::INFINITY, 0.0], 2, 0, 0.0);
        assert_eq!((finds.primary.total, finds.per_token.total), (2, 1));
    }

    #[test]
    fn a_large_first_token_is_massive_only_by_the_sequence_median() {
        // The case: one dimension of 30,000, the rest of the token around 50
        // (token median 50: ratio 600), the sequence's median about 1.
        let mut row = vec![50.0f32; 64];
        row[5] = 30_000.0;
        let mut finds = MassiveFinds::default();
        finds.scan_row(&row, 0, 0, 1.0);
        assert_eq!((finds.primary.total, finds.per_token.total), (1, 0));
        assert_eq!(finds.primary.values[0].dim, 5);
    }

    #[test]
    fn keeps_the_largest_in_a_fixed_order() {
        let mut finds = MassiveFinds::default();
        for s in 0..3 {
            let mut row = vec![0.01f32; 8];
            row[s] = 500.0 + s as f32;
            row[7] = -900.0;
            finds.scan_row(&row, s, 0, 0.01);
        }
        finds.finish();
        for reading in [&finds.primary, &finds.per_token] {
            let order: Vec<(usize, usize)> =
                reading.values.iter().map(|v| (v.sequence, v.dim)).collect();
            assert_eq!(order, vec![(0, 7), (1, 7), (2, 7), (2, 2), (1, 1), (0, 0)]);
            assert_eq!((reading.total, reading.tokens), (6, 3));
        }
    }

    #[test]
    fn keeps_the_inputs_of_the_largest_tokens_whatever_the_micro_batch() {
        // 30 sequences of 2 tokens; token (s, 1) holds one massive value 200 + (s * 7) % 30.
        let scan = |finds: &mut MassiveFinds, first: usize, sequences: usize| {
            for s in first..first + sequences {
                finds.scan_row(&[0.01, 0.01, 0.01], s, 0, 0.01);
                let mut row = vec![0.01f32; 3];
                row[1] = 200.0 + ((s * 7) % 30) as f32;
                finds.scan_row(&row, s, 1, 0.01);
            }
            finds
                .keep_inputs(first, &Sequences::uniform(sequences, 2), |r| {
                    Ok::<_, ()>(vec![(first * 2 + r) as f32])
                })
                .unwrap();
        };
        let kept = |batch: usize| {
            let mut finds = MassiveFinds::default();
            for first in (0..30).step_by(batch) {
                scan(&mut finds, first, batch.min(30 - first));
            }
            finds.finish();
            finds.inputs
        };
        let one = kept(1);
        assert_eq!(one.len(), MASSIVE_ATTRIBUTED);
        assert_eq!(one, kept(7));
        assert_eq!(one, kept(30));
        // The largest first, each with its own row (the global row index 2 s + 1).
        assert_eq!(one[0].largest, 229.0);
        for input in &one {
            assert_eq!(input.values, vec![(input.sequence * 2 + 1) as f32]);
            assert_eq!(input.largest, 200.0 + ((input.sequence * 7) % 30) as f32);
        }
        assert!(one.iter().all(|i| i.largest >= 210.0));
    }
}
