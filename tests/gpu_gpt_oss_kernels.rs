//! The kernels GPT-OSS adds against the CPU reference, per element: MXFP4 dequantization
//! (exact, every row or every other one, bf16 and f32), the fused in-major expert layouts
//! and strided biases (exact), the clamped SwiGLU (f32 and straight to bf16) and the
//! top-k-then-softmax router. Without a GPU each test says it skipped; with
//! LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use half::bf16;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use layerstream_kernels::ops::convert::{
    self, StoredDtype, in_major_columns, mxfp4_dequantize, strided_to_f32,
};
use layerstream_kernels::ops::elementwise::{self, GatedActivation};
use layerstream_kernels::ops::moe::{self, RouterKernelScoring};
use layerstream_runtime::arch::{ExpertNaming, Layout, MoeSpec, RouterScoring};
use layerstream_runtime::cpu;
use layerstream_runtime::{apply_layout as apply, dequantize_mxfp4 as dequantize};
use layerstream_tests::{assert_all_close, assert_matches_reference, gpu_or_skip, random_values};

fn upload<T: DeviceRepr>(gpu: &Gpu, values: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(values).unwrap()
}

fn download<T: DeviceRepr + Default + Clone>(gpu: &Gpu, buffer: &CudaSlice<T>) -> Vec<T> {
    gpu.stream.clone_dtoh(buffer).unwrap()
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    gpu.stream.alloc_zeros(n).unwrap()
}

/// Deterministic bytes (SplitMix64).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

fn bf16_bits(values: &[f32]) -> Vec<u16> {
    values
        .iter()
        .map(|&v| bf16::from_f32(v).to_bits())
        .collect()
}

/// The CPU's dequantized matrix `(rows, cols)` with `layout` applied.
fn cpu_mxfp4(blocks: &[u8], scales: &[u8], rows: usize, cols: usize, layout: Layout) -> Vec<f32> {
    let mut values = vec![0f32; rows * cols];
    dequantize(blocks, scales, &mut values);
    apply(layout, &[rows, cols], values)
}

#[test]
fn mxfp4_dequantizes_exactly_as_the_cpu() {
    let Some(gpu) = gpu_or_skip("mxfp4 dequant") else {
        return;
    };
    // 2 x 37 rows (an odd count of kept rows), 3 blocks a row; every code, and scales over
    // the whole E8M0 range (0 and 255 included: subnormal and infinite results).
    let (rows, cols) = (74, 96);
    let blocks = random_bytes(rows * cols / 2, 1);
    let mut scales = random_bytes(rows * cols / 32, 2);
    scales[0] = 0;
    scales[1] = 255;
    scales[2] = 127;
    for i in 3..scales.len() / 2 {
        scales[i] = 117 + (scales[i] % 20); // near 127, as real checkpoints
    }
    let (blocks_d, scales_d) = (upload(&gpu, &blocks), upload(&gpu, &scales));
    for layout in [
        Layout::AsStored,
        Layout::Rows {
            stride: 2,
            offset: 0,
        },
        Layout::Rows {
            stride: 2,
            offset: 1,
        },
    ] {
        let expect = cpu_mxfp4(&blocks, &scales, rows, cols, layout);
        let kept = match layout {
            Layout::Rows { stride, offset } => (stride, offset),
            _ => (1, 0),
        };
        let mut out = zeros::<f32>(&gpu, expect.len());
        let (b, s) = (blocks_d.as_view(), scales_d.as_view());
        mxfp4_dequantize(&gpu, &b, &s, &mut out.as_view_mut(), cols, kept).unwrap();
        assert_eq!(bits(&download(&gpu, &out)), bits(&expect), "{layout:?} f32");
        let mut out = zeros::<u16>(&gpu, expect.len());
        mxfp4_dequantize(&gpu, &b, &s, &mut out.as_view_mut(), cols, kept).unwrap();
        assert_eq!(download(&gpu, &out), bf16_bits(&expect), "{layout:?} bf16");
    }
}

#[test]
fn fused_in_major_layouts_and_strided_biases_match_the_cpu() {
    let Some(gpu) = gpu_or_skip("in-major layouts") else {
        return;
    };
    // GPT-OSS's fused gate_up slice (in 70, 2 x 45 columns) and down (in 45, out 70), off
    // the 32 x 32 tiles; stored f32 and bf16.
    for (inputs, columns, stride) in [(70, 90, 2), (45, 70, 1)] {
        let values = random_values(inputs * columns, 3, 2.0);
        let stored_bf16: Vec<u16> = bf16_bits(&values);
        let rounded: Vec<f32> = stored_bf16
            .iter()
            .map(|&b| bf16::from_bits(b).to_f32())
            .collect();
        for offset in 0..stride {
            let layout = Layout::InMajorColumns { stride, offset };
            let what = format!("{inputs}x{columns} {layout:?}");
            let kept = (stride, offset);
            let shape = (inputs, columns);
            let n = inputs * columns / stride;
            // f32 stored: f32 and bf16 out.
            let expect = apply(layout, &[inputs, columns], values.clone());
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bytes_d = upload(&gpu, &bytes);
            let mut out = zeros::<f32>(&gpu, n);
            let (input, f32_in) = (bytes_d.as_view(), StoredDtype::F32);
            in_major_columns(&gpu, &input, f32_in, &mut out.as_view_mut(), shape, kept).unwrap();
            assert_eq!(bits(&download(&gpu, &out)), bits(&expect), "{what} f32");
            let mut out = zeros::<u16>(&gpu, n);
            in_major_columns(&gpu, &input, f32_in, &mut out.as_view_mut(), shape, kept).unwrap();
            assert_eq!(
                download(&gpu, &out),
                bf16_bits(&expect),
                "{what} f32 -> bf16"
            );
            // bf16 stored: bf16 out (the values as stored).
            let expect = apply(layout, &[inputs, columns], rounded.clone());
            let bytes: Vec<u8> = stored_bf16.iter().flat_map(|v| v.to_le_bytes()).collect();
            let bytes_d = upload(&gpu, &bytes);
            let mut out = zeros::<u16>(&gpu, n);
            let (input, bf16_in) = (bytes_d.as_view(), StoredDtype::Bf16);
            in_major_columns(&gpu, &input, bf16_in, &mut out.as_view_mut(), shape, kept).unwrap();
            assert_eq!(download(&gpu, &out), bf16_bits(&expect), "{what} bf16");
        }
    }
    // The fused gate_up bias: even entries gate, odd ones up.
    let bias = random_values(2 * 45, 4, 1.0);
    let stored: Vec<u16> = bf16_bits(&bias);
    let bytes: Vec<u8> = stored.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bytes_d = upload(&gpu, &bytes);
    let rounded: Vec<f32> = stored
        .iter()
        .map(|&b| bf16::from_bits(b).to_f32())
        .collect();
    for offset in 0..2 {
        let layout = Layout::Rows { stride: 2, offset };
        let expect = apply(layout, &[90], rounded.clone());
        let mut out = zeros::<f32>(&gpu, 45);
        let input = bytes_d.as_view();
        strided_to_f32(
            &gpu,
            &input,
            StoredDtype::Bf16,
            &mut out.as_view_mut(),
            (2, offset),
        )
        .unwrap();
        assert_eq!(bits(&download(&gpu, &out)), bits(&expect), "bias {offset}");
    }
}

