//! Every fixture family against PyTorch transformers: the packed workload, every capture
//! point of every layer, the logits, and the next-token NLL / loss that `score` reports.

use layerstream_planner::memory::HiddenPlacement;
use layerstream_runtime::CaptureMode;
use layerstream_runtime::Sequences;
use layerstream_runtime::backend::Backend;
use layerstream_runtime::cpu::CpuBackend;
use layerstream_runtime::data::{TextTokenizer, pack_documents};
use layerstream_runtime::{CapturePoint, FinalStage, Model, RunRequest, run};
use layerstream_tests::{
    FIXTURES, KeepEverything, MOE_FIXTURES, OPTIONAL_REFERENCE_POINTS, REFERENCE_POINTS, Reference,
    assert_all_close, assert_matches_reference, fixture_docs, fixture_model, split_every_layer,
};

fn run_fixture(
    name: &str,
    final_stage: FinalStage,
    micro_batch_sequences: usize,
) -> (Reference, KeepEverything) {
    run_fixture_split(name, final_stage, micro_batch_sequences, None)
}

/// As [`run_fixture`], every layer split with at most `experts_per_part` experts per part.
fn run_fixture_split(
    name: &str,
    final_stage: FinalStage,
    micro_batch_sequences: usize,
    experts_per_part: Option<usize>,
) -> (Reference, KeepEverything) {
    let dir = fixture_model(name);
    run_model_dir(
        name,
        &dir,
        final_stage,
        micro_batch_sequences,
        experts_per_part,
    )
}

/// As [`run_fixture_split`], on the model folder `dir` holding fixture `name`'s weights.
fn run_model_dir(
    name: &str,
    dir: &std::path::Path,
    final_stage: FinalStage,
    micro_batch_sequences: usize,
    experts_per_part: Option<usize>,
) -> (Reference, KeepEverything) {
    let reference = Reference::load(name);
    let model = Model::open(dir).unwrap();
    let request = RunRequest {
        token_ids: reference.input_ids.clone(),
        first_delimiters: Vec::new(),
        sequences: Sequences::uniform(reference.num_sequences, reference.seq_len),
        capture_layers: (0..model.spec.num_layers).collect(),
        capture_points: CapturePoint::ALL.to_vec(),
        capture_mode: CaptureMode::Activations,
        final_stage,
        top_logprobs: None,
        head_vocab_rows: None,
        micro_batch_tokens: micro_batch_sequences * reference.seq_len,
        start: None,
        checkpoint_hidden_states: false,
        hidden_placement: HiddenPlacement::Device,
        spill_dir: None,
        memory_budget: None,
        split_layers: experts_per_part
            .map(|n| split_every_layer(&model, n))
            .unwrap_or_default(),
    };
    let mut kept = KeepEverything::default();
    run(
        &model,
        &request,
        &Backend::Cpu(CpuBackend::new(Some(2))),
        &mut kept,
    )
    .unwrap();
    (reference, kept)
}

#[test]
fn packing_matches_the_python_reference_for_every_tokenizer() {
    for name in FIXTURES {
        let reference = Reference::load(name);
        let model = Model::open(&fixture_model(name)).unwrap();
        let tokenizer = TextTokenizer::load(&model.dir, &model.config).unwrap();
        let packed = pack_documents(
            &fixture_docs(),
            "text",
            &tokenizer,
            reference.num_sequences,
            reference.seq_len,
        )
        .unwrap();
        assert_eq!(
            packed.token_ids, reference.input_ids,
            "{name}: packed token ids"
        );
    }
}

