//! Router near-ties in bf16 comparisons. A bf16 run computes router logits with bf16
//! inputs, so where the reference's k-th and (k+1)-th best logits are closer than bf16
//! resolves, the run may choose the other expert, and that token's MLP output differs by an
//! expert's whole contribution. Such a flip is checked to be a near-tie (any other flip
//! fails), and the rows it feeds are left out of the element comparisons: the token's rows
//! after the router in its layer, and in later layers every row of its sequence from its
//! position on (attention carries it forward), logits included.

use crate::{KeepEverything, Reference};
use std::collections::BTreeMap;

/// A reference margin below this fraction of the token's largest |logit| counts as a tie
/// bf16 may break either way (bf16 keeps 8 bits: 2^-8 relative, summed over a dot product).
const TIE_FRACTION: f32 = 0.02;

/// The rows a bf16 run is not compared at.
#[derive(Debug, Default)]
pub struct NearTieFlips {
    /// `(layer, token)` whose chosen experts differ from the reference's at a near-tie.
    pub flipped: Vec<(usize, usize)>,
    /// Per sequence, the first position of a flip and the layer it happened at.
    first: BTreeMap<usize, (usize, usize)>,
    seq_len: usize,
    /// Tokens of the workload.
    tokens: usize,
}

impl NearTieFlips {
    /// Compares the run's routing in `kept` with the reference's for `layers` layers; panics
    /// on a flip that is not a near-tie, or on flips at more than 5% of a layer's tokens.
    pub fn find(reference: &Reference, kept: &KeepEverything, layers: usize, what: &str) -> Self {
        let mut flips = NearTieFlips {
            seq_len: reference.seq_len,
            tokens: reference.num_sequences * reference.seq_len,
            ..NearTieFlips::default()
        };
        for layer in 0..layers {
            let Some(routing) = kept.routing.get(&layer) else {
                continue;
            };
            let (k, experts) = (routing.top_k, routing.num_experts);
            let chosen = &reference.int_tensors[&format!("blocks.{layer}.router.experts")];
            let logits = &reference
                .get(&format!("blocks.{layer}.router.logits"))
                .values;
            let tokens = chosen.len() / k;
            let mut in_layer = 0;
            for t in 0..tokens {
                let mut ours = routing.experts[t * k..(t + 1) * k].to_vec();
                let mut theirs = chosen[t * k..(t + 1) * k].to_vec();
                ours.sort_unstable();
                theirs.sort_unstable();
                if ours == theirs || flips.excluded(layer, t, false) {
                    continue;
                }
                let mut row = logits[t * experts..(t + 1) * experts].to_vec();
                row.sort_by(|a, b| b.total_cmp(a));
                let margin = row[k - 1] - row[k];
                let scale = row.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(
                    margin <= TIE_FRACTION * scale,
                    "{what}: layer {layer} token {t} chose experts {ours:?}, the reference {theirs:?}, \
                     with a margin of {margin} between its {k}th and next logit (not a near-tie: \
                     the token's largest |logit| is {scale})"
                );
                flips.flipped.push((layer, t));
                let (s, p) = (t / flips.seq_len, t % flips.seq_len);
                let entry = flips.first.entry(s).or_insert((p, layer));
                if p < entry.0 {
                    *entry = (p, layer);
                }
                in_layer += 1;
            }
            assert!(
                in_layer * 20 <= tokens,
                "{what}: layer {layer}: {in_layer} of {tokens} tokens chose other experts"
            );
        }
        flips
    }

    /// Whether row `token` of a capture at `layer` is left out (`after_router`: a point
    /// the router's choice feeds within the layer: mlp_out, resid_post).
    pub fn excluded(&self, layer: usize, token: usize, after_router: bool) -> bool {
        let (s, p) = (token / self.seq_len, token % self.seq_len);
        if self.flipped.contains(&(layer, token)) && after_router {
            return true;
        }
        self.first
            .get(&s)
            .is_some_and(|&(first, at)| layer > at && p >= first)
    }

    /// `values (tokens, width)` without the rows `excluded` leaves out.
    pub fn kept_rows(&self, values: &[f32], layer: usize, after_router: bool) -> Vec<f32> {
        let width = values.len() / self.tokens.max(1);
        values
            .chunks_exact(width)
            .enumerate()
            .filter(|(t, _)| !self.excluded(layer, *t, after_router))
            .flat_map(|(_, row)| row.iter().copied())
            .collect()
    }

    /// Logits `(tokens, vocab)` without the rows of sequences past their first flip.
    pub fn kept_logit_rows(&self, values: &[f32]) -> Vec<f32> {
        self.kept_rows(values, usize::MAX, false)
    }
}
