//! Runs of the fixtures on the CUDA backend, shared by the GPU fidelity tests.

use crate::bf16_peer::{assert_no_worse_than_the_bf16_peer, has_bf16_peer};
use crate::near_ties::NearTieFlips;
use crate::{
    KeepEverything, REFERENCE_POINTS, Reference, assert_all_close, fixture_model, gpu_or_skip, nmse,
};
use layerstream_planner::memory::HiddenPlacement;
use layerstream_runtime::backend::Backend;
use layerstream_runtime::cuda::{ComputeChoice, CudaBackend};
use layerstream_runtime::executor::RunSummary;
use layerstream_runtime::{
    CaptureMode, CapturePoint, FinalStage, Model, RunRequest, Sequences, run,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The 16-bit-stored fixtures (their references computed from their 16-bit weights).
pub const SIXTEEN_BIT_FIXTURES: [&str; 4] =
    ["llama3", "mixtral", "gpt_oss_bf16", "qwen3_next_bf16"];

/// The CUDA backend computing in `compute`, or `None` (the test says it skipped).
pub fn cuda(compute: ComputeChoice, test: &str) -> Option<Backend> {
    let gpu = gpu_or_skip(test)?;
    Some(Backend::Cuda(CudaBackend {
        gpu: Arc::new(gpu),
        compute,
    }))
}

/// A run of `reference`'s tokens over its first `layers` layers, every capture point.
pub fn request(
    reference: &Reference,
    layers: usize,
    mode: CaptureMode,
    final_stage: FinalStage,
    micro_batch: usize,
) -> RunRequest {
    RunRequest {
        token_ids: reference.input_ids.clone(),
        // Sequence 0's delimiter early, the others' late (beyond the sliding windows).
        first_delimiters: (0..reference.num_sequences)
            .map(|s| Some(if s == 0 { 5 } else { reference.seq_len - 3 }))
            .collect(),
        sequences: Sequences::uniform(reference.num_sequences, reference.seq_len),
        capture_layers: (0..layers).collect(),
        capture_points: CapturePoint::ALL.to_vec(),
        capture_mode: mode,
        final_stage,
        top_logprobs: None,
        head_vocab_rows: None,
        micro_batch_tokens: micro_batch * reference.seq_len,
        start: None,
        checkpoint_hidden_states: false,
        hidden_placement: HiddenPlacement::Device,
        spill_dir: None,
        memory_budget: None,
        split_layers: BTreeMap::new(),
    }
}

/// A 16-bit GEMM run (`label`: bf16 or f16 rounding of every GEMM input, f32 accumulation)
/// of fixture `name` on `backend` against the f32 PyTorch computation on the same weights:
/// rounding makes errors of at most 2^-8 relative per product, so the bound is relative to
/// each tensor's scale, plus NMSE. Fixtures with a recorded transformers bf16 run
/// (Qwen3-Next, whose gated norm amplifies rounding) are held to no more than twice its
/// error instead (`bf16_peer.rs`). Returns the run's summary.
pub fn assert_16bit_run_matches_pytorch(backend: &Backend, name: &str, label: &str) -> RunSummary {
    let reference = Reference::load(name);
    let model = Model::open(&fixture_model(name)).unwrap();
    let layers = model.spec.num_layers;
    let mut kept = KeepEverything::default();
    let summary = run(
        &model,
        &request(
            &reference,
            layers,
            CaptureMode::Activations,
            FinalStage::Logits,
            2,
        ),
        backend,
        &mut kept,
    )
    .unwrap();
    if has_bf16_peer(&reference) {
        assert_no_worse_than_the_bf16_peer(name, &reference, &kept, layers);
        return summary;
    }
    for (layer, routing) in &kept.routing {
        let expected = &reference
            .get(&format!("blocks.{layer}.router.logits"))
            .values;
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = routing
            .logits
            .iter()
            .zip(expected)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{label} {name} layer {layer}: router logits max |x| {scale:.3}, largest error {worst:.4}"
        );
    }
    let flips = NearTieFlips::find(&reference, &kept, layers, &format!("{label} {name}"));
    let mut worst = 0f64;
    for layer in 0..layers {
        for point in REFERENCE_POINTS {
            let key = point.full_name(layer);
            let after_router = matches!(point, CapturePoint::MlpOut | CapturePoint::ResidPost);
            let got = flips.kept_rows(&kept.captures[&key], layer, after_router);
            let expected = flips.kept_rows(&reference.get(&key).values, layer, after_router);
            let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert_all_close(
                &format!("{label} {name} {key}"),
                &got,
                &expected,
                0.03 * scale,
                0.05,
            );
            worst = worst.max(nmse(&got, &expected));
        }
    }
    let logits = flips.kept_logit_rows(&reference.get("logits").values);
    let got_logits = flips.kept_logit_rows(&kept.logits);
    let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_all_close(
        &format!("{label} {name} logits"),
        &got_logits,
        &logits,
        0.03 * scale,
        0.05,
    );
    worst = worst.max(nmse(&got_logits, &logits));
    eprintln!(
        "{label} {name}: near-tie router flips (layer, token) {:?}",
        flips.flipped
    );
    eprintln!("{label} {name}: worst NMSE {worst:.2e}");
    assert!(worst < 1e-3, "{label} {name}: NMSE {worst}");
    summary
}