#[test]
fn every_family_matches_pytorch_at_every_capture_point_and_the_logits() {
    for name in FIXTURES {
        let (reference, kept) = run_fixture(name, FinalStage::Logits, 1);
        let layers = Model::open(&fixture_model(name)).unwrap().spec.num_layers;
        for layer in 0..layers {
            for point in REFERENCE_POINTS {
                let key = point.full_name(layer);
                let expected = reference.get(&key);
                let got = kept
                    .captures
                    .get(&key)
                    .unwrap_or_else(|| panic!("{name}: {key} not captured"));
                assert_matches_reference(&format!("{name} {key}"), got, &expected.values);
            }
            for point in OPTIONAL_REFERENCE_POINTS {
                let key = point.full_name(layer);
                if let Some(expected) = reference.maybe(&key) {
                    let got = kept
                        .captures
                        .get(&key)
                        .unwrap_or_else(|| panic!("{name}: {key}"));
                    assert_matches_reference(&format!("{name} {key}"), got, &expected.values);
                }
            }
        }
        assert_matches_reference(
            &format!("{name} logits"),
            &kept.logits,
            &reference.get("logits").values,
        );
        assert_eq!(
            kept.layers_done,
            (0..layers).collect::<Vec<_>>(),
            "{name}: layers run in order, once"
        );
        check_routing(name, &reference, &kept, layers);
    }
}

