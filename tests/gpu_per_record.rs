//! Records of their own lengths on CUDA (f32) against PyTorch (`support/records.rs` says
//! how): the ragged RoPE positions and attention offsets, the DeltaNet run sequence by
//! sequence, the head's NLL and top-k. Without a GPU the test says it skipped; with
//! LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_runtime::backend::Backend;
use layerstream_runtime::cuda::{ComputeChoice, CudaBackend};
use layerstream_tests::gpu_or_skip;
use layerstream_tests::record_statistics::{assert_statistics_close, run_records};
use layerstream_tests::records::check_records_against_pytorch;
use std::sync::Arc;

#[test]
fn records_of_their_own_lengths_match_pytorch_on_cuda() {
    let Some(gpu) = gpu_or_skip("cuda per-record fidelity") else {
        return;
    };
    let backend = Backend::Cuda(CudaBackend {
        gpu: Arc::new(gpu),
        compute: ComputeChoice::F32,
    });
    check_records_against_pytorch(&backend, "cuda", false);
}

/// The output head split by vocabulary rows (three parts, each uploaded once, every
/// micro-batch through each): the same NLL and top-k as PyTorch's.
#[test]
fn a_head_split_by_vocabulary_rows_scores_as_pytorch_does_on_cuda() {
    let Some(gpu) = gpu_or_skip("cuda split head") else {
        return;
    };
    let backend = Backend::Cuda(CudaBackend {
        gpu: Arc::new(gpu),
        compute: ComputeChoice::F32,
    });
    check_records_against_pytorch(&backend, "cuda split head", true);
}

/// `analyze --per-record` on CUDA: records of their own lengths in mixed micro-batches give
/// the CPU's ragged statistics (every point's per-record entries, position bits at each
/// record's tokens, each record's magnitudes and its own median, the sink mass with each
/// record's first token and delimiter), within f32 tolerance.
#[test]
fn record_statistics_match_the_cpu_on_cuda() {
    let Some(gpu) = gpu_or_skip("cuda record statistics") else {
        return;
    };
    let backend = Backend::Cuda(CudaBackend {
        gpu: Arc::new(gpu),
        compute: ComputeChoice::F32,
    });
    let cpu = Backend::Cpu(layerstream_runtime::cpu::CpuBackend::new(Some(2)));
    for name in layerstream_tests::FIXTURES {
        let (model, _, on_cpu) = run_records(&cpu, name);
        let (_, _, on_gpu) = run_records(&backend, name);
        assert_statistics_close(name, &model, &on_cpu, &on_gpu);
        assert_eq!(on_cpu.experts, on_gpu.experts, "{name}: router choices");
    }
}
