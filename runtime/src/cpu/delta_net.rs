//! The Gated DeltaNet's ops on the CPU, in f32: column regrouping, the causal depthwise
//! convolution with SiLU, the gated delta rule in its recurrent form (transformers'
//! `torch_recurrent_gated_delta_rule`, the clearest statement of it) and the gated RMSNorm.

use super::norm::rms_norm;
use crate::arch::DeltaNetSpec;
use crate::block::Regroup;
use crate::sequences::Sequences;

/// `x / (1 + exp(-x))`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// torch's softplus (beta 1, threshold 20): `log(1 + exp(x))`, `x` above 20.
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// Copies the pieces of every input row's groups into the output rows (see [`Regroup`]).
pub(crate) fn regroup(
    input: &[f32],   // (rows, groups * group_width)
    out: &mut [f32], // (rows, out_width)
    layout: &Regroup,
) {
    let in_width = layout.groups * layout.group_width;
    let rows = out.len() / layout.out_width;
    for row in 0..rows {
        let source = &input[row * in_width..(row + 1) * in_width];
        let target = &mut out[row * layout.out_width..(row + 1) * layout.out_width];
        for g in 0..layout.groups {
            for piece in layout.pieces {
                let from = g * layout.group_width + piece.from;
                let to = piece.to + g * piece.width;
                target[to..to + piece.width].copy_from_slice(&source[from..from + piece.width]);
            }
        }
    }
}

/// `out[t, c] = silu(sum_j weight[c, j] * input[t - kernel + 1 + j, c])` within each
/// sequence of `batch` (earlier positions are zero).
pub fn causal_conv_silu(
    input: &[f32],   // (rows, channels)
    weight: &[f32],  // (channels, 1, kernel)
    out: &mut [f32], // (rows, channels)
    kernel: usize,
    batch: &Sequences,
) {
    let channels = weight.len() / kernel;
    let positions = batch.positions();
    for (row, &t) in positions.iter().enumerate() {
        let t = t as usize;
        for c in 0..channels {
            let mut sum = 0f32;
            for j in 0..kernel {
                // input position t - (kernel - 1) + j
                if t + j + 1 >= kernel {
                    let source = row + j + 1 - kernel;
                    sum += weight[c * kernel + j] * input[source * channels + c];
                }
            }
            out[row * channels + c] = silu(sum);
        }
    }
}

/// What the delta rule reads, per token: the convolved q, k, v and the raw b, a.
pub struct DeltaInputs<'a> {
    /// `(rows, key_heads * key_dim)`.
    pub q: &'a [f32],
    /// `(rows, key_heads * key_dim)`.
    pub k: &'a [f32],
    /// `(rows, value_heads * value_dim)`.
    pub v: &'a [f32],
    /// `(rows, value_heads)`: beta = sigmoid(b).
    pub b: &'a [f32],
    /// `(rows, value_heads)`: g = -exp(A_log) softplus(a + dt_bias).
    pub a: &'a [f32],
    /// `(value_heads)`.
    pub a_log: &'a [f32],
    /// `(value_heads)`.
    pub dt_bias: &'a [f32],
}

/// The L2 norm transformers' `l2norm` takes: `x / sqrt(sum(x^2) + 1e-6)`, times `scale`.
fn l2_normed(x: &[f32], scale: f32) -> Vec<f32> {
    let sum: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (sum + 1e-6).sqrt();
    x.iter().map(|v| v * inv * scale).collect()
}

/// The gated delta rule of one sequence and value head from a zero state `state (key_dim,
/// value_dim)`, its output written to `out` rows `(seq_len, value width)` at the head's
/// columns.
#[allow(clippy::too_many_arguments)]
fn one_head(
    inputs: &DeltaInputs,
    delta: &DeltaNetSpec,
    (first_row, seq_len): (usize, usize),
    head: usize,
    state: &mut [f32], // (key_dim, value_dim)
    out: &mut [f32],   // (seq_len, value heads * value_dim), the sequence's rows
) {
    let (dk, dv, h) = (delta.key_dim, delta.value_dim, delta.value_heads);
    let (key_width, value_width) = (delta.key_heads * dk, h * dv);
    let key_head = head / (h / delta.key_heads);
    let decay_rate = -inputs.a_log[head].exp();
    state.fill(0.0);
    let mut kv_mem = vec![0f32; dv];
    for t in 0..seq_len {
        let row = first_row + t;
        let key_at = row * key_width + key_head * dk;
        let q = l2_normed(&inputs.q[key_at..key_at + dk], (dk as f32).powf(-0.5));
        let k = l2_normed(&inputs.k[key_at..key_at + dk], 1.0);
        let v = &inputs.v[row * value_width + head * dv..][..dv];
        let beta = sigmoid(inputs.b[row * h + head]);
        let g = decay_rate * softplus(inputs.a[row * h + head] + inputs.dt_bias[head]);
        let decay = g.exp();
        state.iter_mut().for_each(|s| *s *= decay);
        kv_mem.fill(0.0);
        for (i, &ki) in k.iter().enumerate() {
            for (m, &s) in kv_mem.iter_mut().zip(&state[i * dv..(i + 1) * dv]) {
                *m += s * ki;
            }
        }
        for (i, &ki) in k.iter().enumerate() {
            let state_row = &mut state[i * dv..(i + 1) * dv];
            for ((s, &vj), &m) in state_row.iter_mut().zip(v).zip(&kv_mem) {
                *s += ki * ((vj - m) * beta);
            }
        }
        let o = &mut out[t * value_width + head * dv..][..dv];
        o.fill(0.0);
        for (i, &qi) in q.iter().enumerate() {
            for (oj, &s) in o.iter_mut().zip(&state[i * dv..(i + 1) * dv]) {
                *oj += s * qi;
            }
        }
    }
}

