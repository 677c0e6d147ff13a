//! `--compute-dtype f16` (the T4 path: f16 GEMM and attention operands, f32 accumulation)
//! end to end on the CUDA backend: the 16-bit fixtures against PyTorch within the same bounds
//! as bf16 (f16 keeps 3 more mantissa bits), nothing recomputed where every value fits f16,
//! and a model planted with intermediate values beyond f16's range giving the CPU's f32
//! results with the rows recomputed and counted. Run once as is and once with
//! LAYERSTREAM_KERNEL_ARCH=75 (a T4's kernels, through the driver's JIT). Without a GPU each
//! test says it skipped; with LAYERSTREAM_REQUIRE_GPU=1 it fails instead.

use layerstream_runtime::backend::Backend;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_runtime::cuda::ComputeChoice;
use layerstream_runtime::executor::F16Overflow;
use layerstream_runtime::{CaptureMode, FinalStage, Model, run};
use layerstream_tests::gpu_run::{
    SIXTEEN_BIT_FIXTURES, assert_16bit_run_matches_pytorch, cuda, request,
};
use layerstream_tests::{
    KeepEverything, Reference, assert_all_close, edit_tensors, fixture_model, nmse,
};

#[test]
fn sixteen_bit_fixtures_match_pytorch_in_f16() {
    let Some(backend) = cuda(ComputeChoice::F16, "cuda f16 fidelity") else {
        return;
    };
    for name in SIXTEEN_BIT_FIXTURES {
        let summary = assert_16bit_run_matches_pytorch(&backend, name, "f16");
        assert_eq!(
            summary.f16_overflow,
            Some(F16Overflow::default()),
            "{name}: every value fits f16"
        );
    }
}

/// Llama-3's layer 0 planted so that its MLP's intermediate value 0 is `silu(z) z` with
/// `z = 1000 x_0` (the post-norm input's dimension 0): beyond f16's range (65504) wherever
/// `x_0 > 0.26`, a few hundred thousand elsewhere it is not. Without the guard those rows
/// would be +-inf and everything after them NaN.
#[test]
fn values_beyond_f16_are_recomputed_in_f32_and_counted() {
    let Some(backend) = cuda(ComputeChoice::F16, "cuda f16 overflow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_model("llama3")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    edit_tensors(dir.path(), |name, shape, values| {
        if name == "model.layers.0.mlp.gate_proj.weight"
            || name == "model.layers.0.mlp.up_proj.weight"
        {
            let inputs = shape[1];
            values[..inputs].fill(0.0);
            values[0] = 1000.0;
        }
    });
    let model = Model::open(dir.path()).unwrap();
    let reference = Reference::load("llama3");
    let layers = model.spec.num_layers;
    let req = request(
        &reference,
        layers,
        CaptureMode::Activations,
        FinalStage::Logits,
        2,
    );
    let cpu = Backend::Cpu(CpuBackend::new(Some(2)));
    let (mut on_cpu, mut on_gpu) = (KeepEverything::default(), KeepEverything::default());
    run(&model, &req, &cpu, &mut on_cpu).unwrap();
    let summary = run(&model, &req, &backend, &mut on_gpu).unwrap();
    let counts = summary.f16_overflow.expect("an f16 run counts");
    let tokens = reference.num_sequences * reference.seq_len;
    assert!(
        counts.gemm_rows > 0 && counts.gemm_rows < tokens as u64,
        "some rows, not all, recomputed: {counts:?} of {tokens} tokens"
    );
    eprintln!("planted: {counts:?} of {tokens} tokens");
    let mut keys: Vec<&String> = on_cpu.captures.keys().collect();
    keys.sort();
    for key in keys {
        let (got, expected) = (&on_gpu.captures[key], &on_cpu.captures[key]);
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale.is_finite(), "{key}: the CPU's values are finite");
        assert_all_close(
            &format!("f16 planted {key}"),
            got,
            expected,
            0.03 * scale,
            0.05,
        );
        assert!(
            nmse(got, expected) < 1e-3,
            "{key}: NMSE {}",
            nmse(got, expected)
        );
    }
    let scale = on_cpu.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_all_close(
        "f16 planted logits",
        &on_gpu.logits,
        &on_cpu.logits,
        0.03 * scale,
        0.05,
    );
}
