//! Every CUDA kernel against the CPU reference, per element (`|ref - out| <= atol + rtol *
//! |ref|`), plus NMSE for GEMMs. Shapes are chosen off the kernels' tile sizes. Without a GPU
//! each test says it skipped; with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use half::{bf16, f16};
use layerstream_kernels::cudarc::driver::CudaSlice;
use layerstream_kernels::gemm;
use layerstream_kernels::ops::convert::{StoredDtype, embedding_gather, f32_to_bf16, half_to_f32};
use layerstream_kernels::ops::elementwise::GatedActivation;
use layerstream_kernels::ops::{elementwise, moe, norm};
use layerstream_runtime::arch::{
    ExpertNaming, MoeSpec, RouterScoring, SharedExpertSpec, WeightRole,
};
use layerstream_runtime::cpu;
use layerstream_tests::device::{download, upload, zeros};
use layerstream_tests::{
    assert_all_close, assert_matches_reference, gpu_or_skip, nmse, random_values,
};
use std::collections::BTreeMap;

#[test]
fn norms_match_cpu() {
    let Some(gpu) = gpu_or_skip("norms_match_cpu") else {
        return;
    };
    for (rows, width) in [(1, 64), (37, 200), (5, 4099)] {
        let x = random_values(rows * width, 1, 8.0);
        let w = random_values(width, 2, 1.5);
        let b = random_values(width, 3, 0.5);
        let mut expect = vec![0f32; rows * width];
        cpu::norm::rms_norm(&x, &w, 1e-6, &mut expect, 1);
        let (xd, wd, bd) = (upload(&gpu, &x), upload(&gpu, &w), upload(&gpu, &b));
        let mut y = zeros(&gpu, rows * width);
        norm::rms_norm(
            &gpu,
            &xd.as_view(),
            &wd.as_view(),
            &mut y.as_view_mut(),
            rows,
            1e-6,
        )
        .unwrap();
        assert_matches_reference(
            &format!("rms_norm {rows}x{width}"),
            &download(&gpu, &y),
            &expect,
        );
        let mut in_place = upload(&gpu, &x);
        norm::rms_norm_in_place(&gpu, &mut in_place.as_view_mut(), &wd.as_view(), rows, 1e-6)
            .unwrap();
        assert_matches_reference("rms_norm in place", &download(&gpu, &in_place), &expect);
        cpu::norm::layer_norm(&x, &w, Some(&b), 1e-5, &mut expect);
        norm::layer_norm(
            &gpu,
            &xd.as_view(),
            &wd.as_view(),
            Some(&bd.as_view()),
            &mut y.as_view_mut(),
            rows,
            1e-5,
        )
        .unwrap();
        assert_matches_reference(
            &format!("layer_norm {rows}x{width}"),
            &download(&gpu, &y),
            &expect,
        );
    }
}

#[test]
fn elementwise_ops_match_cpu() {
    let Some(gpu) = gpu_or_skip("elementwise") else {
        return;
    };
    let n = 3 * 1000 + 7;
    let (gate, up) = (random_values(n, 5, 6.0), random_values(n, 6, 2.0));
    let mut expect = gate.clone();
    cpu::mlp::silu_mul_in_place(&mut expect, &up);
    let mut gd = upload(&gpu, &gate);
    elementwise::gated_activation(
        &gpu,
        &mut gd.as_view_mut(),
        &upload(&gpu, &up).as_view(),
        GatedActivation::Silu,
    )
    .unwrap();
    assert_matches_reference("silu_mul", &download(&gpu, &gd), &expect);

    let mut acc = upload(&gpu, &gate);
    elementwise::add(&gpu, &mut acc.as_view_mut(), &upload(&gpu, &up).as_view()).unwrap();
    let sum: Vec<f32> = gate.iter().zip(&up).map(|(a, b)| a + b).collect();
    assert_all_close("add", &download(&gpu, &acc), &sum, 0.0, 0.0);

    let mut clamped = upload(&gpu, &gate);
    elementwise::clamp(&gpu, &mut clamped.as_view_mut(), 2.5).unwrap();
    let expect_clamp: Vec<f32> = gate.iter().map(|x| x.clamp(-2.5, 2.5)).collect();
    assert_all_close("clamp", &download(&gpu, &clamped), &expect_clamp, 0.0, 0.0);

    let width = 7;
    let bias = random_values(width, 7, 1.0);
    let mut biased = upload(&gpu, &gate[..429 * width]);
    elementwise::add_bias(
        &gpu,
        &mut biased.as_view_mut(),
        &upload(&gpu, &bias).as_view(),
    )
    .unwrap();
    let expect_bias: Vec<f32> = gate[..429 * width]
        .iter()
        .enumerate()
        .map(|(i, x)| x + bias[i % width])
        .collect();
    assert_all_close("add_bias", &download(&gpu, &biased), &expect_bias, 0.0, 0.0);
}

