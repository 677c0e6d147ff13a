//! Causal grouped-query attention, tiled over queries: a tile of query rows sees its keys
//! through one score block `(QUERY_TILE, keys)`, so memory per head grows with T, never T^2.
//! Optionally a learned sink logit per head joins every row's softmax (GPT-OSS's
//! `self_attn.sinks`: an extra column, dropped after the softmax, so rows sum to less than 1),
//! and the attention-sink mass is summed: per (sequence, head) the sum over queries of the
//! probability on position 0, on the sequence's first delimiter and on the learned sink, read
//! off the softmaxed rows (f64 sums in query order).

use super::linear::matmul_transposed_b;
use super::threads::for_each_chunk_mut;

/// Query rows per tile.
pub const QUERY_TILE: usize = 64;

pub use crate::block::AttentionShape;

/// What attention does besides `softmax(q k^T * scale + mask) v`.
#[derive(Clone, Copy, Default)]
pub struct AttentionExtras<'a> {
    /// `(heads)`: a learned logit per query head appended to every row before the softmax
    /// and dropped after it.
    pub learned_sinks: Option<&'a [f32]>,
    /// Each sequence's first delimiter position, if any: asks for the sink mass.
    pub delimiters: Option<&'a [Option<usize>]>,
}

/// `output = softmax(q k^T * scale + causal mask [, sink]) v` for every sequence of
/// `shape.batch` (each attends within itself) and head. With `extras.delimiters`, also
/// returns the sink mass `(sequences, heads)`: `[sum over queries of p(position 0), of
/// p(delimiter), of p(learned sink)]`.
pub fn causal_attention(
    q: &[f32],          // (rows, heads * head_dim)
    k: &[f32],          // (rows, kv_heads * head_dim)
    v: &[f32],          // (rows, kv_heads * head_dim)
    output: &mut [f32], // (rows, heads * head_dim)
    shape: AttentionShape,
    threads: usize,
    extras: AttentionExtras,
) -> Vec<[f64; 3]> {
    let AttentionShape {
        batch,
        heads,
        head_dim,
        ..
    } = shape;
    let q_width = heads * head_dim;
    assert_eq!(q.len(), batch.tokens() * q_width);
    assert_eq!(output.len(), q.len());
    // One contiguous (len, head_dim) block per (sequence, head), so threads write disjoint
    // slices; scattered into the row layout afterwards. Sequence s's blocks start at
    // start(s) * heads * head_dim.
    let mut per_head = vec![0f32; batch.tokens() * q_width]; // (sequence, heads, len, head_dim)
    let mut blocks: Vec<&mut [f32]> = Vec::with_capacity(batch.count() * heads);
    let mut rest = per_head.as_mut_slice();
    for len in batch.lengths() {
        for _ in 0..heads {
            let (block, after) = rest.split_at_mut(len * head_dim);
            blocks.push(block);
            rest = after;
        }
    }
    let mut tasks: Vec<(&mut [f32], [f64; 3])> =
        blocks.into_iter().map(|block| (block, [0.0; 3])).collect();
    for_each_chunk_mut(&mut tasks, 1, threads, |task, slot| {
        let (out, mass) = &mut slot[0];
        let head = HeadExtras {
            learned_sink: extras.learned_sinks.map(|s| s[task % heads]),
            delimiter: extras.delimiters.map(|d| d[task / heads]),
        };
        *mass = attend_one_head(q, k, v, out, task / heads, task % heads, shape, head);
    });
    let mass = match extras.delimiters {
        Some(_) => tasks.iter().map(|(_, m)| *m).collect(),
        None => Vec::new(),
    };
    for span in batch.spans() {
        let len = span.len();
        for h in 0..heads {
            let block = &per_head[(span.start * heads + h * len) * head_dim..][..len * head_dim];
            for t in 0..len {
                let row = (span.start + t) * q_width + h * head_dim;
                output[row..row + head_dim]
                    .copy_from_slice(&block[t * head_dim..(t + 1) * head_dim]);
            }
        }
    }
    mass
}

