//! The kernels GLM-4.5 adds against the CPU reference: the sigmoid router with a selection
//! bias and expert groups (choice exact, weights per element) and the FP8 block dequantizer
//! (exact in f32, the f32 value rounded once in bf16). Without a GPU each test says it
//! skipped; with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use layerstream_kernels::ops::convert::fp8_dequantize;
use layerstream_kernels::ops::moe;
use layerstream_runtime::arch::{ExpertNaming, MoeSpec, RouterScoring};
use layerstream_runtime::{cpu, dequantize_fp8};
use layerstream_tests::{assert_matches_reference, gpu_or_skip, random_values};

fn upload<T: DeviceRepr>(gpu: &Gpu, values: &[T]) -> CudaSlice<T> {
    gpu.stream.clone_htod(values).unwrap()
}

fn download<T: DeviceRepr + Default + Clone>(gpu: &Gpu, buffer: &CudaSlice<T>) -> Vec<T> {
    gpu.stream.clone_dtoh(buffer).unwrap()
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> CudaSlice<T> {
    gpu.stream.alloc_zeros(n).unwrap()
}

/// The CPU's and the GPU's choice of `tokens` random tokens agree, for one configuration.
fn sigmoid_router_case(gpu: &Gpu, groups: usize, top_groups: usize, normalize: bool) {
    let (tokens, experts, top_k, scaling) = (257, 64, 6, 2.5);
    let mut logits = random_values(tokens * experts, 11 + groups as u64, 3.0);
    // A tie (the lower index wins) and a token whose scores saturate.
    logits[5] = logits[7];
    logits[experts..2 * experts].fill(-30.0);
    // A bias as large as the scores' spread, negative for some experts: choices change.
    let bias = random_values(experts, 5, 0.5);
    let spec = MoeSpec {
        num_experts: experts,
        top_k,
        expert_intermediate: 8,
        scoring: RouterScoring::Sigmoid {
            groups,
            top_groups,
            scaling,
        },
        normalize_top_k: normalize,
        shared_expert: None,
        naming: ExpertNaming::MlpExperts,
    };
    let expect = cpu::router::route(logits.clone(), &spec, Some(&bias));
    let (logits_d, bias_d) = (upload(gpu, &logits), upload(gpu, &bias));
    let mut chosen = zeros::<u32>(gpu, tokens * top_k);
    let mut weights = zeros::<f32>(gpu, tokens * top_k);
    moe::router_sigmoid(
        gpu,
        &logits_d.as_view(),
        &bias_d.as_view(),
        top_k,
        groups,
        top_groups,
        normalize,
        scaling,
        &mut chosen.as_view_mut(),
        &mut weights.as_view_mut(),
    )
    .unwrap();
    let what = format!("{groups} groups, {top_groups} kept, normalize {normalize}");
    assert_eq!(
        download(gpu, &chosen),
        expect.experts,
        "chosen experts ({what})"
    );
    assert_matches_reference(
        &format!("router weights ({what})"),
        &download(gpu, &weights),
        &expect.weights,
    );
}

#[test]
fn sigmoid_router_matches_the_cpu() {
    let Some(gpu) = gpu_or_skip("sigmoid router") else {
        return;
    };
    sigmoid_router_case(&gpu, 1, 1, true);
    sigmoid_router_case(&gpu, 8, 2, true);
    sigmoid_router_case(&gpu, 4, 1, false);
}

/// Bits of f32 values, every NaN as one pattern (the GPU's multiply returns its canonical NaN).
fn bits(values: &[f32]) -> Vec<u32> {
    values
        .iter()
        .map(|v| if v.is_nan() { u32::MAX } else { v.to_bits() })
        .collect()
}

#[test]
fn fp8_dequantizes_exactly_as_the_cpu() {
    let Some(gpu) = gpu_or_skip("fp8 dequant") else {
        return;
    };
    // Every byte (subnormals, +-448, NaN codes) in a 300 x 200 matrix of 128 x 128 blocks, the
    // last block row and column cut short; scales of both signs' magnitudes, tiny and large
    // (products that are subnormal, and that round in f32 and in bf16).
    let (rows, cols, blocks) = (300, 200, (128, 128));
    let values: Vec<u8> = (0..rows * cols).map(|i| (i * 7 + i / 13) as u8).collect();
    let scales: Vec<f32> = random_values(3 * 2, 3, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| v.abs() * [1e-3, 1e-38, 3.7, 1.0, 1e30, 0.5][i] + 1e-40)
        .collect();
    let mut expect = vec![0f32; rows * cols];
    dequantize_fp8(&values, &scales, cols, blocks, &mut expect);
    let (values_d, scales_d) = (upload(&gpu, &values), upload(&gpu, &scales));
    let mut out = zeros::<f32>(&gpu, rows * cols);
    fp8_dequantize(
        &gpu,
        &values_d.as_view(),
        &scales_d.as_view(),
        &mut out.as_view_mut(),
        cols,
        blocks,
    )
    .unwrap();
    assert_eq!(bits(&download(&gpu, &out)), bits(&expect), "f32");
    let mut out = zeros::<u16>(&gpu, rows * cols);
    fp8_dequantize(
        &gpu,
        &values_d.as_view(),
        &scales_d.as_view(),
        &mut out.as_view_mut(),
        cols,
        blocks,
    )
    .unwrap();
    let got: Vec<f32> = download(&gpu, &out)
        .iter()
        .map(|&b| half::bf16::from_bits(b).to_f32())
        .collect();
    let rounded: Vec<f32> = expect
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    assert_eq!(
        bits(&got),
        bits(&rounded),
        "bf16: the f32 value rounded once"
    );
}
