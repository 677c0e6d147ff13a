//! The most likely next tokens at chosen positions (`score --top-logprobs K`, multiple-choice
//! scoring): `log_softmax(logits)` in f64, the K largest, most likely first (ties: lower
//! token id first).

/// Where to read them: one position of each sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopLogprobs {
    /// How many tokens per position.
    pub k: usize,
    /// `(sequences)`: the position, within each sequence, whose next-token distribution is
    /// wanted.
    pub positions: Vec<usize>,
}

/// Per row of `logits (rows, vocab)`, the `k` most likely tokens and their log-probabilities.
pub fn top_k_logprobs(logits: &[f32], vocab: usize, k: usize) -> Vec<Vec<(u32, f32)>> {
    logits
        .chunks_exact(vocab)
        .map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let log_norm = max + sum.ln();
            let mut order: Vec<u32> = (0..vocab as u32).collect();
            let k = k.min(vocab);
            let by_logit =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if k < vocab {
                order.select_nth_unstable_by(k, by_logit);
                order.truncate(k);
            }
            order.sort_by(by_logit);
            order
                .into_iter()
                .map(|id| (id, (row[id as usize] as f64 - log_norm) as f32))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_k_largest_as_log_probabilities() {
        let logits = [
            1.0f32, 3.0, 2.0, 3.0, 0.0, /* row 2 */ 0.0, 0.0, 0.0, 0.0, 5.0,
        ];
        let top = top_k_logprobs(&logits, 5, 2);
        assert_eq!(top[0].iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
        let norm = [1.0f64, 3.0, 2.0, 3.0, 0.0]
            .iter()
            .map(|x| x.exp())
            .sum::<f64>()
            .ln();
        assert!((top[0][0].1 as f64 - (3.0 - norm)).abs() < 1e-6);
        assert_eq!(top[1][0].0, 4);
        assert_eq!(top_k_logprobs(&logits, 5, 9)[0].len(), 5);
    }
}
