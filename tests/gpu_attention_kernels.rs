//! RoPE and causal attention on the GPU against the CPU reference, per element: sequences of
//! one length (packed data) and of their own lengths in one micro-batch (per-record
//! workloads: row positions and offsets on the device, offsets sliced out of a workload's as
//! the executor slices them). Without a GPU each test says it skipped; with
//! LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_kernels::Gpu;
use layerstream_kernels::ops::attention::{
    AttentionDims, F16Guard, MmaOperands, RaggedRows, TensorCoreScratch, causal_attention,
    tensor_core_kv_len,
};
use layerstream_kernels::ops::rope;
use layerstream_runtime::{Sequences, cpu};
use layerstream_tests::device::{download, upload, zeros};
use layerstream_tests::{assert_all_close, assert_matches_reference, gpu_or_skip, random_values};

#[test]
fn rope_matches_cpu_including_partial_rotary_and_own_lengths() {
    let Some(gpu) = gpu_or_skip("rope") else {
        return;
    };
    let heads = 3;
    let packed = Sequences::uniform(2, 37);
    let records = Sequences::from_lengths([5, 37, 1, 20]);
    for (head_dim, rotary_pairs, scaling) in [(16, 8, 1.0), (64, 32, 1.346_573_6), (80, 16, 1.0)] {
        let inv_freq: Vec<f32> = (0..rotary_pairs)
            .map(|i| 10000f32.powf(-(i as f32) / rotary_pairs as f32))
            .collect();
        for batch in [&packed, &records] {
            let rows = batch.tokens();
            let x = random_values(rows * heads * head_dim, 4, 3.0);
            let mut expect = x.clone();
            cpu::rope::RopeTable::new(&inv_freq, batch.longest(), scaling).apply(
                &mut expect,
                heads,
                head_dim,
                batch,
            );
            let positions: Vec<i32> = batch.positions().iter().map(|&p| p as i32).collect();
            let positions = upload(&gpu, &positions);
            let ragged = batch.uniform_len().is_none();
            let mut xd = upload(&gpu, &x);
            rope::rope(
                &gpu,
                &mut xd.as_view_mut(),
                &upload(&gpu, &inv_freq).as_view(),
                rows,
                heads,
                head_dim,
                batch.longest(),
                scaling,
                ragged.then(|| positions.as_view()).as_ref(),
            )
            .unwrap();
            assert_matches_reference(
                &format!("rope head_dim {head_dim}, lengths {:?}", batch.offsets()),
                &download(&gpu, &xd),
                &expect,
            );
        }
    }
}

