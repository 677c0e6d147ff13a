//! RMSNorm as transformers computes it: `weight * (x / sqrt(mean(x^2) + eps))`.

use super::threads::for_each_chunk_mut;

/// Normalises every `width`-long row of `input` into `output`.
pub fn rms_norm(
    input: &[f32],  // (rows, width)
    weight: &[f32], // (width)
    eps: f32,
    output: &mut [f32], // (rows, width)
    threads: usize,
) {
    let width = weight.len();
    assert_eq!(input.len(), output.len());
    assert_eq!(
        input.len() % width,
        0,
        "input rows are not of width {width}"
    );
    let rows_per_chunk = 64;
    for_each_chunk_mut(
        output,
        rows_per_chunk * width,
        threads,
        |chunk_index, out| {
            let start = chunk_index * rows_per_chunk * width;
            let inp = &input[start..start + out.len()];
            for (x, y) in inp.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                rms_norm_row(x, weight, eps, y);
            }
        },
    );
}

/// Normalises one row in place (used for per-head query/key norms).
pub fn rms_norm_rows_in_place(values: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    let mut row_copy = vec![0f32; width];
    for row in values.chunks_exact_mut(width) {
        row_copy.copy_from_slice(row);
        rms_norm_row(&row_copy, weight, eps, row);
    }
}

fn rms_norm_row(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let sum_squares: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let variance = (sum_squares / x.len() as f64) as f32;
    let inv_rms = 1.0 / (variance + eps).sqrt();
    for ((out, &v), &w) in y.iter_mut().zip(x).zip(weight) {
        *out = w * (v * inv_rms);
    }
}

/// LayerNorm of every row: `(x - mean) / sqrt(var + eps) * weight (+ bias)`, in f64 sums.
pub fn layer_norm(
    input: &[f32],        // (rows, width)
    weight: &[f32],       // (width)
    bias: Option<&[f32]>, // (width)
    eps: f32,
    output: &mut [f32], // (rows, width)
) {
    let width = weight.len();
    for (x, y) in input
        .chunks_exact(width)
        .zip(output.chunks_exact_mut(width))
    {
        let mean = (x.iter().map(|&v| v as f64).sum::<f64>() / width as f64) as f32;
        let variance =
            (x.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>() / width as f64) as f32;
        let inv_std = 1.0 / (variance + eps).sqrt();
        for (d, out) in y.iter_mut().enumerate() {
            *out = (x[d] - mean) * inv_std * weight[d] + bias.map_or(0.0, |b| b[d]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let mut y = vec![0.0; 300];
        rms_norm(&x, &[1.0; 100], 0.0, &mut y, 2);
        for row in y.chunks(100) {
            let rms = (row.iter().map(|v| v * v).sum::<f32>() / 100.0).sqrt();
            assert!((rms - 1.0).abs() < 1e-5, "{rms}");
        }
        let mut in_place = x.clone();
        rms_norm_rows_in_place(&mut in_place, &[1.0; 100], 0.0);
        assert_eq!(in_place, y);
    }
}
