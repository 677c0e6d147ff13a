//! One layer's results of consecutive sequence ranges (shards) joined into the results of
//! their union, exactly as one run over all of them records them: per-sequence values
//! concatenated in sequence order, counts and histograms summed (integers), position bits
//! shifted to the union's token numbering, sums over sequences recomputed in sequence order
//! from the per-sequence values, and the kept largest massive activations chosen again from
//! the shards' (each shard keeps its largest, so the union's largest are among them).

use super::PointStatistics;
use super::magnitudes::SequenceMagnitudes;
use super::massive::{MASSIVE_ATTRIBUTED, MassiveFinds, MassiveReading};
use super::position_bits::PositionBits;
use super::router::RouterSummary;
use super::sinks::SinkSummary;
use crate::error::{Result, RuntimeError};
use crate::sequences::Sequences;

/// One shard's part: its first sequence in the union and its values.
pub struct Part<'a, T> {
    /// Sequences before it in the union.
    pub first_sequence: usize,
    /// Its results.
    pub value: &'a T,
}

fn mismatch(what: &str) -> RuntimeError {
    RuntimeError::InvalidRequest(format!(
        "the shards' {what} differ: they are not shards of one run (a bug if they passed the run checks)"
    ))
}

/// A `(sequences, width)` field of every part's statistics, concatenated.
fn concat<T: Copy>(
    parts: &[Part<PointStatistics>],
    width: usize,
    field: impl Fn(&PointStatistics) -> &[T],
) -> Vec<T> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&field(p.value)[..p.value.sequences * width]);
    }
    out
}

/// The statistics of the union of `parts` (consecutive, in order).
pub fn merge_statistics(parts: &[Part<PointStatistics>]) -> Result<PointStatistics> {
    let first = parts[0].value;
    let width = first.width;
    if parts.iter().any(|p| {
        p.value.width != width
            || p.value.uniform_len() != first.uniform_len()
            || p.value.threshold.to_bits() != first.threshold.to_bits()
            || p.value.positions.is_kept() != first.positions.is_kept()
            || p.value.histogram.len() != first.histogram.len()
    }) {
        return Err(mismatch("statistics shapes"));
    }
    let sequences: usize = parts.iter().map(|p| p.value.sequences).sum();
    let rows = Sequences::from_lengths(parts.iter().flat_map(|p| p.value.rows.lengths()));
    // sums: (4, sequences, width) — each moment's rows concatenated.
    let mut sums = Vec::with_capacity(4 * sequences * width);
    for moment in 0..4 {
        for p in parts {
            let n = p.value.sequences * width;
            sums.extend_from_slice(&p.value.sums[moment * n..(moment + 1) * n]);
        }
    }
    let mut histogram = vec![0u64; first.histogram.len()];
    for p in parts {
        for (total, &count) in histogram.iter_mut().zip(&p.value.histogram) {
            *total += count;
        }
    }
    let positions = match first.positions.is_kept() {
        false => PositionBits::new(width, 0),
        true => merge_positions(parts, width, rows.tokens()),
    };
    let massive = match first.massive {
        None => None,
        Some(_) => Some(merge_massive(parts)?),
    };
    Ok(PointStatistics {
        sequences,
        rows,
        width,
        threshold: first.threshold,
        max_abs: concat(parts, width, |s| &s.max_abs),
        count_ge: concat(parts, width, |s| &s.count_ge),
        count_pos_ge: concat(parts, width, |s| &s.count_pos_ge),
        sum_abs_ge: concat(parts, width, |s| &s.sum_abs_ge),
        non_finite: concat(parts, width, |s| &s.non_finite),
        sums,
        histogram,
        positions,
        massive,
    })
}