#[test]
fn conversions_and_embedding_gather_are_exact() {
    let Some(gpu) = gpu_or_skip("conversions") else {
        return;
    };
    let values = random_values(10_001, 8, 300.0);
    let bf: Vec<u16> = values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect();
    let hf: Vec<u16> = values
        .iter()
        .map(|&v| f16::from_f32(v / 10.0).to_bits())
        .collect();
    let mut out = zeros(&gpu, values.len());
    half_to_f32(
        &gpu,
        StoredDtype::Bf16,
        &upload(&gpu, &bf).as_view(),
        &mut out.as_view_mut(),
    )
    .unwrap();
    let expect: Vec<f32> = bf.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
    assert_all_close("bf16 -> f32", &download(&gpu, &out), &expect, 0.0, 0.0);
    half_to_f32(
        &gpu,
        StoredDtype::F16,
        &upload(&gpu, &hf).as_view(),
        &mut out.as_view_mut(),
    )
    .unwrap();
    let expect: Vec<f32> = hf.iter().map(|&b| f16::from_bits(b).to_f32()).collect();
    assert_all_close("f16 -> f32", &download(&gpu, &out), &expect, 0.0, 0.0);
    let mut rounded: CudaSlice<u16> = gpu.stream.alloc_zeros(values.len()).unwrap();
    f32_to_bf16(
        &gpu,
        &upload(&gpu, &values).as_view(),
        &mut rounded.as_view_mut(),
    )
    .unwrap();
    assert_eq!(
        download(&gpu, &rounded),
        bf,
        "f32 -> bf16 rounds to nearest even like half::bf16"
    );

    let (vocab, width) = (50, 33);
    let table = random_values(vocab * width, 9, 1.0);
    let table_bf: Vec<u16> = table.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
    let ids: Vec<u32> = (0..77u32).map(|i| (i * 7) % vocab as u32).collect();
    let bytes: Vec<u8> = table_bf.iter().flat_map(|b| b.to_le_bytes()).collect();
    let mut gathered = zeros(&gpu, ids.len() * width);
    embedding_gather(
        &gpu,
        &upload(&gpu, &bytes).as_view(),
        StoredDtype::Bf16,
        &upload(&gpu, &ids).as_view(),
        &mut gathered.as_view_mut(),
        width,
    )
    .unwrap();
    let expect: Vec<f32> = ids
        .iter()
        .flat_map(|&id| {
            table_bf[id as usize * width..(id as usize + 1) * width]
                .iter()
                .map(|&b| bf16::from_bits(b).to_f32())
        })
        .collect();
    assert_all_close(
        "embedding gather",
        &download(&gpu, &gathered),
        &expect,
        0.0,
        0.0,
    );
}