/// The gated delta rule of every sequence and value head of a micro-batch into `out (rows,
/// value width)`, sequences spread over `threads` threads, one `(value heads, key_dim,
/// value_dim)` slice of `states` per sequence.
pub fn delta_rule(
    inputs: &DeltaInputs,
    delta: &DeltaNetSpec,
    batch: &Sequences,
    states: &mut [f32], // (sequences, value heads, key_dim, value_dim)
    out: &mut [f32],    // (rows, value heads * value_dim)
    threads: usize,
) {
    let per_state = delta.key_dim * delta.value_dim;
    let value_width = delta.value_heads * delta.value_dim;
    // Each sequence's output rows, in order.
    let mut outputs: Vec<&mut [f32]> = Vec::with_capacity(batch.count());
    let mut rest = &mut out[..batch.tokens() * value_width];
    for len in batch.lengths() {
        let (mine, after) = rest.split_at_mut(len * value_width);
        outputs.push(mine);
        rest = after;
    }
    let mut work: Vec<(usize, &mut [f32], &mut [f32])> = outputs
        .into_iter()
        .zip(states.chunks_mut(delta.value_heads * per_state))
        .enumerate()
        .map(|(s, (o, st))| (s, o, st))
        .collect();
    let per_thread = work.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for share in work.chunks_mut(per_thread) {
            scope.spawn(move || {
                for (sequence, out, states) in share.iter_mut() {
                    for (head, state) in states.chunks_mut(per_state).enumerate() {
                        let rows = (batch.start(*sequence), batch.len_of(*sequence));
                        one_head(inputs, delta, rows, head, state, out);
                    }
                }
            });
        }
    });
}

/// `out = (weight * rms_norm(values)) * gate` over every `weight.len()`-wide slice of a
/// row (DeltaNet's gated norm per value head; `gate` already `silu(z)`).
pub fn gated_rms_norm(
    values: &[f32], // (rows, heads * head_width)
    weight: &[f32], // (head_width)
    gate: &[f32],   // (rows, heads * head_width)
    eps: f32,
    out: &mut [f32], // (rows, heads * head_width)
    threads: usize,
) {
    rms_norm(values, weight, eps, out, threads);
    out.iter_mut().zip(gate).for_each(|(o, &g)| *o *= g);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::Piece;

    #[test]
    fn regroup_moves_each_groups_pieces_to_their_columns() {
        // Two groups of [a a | b]: out = [a a (group 0) a a (group 1)].
        let input = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 4];
        let layout = Regroup {
            groups: 2,
            group_width: 3,
            out_width: 4,
            pieces: &[Piece {
                from: 0,
                width: 2,
                to: 0,
            }],
        };
        regroup(&input, &mut out, &layout);
        assert_eq!(out, [1.0, 2.0, 4.0, 5.0]);
    }

    #[test]
    fn convolution_is_causal_per_sequence() {
        // One channel, kernel 2 with weights [0.5, 1]: out[t] = silu(x[t] + 0.5 x[t-1]),
        // and the second sequence starts from zero history.
        let input = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        causal_conv_silu(&input, &[0.5, 1.0], &mut out, 2, &Sequences::uniform(2, 2));
        let expected = [silu(1.0), silu(2.5), silu(3.0), silu(5.5)];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
        // Sequences of 3 and 1 tokens.
        causal_conv_silu(
            &input,
            &[0.5, 1.0],
            &mut out,
            2,
            &Sequences::from_lengths([3, 1]),
        );
        let expected = [silu(1.0), silu(2.5), silu(4.0), silu(4.0)];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn one_token_reads_back_its_own_value_scaled() {
        // S = beta k v^T from zero; o = S^T q = beta (k . q) v with unit k, q / sqrt(dk).
        let delta = DeltaNetSpec {
            key_heads: 1,
            value_heads: 1,
            key_dim: 4,
            value_dim: 2,
            conv_kernel: 4,
        };
        let inputs = DeltaInputs {
            q: &[1.0, 0.0, 0.0, 0.0],
            k: &[2.0, 0.0, 0.0, 0.0],
            v: &[3.0, -1.0],
            b: &[0.0],
            a: &[0.0],
            a_log: &[0.0],
            dt_bias: &[0.0],
        };
        let (mut states, mut out) = (vec![0.0; 8], vec![0.0; 2]);
        delta_rule(
            &inputs,
            &delta,
            &Sequences::uniform(1, 1),
            &mut states,
            &mut out,
            1,
        );
        let unit = 1.0 / (1.0f32 + 1e-6).sqrt();
        let k_unit = 2.0 / (4.0f32 + 1e-6).sqrt();
        let scale = 0.5 * k_unit * unit * 0.5; // beta 0.5, q scaled by 4^-0.5
        for (o, v) in out.iter().zip([3.0, -1.0]) {
            assert!((o - scale * v).abs() < 1e-6, "{out:?}");
        }
    }
}
