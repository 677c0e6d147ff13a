//! The ends of the network: token embedding, and final norm + LM head in vocabulary chunks
//! (a 150k-token vocabulary never needs a `(rows, vocab)` buffer to compute the NLL).

use super::linear::linear;
use super::norm::rms_norm;
use crate::sequences::Sequences;
use crate::weights::WeightStore;
use layerstream_planner::TensorEntry;

/// Final norm and LM head of one micro-batch.
pub struct OutputHead<'a> {
    /// Where the weights are.
    pub store: &'a WeightStore,
    /// `model.norm.weight`, f32 `(hidden)`.
    pub final_norm: &'a [f32],
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// LM head (or tied embedding), `(vocab, hidden)`.
    pub lm_head: &'a TensorEntry,
    /// Threads for the GEMMs.
    pub threads: usize,
}

/// Vocabulary rows converted per chunk: about 32 Mi floats of weights and logits together.
fn vocab_chunk_rows(vocab: usize, hidden: usize, rows: usize) -> usize {
    ((32usize << 20) / (hidden + rows).max(1)).clamp(256, vocab.max(1))
}

impl OutputHead<'_> {
    /// Normalises `hidden (rows, hidden)` and calls `visit(first_vocab_row, logits (rows, chunk))`
    /// for consecutive vocabulary chunks.
    pub fn for_each_logit_chunk(
        &self,
        hidden: &[f32],
        mut visit: impl FnMut(usize, &[f32], usize),
    ) {
        let width = self.final_norm.len();
        let rows = hidden.len() / width;
        let vocab = self.lm_head.shape[0];
        let mut normed = vec![0f32; rows * width]; // (rows, hidden)
        rms_norm(
            hidden,
            self.final_norm,
            self.norm_eps,
            &mut normed,
            self.threads,
        );
        let chunk = vocab_chunk_rows(vocab, width, rows);
        let mut weights = vec![0f32; chunk * width]; // (chunk, hidden)
        let mut logits = vec![0f32; rows * chunk]; // (rows, chunk)
        for first in (0..vocab).step_by(chunk) {
            let n = chunk.min(vocab - first);
            self.store
                .read_rows_f32(self.lm_head, first, &mut weights[..n * width]);
            linear(
                &normed,
                &weights[..n * width],
                None,
                &mut logits[..rows * n],
                width,
                n,
                self.threads,
            );
            visit(first, &logits[..rows * n], n);
        }
    }

    /// Full logits `(rows, vocab)`; for small vocabularies and tests.
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let width = self.final_norm.len();
        let rows = hidden.len() / width;
        let vocab = self.lm_head.shape[0];
        let mut all = vec![0f32; rows * vocab];
        self.for_each_logit_chunk(hidden, |first, chunk, n| {
            for r in 0..rows {
                all[r * vocab + first..r * vocab + first + n]
                    .copy_from_slice(&chunk[r * n..(r + 1) * n]);
            }
        });
        all
    }

    /// Negative log-likelihood of each next token: for a sequence of T tokens, T-1 values
    /// `-log softmax(logits[t])[tokens[t+1]]`, as transformers' causal-LM loss computes them;
    /// the sequences of `batch`, back to back.
    pub fn next_token_nll(
        &self,
        hidden: &[f32],    // (rows, hidden)
        token_ids: &[u32], // (rows)
        batch: &Sequences,
    ) -> Vec<f32> /* (rows - sequences) */ {
        let rows = token_ids.len();
        // Rows whose next token is in the same sequence.
        let mut predicts = vec![true; rows];
        for span in batch.spans() {
            predicts[span.end - 1] = false;
        }
        let mut running_max = vec![f64::NEG_INFINITY; rows];
        let mut running_sum = vec![0f64; rows];
        let mut target_logit = vec![0f64; rows];
        self.for_each_logit_chunk(hidden, |first, chunk, n| {
            for r in 0..rows {
                let logits = &chunk[r * n..(r + 1) * n];
                let chunk_max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
                let new_max = running_max[r].max(chunk_max);
                let rescaled = running_sum[r] * (running_max[r] - new_max).exp();
                let added: f64 = logits.iter().map(|&x| (x as f64 - new_max).exp()).sum();
                running_sum[r] = rescaled + added;
                running_max[r] = new_max;
                if predicts[r] {
                    let target = token_ids[r + 1] as usize;
                    if (first..first + n).contains(&target) {
                        target_logit[r] = logits[target - first] as f64;
                    }
                }
            }
        });
        (0..rows)
            .filter(|&r| predicts[r])
            .map(|r| {
                let log_sum_exp = running_max[r] + running_sum[r].ln();
                (log_sum_exp - target_logit[r]) as f32
            })
            .collect()
    }
}