#[test]
fn gemms_match_cpu() {
    let Some(gpu) = gpu_or_skip("gemm") else {
        return;
    };
    for (rows, inf, outf) in [(1, 64, 96), (37, 200, 129), (300, 1024, 513)] {
        let x = random_values(rows * inf, 10, 2.0);
        let w = random_values(outf * inf, 11, 0.1);
        let mut expect = vec![0f32; rows * outf];
        cpu::linear::linear(&x, &w, None, &mut expect, inf, outf, 2);
        let mut y = zeros(&gpu, rows * outf);
        gemm::linear_f32(
            &gpu,
            &upload(&gpu, &x).as_view(),
            &upload(&gpu, &w).as_view(),
            &mut y.as_view_mut(),
            rows,
            inf,
            outf,
        )
        .unwrap();
        let got = download(&gpu, &y);
        assert_matches_reference(&format!("sgemm {rows}x{inf}x{outf}"), &got, &expect);
        assert!(
            nmse(&got, &expect) < 1e-11,
            "sgemm NMSE {}",
            nmse(&got, &expect)
        );

        // bf16 inputs, f32 accumulation: against the CPU product of the same rounded values.
        let round = |v: &[f32]| -> (Vec<u16>, Vec<f32>) {
            let bits: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
            let back = bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
            (bits, back)
        };
        let ((xb, xr), (wb, wr)) = (round(&x), round(&w));
        cpu::linear::linear(&xr, &wr, None, &mut expect, inf, outf, 2);
        gemm::linear_bf16(
            &gpu,
            &upload(&gpu, &xb).as_view(),
            &upload(&gpu, &wb).as_view(),
            &mut y.as_view_mut(),
            rows,
            inf,
            outf,
        )
        .unwrap();
        let got = download(&gpu, &y);
        assert_matches_reference(&format!("bf16 gemm {rows}x{inf}x{outf}"), &got, &expect);
        assert!(
            nmse(&got, &expect) < 1e-10,
            "bf16 gemm NMSE {}",
            nmse(&got, &expect)
        );
    }
}

