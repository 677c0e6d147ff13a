//! The analysis kernels against the CPU's definitions, per element: each token's three
//! largest |x| and each sequence's median |x| (massive activations), exactly. Skipped
//! without a GPU unless LAYERSTREAM_REQUIRE_GPU=1.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::CudaSlice;
use layerstream_kernels::ops::magnitudes::{self, MEDIAN_SCRATCH_SEQUENCES, MedianScratch};
use layerstream_kernels::ops::stats;
use layerstream_runtime::analysis::magnitudes::{lower_median_magnitude, top_magnitudes};
use layerstream_runtime::analysis::position_bits::PositionBits;
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
    for (value, planted) in large.iter_mut().zip([3.0e38, -30_000.0]) {
        *value = planted;
    }
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

/// The attention-sink mass of both attention kernels (f32, and bf16 on tensor cores) against
/// the CPU's, per (sequence, head): causal, sliding windows that hide key 0 and the
/// delimiter from later queries, grouped-query heads, a sequence without a delimiter; with
/// and without learned sink logits (GPT-OSS), whose output is checked against the CPU's too.
/// The attention output itself is unchanged by asking for the statistics.
#[test]
fn attention_sink_mass_matches_the_cpu() {
    use layerstream_kernels::ops::attention::{
        AttentionDims, F16Guard, MmaOperands, SinkScratch, TensorCoreScratch, causal_attention,
        reduce_sink_mass, sink_scratch_len, tensor_core_kv_len,
    };
    use layerstream_runtime::cpu::attention::{
        self as cpu_attention, AttentionExtras, AttentionShape,
    };
    use layerstream_tests::assert_all_close;
    let Some(gpu) = gpu_or_skip("attention sinks") else {
        return;
    };
    let learned_logits = [-2.0f32, 0.5, 3.0, 8.0];
    for (seq_len, head_dim, window) in [
        (1, 16, None),
        (7, 64, None),
        (100, 128, None),
        (100, 128, Some(5)),
        (130, 64, Some(70)),
        (70, 256, Some(40)),
        (33, 80, None),
    ] {
        use MmaOperands::{Bf16, F16, Off};
        for (operands, learned) in [
            (Off, false),
            (Bf16, false),
            (F16, false),
            (Off, true),
            (Bf16, true),
            (F16, true),
        ] {
            let dims = AttentionDims {
                sequences: 3,
                seq_len,
                heads: 4,
                kv_heads: 2,
                head_dim,
                sliding_window: window,
                scale: (head_dim as f32).powf(-0.5),
                operands,
            };
            let on_tensor_cores = dims.uses_tensor_cores(&gpu);
            let rows = 3 * seq_len;
            let round = |x: Vec<f32>| -> Vec<f32> {
                match (on_tensor_cores, operands) {
                    (true, Bf16) => x
                        .iter()
                        .map(|&v| half::bf16::from_f32(v).to_f32())
                        .collect(),
                    (true, F16) => x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
                    _ => x,
                }
            };
            let q = round(random_values(rows * 4 * head_dim, 12, 2.0));
            let k = round(random_values(rows * 2 * head_dim, 13, 2.0));
            let v = random_values(rows * 2 * head_dim, 14, 2.0);
            let delimiters = [
                Some(seq_len / 3).filter(|&d| d > 0),
                None,
                Some(seq_len - 1),
            ];
            let batch = layerstream_runtime::Sequences::uniform(3, seq_len);
            let shape = AttentionShape {
                batch: &batch,
                heads: 4,
                kv_heads: 2,
                head_dim,
                sliding_window: window,
                scale: dims.scale,
            };
            let learned_sinks = learned.then_some(&learned_logits[..]);
            let mut expect_out = vec![0f32; q.len()];
            let extras = AttentionExtras {
                learned_sinks,
                delimiters: Some(&delimiters),
            };
            let expect =
                cpu_attention::causal_attention(&q, &k, &v, &mut expect_out, shape, 2, extras);
            let as_i32: Vec<i32> = delimiters
                .iter()
                .map(|d| d.map_or(-1, |d| d as i32))
                .collect();
            let mut out = gpu.stream.alloc_zeros::<f32>(q.len()).unwrap();
            let mut plain = gpu.stream.alloc_zeros::<f32>(q.len()).unwrap();
            let mut scratch = gpu
                .stream
                .alloc_zeros::<f32>(sink_scratch_len(&dims, dims.sequences * dims.seq_len))
                .unwrap();
            let (qd, kd, vd) = (upload(&gpu, &q), upload(&gpu, &k), upload(&gpu, &v));
            let learned_device = upload(&gpu, &learned_logits);
            let learned_view = learned_device.as_view();
            let mut scratch_view = scratch.as_view_mut();
            let sinks = SinkScratch {
                scratch: &mut scratch_view,
                delimiters: &as_i32,
            };
            let mut flags = gpu.stream.alloc_zeros::<u32>(3).unwrap();
            let mut totals = gpu.stream.alloc_zeros::<u64>(3).unwrap();
            let mut kv = gpu
                .stream
                .alloc_zeros::<u16>(tensor_core_kv_len(&dims, dims.sequences * dims.seq_len))
                .unwrap();
            let mut run = |out: &mut CudaSlice<f32>, sinks| {
                let (mut flags, mut totals) = (flags.as_view_mut(), totals.as_view_mut());
                let mut kv = kv.as_view_mut();
                let guard = (operands == F16).then_some(F16Guard {
                    flags: &mut flags,
                    totals: &mut totals,
                });
                let tensor_cores = (operands != MmaOperands::Off)
                    .then_some(TensorCoreScratch { kv: &mut kv, guard });
                causal_attention(
                    &gpu,
                    &qd.as_view(),
                    &kd.as_view(),
                    &vd.as_view(),
                    &mut out.as_view_mut(),
                    dims,
                    learned.then_some(&learned_view),
                    sinks,
                    None,
                    tensor_cores,
                )
                .unwrap()
            };
            run(&mut out, Some(sinks));
            run(&mut plain, None);
            let what = format!(
                "T={seq_len} d={head_dim} w={window:?} {operands:?} on tensor cores {on_tensor_cores} learned {learned}"
            );
            // Values of a few units: nothing for the f16 guard to recompute.
            assert_eq!(gpu.stream.clone_dtoh(&totals).unwrap(), [0, 0, 0], "{what}");
            let got_out = gpu.stream.clone_dtoh(&out).unwrap();
            assert_eq!(
                got_out,
                gpu.stream.clone_dtoh(&plain).unwrap(),
                "{what}: the output does not change with the statistics"
            );
            match on_tensor_cores {
                true => assert_all_close(&what, &got_out, &expect_out, 0.02, 0.01),
                false => assert_all_close(&what, &got_out, &expect_out, 1e-5, 1e-4),
            }
            let got = reduce_sink_mass(&gpu, &mut scratch_view, &dims, None).unwrap();
            assert_eq!(got.len(), expect.len());
            // f32: rounding only; bf16 probabilities on tensor cores: < 2^-8 relative each.
            let tolerance = if on_tensor_cores { 0.01 } else { 1e-5 };
            for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
                for (a, b) in g.iter().zip(e) {
                    assert!(
                        (a - b).abs() <= tolerance * b.abs().max(1.0),
                        "{what}: (sequence, head) {i}: {g:?} vs {e:?}"
                    );
                }
            }
            match learned {
                // Query 0 puts everything on key 0: each sum is at least 1 where key 0 is seen.
                false => assert!(
                    expect.iter().all(|m| m[0] >= 1.0 - 1e-6 && m[2] == 0.0),
                    "{what}"
                ),
                // The learned sink takes mass from every query.
                true => assert!(expect.iter().all(|m| m[2] > 0.0), "{what}"),
            }
        }
    }
}

