//! `y = x W^T + b`, the projection every layer is made of, with W stored as transformers
//! stores it: `(out_features, in_features)`, row-major.

use super::threads::for_each_chunk_mut;

/// Rows of `x` each thread takes at least, so small products are not split to nothing.
const MIN_ROWS_PER_THREAD: usize = 16;

/// `output (rows, out_features) = input (rows, in_features) @ weight^T (+ bias)`.
pub fn linear(
    input: &[f32],        // (rows, in_features)
    weight: &[f32],       // (out_features, in_features)
    bias: Option<&[f32]>, // (out_features)
    output: &mut [f32],   // (rows, out_features)
    in_features: usize,
    out_features: usize,
    threads: usize,
) {
    let rows = input.len() / in_features;
    assert_eq!(
        input.len(),
        rows * in_features,
        "input is not (rows, in_features)"
    );
    assert_eq!(
        weight.len(),
        out_features * in_features,
        "weight is not (out, in)"
    );
    assert_eq!(
        output.len(),
        rows * out_features,
        "output is not (rows, out_features)"
    );
    let rows_per_chunk = rows.div_ceil(threads.max(1)).max(MIN_ROWS_PER_THREAD);
    for_each_chunk_mut(
        output,
        rows_per_chunk * out_features,
        threads,
        |chunk_index, out_rows| {
            let first_row = chunk_index * rows_per_chunk;
            let chunk_rows = out_rows.len() / out_features;
            let in_rows = &input[first_row * in_features..(first_row + chunk_rows) * in_features];
            matmul_transposed_b(
                in_rows,
                weight,
                out_rows,
                chunk_rows,
                in_features,
                out_features,
            );
            if let Some(bias) = bias {
                for row in out_rows.chunks_exact_mut(out_features) {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                }
            }
        },
    );
}

/// `c (m, n) = a (m, k) @ b^T` where `b` is `(n, k)` row-major; single-threaded.
pub fn matmul_transposed_b(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= n * k && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above keep every index sgemm forms inside the three slices:
    // a is read at r*k + j (r < m, j < k), b at c*k + j (c < n), c written at r*n + c.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            1,
            k as isize,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_for_odd_shapes_and_threads() {
        let (rows, inf, outf) = (37, 13, 11);
        let x: Vec<f32> = (0..rows * inf)
            .map(|i| ((i * 7) % 17) as f32 * 0.1 - 0.8)
            .collect();
        let w: Vec<f32> = (0..outf * inf)
            .map(|i| ((i * 5) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let b: Vec<f32> = (0..outf).map(|i| i as f32 * 0.01).collect();
        for threads in [1, 2, 3] {
            let mut y = vec![f32::NAN; rows * outf];
            linear(&x, &w, Some(&b), &mut y, inf, outf, threads);
            for r in 0..rows {
                for o in 0..outf {
                    let expect: f64 = (0..inf)
                        .map(|i| x[r * inf + i] as f64 * w[o * inf + i] as f64)
                        .sum::<f64>()
                        + b[o] as f64;
                    let got = y[r * outf + o] as f64;
                    assert!(
                        (got - expect).abs() <= 1e-5 + 1e-5 * expect.abs(),
                        "{r},{o}: {got} vs {expect}"
                    );
                }
            }
        }
    }
}