#[test]
fn moe_block_matches_cpu() {
    let Some(gpu) = gpu_or_skip("moe") else {
        return;
    };
    let (tokens, hidden, experts, top_k, inter, shared_inter) = (53, 64, 6, 2, 40, 24);
    for normalize in [false, true] {
        let spec = MoeSpec {
            num_experts: experts,
            top_k,
            expert_intermediate: inter,
            scoring: RouterScoring::Softmax,
            normalize_top_k: normalize,
            shared_expert: Some(SharedExpertSpec {
                intermediate: shared_inter,
                sigmoid_gate: true,
                module: "shared_expert",
            }),
            naming: ExpertNaming::MlpExperts,
        };
        let mut tensors = BTreeMap::new();
        let mut seed = 100;
        let mut tensor = |shape: usize, scale: f32| {
            seed += 1;
            random_values(shape, seed, scale)
        };
        tensors.insert(WeightRole::Router, tensor(experts * hidden, 0.3));
        for e in 0..experts {
            tensors.insert(WeightRole::ExpertGate(e), tensor(inter * hidden, 0.2));
            tensors.insert(WeightRole::ExpertUp(e), tensor(inter * hidden, 0.2));
            tensors.insert(WeightRole::ExpertDown(e), tensor(hidden * inter, 0.2));
        }
        tensors.insert(WeightRole::SharedGate, tensor(shared_inter * hidden, 0.2));
        tensors.insert(WeightRole::SharedUp, tensor(shared_inter * hidden, 0.2));
        tensors.insert(WeightRole::SharedDown, tensor(hidden * shared_inter, 0.2));
        tensors.insert(WeightRole::SharedExpertGate, tensor(hidden, 0.3));
        let x = random_values(tokens * hidden, 7, 2.0);
        let weights = cpu::layer::LayerWeights::from_tensors(tensors.clone());
        let mut expect = vec![0f32; tokens * hidden];
        let routing = cpu::moe::moe_block(&x, &weights, &spec, hidden, &mut expect, 0..experts, 2);

        // GPU: router logits, top-k.
        let w = |role| upload(&gpu, &tensors[&role]);
        let xd = upload(&gpu, &x);
        let mut logits = zeros(&gpu, tokens * experts);
        gemm::linear_f32(
            &gpu,
            &xd.as_view(),
            &w(WeightRole::Router).as_view(),
            &mut logits.as_view_mut(),
            tokens,
            hidden,
            experts,
        )
        .unwrap();
        let mut chosen: CudaSlice<u32> = gpu.stream.alloc_zeros(tokens * top_k).unwrap();
        let mut chosen_weights = zeros(&gpu, tokens * top_k);
        moe::router_top_k(
            &gpu,
            &logits.as_view(),
            experts,
            top_k,
            normalize,
            moe::RouterKernelScoring::Softmax,
            &mut chosen.as_view_mut(),
            &mut chosen_weights.as_view_mut(),
        )
        .unwrap();
        assert_matches_reference("router logits", &download(&gpu, &logits), &routing.logits);
        assert_eq!(download(&gpu, &chosen), routing.experts, "chosen experts");
        assert_matches_reference(
            "router weights",
            &download(&gpu, &chosen_weights),
            &routing.weights,
        );

        // Counts (one small copy), offsets, positions, gather.
        let mut counts: CudaSlice<u32> = gpu.stream.alloc_zeros(experts).unwrap();
        moe::count_per_expert(&gpu, &chosen.as_view(), &mut counts.as_view_mut()).unwrap();
        let counts_host = download(&gpu, &counts);
        let offsets: Vec<u32> = counts_host
            .iter()
            .scan(0, |acc, &c| {
                let o = *acc;
                *acc += c;
                Some(o)
            })
            .collect();
        let offsets_d = upload(&gpu, &offsets);
        let mut positions: CudaSlice<u32> = gpu.stream.alloc_zeros(tokens * top_k).unwrap();
        moe::expert_positions(
            &gpu,
            &chosen.as_view(),
            &offsets_d.as_view(),
            &mut positions.as_view_mut(),
        )
        .unwrap();
        let mut gathered = zeros(&gpu, tokens * top_k * hidden);
        moe::gather_by_expert(
            &gpu,
            &xd.as_view(),
            &positions.as_view(),
            top_k,
            hidden,
            &mut gathered.as_view_mut(),
        )
        .unwrap();
        // Per expert: gated MLP on its rows.
        let mut expert_out = zeros(&gpu, tokens * top_k * hidden);
        let mut gate = zeros(&gpu, tokens * top_k * inter);
        let mut up = zeros(&gpu, tokens * top_k * inter);
        for e in 0..experts {
            let (start, n) = (offsets[e] as usize, counts_host[e] as usize);
            if n == 0 {
                continue;
            }
            let rows_in = gathered.slice(start * hidden..(start + n) * hidden);
            let mut g = gate.slice_mut(..n * inter);
            gemm::linear_f32(
                &gpu,
                &rows_in,
                &w(WeightRole::ExpertGate(e)).as_view(),
                &mut g,
                n,
                hidden,
                inter,
            )
            .unwrap();
            let mut u = up.slice_mut(..n * inter);
            gemm::linear_f32(
                &gpu,
                &rows_in,
                &w(WeightRole::ExpertUp(e)).as_view(),
                &mut u,
                n,
                hidden,
                inter,
            )
            .unwrap();
            elementwise::gated_activation(
                &gpu,
                &mut gate.slice_mut(..n * inter),
                &up.slice(..n * inter),
                GatedActivation::Silu,
            )
            .unwrap();
            let mut out_rows = expert_out.slice_mut(start * hidden..(start + n) * hidden);
            gemm::linear_f32(
                &gpu,
                &gate.slice(..n * inter),
                &w(WeightRole::ExpertDown(e)).as_view(),
                &mut out_rows,
                n,
                inter,
                hidden,
            )
            .unwrap();
        }
        let mut out = zeros(&gpu, tokens * hidden);
        moe::unpermute(
            &gpu,
            &expert_out.as_view(),
            &positions.as_view(),
            &chosen.as_view(),
            &chosen_weights.as_view(),
            top_k,
            hidden,
            0..experts,
            false,
            &mut out.as_view_mut(),
        )
        .unwrap();
        // A split layer adds its expert groups in order: bit for bit the same sum.
        let mut grouped = zeros(&gpu, tokens * hidden);
        for (group, accumulate) in [(0..1, false), (1..4, true), (4..experts, true)] {
            moe::unpermute(
                &gpu,
                &expert_out.as_view(),
                &positions.as_view(),
                &chosen.as_view(),
                &chosen_weights.as_view(),
                top_k,
                hidden,
                group,
                accumulate,
                &mut grouped.as_view_mut(),
            )
            .unwrap();
        }
        assert_eq!(
            download(&gpu, &grouped),
            download(&gpu, &out),
            "unpermute in expert groups"
        );
        // Shared expert with its sigmoid gate.
        let mut sg = zeros(&gpu, tokens * shared_inter);
        let mut su = zeros(&gpu, tokens * shared_inter);
        gemm::linear_f32(
            &gpu,
            &xd.as_view(),
            &w(WeightRole::SharedGate).as_view(),
            &mut sg.as_view_mut(),
            tokens,
            hidden,
            shared_inter,
        )
        .unwrap();
        gemm::linear_f32(
            &gpu,
            &xd.as_view(),
            &w(WeightRole::SharedUp).as_view(),
            &mut su.as_view_mut(),
            tokens,
            hidden,
            shared_inter,
        )
        .unwrap();
        elementwise::gated_activation(
            &gpu,
            &mut sg.as_view_mut(),
            &su.as_view(),
            GatedActivation::Silu,
        )
        .unwrap();
        let mut shared = zeros(&gpu, tokens * hidden);
        gemm::linear_f32(
            &gpu,
            &sg.as_view(),
            &w(WeightRole::SharedDown).as_view(),
            &mut shared.as_view_mut(),
            tokens,
            shared_inter,
            hidden,
        )
        .unwrap();
        let mut gate_logits = zeros(&gpu, tokens);
        gemm::linear_f32(
            &gpu,
            &xd.as_view(),
            &w(WeightRole::SharedExpertGate).as_view(),
            &mut gate_logits.as_view_mut(),
            tokens,
            hidden,
            1,
        )
        .unwrap();
        moe::sigmoid_gated_add(
            &gpu,
            &mut out.as_view_mut(),
            &shared.as_view(),
            &gate_logits.as_view(),
            hidden,
        )
        .unwrap();
        assert_matches_reference(
            &format!("moe block (normalize {normalize})"),
            &download(&gpu, &out),
            &expect,
        );
    }
}