/// Position bits `(width, words)` of the union: a part's token `t` is the union's token
/// `t` plus the tokens of the parts before it.
fn merge_positions(parts: &[Part<PointStatistics>], width: usize, tokens: usize) -> PositionBits {
    let mut out = PositionBits::new(width, PointStatistics::words_for(tokens));
    let mut offset = 0;
    for p in parts {
        let s = p.value;
        let own_tokens = s.tokens();
        for (d, row) in s.positions.held_rows() {
            for (w, &bits) in row.iter().enumerate() {
                let mut bits = bits;
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let t = w * 32 + b;
                    if t < own_tokens {
                        out.set(d, offset + t);
                    }
                }
            }
        }
        offset += own_tokens;
    }
    out
}

/// A reading of the union: totals summed, the kept values chosen again (sequences
/// renumbered), attributions kept on the union's attributed largest only.
fn merge_reading(parts: &[(usize, &MassiveReading)], attributed: bool) -> MassiveReading {
    let mut reading = MassiveReading::default();
    for (first, r) in parts {
        reading.total += r.total;
        reading.tokens += r.tokens;
        reading.values.extend(r.values.iter().map(|v| {
            let mut v = v.clone();
            v.sequence += first;
            v
        }));
    }
    reading.keep_largest();
    for (rank, value) in reading.values.iter_mut().enumerate() {
        if !attributed || rank >= MASSIVE_ATTRIBUTED {
            value.attribution = None;
        }
    }
    reading
}

fn merge_massive(parts: &[Part<PointStatistics>]) -> Result<MassiveFinds> {
    let finds: Vec<(usize, &MassiveFinds)> = parts
        .iter()
        .map(|p| (p.first_sequence, p.value.massive.as_ref()))
        .map(|(first, m)| {
            m.map(|m| (first, m))
                .ok_or_else(|| mismatch("massive finds"))
        })
        .collect::<Result<_>>()?;
    let primary: Vec<(usize, &MassiveReading)> =
        finds.iter().map(|(f, m)| (*f, &m.primary)).collect();
    let per_token: Vec<(usize, &MassiveReading)> =
        finds.iter().map(|(f, m)| (*f, &m.per_token)).collect();
    let mut merged = MassiveFinds::default();
    merged.primary = merge_reading(&primary, true);
    merged.per_token = merge_reading(&per_token, false);
    merged.sequences = finds
        .iter()
        .flat_map(|(first, m)| {
            m.sequences.iter().map(move |s| SequenceMagnitudes {
                sequence: s.sequence + first,
                ..*s
            })
        })
        .collect();
    Ok(merged)
}

/// The router summary of the union.
pub fn merge_router(parts: &[Part<RouterSummary>]) -> Result<RouterSummary> {
    let first = parts[0].value;
    if parts
        .iter()
        .any(|p| p.value.num_experts != first.num_experts || p.value.top_k != first.top_k)
    {
        return Err(mismatch("routers"));
    }
    let mut merged = RouterSummary {
        num_experts: first.num_experts,
        top_k: first.top_k,
        tokens: 0,
        tokens_per_expert: vec![0; first.num_experts],
        per_sequence: Vec::new(),
    };
    for p in parts {
        merged.tokens += p.value.tokens;
        for (total, &n) in merged
            .tokens_per_expert
            .iter_mut()
            .zip(&p.value.tokens_per_expert)
        {
            *total += n;
        }
        merged
            .per_sequence
            .extend(p.value.per_sequence.iter().cloned());
    }
    Ok(merged)
}

/// The attention-sink sums of the union, summed again sequence after sequence from the
/// shards' per-sequence masses (what one run adds in that order).
pub fn merge_sinks(parts: &[Part<SinkSummary>]) -> Result<SinkSummary> {
    let mut merged = SinkSummary::default();
    for p in parts {
        if p.value.per_sequence.is_empty() && p.value.queries > 0 {
            return Err(RuntimeError::InvalidRequest(
                "a shard's attention-sink sums have no per-sequence masses (written by an older layerstream): run it again with --restart".into(),
            ));
        }
        let queries = p.value.queries_per_sequence();
        for sequence in p.value.sequences() {
            merged.add_sequence(&sequence, queries, p.value.learned());
        }
    }
    Ok(merged)
}
