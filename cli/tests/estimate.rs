//! `layerstream estimate`: the plan from headers only, its JSON schema, refusals.

mod common;
use common::*;
use serde_json::Value;
use std::time::Instant;

#[test]
fn estimate_json_matches_its_schema() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("olmoe");
    let out = assert_succeeds(&layerstream(
        &[
            "estimate",
            "--model",
            &model,
            "--num-samples",
            "4",
            "--seq-len",
            "64",
            "--vram",
            "2GiB",
            "--json",
        ],
        home.path(),
    ));
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["schema_version"], 3);
    for key in ["model", "model_type", "gemm_dtype"] {
        assert!(e[key].is_string(), "{key}");
    }
    for key in [
        "num_layers",
        "parameters",
        "weight_bytes",
        "sequences",
        "seq_len",
        "layers_run",
        "budget_bytes",
    ] {
        assert!(e[key].is_u64(), "{key}");
    }
    assert!(e["points"].is_array() && e["warnings"].is_array() && e["lm_head"].is_boolean());
    assert_eq!(e["gemm_dtype"], "f32", "an f32 checkpoint");
    let plan = &e["plan"];
    let regions = plan["regions"].as_object().unwrap();
    let keys: Vec<&str> = regions.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "accumulator",
            "activations",
            "converted",
            "head",
            "hidden",
            "moe",
            "overhead",
            "staging",
            "statistics"
        ]
    );
    let sum: u64 = regions.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(
        plan["peak_bytes"].as_u64().unwrap(),
        sum,
        "the peak is the regions"
    );
    assert!(
        regions["moe"].as_u64().unwrap() > 0,
        "an MoE model plans MoE buffers"
    );
    assert!(
        ["device", "pinned_host", "disk"].contains(&plan["hidden_placement"].as_str().unwrap())
    );
    for key in ["host_bytes", "disk_bytes"] {
        assert!(plan[key].is_u64(), "{key}");
    }
    assert!(plan["micro_batch_sequences"].as_u64().unwrap() >= 1);
    assert_eq!(plan["layers"].as_array().unwrap().len(), 2);
    assert_eq!(
        plan["split_layers"],
        serde_json::json!([]),
        "2 GiB holds a whole layer"
    );
    for layer in plan["layers"].as_array().unwrap() {
        let parts = layer["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0]["kind"], "whole");
        assert_eq!(parts[0]["weight_bytes"], layer["weight_bytes"]);
        for key in [
            "layer",
            "weight_bytes",
            "converted_bytes",
            "activation_bytes",
            "needs_bytes",
        ] {
            assert!(layer[key].is_u64(), "{key}");
        }
    }
    let fraction = e["budget_fraction"].as_f64().unwrap();
    assert!((fraction - sum as f64 / (2u64 << 30) as f64).abs() < 1e-12);
    for key in [
        "transfer_seconds",
        "disk_seconds",
        "compute_seconds",
        "warm_seconds",
        "cold_seconds",
    ] {
        assert!(e["time"][key].is_f64(), "{key}");
    }
    assert_eq!(e["time"]["rates"]["host_to_device_gbps"], 55.0);
}

#[test]
fn a_budget_too_small_for_one_layer_is_refused_with_what_it_needs() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let args = [
        "estimate",
        "--model",
        &model,
        "--num-samples",
        "2",
        "--seq-len",
        "64",
        "--vram",
        "300MiB",
    ];
    assert_fails_with(
        &layerstream(&args, home.path()),
        &[
            "layer 0 needs at least",
            "x2 buffers",
            "overhead 640.00 MiB",
            "the budget is 300.00 MiB",
            "try --vram 1GiB",
        ],
    );
    // analyze refuses the same way before reading any data or writing any file.
    let out = home.path().join("out");
    let args = [
        "analyze",
        "--model",
        &model,
        "--num-samples",
        "2",
        "--seq-len",
        "64",
        "--vram",
        "300MiB",
        "--out",
        out.to_str().unwrap(),
    ];
    assert_fails_with(
        &layerstream(&args, home.path()),
        &["layer 0 needs at least", "try --vram 1GiB"],
    );
    assert!(!out.exists());
}