/// Positions of assignments grouped by expert (stable: assignment order within an expert)
/// over many block-sized chunks and experts, against the host's stable grouping.
#[test]
fn expert_positions_group_stably_across_chunks() {
    let Some(gpu) = gpu_or_skip("expert positions") else {
        return;
    };
    let (assignments, experts) = (5000usize, 64usize);
    // Skewed choices: expert 0 gets a quarter, the rest spread, a few never chosen.
    let chosen: Vec<u32> = (0..assignments as u64)
        .map(|a| {
            let h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            if h % 4 == 0 { 0 } else { (h % 60) as u32 }
        })
        .collect();
    let mut counts = vec![0u32; experts];
    for &e in &chosen {
        counts[e as usize] += 1;
    }
    let offsets: Vec<u32> = counts
        .iter()
        .scan(0, |acc, &c| {
            let o = *acc;
            *acc += c;
            Some(o)
        })
        .collect();
    let mut cursor = offsets.clone();
    let expected: Vec<u32> = chosen
        .iter()
        .map(|&e| {
            cursor[e as usize] += 1;
            cursor[e as usize] - 1
        })
        .collect();
    let chosen_d = upload(&gpu, &chosen);
    let offsets_d = upload(&gpu, &offsets);
    let mut positions: CudaSlice<u32> = gpu.stream.alloc_zeros(assignments).unwrap();
    moe::expert_positions(
        &gpu,
        &chosen_d.as_view(),
        &offsets_d.as_view(),
        &mut positions.as_view_mut(),
    )
    .unwrap();
    assert_eq!(download(&gpu, &positions), expected);
}