#[test]
fn statistics_accumulate_like_the_cpu_summary() {
    let Some(gpu) = gpu_or_skip("stats") else {
        return;
    };
    let (sequences, seq_len, width) = (5, 129, 70);
    let mut x = random_values(sequences * seq_len * width, 15, 9.0);
    x[3 * width + 4] = f32::NAN;
    // Positions kept (the outlier-feature points' accumulators).
    let words = (sequences * seq_len).div_ceil(32);
    let mut acc = stats::StatsAccumulators::new(&gpu, sequences, width, words).unwrap();
    // Two micro-batches: sequences 0-2, then 3-4.
    for (first, count) in [(0, 3), (3, 2)] {
        let part = upload(
            &gpu,
            &x[first * seq_len * width..(first + count) * seq_len * width],
        );
        acc.accumulate(&gpu, &part.as_view(), count, seq_len, first, 6.0, None)
            .unwrap();
    }
    let host = acc.download(&gpu).unwrap();
    let shape = layerstream_planner::statistics::CapturedPoint {
        width,
        positions: true,
        magnitudes: false,
    };
    let mut reference =
        layerstream_runtime::analysis::PointStatistics::new(sequences, seq_len, shape, 6.0);
    reference.accumulate(&x, 0);
    assert_eq!(
        host.count_pos_ge, reference.count_pos_ge,
        "positive >= threshold"
    );
    assert_eq!(host.histogram, reference.histogram, "|x| histogram");
    assert_eq!(
        PositionBits::from_dense(width, reference.position_words(), &host.positions),
        reference.positions,
        "position bits"
    );
    assert!(host.positions.iter().any(|&w| w != 0));
    for (i, (got, expect)) in host
        .sum_abs_ge
        .iter()
        .zip(&reference.sum_abs_ge)
        .enumerate()
    {
        assert!(
            (got - expect).abs() <= 1e-9 * expect.abs().max(1.0),
            "sum |x| >= threshold at {i}: {got} vs {expect}"
        );
    }
    assert_eq!(
        host.max_abs, reference.max_abs,
        "max |x| per (sequence, dim)"
    );
    assert_eq!(
        host.count_ge, reference.count_ge,
        "count >= threshold per (sequence, dim)"
    );
    assert_eq!(
        host.non_finite, reference.non_finite,
        "non-finite per (sequence, dim)"
    );
    assert_eq!(host.non_finite.iter().sum::<u64>(), 1);
    // Sums of powers per (sequence, dim), against f64 on the CPU.
    let plane = sequences * width;
    for s in 0..sequences {
        for d in 0..width {
            let column: Vec<f64> = (0..seq_len)
                .map(|t| x[(s * seq_len + t) * width + d] as f64)
                .filter(|v| v.is_finite())
                .collect();
            for power in 1..=4 {
                let expect: f64 = column.iter().map(|v| v.powi(power as i32)).sum();
                let got = host.sums[(power - 1) * plane + s * width + d];
                assert!(
                    (got - expect).abs() <= 1e-9 * expect.abs().max(1.0),
                    "sum x^{power} ({s},{d}): {got} vs {expect}"
                );
            }
        }
    }
}