#[test]
fn analyze_dry_run_prints_the_estimate() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("qwen3_moe");
    let shared = [
        "--model",
        &model,
        "--num-samples",
        "4",
        "--seq-len",
        "64",
        "--vram",
        "4GiB",
        // A fixed host budget: the default (80% of the memory available now) changes
        // between the two runs when other tests run beside them.
        "--ram",
        "16GiB",
    ];
    let estimate = assert_succeeds(&layerstream(
        &[&["estimate"][..], &shared].concat(),
        home.path(),
    ));
    let dry = assert_succeeds(&layerstream(
        &[&["analyze", "--dry-run"][..], &shared].concat(),
        home.path(),
    ));
    assert_eq!(estimate, dry);
    assert!(dry.contains("peak") && dry.contains("micro-batch"), "{dry}");
}

#[test]
fn a_100_gb_model_is_estimated_from_its_headers_in_under_a_second() {
    let home = tempfile::tempdir().unwrap();
    let (dir, data_bytes) = sparse_llama(home.path(), 56);
    assert!(data_bytes > 100_000_000_000, "{data_bytes}");
    let model = dir.display().to_string();
    let started = Instant::now();
    let out = assert_succeeds(&layerstream(
        &["estimate", "--model", &model, "--vram", "24GiB", "--json"],
        home.path(),
    ));
    let elapsed = started.elapsed();
    assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
    let e: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["num_layers"], 56);
    assert_eq!(e["weight_bytes"].as_u64().unwrap(), data_bytes);
    let layer_bytes = e["plan"]["layers"][0]["weight_bytes"].as_u64().unwrap();
    assert!(
        layer_bytes > 1_700_000_000 && layer_bytes < 1_800_000_000,
        "{layer_bytes}"
    );
    assert!(e["plan"]["peak_bytes"].as_u64().unwrap() <= 24 << 30);
}

