//! The kernels GLM-4.5 adds against the CPU reference: the sigmoid router with a selection
//! bias and expert groups (choice exact, weights per element). Without a GPU each test says
//! it skipped; with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use layerstream_kernels::ops::moe;
use layerstream_runtime::arch::{ExpertNaming, MoeSpec, RouterScoring};
use layerstream_runtime::cpu;
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