/// Records of their own lengths (`analyze --per-record`): the kernel reads each sequence's
/// rows from the workload's offsets and sets the position bits of its own tokens, exactly as
/// the CPU's statistics of the same rows.
#[test]
fn ragged_statistics_accumulate_like_the_cpu() {
    let Some(gpu) = gpu_or_skip("ragged stats") else {
        return;
    };
    let (lengths, width) = ([129usize, 1, 40, 77, 33], 70);
    let rows = layerstream_runtime::Sequences::from_lengths(lengths);
    let x = random_values(rows.tokens() * width, 16, 9.0);
    let words = rows.tokens().div_ceil(32);
    let mut acc = stats::StatsAccumulators::new(&gpu, lengths.len(), width, words).unwrap();
    let offsets: Vec<i32> = rows.offsets().iter().map(|&o| o as i32).collect();
    let offsets = gpu.stream.clone_htod(&offsets).unwrap();
    for (first, count) in [(0, 3), (3, 2)] {
        let span = rows.rows(first..first + count);
        let part = upload(&gpu, &x[span.start * width..span.end * width]);
        let ragged = layerstream_kernels::ops::attention::RaggedRows {
            offsets: &offsets.slice(first..first + count + 1),
            rows: span.len(),
        };
        acc.accumulate(&gpu, &part.as_view(), count, 129, first, 6.0, Some(ragged))
            .unwrap();
    }
    let host = acc.download(&gpu).unwrap();
    let shape = layerstream_planner::statistics::CapturedPoint {
        width,
        positions: true,
        magnitudes: false,
    };
    let mut reference = layerstream_runtime::analysis::PointStatistics::of_rows(rows, shape, 6.0);
    reference.accumulate(&x, 0);
    assert!(host.positions.iter().any(|&w| w != 0));
    assert_eq!(
        PositionBits::from_dense(width, reference.position_words(), &host.positions),
        reference.positions,
        "position bits"
    );
    assert_eq!(host.histogram, reference.histogram, "|x| histogram");
    assert_eq!(host.max_abs, reference.max_abs, "max |x|");
    assert_eq!(host.count_ge, reference.count_ge, "count >= threshold");
    assert_eq!(host.count_pos_ge, reference.count_pos_ge, "positive");
    for (i, (got, expect)) in host.sums.iter().zip(&reference.sums).enumerate() {
        assert!(
            (got - expect).abs() <= 1e-9 * expect.abs().max(1.0),
            "sums at {i}: {got} vs {expect}"
        );
    }
}