/// A 470 GB MoE model on an 8 GiB card: its 4.9 GB layers cannot sit next to their prefetch
/// buffer, so the plan splits them into attention and expert groups; from headers, quickly.
#[test]
fn a_470_gb_moe_model_on_8_gib_is_planned_with_split_layers_in_under_a_second() {
    let home = tempfile::tempdir().unwrap();
    let (dir, data_bytes) = sparse_qwen3_moe(home.path());
    assert!(data_bytes > 400_000_000_000, "{data_bytes}");
    let e = estimate_in_under_a_second(&dir, home.path(), &["--num-samples", "64"]);
    let plan = &e["plan"];
    assert_eq!(plan["split_layers"].as_array().unwrap().len(), 94);
    let layer = &plan["layers"][0];
    assert!(layer["weight_bytes"].as_u64().unwrap() > 4_800_000_000);
    let parts = layer["parts"].as_array().unwrap();
    assert_eq!(parts[0]["kind"], "attention");
    let largest = parts
        .iter()
        .map(|p| p["weight_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(2 * largest < 8 << 30, "two buffers of the largest part fit");
    assert!(plan["peak_bytes"].as_u64().unwrap() <= 8 << 30);
    assert!(plan["regions"]["accumulator"].as_u64().unwrap() > 0);
}

/// GPT-OSS-120B as the hub ships it (MXFP4 experts, ~65 GB) on an 8 GiB card: each layer
/// streams as stored (1.7 GB) but dequantizes to bf16 on the GPU (6.4 GB), so the plan sizes
/// its parts by both and splits every layer; from headers, quickly.
#[test]
fn gpt_oss_120b_mxfp4_on_8_gib_is_planned_by_its_dequantized_size_in_under_a_second() {
    let home = tempfile::tempdir().unwrap();
    let (dir, data_bytes) = sparse_gpt_oss_120b(home.path());
    assert!(data_bytes > 60_000_000_000, "{data_bytes}");
    // The micro-batch target of 4 sequences keeps the parts few (the default target lets the
    // plan take more parts for micro-batches of all 16).
    let args = [
        "--num-samples",
        "16",
        "--seq-len",
        "2048",
        "--micro-batch-tokens",
        "8192",
    ];
    let e = estimate_in_under_a_second(&dir, home.path(), &args);
    assert_eq!(e["weight_bytes"].as_u64().unwrap(), data_bytes);
    let plan = &e["plan"];
    assert_eq!(plan["split_layers"].as_array().unwrap().len(), 36);
    assert!(plan["peak_bytes"].as_u64().unwrap() <= 8 << 30);
    let layer = &plan["layers"][0];
    // Stored: 128 experts of 4.25-bit gate_up (5760 x 2880) and down (2880 x 2880), plus
    // bf16 attention and biases: about 1.7 GB.
    let stored = layer["weight_bytes"].as_u64().unwrap();
    assert!(stored > 1_650_000_000 && stored < 1_800_000_000, "{stored}");
    // Two groups of 64 experts after attention; each group dequantizes its gate, up and
    // down to bf16 and its three biases to f32, next to the post-attention norm and the
    // router bias in f32 (the bf16 router weight is used in place).
    let parts = layer["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3, "{layer}");
    let per_expert: u64 = 2 * (5760 * 2880 + 2880 * 2880) + 3 * 2880 * 4;
    for part in &parts[1..] {
        assert_eq!(
            part["end_expert"].as_u64().unwrap() - part["first_expert"].as_u64().unwrap(),
            64
        );
        assert_eq!(
            part["converted_bytes"],
            64 * per_expert + 2880 * 4 + 128 * 4
        );
        // Stored: 4.25 bits per expert weight; gate and up read one bias tensor, staged once.
        let blocks_and_scales: u64 = (5760 + 2880) * 2880 / 32 * 17;
        let biases = 2 * (5760 + 2880);
        let part_stored = part["weight_bytes"].as_u64().unwrap();
        assert!(part_stored >= 64 * (blocks_and_scales + biases), "{part}");
        assert!(
            part_stored < 64 * (blocks_and_scales + biases) + (2 << 20),
            "{part}"
        );
    }
    assert_eq!(plan["regions"]["converted"], parts[1]["converted_bytes"]);
}

/// `estimate --vram 8GiB --json` of the model in `dir` with `extra` flags, checked to answer
/// in under a second (headers only).
fn estimate_in_under_a_second(
    dir: &std::path::Path,
    home: &std::path::Path,
    extra: &[&str],
) -> Value {
    let model = dir.display().to_string();
    let mut args = vec!["estimate", "--model", &model, "--vram", "8GiB", "--json"];
    args.extend(extra);
    let started = Instant::now();
    let out = assert_succeeds(&layerstream(&args, home));
    let elapsed = started.elapsed();
    assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
    serde_json::from_str(&out).unwrap()
}

/// GLM-4.5-Air as the hub ships it (46 layers, the first dense, 128 experts, an MTP layer
/// 46 with its own embedding), bf16 and FP8, on an 8 GiB card, from headers: the MTP layer
/// is neither a planned layer nor counted in their bytes, and the FP8 layers stream about
/// half the bytes of the bf16 ones but dequantize to the same bf16 size on the GPU.
#[test]
fn glm_4_5_air_bf16_and_fp8_are_estimated_with_the_mtp_layer_left_out_in_under_a_second() {
    use common::glm::{AIR, sparse_glm};
    let home = tempfile::tempdir().unwrap();
    let args = ["--num-samples", "16", "--seq-len", "2048"];
    let (bf16_dir, bf16_bytes) = sparse_glm(home.path(), AIR);
    let bf16 = estimate_in_under_a_second(&bf16_dir, home.path(), &args);
    let fp8_model = common::glm::Glm { fp8: true, ..AIR };
    let (fp8_dir, _) = sparse_glm(home.path(), fp8_model);
    let fp8 = estimate_in_under_a_second(&fp8_dir, home.path(), &args);
    assert!(bf16_bytes > 215_000_000_000, "{bf16_bytes}");
    for e in [&bf16, &fp8] {
        assert_eq!(e["num_layers"], 46);
        let layers = e["plan"]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 46, "the MTP layer is not planned");
        assert!(e["plan"]["peak_bytes"].as_u64().unwrap() <= 8 << 30);
    }
    let layer_bytes =
        |e: &Value, l: usize| e["plan"]["layers"][l]["weight_bytes"].as_u64().unwrap();
    // A MoE layer: 129 experts of 3 x 4096 x 1408 plus attention (12288 + 2 x 1024 + 4096
    // rows of 4096) and the router, about 4.7 GB in bf16.
    let bf16_layer = layer_bytes(&bf16, 1);
    assert!(
        bf16_layer > 4_600_000_000 && bf16_layer < 4_800_000_000,
        "{bf16_layer}"
    );
    let fp8_layer = layer_bytes(&fp8, 1);
    let ratio = fp8_layer as f64 / bf16_layer as f64;
    assert!(
        ratio > 0.5 && ratio < 0.51,
        "FP8 streams half the bytes: {ratio}"
    );
    // The dense first layer is smaller than a MoE one.
    assert!(layer_bytes(&bf16, 0) < bf16_layer / 4);
    // Every layer's bytes plus embeddings, final norm and LM head, but not the MTP layer.
    let planned: u64 = (0..46).map(|l| layer_bytes(&bf16, l)).sum();
    let outside = 2 * 151552 * 4096 * 2 + 4096 * 2;
    assert!(
        planned + outside < bf16_bytes - 4_000_000_000,
        "the MTP layer's 5.9 GB are left out"
    );
    let converted = |e: &Value| -> u64 {
        e["plan"]["layers"][1]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["converted_bytes"].as_u64().unwrap())
            .sum()
    };
    assert!(
        converted(&bf16) < 1 << 20,
        "bf16 matrices are used in place, vectors become f32"
    );
    let dequantized = converted(&fp8);
    assert!(
        dequantized > bf16_layer - 50_000_000 && dequantized < bf16_layer + 50_000_000,
        "{dequantized}"
    );
}

/// GLM-4.5 (355B: 92 layers, the first 3 dense, 160 experts, q/k norm, scaling 2.5, an MTP
/// layer 92) on an 8 GiB card with 16 x 2048 tokens: every layer split (the dense ones into
/// attention and MLP, the MoE ones into expert groups), from headers, in under a second.
#[test]
fn glm_4_5_355b_is_planned_on_8_gib_with_split_layers_in_under_a_second() {
    use common::glm::{FULL, sparse_glm};
    let home = tempfile::tempdir().unwrap();
    let (dir, bytes) = sparse_glm(home.path(), FULL);
    assert!(bytes > 700_000_000_000, "{bytes}");
    let e = estimate_in_under_a_second(&dir, home.path(), &["--num-samples", "16"]);
    assert_eq!(e["num_layers"], 92);
    let plan = &e["plan"];
    assert_eq!(plan["layers"].as_array().unwrap().len(), 92);
    assert!(plan["peak_bytes"].as_u64().unwrap() <= 8 << 30);
    let split: Vec<u64> = plan["split_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_u64().unwrap())
        .collect();
    assert_eq!(split, (0..92).collect::<Vec<u64>>());
    let parts = |l: usize| plan["layers"][l]["parts"].as_array().unwrap().clone();
    // A dense layer (0.65 GB): attention, then its MLP as one part without experts.
    let dense = parts(0);
    assert_eq!(dense.len(), 2, "{dense:?}");
    assert_eq!(dense[1]["kind"], "feed_forward");
    assert_eq!(dense[1]["end_expert"], 0);
    // A MoE layer (7.3 GB): attention, then groups that cover the 160 experts in order.
    let moe = parts(3);
    assert_eq!(moe[0]["kind"], "attention");
    let mut next = 0;
    for part in &moe[1..] {
        assert_eq!(part["first_expert"].as_u64().unwrap(), next, "{part}");
        next = part["end_expert"].as_u64().unwrap();
    }
    assert_eq!(next, 160);
}

/// Qwen3-Next-80B-A3B as the hub ships it on an 8 GiB card, from headers in under a second:
/// 48 layers of about 3.1 GiB (512 experts of 6 MiB), the DeltaNet and gated-attention layers
/// planned with their own buffers, the `mtp.*` module not a layer.
#[test]
fn qwen3_next_80b_is_estimated_from_its_headers_in_under_a_second() {
    use common::qwen3_next::sparse_qwen3_next_80b;
    let home = tempfile::tempdir().unwrap();
    let (dir, bytes) = sparse_qwen3_next_80b(home.path());
    let args = ["--num-samples", "16", "--seq-len", "2048"];
    let e = estimate_in_under_a_second(&dir, home.path(), &args);
    assert!(bytes > 159_000_000_000, "{bytes}");
    assert_eq!(e["num_layers"], 48);
    let layers = e["plan"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 48);
    assert!(e["plan"]["peak_bytes"].as_u64().unwrap() <= 8 << 30);
    let layer_bytes = |l: usize| layers[l]["weight_bytes"].as_u64().unwrap();
    // 513 expert MLPs of 3 x 512 x 2048 bf16 (3.2 GB), the router (2 MiB) and the mixer.
    for l in [0, 3] {
        assert!(
            layer_bytes(l) > 3_260_000_000 && layer_bytes(l) < 3_320_000_000,
            "{l}: {}",
            layer_bytes(l)
        );
    }
    // DeltaNet in_proj + out_proj (64 MiB) against gated attention's 4 projections (52 MiB).
    assert!(layer_bytes(0) > layer_bytes(3));
    let planned: u64 = (0..48).map(layer_bytes).sum();
    let outside = 2 * VOCAB_QWEN * 2048 * 2 + 2048 * 2;
    assert!(planned + outside < bytes, "the mtp.* module is not planned");
    assert!(planned + outside + 1_000_000_000 > bytes, "every layer is");
}

const VOCAB_QWEN: u64 = 151936;

/// A 70B-shaped model's 2.1 GB output head does not fit next to a layer at 6 GiB: `--score`
/// plans it split by vocabulary rows (and says so); at 12 GiB it stays whole.
#[test]
fn a_score_plan_splits_an_output_head_that_does_not_fit() {
    let home = tempfile::tempdir().unwrap();
    let (dir, _) = sparse_llama(home.path(), 3);
    let model = dir.display().to_string();
    let plan = |vram: &str| -> Value {
        let out = assert_succeeds(&layerstream(
            &[
                "estimate", "--model", &model, "--score", "--vram", vram, "--json",
            ],
            home.path(),
        ));
        serde_json::from_str(&out).unwrap()
    };
    let tight = plan("6GiB");
    let rows = tight["plan"]["head_vocab_rows"]
        .as_u64()
        .expect("split head");
    assert!((1024..128256).contains(&rows), "{rows}");
    assert!(tight["plan"]["peak_bytes"].as_u64().unwrap() <= 6 << 30);
    assert!(plan("12GiB")["plan"].get("head_vocab_rows").is_none());
    let text = assert_succeeds(&layerstream(
        &["estimate", "--model", &model, "--score", "--vram", "6GiB"],
        home.path(),
    ));
    assert!(text.contains("split by vocabulary rows"), "{text}");
}

/// The T4 path's plan (`--compute-dtype f16`): bf16 matrices are converted to f16 (2 bytes
/// each, beside the bf16 bytes they come from), so a layer converts about its streamed bytes;
/// bf16 compute uses them in place and f32 converts them to twice the bytes.
#[test]
fn an_f16_plan_converts_bf16_matrices_to_f16_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let plan = |dtype: &str| -> Value {
        let args = [
            "estimate",
            "--model",
            &model,
            "--num-samples",
            "4",
            "--seq-len",
            "64",
            "--vram",
            "2GiB",
            "--json",
            "--compute-dtype",
            dtype,
        ];
        serde_json::from_str(&assert_succeeds(&layerstream(&args, home.path()))).unwrap()
    };
    let converted = |e: &Value| {
        e["plan"]["layers"][0]["parts"][0]["converted_bytes"]
            .as_u64()
            .unwrap()
    };
    let streamed = |e: &Value| e["plan"]["layers"][0]["weight_bytes"].as_u64().unwrap();
    let (f16, bf16, f32) = (plan("f16"), plan("bf16"), plan("f32"));
    assert_eq!(f16["gemm_dtype"], "f16");
    assert_eq!(bf16["gemm_dtype"], "bf16");
    let (c16, cb16, c32) = (converted(&f16), converted(&bf16), converted(&f32));
    assert!(cb16 < streamed(&bf16) / 4, "bf16 in place: {cb16}");
    assert!(
        c16 > streamed(&f16) * 9 / 10 && c16 < streamed(&f16) * 11 / 10,
        "f16: about the streamed bytes, {c16} of {}",
        streamed(&f16)
    );
    assert!(c32 > c16 * 19 / 10, "f32: twice f16's, {c32} against {c16}");
    let bad = layerstream(
        &["estimate", "--model", &model, "--compute-dtype", "f8"],
        home.path(),
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("choose auto, bf16, f16 or f32"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
