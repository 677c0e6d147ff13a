//! The analysis kernels against the CPU's definitions, per element: each token's three
//! largest |x| and each sequence's median |x| (massive activations), exactly. Skipped
//! without a GPU unless LAYERSTREAM_REQUIRE_GPU=1.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::CudaSlice;
use layerstream_kernels::ops::magnitudes::{self, MEDIAN_SCRATCH_SEQUENCES, MedianScratch};
use layerstream_runtime::analysis::magnitudes::{lower_median_magnitude, top_magnitudes};
use layerstream_tests::{gpu_or_skip, random_values};

fn upload(gpu: &Gpu, values: &[f32]) -> CudaSlice<f32> {
    gpu.stream.clone_htod(values).unwrap()
}

#[test]
fn row_top_three_match_the_cpu() {
    let Some(gpu) = gpu_or_skip("row top three") else {
        return;
    };
    // Widths below, at and above one block's threads; repeated maxima; non-finite values.
    for (rows, width) in [(37, 300), (5, 2048), (3, 7), (4, 1)] {
        let mut x = random_values(rows * width, 21, 3.0);
        x[width.min(17)] = -250.0;
        if width > 4 {
            x[2 * width + 3] = f32::INFINITY;
            x[2 * width + 4] = f32::NAN;
            x[width + 1] = 99.0;
            x[width + 2] = -99.0;
        }
        let device = upload(&gpu, &x);
        let mut out = gpu.stream.alloc_zeros::<f32>(3 * rows).unwrap();
        magnitudes::row_top3_abs(&gpu, &device.as_view(), rows, width, &mut out).unwrap();
        let got = gpu.stream.clone_dtoh(&out).unwrap();
        let expect: Vec<f32> = x.chunks_exact(width).flat_map(top_magnitudes).collect();
        assert_eq!(got, expect, "rows {rows} width {width}");
    }
}

/// Sequences whose medians stress the selection: random, heavy ties, all equal, zeros,
/// denormals, huge values, NaN and infinities mixed in, nothing finite at all; odd and even
/// counts; more sequences than the scratch holds at once.
fn hard_sequences(per_sequence: usize) -> Vec<Vec<f32>> {
    let mut sequences = Vec::new();
    for seed in 0..3 {
        sequences.push(random_values(per_sequence, 100 + seed, 5.0));
    }
    sequences.push(vec![1.5; per_sequence]);
    sequences.push(vec![0.0; per_sequence]);
    sequences.push((0..per_sequence).map(|i| (i % 3) as f32 - 1.0).collect());
    sequences.push(
        (0..per_sequence)
            .map(|i| f32::from_bits(i as u32 % 7 + 1))
            .collect(),
    );
    let mut large = random_values(per_sequence, 7, 1.0);
    large[0] = 3.0e38;
    large[1] = -30_000.0;
    sequences.push(large);
    let mut mixed = random_values(per_sequence, 8, 2.0);
    for i in (0..per_sequence).step_by(5) {
        mixed[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][i % 3];
    }
    sequences.push(mixed);
    sequences.push(vec![f32::NAN; per_sequence]);
    while sequences.len() < MEDIAN_SCRATCH_SEQUENCES + 5 {
        let seed = sequences.len() as u64;
        sequences.push(random_values(per_sequence, seed, 0.01 * seed as f32));
    }
    sequences
}

#[test]
fn sequence_medians_are_exact() {
    let Some(gpu) = gpu_or_skip("sequence median") else {
        return;
    };
    for per_sequence in [1, 2, 7, 4096, 64 * 4096 + 3] {
        let sequences = hard_sequences(per_sequence);
        let flat: Vec<f32> = sequences.concat();
        let device = upload(&gpu, &flat);
        let mut scratch = MedianScratch::new(&gpu, sequences.len()).unwrap();
        let got = magnitudes::sequence_median_abs(
            &gpu,
            &device.as_view(),
            sequences.len(),
            per_sequence,
            &mut scratch,
        )
        .unwrap();
        let expect: Vec<f32> = sequences
            .iter()
            .map(|s| lower_median_magnitude(s))
            .collect();
        for (s, (g, e)) in got.iter().zip(&expect).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{per_sequence} values, sequence {s}: {g} vs {e}"
            );
        }
    }
}