#[test]
fn next_token_nll_and_loss_match_pytorch() {
    for name in FIXTURES {
        let (reference, kept) = run_fixture(name, FinalStage::NextTokenNll, 2);
        assert_matches_reference(
            &format!("{name} nll"),
            &kept.nll,
            &reference.get("nll").values,
        );
        let loss = kept.nll.iter().map(|&x| x as f64).sum::<f64>() / kept.nll.len() as f64;
        let expected = reference.get("loss").values[0] as f64;
        assert!(
            (loss - expected).abs() <= 1e-5 * expected.abs(),
            "{name}: loss {loss} vs PyTorch {expected}"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_micro_batch_size() {
    let (_, one) = run_fixture("qwen3", FinalStage::Logits, 1);
    let (_, all) = run_fixture("qwen3", FinalStage::Logits, 2);
    for (key, values) in &one.captures {
        assert_all_close(key, &all.captures[key], values, 1e-6, 1e-6);
    }
    assert_all_close("logits", &all.logits, &one.logits, 1e-6, 1e-6);
}

/// A layer split into attention and expert groups (the planner's answer to a layer that does
/// not fit) computes exactly what the whole layer computes: the groups add their experts in
/// the unsplit order.
#[test]
fn split_layers_give_the_unsplit_results_bit_for_bit() {
    for name in FIXTURES {
        let (_, whole) = run_fixture(name, FinalStage::Logits, 2);
        for experts_per_part in [1, 3] {
            let (_, split) = run_fixture_split(name, FinalStage::Logits, 2, Some(experts_per_part));
            split.assert_identical(&whole, &format!("{name} split {experts_per_part}"));
            assert_eq!(split.split, split.layers_done, "{name}: every layer split");
        }
    }
}

/// Hidden states in a file (the planner's `disk` placement), with whole and split layers,
/// give the in-memory results bit for bit, and the file is gone afterwards.
#[test]
fn hidden_states_on_disk_give_the_same_results() {
    for name in ["llama3", "olmoe", "qwen2_moe"] {
        let (_, memory) = run_fixture(name, FinalStage::Logits, 2);
        for experts_per_part in [None, Some(1)] {
            let spill = tempfile::tempdir().unwrap();
            let reference = Reference::load(name);
            let model = Model::open(&fixture_model(name)).unwrap();
            let request = RunRequest {
                token_ids: reference.input_ids.clone(),
                first_delimiters: Vec::new(),
                sequences: Sequences::uniform(reference.num_sequences, reference.seq_len),
                capture_layers: (0..model.spec.num_layers).collect(),
                capture_points: CapturePoint::ALL.to_vec(),
                capture_mode: CaptureMode::Activations,
                final_stage: FinalStage::Logits,
                top_logprobs: None,
                head_vocab_rows: None,
                micro_batch_tokens: 2 * reference.seq_len,
                start: None,
                checkpoint_hidden_states: false,
                hidden_placement: HiddenPlacement::Disk,
                spill_dir: Some(spill.path().to_path_buf()),
                memory_budget: None,
                split_layers: experts_per_part
                    .map(|n| split_every_layer(&model, n))
                    .unwrap_or_default(),
            };
            let mut kept = KeepEverything::default();
            run(
                &model,
                &request,
                &Backend::Cpu(CpuBackend::new(Some(2))),
                &mut kept,
            )
            .unwrap();
            kept.assert_identical(
                &memory,
                &format!("{name} on disk, split {experts_per_part:?}"),
            );
            assert_eq!(std::fs::read_dir(spill.path()).unwrap().count(), 0);
        }
    }
}

#[test]
fn only_layers_up_to_the_last_captured_one_run() {
    let reference = Reference::load("llama3");
    let model = Model::open(&fixture_model("llama3")).unwrap();
    let request = RunRequest {
        token_ids: reference.input_ids.clone(),
        first_delimiters: Vec::new(),
        sequences: Sequences::uniform(reference.num_sequences, reference.seq_len),
        capture_layers: [0, 1].into_iter().collect(),
        capture_points: vec![CapturePoint::ResidPost],
        capture_mode: CaptureMode::Activations,
        final_stage: FinalStage::None,
        top_logprobs: None,
        head_vocab_rows: None,
        micro_batch_tokens: reference.seq_len,
        start: None,
        checkpoint_hidden_states: false,
        hidden_placement: HiddenPlacement::Device,
        spill_dir: None,
        memory_budget: None,
        split_layers: Default::default(),
    };
    let mut kept = KeepEverything::default();
    run(
        &model,
        &request,
        &Backend::Cpu(CpuBackend::new(Some(1))),
        &mut kept,
    )
    .unwrap();
    assert_eq!(kept.layers_done, vec![0, 1]);
    assert_eq!(kept.captures.len(), 2);
    assert_matches_reference(
        "resid_post 1",
        &kept.captures["blocks.1.resid_post"],
        &reference.get("blocks.1.resid_post").values,
    );
}

/// Router logits, chosen experts (exactly) and their weights against PyTorch, for every
/// layer that has a router in the reference and only for those.
fn check_routing(name: &str, reference: &Reference, kept: &KeepEverything, layers: usize) {
    for layer in 0..layers {
        let key = format!("blocks.{layer}.router");
        let Some(experts) = reference.int_tensors.get(&format!("{key}.experts")) else {
            assert!(
                !kept.routing.contains_key(&layer),
                "{name}: layer {layer} is dense in PyTorch but routed here"
            );
            continue;
        };
        let routing = kept
            .routing
            .get(&layer)
            .unwrap_or_else(|| panic!("{name}: no routing captured for MoE layer {layer}"));
        let expected = |part: &str| &reference.get(&format!("{key}.{part}")).values;
        assert_matches_reference(
            &format!("{name} {key}.logits"),
            &routing.logits,
            expected("logits"),
        );
        assert_eq!(&routing.experts, experts, "{name} {key}: chosen experts");
        assert_matches_reference(
            &format!("{name} {key}.weights"),
            &routing.weights,
            expected("weights"),
        );
    }
}

#[test]
fn moe_layers_are_sparse_or_dense_as_configured() {
    // qwen3_moe: mlp_only_layers [1]; qwen2_moe: decoder_sparse_step 2; glm4_moe:
    // first_k_dense_replace 1 (the groups fixture: 0); qwen3_next: mlp_only_layers [1].
    let expected = [
        ("olmoe", vec![true, true]),
        ("qwen3_moe", vec![true, false, true]),
        ("qwen2_moe", vec![false, true]),
        ("mixtral", vec![true, true]),
        ("gpt_oss", vec![true, true]),
        ("gpt_oss_bf16", vec![true, true]),
        ("gpt_oss_mxfp4", vec![true, true]),
        ("glm4_moe", vec![false, true, true]),
        ("glm4_moe_groups", vec![true, true]),
        ("glm4_moe_fp8", vec![false, true]),
        ("qwen3_next", vec![true, false, true, true]),
        ("qwen3_next_bf16", vec![true, false, true, true]),
    ];
    for (name, sparse) in &expected {
        let model = Model::open(&fixture_model(name)).unwrap();
        let got: Vec<bool> = (0..model.spec.num_layers)
            .map(|l| model.spec.moe(l).is_some())
            .collect();
        assert_eq!(&got, sparse, "{name}");
    }
    assert_eq!(MOE_FIXTURES.len(), expected.len());
}

/// The bf16 comparisons' near-tie rule (`near_ties.rs`), on a CPU run of the bf16 GPT-OSS
/// fixture: its routing agrees, so nothing is left out; a flip at the reference's closest
/// margin (a near-tie) leaves out that token's rows after the router and its sequence's
/// later rows in later layers; a flip at a clear margin fails.
#[test]
fn near_tie_router_flips_are_told_from_wrong_routing() {
    use layerstream_tests::near_ties::NearTieFlips;
    let (reference, mut kept) = run_fixture("gpt_oss_bf16", FinalStage::Logits, 2);
    let flips = NearTieFlips::find(&reference, &kept, 2, "cpu");
    assert!(flips.flipped.is_empty(), "{:?}", flips.flipped);
    let logits = &reference.get("blocks.1.router.logits").values;
    let margin = |t: usize| {
        let mut row = logits[t * 4..t * 4 + 4].to_vec();
        row.sort_by(|a, b| b.total_cmp(a));
        row[1] - row[2]
    };
    let tokens = reference.num_sequences * reference.seq_len;
    let closest = (0..tokens)
        .min_by(|&a, &b| margin(a).total_cmp(&margin(b)))
        .unwrap();
    let widest = (0..tokens)
        .max_by(|&a, &b| margin(a).total_cmp(&margin(b)))
        .unwrap();
    // Swap the second choice for the third-best expert at the closest margin.
    let third = |t: usize| {
        let row = &logits[t * 4..t * 4 + 4];
        let mut order: Vec<u32> = (0..4).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        order[2]
    };
    let routing = kept.routing.get_mut(&1).unwrap();
    routing.experts[closest * 2 + 1] = third(closest);
    let flips = NearTieFlips::find(&reference, &kept, 2, "near tie");
    assert_eq!(flips.flipped, vec![(1, closest)]);
    assert!(flips.excluded(1, closest, true) && !flips.excluded(1, closest, false));
    let width = 64;
    let rows = flips.kept_rows(&kept.captures["blocks.1.mlp_out"], 1, true);
    assert_eq!(rows.len(), (tokens - 1) * width);
    let later = tokens.min(closest / reference.seq_len * reference.seq_len + reference.seq_len);
    let vocab = kept.logits.len() / tokens;
    assert_eq!(
        flips.kept_logit_rows(&kept.logits).len(),
        (tokens - (later - closest)) * vocab
    );
    let routing = kept.routing.get_mut(&1).unwrap();
    routing.experts[widest * 2 + 1] = third(widest);
    let wrong = std::panic::catch_unwind(|| NearTieFlips::find(&reference, &kept, 2, "wrong"));
    assert!(wrong.is_err(), "a flip at a clear margin is refused");
}

/// Transformers v5's stacked-expert layout (`mlp.experts.gate_up_proj [E, 2I, H]`,
/// `down_proj [E, H, I]`) for every MoE family but GPT-OSS: the same values as the
/// per-expert checkpoint give the same results bit for bit, whole and with layers split into
/// expert groups inside the fused tensors (and so match PyTorch as the per-expert ones do).
#[test]
fn stacked_expert_checkpoints_give_the_per_expert_results_bit_for_bit() {
    let home = tempfile::tempdir().unwrap();
    for name in ["olmoe", "qwen3_moe", "qwen2_moe", "mixtral"] {
        let dir = layerstream_tests::stacked::stacked_copy(name, home.path());
        let model = Model::open(&dir).unwrap();
        let moe_layer = (0..model.spec.num_layers)
            .find(|&l| model.spec.moe(l).is_some())
            .unwrap();
        let table = model.spec.layer_tensors(moe_layer);
        assert!(
            table
                .iter()
                .any(|t| t.name().ends_with("mlp.experts.gate_up_proj")),
            "{name}: reads the stacked tensors"
        );
        let (_, per_expert) = run_fixture(name, FinalStage::Logits, 2);
        let (_, stacked) = run_model_dir(name, &dir, FinalStage::Logits, 2, None);
        stacked.assert_identical(&per_expert, &format!("{name} stacked"));
        let (_, split) = run_model_dir(name, &dir, FinalStage::Logits, 2, Some(1));
        split.assert_identical(&per_expert, &format!("{name} stacked, split"));
    }
}

/// The GLM-4.5 fixtures test what they are for: PyTorch's choices differ from the ones
/// without the selection bias for some tokens, and (the groups fixture) from the ones
/// without the group limit for some tokens, so matching them checks both.
#[test]
fn sigmoid_router_fixtures_exercise_the_selection_bias_and_the_groups() {
    use layerstream_runtime::arch::RouterScoring;
    use layerstream_runtime::cpu::router::route;
    for (name, groups) in [("glm4_moe", false), ("glm4_moe_groups", true)] {
        let model = Model::open(&fixture_model(name)).unwrap();
        let reference = Reference::load(name);
        let (mut bias_changed, mut groups_changed) = (0, 0);
        for layer in (0..model.spec.num_layers).filter(|&l| model.spec.moe(l).is_some()) {
            let moe = model.spec.moe(layer).unwrap();
            let logits = reference
                .get(&format!("blocks.{layer}.router.logits"))
                .values
                .clone();
            let expected = &reference.int_tensors[&format!("blocks.{layer}.router.experts")];
            let zero = vec![0f32; moe.num_experts];
            let unbiased = route(logits.clone(), moe, Some(&zero));
            bias_changed += differing_tokens(&unbiased.experts, expected, moe.top_k);
            let RouterScoring::Sigmoid { scaling, .. } = moe.scoring else {
                panic!("{name}: the sigmoid router")
            };
            let ungrouped_spec = layerstream_runtime::arch::MoeSpec {
                scoring: RouterScoring::Sigmoid {
                    groups: 1,
                    top_groups: 1,
                    scaling,
                },
                ..moe.clone()
            };
            let bias = model
                .weights
                .read_f32(&format!(
                    "model.layers.{layer}.mlp.gate.e_score_correction_bias"
                ))
                .unwrap();
            let ungrouped = route(logits, &ungrouped_spec, Some(&bias));
            groups_changed += differing_tokens(&ungrouped.experts, expected, moe.top_k);
        }
        assert!(bias_changed > 0, "{name}: the bias changes no choice");
        assert_eq!(
            groups_changed > 0,
            groups,
            "{name}: tokens the group limit changes"
        );
    }
}

/// Tokens whose set of chosen experts differs.
fn differing_tokens(got: &[u32], expected: &[u32], top_k: usize) -> usize {
    got.chunks(top_k)
        .zip(expected.chunks(top_k))
        .filter(|(a, b)| {
            let (mut a, mut b) = (a.to_vec(), b.to_vec());
            a.sort();
            b.sort();
            a != b
        })
        .count()
}

/// The FP8 fixture's matrices are read as FP8 blocks with their scales (the router, stored
/// in f32 as transformers leaves it unconverted, as it is), so matching PyTorch above checks
/// the dequantization.
#[test]
fn fp8_fixture_reads_its_matrices_as_fp8_blocks() {
    use layerstream_planner::format::{TensorRef, WeightFormat};
    use layerstream_runtime::arch::WeightRole;
    let model = Model::open(&fixture_model("glm4_moe_fp8")).unwrap();
    let format_of = |layer: usize, role: WeightRole| {
        let table = model.spec.layer_tensors(layer);
        match &table.iter().find(|t| t.role == role).unwrap().source {
            TensorRef::Quantized { format, scales, .. } => {
                assert!(scales.name().ends_with("weight_scale_inv"));
                Some(*format)
            }
            _ => None,
        }
    };
    let fp8 = Some(WeightFormat::Fp8 {
        block_rows: 16,
        block_cols: 32,
    });
    for (layer, role) in [
        (0, WeightRole::QProj),
        (0, WeightRole::DownProj),
        (1, WeightRole::OProj),
        (1, WeightRole::ExpertGate(7)),
        (1, WeightRole::SharedDown),
    ] {
        assert_eq!(format_of(layer, role), fp8, "layer {layer} {role:?}");
    }
    assert_eq!(format_of(1, WeightRole::Router), None);
    assert_eq!(format_of(1, WeightRole::QBias), None);
}