/// One head's extras.
#[derive(Clone, Copy)]
struct HeadExtras {
    /// Its learned sink logit.
    learned_sink: Option<f32>,
    /// `Some`: sum the mass; the sequence's first delimiter, if any.
    delimiter: Option<Option<usize>>,
}

/// Attention of one query head of one sequence, tile by tile; the sums over queries of the
/// probability on position 0, on the delimiter and on the learned sink (when asked).
#[allow(clippy::too_many_arguments)]
fn attend_one_head(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32], // (len, head_dim)
    sequence: usize,
    head: usize,
    shape: AttentionShape,
    extras: HeadExtras,
) -> [f64; 3] {
    let mut mass = [0f64; 3];
    let AttentionShape {
        batch,
        heads,
        kv_heads,
        head_dim,
        sliding_window,
        scale,
    } = shape;
    let q_width = heads * head_dim;
    let kv_width = kv_heads * head_dim;
    let kv_head = head / (heads / kv_heads);
    let (row0, seq_len) = (batch.start(sequence), batch.len_of(sequence));
    // Gathered contiguous copies: (seq_len, head_dim) each.
    let gather = |src: &[f32], width: usize, offset: usize| -> Vec<f32> {
        let mut dst = Vec::with_capacity(seq_len * head_dim);
        for t in 0..seq_len {
            let start = (row0 + t) * width + offset;
            dst.extend_from_slice(&src[start..start + head_dim]);
        }
        dst
    };
    let q_head = gather(q, q_width, head * head_dim);
    let k_head = gather(k, kv_width, kv_head * head_dim);
    let v_head = gather(v, kv_width, kv_head * head_dim);
    let v_transposed = transpose(&v_head, seq_len, head_dim); // (head_dim, seq_len)
    let mut scores = vec![0f32; QUERY_TILE * seq_len]; // (tile rows, keys)
    for tile_start in (0..seq_len).step_by(QUERY_TILE) {
        let tile_rows = QUERY_TILE.min(seq_len - tile_start);
        let tile_end = tile_start + tile_rows; // keys needed: < tile_end
        let first_key = sliding_window.map_or(0, |w| (tile_start + 1).saturating_sub(w));
        let keys = tile_end - first_key;
        let scores = &mut scores[..tile_rows * keys];
        matmul_transposed_b(
            &q_head[tile_start * head_dim..tile_end * head_dim],
            &k_head[first_key * head_dim..tile_end * head_dim],
            scores,
            tile_rows,
            head_dim,
            keys,
        );
        for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
            let position = tile_start + i;
            let lowest_key = sliding_window.map_or(0, |w| (position + 1).saturating_sub(w));
            let visible = (lowest_key - first_key, position + 1 - first_key);
            let on_sink = masked_softmax(row, scale, visible, extras.learned_sink);
            // Masked keys hold 0; keys before `first_key` are outside every row's window.
            if let Some(delimiter) = extras.delimiter {
                if first_key == 0 {
                    mass[0] += row[0] as f64;
                }
                if let Some(d) = delimiter.filter(|&d| d >= first_key && d < tile_end) {
                    mass[1] += row[d - first_key] as f64;
                }
                mass[2] += on_sink as f64;
            }
        }
        // out rows = scores (tile_rows, keys) @ v[first_key..tile_end] (keys, head_dim)
        let mut v_window = Vec::with_capacity(head_dim * keys); // (head_dim, keys)
        for d in 0..head_dim {
            v_window
                .extend_from_slice(&v_transposed[d * seq_len + first_key..d * seq_len + tile_end]);
        }
        matmul_transposed_b(
            scores,
            &v_window,
            &mut out[tile_start * head_dim..tile_end * head_dim],
            tile_rows,
            keys,
            head_dim,
        );
    }
    mass
}

