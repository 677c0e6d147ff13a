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
    let plant = |name: &str, shape: &[usize], values: &mut [f32]| {
        if name == "model.layers.0.mlp.gate_proj.weight"
            || name == "model.layers.0.mlp.up_proj.weight"
        {
            let inputs = shape[1];
            values[..inputs].fill(0.0);
            values[0] = 1000.0;
        }
    };
    // Some rows, not all.
    let some = |rows: u64, _: &KeepEverything, tokens: usize| rows > 0 && rows < tokens as u64;
    planted_f16_run_matches_cpu("llama3", None, plant, some);
}

/// OLMoE's layer 0 planted so that the experts' input dimension 0 is `z = 5e4 x_0` (beyond
/// f16 wherever `|x_0| > 1.31`, 40 of the 64 tokens: the guarded gather lists those tokens and
/// every expert's gate and up fix-ups recompute them) and each expert's intermediate value 0
/// is about `silu(z) z` (beyond f16 wherever `z > 256`: the guarded activation lists those rows
/// for the down projection). Every token takes all 8 experts (no top-k choice that f16
/// rounding could flip) and the router ignores dimension 0. Rows recomputed: the router's and
/// 8 experts' gate and up rows of each token beyond range, plus the down projections' rows.
#[test]
fn moe_experts_recompute_values_beyond_f16_in_f32() {
    let all_experts = Some(("num_experts_per_tok", serde_json::json!(8)));
    let plant = |name: &str, shape: &[usize], values: &mut [f32]| {
        let inputs = shape.last().copied().unwrap_or(0);
        if name == "model.layers.0.post_attention_layernorm.weight" {
            values[0] = 5.0e4;
        } else if name == "model.layers.0.mlp.gate.weight" {
            values.iter_mut().step_by(inputs).for_each(|v| *v = 0.0);
        } else if name.starts_with("model.layers.0.mlp.experts.")
            && (name.ends_with("gate_proj.weight") || name.ends_with("up_proj.weight"))
        {
            values[..inputs].fill(0.0);
            values[0] = 1.0;
        }
    };
    let expected = |rows: u64, on_cpu: &KeepEverything, tokens: usize| {
        let beyond = on_cpu.captures["blocks.0.ln2"]
            .chunks(64)
            .filter(|row| row.iter().any(|v| v.abs() >= 65520.0))
            .count() as u64;
        eprintln!("olmoe: {beyond} of {tokens} expert input rows beyond f16");
        let at_least = beyond * (1 + 8 * 2);
        beyond > 0
            && beyond < tokens as u64
            && rows >= at_least
            && rows <= at_least + 8 * tokens as u64
    };
    planted_f16_run_matches_cpu("olmoe", all_experts, plant, expected);
}

/// Runs fixture `name` (its config's `config_edit` key set, its tensors edited by `edit`) in
/// f16 on the GPU and in f32 on the CPU: `recomputed` accepts the count of GEMM rows
/// recomputed given the tokens, and every capture and the logits are the same within 3% of
/// each tensor's scale and NMSE < 1e-3.
fn planted_f16_run_matches_cpu(
    name: &str,
    config_edit: Option<(&str, serde_json::Value)>,
    edit: impl FnMut(&str, &[usize], &mut [f32]),
    recomputed: impl Fn(u64, &KeepEverything, usize) -> bool,
) {
    let Some(backend) = cuda(ComputeChoice::F16, "cuda f16 overflow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_model(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    if let Some((key, value)) = config_edit {
        let path = dir.path().join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
    }
    edit_tensors(dir.path(), edit);
    let model = Model::open(dir.path()).unwrap();
    let reference = Reference::load(name);
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
        recomputed(counts.gemm_rows, &on_cpu, tokens),
        "{name}: rows recomputed {counts:?} of {tokens} tokens"
    );
    eprintln!("{name} planted: {counts:?} of {tokens} tokens");
    for (layer, routing) in &on_cpu.routing {
        // The same set of experts per token (their order by logit may differ at near-ties;
        // outputs are summed in expert order).
        let sets = |experts: &[u32]| -> Vec<Vec<u32>> {
            experts
                .chunks(routing.top_k)
                .map(|c| {
                    let mut c = c.to_vec();
                    c.sort_unstable();
                    c
                })
                .collect()
        };
        assert_eq!(
            sets(&routing.experts),
            sets(&on_gpu.routing[layer].experts),
            "{name} layer {layer}: the same experts"
        );
    }
    let mut keys: Vec<&String> = on_cpu.captures.keys().collect();
    keys.sort();
    for key in keys {
        let (got, expected) = (&on_gpu.captures[key], &on_cpu.captures[key]);
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            scale.is_finite(),
            "{name} {key}: the CPU's values are finite"
        );
        assert_all_close(
            &format!("f16 planted {name} {key}"),
            got,
            expected,
            0.03 * scale,
            0.05,
        );
        assert!(
            nmse(got, expected) < 1e-3,
            "{name} {key}: NMSE {}",
            nmse(got, expected)
        );
    }
    let scale = on_cpu.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_all_close(
        &format!("f16 planted {name} logits"),
        &on_gpu.logits,
        &on_cpu.logits,
        0.03 * scale,
        0.05,
    );
}