/// The f32 and tensor-core kernels against the CPU on `batch` (a slice of `workload`'s
/// sequences `range` when ragged).
fn check_attention(
    gpu: &Gpu,
    workload: &Sequences,
    range: std::ops::Range<usize>,
    head_dim: usize,
    window: Option<usize>,
) {
    let batch = workload.slice(range.clone());
    let ragged = batch.uniform_len().is_none();
    let dims = AttentionDims {
        sequences: batch.count(),
        seq_len: batch.longest(),
        heads: 4,
        kv_heads: 2,
        head_dim,
        sliding_window: window,
        scale: (head_dim as f32).powf(-0.5),
        operands: MmaOperands::Off,
    };
    let rows = batch.tokens();
    let q = random_values(rows * 4 * head_dim, 12, 2.0);
    let k = random_values(rows * 2 * head_dim, 13, 2.0);
    let v = random_values(rows * 2 * head_dim, 14, 2.0);
    let shape = cpu::attention::AttentionShape {
        batch: &batch,
        heads: 4,
        kv_heads: 2,
        head_dim,
        sliding_window: window,
        scale: dims.scale,
    };
    // The workload's offsets, sliced as the executor slices them (not starting at 0).
    let offsets: Vec<i32> = workload.offsets().iter().map(|&o| o as i32).collect();
    let offsets = upload(gpu, &offsets);
    let offsets = offsets.slice(range.start..range.end + 1);
    let what = format!("T {:?} d={head_dim} w={window:?}", batch.offsets());
    // The output, and the f16 guard's totals (zeros for the other kernels).
    let run_counting = |dims: AttentionDims, q: &[f32], k: &[f32], v: &[f32]| {
        let mut out = zeros(gpu, q.len());
        let ragged = ragged.then_some(RaggedRows {
            offsets: &offsets,
            rows,
        });
        let mut flags = gpu.stream.alloc_zeros::<u32>(dims.sequences).unwrap();
        let mut totals = gpu.stream.alloc_zeros::<u64>(3).unwrap();
        let mut kv = zeros::<u16>(gpu, tensor_core_kv_len(&dims, rows));
        let (mut flags_view, mut totals_view) = (flags.as_view_mut(), totals.as_view_mut());
        let mut kv_view = kv.as_view_mut();
        let guard = (dims.operands == MmaOperands::F16).then_some(F16Guard {
            flags: &mut flags_view,
            totals: &mut totals_view,
        });
        let tensor_cores = (dims.operands != MmaOperands::Off).then_some(TensorCoreScratch {
            kv: &mut kv_view,
            guard,
        });
        causal_attention(
            gpu,
            &upload(gpu, q).as_view(),
            &upload(gpu, k).as_view(),
            &upload(gpu, v).as_view(),
            &mut out.as_view_mut(),
            dims,
            None,
            None,
            ragged,
            tensor_cores,
        )
        .unwrap();
        (download(gpu, &out), gpu.stream.clone_dtoh(&totals).unwrap())
    };
    let run = |dims: AttentionDims, q: &[f32], k: &[f32], v: &[f32]| run_counting(dims, q, k, v).0;
    // The CPU's attention of q, k, v.
    let reference = |q: &[f32], k: &[f32], v: &[f32]| {
        let mut out = vec![0f32; q.len()];
        cpu::attention::causal_attention(q, k, v, &mut out, shape, 2, Default::default());
        out
    };
    let expect = reference(&q, &k, &v);
    assert_matches_reference(
        &format!("attention {what}"),
        &run(dims, &q, &k, &v),
        &expect,
    );

    // Tensor cores (bf16 q, k, v and probabilities, f32 accumulation and softmax) against
    // the CPU on the same bf16-rounded q, k, v: what is left is the rounding of the
    // probabilities (< 2^-8 relative) and the order of the sums.
    let tensor = AttentionDims {
        operands: MmaOperands::Bf16,
        ..dims
    };
    let rounded = |x: &[f32]| -> Vec<f32> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    };
    let expect_bf16 = reference(&rounded(&q), &rounded(&k), &rounded(&v));
    let what = format!(
        "attention on tensor cores ({}) {what}",
        tensor.uses_tensor_cores(gpu)
    );
    if gpu.has_bf16_math() {
        assert_eq!(
            tensor.uses_tensor_cores(gpu),
            head_dim.is_multiple_of(16) && head_dim <= 128,
            "{what}"
        );
    }
    assert_all_close(&what, &run(tensor, &q, &k, &v), &expect_bf16, 0.02, 0.01);

    // f16 operands (the T4 path; sm_75+) against the CPU on f16-rounded q, k, v: 3 more
    // mantissa bits than bf16.
    let f16 = AttentionDims {
        operands: MmaOperands::F16,
        ..dims
    };
    let to_f16 =
        |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() };
    let expect_f16 = reference(&to_f16(&q), &to_f16(&k), &to_f16(&v));
    let on_tensor_cores = f16.uses_tensor_cores(gpu);
    assert_eq!(
        on_tensor_cores,
        head_dim.is_multiple_of(16) && head_dim <= 128,
        "f16 {what}"
    );
    let (got, totals) = run_counting(f16, &q, &k, &v);
    assert_all_close(&format!("f16 {what}"), &got, &expect_f16, 0.005, 0.003);
    assert_eq!(totals, [0, 0, 0], "f16 {what}: nothing to recompute");

    // A key of the last sequence, a value of the first, a key of the middle one beyond
    // f16's range: that sequence (every head) is recomputed in f32 and counted once; the
    // others stay f16.
    if !on_tensor_cores {
        return;
    }
    let width = 4 * head_dim;
    let last = batch.count() - 1;
    for (sequence, in_keys) in [(last, true), (0, false), (last / 2, true)] {
        let rows_of = batch.offsets()[sequence]..batch.offsets()[sequence + 1];
        let (mut k_big, mut v_big) = (k.clone(), v.clone());
        let planted = if in_keys { &mut k_big } else { &mut v_big };
        // A key in the sequence's first row, a value in its last.
        let row = if in_keys {
            rows_of.start
        } else {
            rows_of.end - 1
        };
        planted[row * 2 * head_dim + 3] = 70000.0;
        let expect_big = reference(&q, &k_big, &v_big);
        let (got, totals) = run_counting(f16, &q, &k_big, &v_big);
        let which = format!("f16 {what}, sequence {sequence} (in keys {in_keys})");
        assert_eq!(totals, [0, 1, 0], "{which}: one sequence recomputed");
        let span = rows_of.start * width..rows_of.end * width;
        assert_matches_reference(
            &format!("{which}, the recomputed sequence"),
            &got[span.clone()],
            &expect_big[span.clone()],
        );
        for others in [0..span.start, span.end..got.len()] {
            assert_all_close(
                &format!("{which}, the other sequences"),
                &got[others.clone()],
                &expect_f16[others],
                0.005,
                0.003,
            );
        }
    }
}

#[test]
fn attention_matches_cpu_for_every_shape_and_window() {
    let Some(gpu) = gpu_or_skip("attention") else {
        return;
    };
    for (seq_len, head_dim, window) in [
        (1, 16, None),
        (7, 64, None),
        (100, 128, None),
        (100, 128, Some(5)),
        // Several key tiles: the staging of the next tile beside this one's products.
        (300, 128, None),
        (260, 64, Some(90)),
        (70, 256, Some(40)),
        (33, 80, None),
    ] {
        check_attention(
            &gpu,
            &Sequences::uniform(2, seq_len),
            0..2,
            head_dim,
            window,
        );
    }
}

#[test]
fn attention_of_sequences_of_their_own_lengths_stays_within_each() {
    let Some(gpu) = gpu_or_skip("attention, own lengths") else {
        return;
    };
    // Shorter than a block, longer than several, one token; sliced from the middle of a
    // workload so the offsets do not start at 0.
    let workload = Sequences::from_lengths([9, 3, 130, 1, 64, 77, 20]);
    for (head_dim, window) in [(64, None), (128, Some(33)), (80, None), (256, Some(50))] {
        check_attention(&gpu, &workload, 1..6, head_dim, window);
        check_attention(&gpu, &workload, 0..7, head_dim, window);
    }
}
