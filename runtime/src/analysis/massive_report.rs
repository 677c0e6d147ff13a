//! The report's part of a layer's massive activations: both readings side by side (the
//! primary one with token strings, where the tokens sit and the MoE expert attribution),
//! and the layer's magnitudes as the paper's layer-wise figure shows them.

use super::magnitudes::LayerMagnitudes;
use super::massive::{MassiveFinds, MassiveReading, MassiveValue};
use crate::sequences::Sequences;
use serde::{Deserialize, Serialize};

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
    /// Found in the layer (primary reading: the sequence's median).
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
    /// The per-token-median reading, side by side.
    pub per_token_median: MassiveReadingSummary,
    /// The three largest |x| and the median, each the mean over sequences (Sun et al.'s
    /// layer-wise figure).
    pub magnitudes: LayerMagnitudes,
}

/// What the second reading found in a layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MassiveReadingSummary {
    /// Found in the layer.
    pub total: u64,
    /// Tokens holding one.
    pub tokens: u64,
    /// The largest ones, largest first.
    pub top: Vec<MassiveEntry>,
}

/// The workload's tokens, for token strings and positions.
pub struct TokenInfo<'a> {
    /// `(tokens)`: every sequence's ids, one after the other.
    pub token_ids: &'a [u32],
    /// Where each sequence's tokens sit.
    pub rows: &'a Sequences,
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
    /// The first delimiter's position of `sequence` after position 0 (the record's own first
    /// token for sequences of their own lengths).
    pub fn first_delimiter(&self, sequence: usize) -> Option<usize> {
        let ids = &self.token_ids[self.rows.span(sequence)];
        (1..ids.len()).find(|&t| is_delimiter(&(self.text)(ids[t])))
    }

    /// Every sequence's first delimiter (the attention-sink statistics' second key).
    pub fn first_delimiters(&self) -> Vec<Option<usize>> {
        (0..self.rows.count())
            .map(|s| self.first_delimiter(s))
            .collect()
    }
}

/// Number of massive activations listed per layer in the report (the attributed ones).
pub const MASSIVE_LISTED: usize = super::massive::MASSIVE_ATTRIBUTED;

impl TokenInfo<'_> {
    /// Where a token sits, with each sequence's first delimiter looked up once in `cache`.
    fn position_kind(
        &self,
        value: &MassiveValue,
        cache: &mut std::collections::BTreeMap<usize, Option<usize>>,
    ) -> PositionKind {
        match value.position {
            0 => PositionKind::First,
            p if *cache
                .entry(value.sequence)
                .or_insert_with(|| self.first_delimiter(value.sequence))
                == Some(p) =>
            {
                PositionKind::FirstDelimiter
            }
            _ => PositionKind::Other,
        }
    }

    /// A value as the report lists it.
    fn entry(&self, value: &MassiveValue, position_kind: PositionKind) -> MassiveEntry {
        let token_id = self.token_ids[self.rows.start(value.sequence) + value.position];
        MassiveEntry {
            value: value.clone(),
            token_id,
            token: (self.text)(token_id),
            position_kind,
        }
    }
}

impl MassiveReadingSummary {
    /// The report part of a reading: counts and the listed largest ones.
    fn of(reading: &MassiveReading, tokens: &TokenInfo) -> Self {
        let mut cache = std::collections::BTreeMap::new();
        MassiveReadingSummary {
            total: reading.total,
            tokens: reading.tokens,
            top: reading
                .values
                .iter()
                .take(MASSIVE_LISTED)
                .map(|v| tokens.entry(v, tokens.position_kind(v, &mut cache)))
                .collect(),
        }
    }
}

impl LayerMassive {
    /// The report part of a layer's massive activations.
    pub fn of(finds: &MassiveFinds, tokens: &TokenInfo) -> Self {
        let primary = &finds.primary;
        let mut cache = std::collections::BTreeMap::new();
        let kinds: Vec<PositionKind> = primary
            .values
            .iter()
            .map(|v| tokens.position_kind(v, &mut cache))
            .collect();
        let count = |k| kinds.iter().filter(|&&x| x == k).count() as u64;
        let mut dims = std::collections::BTreeMap::new();
        for v in &primary.values {
            *dims.entry(v.dim).or_insert(0u64) += 1;
        }
        let mut dominant = std::collections::BTreeMap::new();
        let mut attributed = 0;
        for v in &primary.values {
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
            total: primary.total,
            tokens: primary.tokens,
            at_first: count(PositionKind::First),
            at_first_delimiter: count(PositionKind::FirstDelimiter),
            elsewhere: count(PositionKind::Other),
            top: primary
                .values
                .iter()
                .zip(&kinds)
                .take(MASSIVE_LISTED)
                .map(|(v, &kind)| tokens.entry(v, kind))
                .collect(),
            dims: dims.into_iter().collect(),
            attributed,
            dominant_experts,
            per_token_median: MassiveReadingSummary::of(&finds.per_token, tokens),
            magnitudes: LayerMagnitudes::of(&finds.sequences),
        }
    }
}