/// Scales `row`, keeps entries `visible_start..visible_end`, softmaxes them (with the
/// learned `sink` logit as one more, unscaled, column) and zeroes the rest; returns the
/// sink's probability (0 without one).
fn masked_softmax(
    row: &mut [f32],
    scale: f32,
    (visible_start, visible_end): (usize, usize),
    sink: Option<f32>,
) -> f32 {
    let visible = &mut row[visible_start..visible_end];
    let mut max = sink.unwrap_or(f32::NEG_INFINITY);
    for value in visible.iter_mut() {
        *value *= scale;
        max = max.max(*value);
    }
    let on_sink = sink.map_or(0.0, |s| (s - max).exp());
    let mut sum = on_sink;
    for value in visible.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    let inv_sum = 1.0 / sum;
    visible.iter_mut().for_each(|value| *value *= inv_sum);
    row[..visible_start].fill(0.0);
    row[visible_end..].fill(0.0);
    on_sink * inv_sum
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequences::Sequences;

    /// Query `p` of head `h` of sequence `s`: its lowest visible key, the softmax
    /// probabilities of keys `lowest..=p` and of the learned sink (0 without one), untiled,
    /// in f64 (the textbook formula; the sink is one more logit, dropped after the softmax).
    fn probabilities(
        q: &[f32],
        k: &[f32],
        shape: AttentionShape,
        (s, h, p): (usize, usize, usize),
        sink: Option<f32>,
    ) -> (usize, Vec<f64>, f64) {
        let AttentionShape {
            batch,
            heads,
            kv_heads,
            head_dim,
            sliding_window,
            scale,
        } = shape;
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        let kvh = h / (heads / kv_heads);
        let row0 = batch.start(s);
        let lo = sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
        let scores: Vec<f64> = (lo..=p)
            .map(|j| {
                (0..head_dim)
                    .map(|d| {
                        q[(row0 + p) * qw + h * head_dim + d] as f64
                            * k[(row0 + j) * kw + kvh * head_dim + d] as f64
                    })
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let sink = sink.map(|x| x as f64);
        let max = scores.iter().cloned().chain(sink).fold(f64::MIN, f64::max);
        let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
        let on_sink = sink.map_or(0.0, |x| (x - max).exp());
        let sum: f64 = exps.iter().sum::<f64>() + on_sink;
        (lo, exps.iter().map(|e| e / sum).collect(), on_sink / sum)
    }

    /// Untiled attention in f64.
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
        sinks: Option<&[f32]>,
    ) -> Vec<f32> {
        let AttentionShape {
            batch,
            heads,
            kv_heads,
            head_dim,
            ..
        } = shape;
        let (qw, kw) = (heads * head_dim, kv_heads * head_dim);
        let mut out = vec![0f32; batch.tokens() * qw];
        for (s, span) in batch.spans().enumerate() {
            let row0 = span.start;
            for h in 0..heads {
                let kvh = h / (heads / kv_heads);
                for p in 0..span.len() {
                    let sink = sinks.map(|x| x[h]);
                    let (lo, probabilities, _) = probabilities(q, k, shape, (s, h, p), sink);
                    for d in 0..head_dim {
                        let value: f64 = (lo..=p)
                            .zip(&probabilities)
                            .map(|(j, w)| w * v[(row0 + j) * kw + kvh * head_dim + d] as f64)
                            .sum();
                        out[(row0 + p) * qw + h * head_dim + d] = value as f32;
                    }
                }
            }
        }
        out
    }

    /// Per (sequence, head), the sums over queries of the probabilities on position 0, on
    /// the delimiter and on the learned sink.
    fn naive_mass(
        q: &[f32],
        k: &[f32],
        shape: AttentionShape,
        delimiters: &[Option<usize>],
        sinks: Option<&[f32]>,
    ) -> Vec<[f64; 3]> {
        let mut mass = Vec::new();
        for (s, delimiter) in delimiters.iter().enumerate().take(shape.batch.count()) {
            for h in 0..shape.heads {
                let mut sums = [0f64; 3];
                for p in 0..shape.batch.len_of(s) {
                    let sink = sinks.map(|x| x[h]);
                    let (lo, probabilities, on_sink) = probabilities(q, k, shape, (s, h, p), sink);
                    let on = |j: usize| match j >= lo && j <= p {
                        true => probabilities[j - lo],
                        false => 0.0,
                    };
                    sums[0] += on(0);
                    sums[1] += delimiter.map_or(0.0, on);
                    sums[2] += on_sink;
                }
                mass.push(sums);
            }
        }
        mass
    }

    fn check(seq_len: usize, sliding_window: Option<usize>) {
        check_lengths(&[seq_len, seq_len], sliding_window);
    }

    /// Sequences of `lengths` in one micro-batch against the untiled f64 formula.
    fn check_lengths(lengths: &[usize], sliding_window: Option<usize>) {
        let batch = Sequences::from_lengths(lengths.iter().copied());
        let seq_len = batch.longest();
        let shape = AttentionShape {
            batch: &batch,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            sliding_window,
            scale: 8f32.powf(-0.5),
        };
        let rows = batch.tokens();
        let pseudo = |i: usize, m: usize| ((i * m % 97) as f32 / 97.0 - 0.5) * 3.0;
        let q: Vec<f32> = (0..rows * 32).map(|i| pseudo(i, 31)).collect();
        let k: Vec<f32> = (0..rows * 16).map(|i| pseudo(i, 17)).collect();
        let v: Vec<f32> = (0..rows * 16).map(|i| pseudo(i, 7)).collect();
        let mut delimiters: Vec<Option<usize>> = vec![None; batch.count()];
        delimiters[0] = Some(lengths[0] / 2 + 1).filter(|&d| d < lengths[0]);
        // Learned sinks from below to above the scores' range.
        let learned = [-3.0f32, 0.0, 1.5, 4.0];
        for sinks in [None, Some(&learned[..])] {
            let expect = naive(&q, &k, &v, shape, sinks);
            let expect_mass = naive_mass(&q, &k, shape, &delimiters, sinks);
            for threads in [1, 3] {
                let mut out = vec![f32::NAN; rows * 32];
                let extras = AttentionExtras {
                    learned_sinks: sinks,
                    delimiters: Some(&delimiters),
                };
                let mass = causal_attention(&q, &k, &v, &mut out, shape, threads, extras);
                assert_eq!(mass.len(), 4 * batch.count());
                for (i, (m, e)) in mass.iter().zip(&expect_mass).enumerate() {
                    for (a, b) in m.iter().zip(e) {
                        assert!(
                            (a - b).abs() <= 1e-5 * seq_len as f64,
                            "T={seq_len} w={sliding_window:?} sinks {sinks:?} (sequence, head) {i}: {m:?} vs {e:?}"
                        );
                    }
                }
                for (i, (o, e)) in out.iter().zip(&expect).enumerate() {
                    assert!(
                        (o - e).abs() <= 1e-5 + 1e-4 * e.abs(),
                        "T={seq_len} w={sliding_window:?} sinks {sinks:?} [{i}] {o} vs {e}"
                    );
                }
                if sinks.is_none() {
                    let mut plain = vec![f32::NAN; rows * 32];
                    let none = AttentionExtras::default();
                    assert!(
                        causal_attention(&q, &k, &v, &mut plain, shape, threads, none).is_empty()
                    );
                    assert_eq!(plain, out, "the sums change nothing");
                }
            }
        }
    }

    #[test]
    fn sequences_of_their_own_lengths_attend_within_themselves() {
        check_lengths(&[5, 1, 2 * QUERY_TILE + 3, 70], None);
        check_lengths(&[130, 7, 64], Some(9));
    }

    #[test]
    fn tiled_attention_matches_naive_across_tile_boundaries() {
        check(1, None);
        check(QUERY_TILE - 1, None);
        check(2 * QUERY_TILE + 5, None);
    }

    #[test]
    fn sliding_window_limits_keys() {
        check(2 * QUERY_TILE + 5, Some(7));
        check(2 * QUERY_TILE + 5, Some(QUERY_TILE + 3));
        check(20, Some(1));
    }
}