#[test]
fn clamped_swiglu_matches_the_cpu() {
    let Some(gpu) = gpu_or_skip("clamped swiglu") else {
        return;
    };
    let n = 4099;
    // Values past the clamp of 7 on both sides.
    let (gate, up) = (random_values(n, 5, 12.0), random_values(n, 6, 12.0));
    let (limit, alpha) = (7.0, 1.702);
    let mut expect = gate.clone();
    cpu::mlp::clamped_swiglu_in_place(&mut expect, &up, limit, alpha);
    let activation = GatedActivation::ClampedSwiglu { limit, alpha };
    let (gate_d, up_d) = (upload(&gpu, &gate), upload(&gpu, &up));
    let mut in_place = gate_d.clone();
    elementwise::gated_activation(
        &gpu,
        &mut in_place.as_view_mut(),
        &up_d.as_view(),
        activation,
    )
    .unwrap();
    assert_matches_reference("clamped swiglu", &download(&gpu, &in_place), &expect);
    let mut out = zeros::<u16>(&gpu, n);
    elementwise::gated_activation_to_bf16(
        &gpu,
        &gate_d.as_view(),
        &up_d.as_view(),
        &mut out.as_view_mut(),
        activation,
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &out)
        .iter()
        .map(|&b| bf16::from_bits(b).to_f32())
        .collect();
    assert_all_close("clamped swiglu bf16", &got, &expect, 1e-6, 1.0 / 128.0);
    // Both at once: the f32 values of the in-place kernel, and their bf16 bits exactly.
    for activation in [activation, GatedActivation::Silu] {
        let mut separate = gate_d.clone();
        elementwise::gated_activation(
            &gpu,
            &mut separate.as_view_mut(),
            &up_d.as_view(),
            activation,
        )
        .unwrap();
        let mut converted = zeros::<u16>(&gpu, n);
        convert::f32_to_bf16(&gpu, &separate.as_view(), &mut converted.as_view_mut()).unwrap();
        let mut both = gate_d.clone();
        let mut both_bf16 = zeros::<u16>(&gpu, n);
        elementwise::gated_activation_with_bf16(
            &gpu,
            &mut both.as_view_mut(),
            &up_d.as_view(),
            &mut both_bf16.as_view_mut(),
            activation,
        )
        .unwrap();
        let name = format!("{activation:?} with bf16");
        assert_eq!(
            bits(&download(&gpu, &both)),
            bits(&download(&gpu, &separate)),
            "{name}"
        );
        assert_eq!(
            download(&gpu, &both_bf16),
            download(&gpu, &converted),
            "{name} bf16"
        );
    }
}

#[test]
fn top_k_then_softmax_router_matches_the_cpu() {
    let Some(gpu) = gpu_or_skip("top-k-softmax router") else {
        return;
    };
    let (tokens, experts, top_k) = (301, 32, 4);
    let mut logits = random_values(tokens * experts, 9, 3.0);
    // Ties (the lower index wins) and logits below -1.
    logits[5] = logits[7];
    logits[experts..2 * experts].fill(-4.0);
    let spec = MoeSpec {
        num_experts: experts,
        top_k,
        expert_intermediate: 8,
        scoring: RouterScoring::TopKSoftmax,
        normalize_top_k: false,
        shared_expert: None,
        naming: ExpertNaming::MlpExperts,
    };
    let expect = cpu::router::route(logits.clone(), &spec, None);
    let logits_d = upload(&gpu, &logits);
    let mut chosen = zeros::<u32>(&gpu, tokens * top_k);
    let mut weights = zeros::<f32>(&gpu, tokens * top_k);
    moe::router_top_k(
        &gpu,
        &logits_d.as_view(),
        experts,
        top_k,
        false,
        RouterKernelScoring::TopKSoftmax,
        &mut chosen.as_view_mut(),
        &mut weights.as_view_mut(),
    )
    .unwrap();
    assert_eq!(download(&gpu, &chosen), expect.experts, "chosen experts");
    assert_matches_reference("router weights", &download(&gpu, &weights), &expect.weights);
}
