//! Records of their own lengths on CUDA (f32) against PyTorch (`support/records.rs` says
//! how): the ragged RoPE positions and attention offsets, the DeltaNet run sequence by
//! sequence, the head's NLL and top-k. Without a GPU the test says it skipped; with
//! LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_runtime::backend::Backend;
use layerstream_runtime::cuda::{ComputeChoice, CudaBackend};
use layerstream_tests::gpu_or_skip;
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
