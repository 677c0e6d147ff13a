//! Rotary position embedding, `rotate_half` convention: dimension `i` of a head is rotated
//! with dimension `i + head_dim / 2` by the angle `position * inv_freq[i]`.

use crate::sequences::Sequences;

/// cos and sin for every position of a sequence and every rotated pair.
pub struct RopeTable {
    half_dim: usize,
    cos: Vec<f32>, // (seq_len, half_dim)
    sin: Vec<f32>, // (seq_len, half_dim)
}

impl RopeTable {
    /// Angles in f32 (`position as f32 * inv_freq`), as transformers computes them; cos and
    /// sin multiplied by `attention_scaling` (YaRN's factor, 1 otherwise).
    pub fn new(inv_freq: &[f32], seq_len: usize, attention_scaling: f32) -> Self {
        let half_dim = inv_freq.len();
        let mut cos = Vec::with_capacity(seq_len * half_dim);
        let mut sin = Vec::with_capacity(seq_len * half_dim);
        for position in 0..seq_len {
            for &freq in inv_freq {
                let angle = position as f32 * freq;
                cos.push(angle.cos() * attention_scaling);
                sin.push(angle.sin() * attention_scaling);
            }
        }
        RopeTable { half_dim, cos, sin }
    }

    /// Rotates the first `2 * inv_freq.len()` dimensions of every head of every row (the
    /// rest of a head, under partial rotary, is left alone); each row is at its position in
    /// its sequence of `batch`.
    pub fn apply(
        &self,
        values: &mut [f32], // (rows, heads * head_dim)
        heads: usize,
        head_dim: usize,
        batch: &Sequences,
    ) {
        let row_width = heads * head_dim;
        let positions = batch.positions();
        for (row, &position) in values.chunks_exact_mut(row_width).zip(&positions) {
            let position = position as usize;
            let cos = &self.cos[position * self.half_dim..(position + 1) * self.half_dim];
            let sin = &self.sin[position * self.half_dim..(position + 1) * self.half_dim];
            for head in row.chunks_exact_mut(head_dim) {
                let (first, second) = head[..2 * self.half_dim].split_at_mut(self.half_dim);
                for i in 0..self.half_dim {
                    let (x1, x2) = (first[i], second[i]);
                    first[i] = x1 * cos[i] - x2 * sin[i];
                    second[i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_pair_norms_and_position_zero_is_identity() {
        let table = RopeTable::new(&[1.0, 0.1], 3, 1.0);
        let original: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect(); // 3 rows, 1 head of 4
        let mut rotated = original.clone();
        table.apply(&mut rotated, 1, 4, &Sequences::uniform(1, 3));
        assert_eq!(&rotated[..4], &original[..4]);
        for row in 0..3 {
            for i in 0..2 {
                let n0 = original[row * 4 + i].hypot(original[row * 4 + i + 2]);
                let n1 = rotated[row * 4 + i].hypot(rotated[row * 4 + i + 2]);
                assert!((n0 - n1).abs() < 1e-5);
            }
        }
        // Position 1, pair 0: angle 1 rad.
        let (x1, x2) = (original[4], original[6]);
        assert!((rotated[4] - (x1 * 1f32.cos() - x2 * 1f32.sin())).abs() < 1e-6);
    }

    #[test]
    fn yarn_scaling_multiplies_cos_and_sin() {
        let (plain, scaled) = (
            RopeTable::new(&[0.3], 4, 1.0),
            RopeTable::new(&[0.3], 4, 1.5),
        );
        let original = vec![1.0f32, -2.0, 0.5, 3.0]; // 2 rows, 1 head of 2
        let (mut a, mut b) = (original.clone(), original.clone());
        plain.apply(&mut a, 1, 2, &Sequences::uniform(1, 2));
        scaled.apply(&mut b, 1, 2, &Sequences::uniform(1, 2));
        for (x, y) in a.iter().zip(&b) {
            assert!((x * 1.5 - y).abs() < 1e-6, "{x} {y}");
        }
    }
}
