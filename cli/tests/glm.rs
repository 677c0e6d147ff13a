//! GLM-4.5 through the binary: what `inspect` shows of its dense first layers, shared
//! expert, sigmoid router, MTP layer and FP8 weights, and the clear refusals of bad FP8 and
//! GLM input.

mod common;
use common::*;
use safetensors::tensor::TensorView;
use serde_json::Value;

fn inspect_json(model: &str, home: &std::path::Path) -> Value {
    let out = assert_succeeds(&layerstream(&["inspect", "--model", model, "--json"], home));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn inspect_shows_dense_layers_shared_expert_router_groups_and_the_mtp_layer() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("glm4_moe");
    let s = inspect_json(&model, home.path());
    let moe = &s["moe"];
    assert_eq!(moe["dense_layers"], serde_json::json!([0]));
    assert_eq!(moe["moe_layers"], serde_json::json!([1, 2]));
    assert_eq!(moe["router_scoring"], "sigmoid");
    assert_eq!(moe["expert_groups"], serde_json::json!([1, 1]));
    assert_eq!(moe["shared_expert_intermediate_size"], 32);
    assert_eq!(s["unused_mtp_layers"], serde_json::json!([3]));
    assert_eq!(
        s["rotary_dims"], 16,
        "partial_rotary_factor 0.5 of head_dim 32"
    );
    let table = assert_succeeds(&layerstream(&["inspect", "--model", &model], home.path()));
    for needle in [
        "dense layers       0",
        "shared expert      width 32",
        "sigmoid chosen with a selection bias",
        "unused layers      3",
        "16 of 32 head dims rotated",
    ] {
        assert!(table.contains(needle), "{needle}:\n{table}");
    }
    let groups = inspect_json(&fixture_model_path("glm4_moe_groups"), home.path());
    assert_eq!(groups["moe"]["expert_groups"], serde_json::json!([2, 1]));
    assert_eq!(groups["moe"]["routed_scaling_factor"], 2.5);
    assert_eq!(groups["moe"]["shared_expert_intermediate_size"], 64);
}

/// FP8 bytes stored vs dequantized, against the headers read independently: every F8
/// matrix with its scales as stored, two bytes per value once dequantized.
#[test]
fn inspect_shows_fp8_bytes_stored_and_dequantized() {
    let home = tempfile::tempdir().unwrap();
    let dir = layerstream_tests::fixture_model("glm4_moe_fp8");
    let s = inspect_json(&dir.display().to_string(), home.path());
    let data = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&data).unwrap();
    let (mut matrices, mut stored, mut values) = (0u64, 0u64, 0u64);
    for (name, view) in file.tensors() {
        if view.dtype() == safetensors::Dtype::F8_E4M3 {
            matrices += 1;
            values += view.shape().iter().product::<usize>() as u64;
            stored += view.data().len() as u64;
            stored += file
                .tensor(&format!("{name}_scale_inv"))
                .unwrap()
                .data()
                .len() as u64;
        }
    }
    let quantized = s["quantized"].as_array().unwrap();
    assert_eq!(quantized.len(), 1, "{quantized:?}");
    assert_eq!(quantized[0]["format"], "FP8 E4M3 (16 x 32 blocks)");
    assert_eq!(quantized[0]["matrices"], matrices);
    assert_eq!(quantized[0]["stored_bytes"], stored);
    // The fixture's matrices are multiples of 128 values: no alignment padding.
    assert_eq!(quantized[0]["bf16_bytes"], 2 * values);
    assert!(s["moe"]["bytes_per_expert_dequantized"].as_u64().unwrap() > 0);
}

/// Rewrites `model`'s checkpoint without the tensor `drop`.
fn drop_tensor(model: &std::path::Path, drop: &str) {
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != drop)
        .collect();
    std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
}

fn analyze(model: &std::path::Path, home: &std::path::Path) -> std::process::Output {
    let model = model.display().to_string();
    let data = docs();
    let args = [
        "analyze",
        "--model",
        &model,
        "--data",
        &data,
        "--num-samples",
        "2",
        "--seq-len",
        "16",
        "--device",
        "cpu",
    ];
    layerstream(&args, home)
}

#[test]
fn a_missing_fp8_scale_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("glm4_moe_fp8", home.path());
    drop_tensor(&model, "model.layers.1.self_attn.q_proj.weight_scale_inv");
    assert_fails_with(
        &analyze(&model, home.path()),
        &[
            "model.layers.1.self_attn.q_proj.weight_scale_inv is missing",
            "F8_E4M3",
            "inverse scales",
        ],
    );
}

#[test]
fn fp8_scales_of_another_block_size_are_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("glm4_moe_fp8", home.path());
    edit_config(&model, |c| {
        c["quantization_config"]["weight_block_size"] = serde_json::json!([32, 32]);
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &[
            "model.layers.0.self_attn.q_proj.weight_scale_inv",
            "[4, 2]",
            "[8, 2]",
            "32 x 32 block",
            "weight_block_size",
        ],
    );
    edit_config(&model, |c| {
        c["quantization_config"]["weight_block_size"] = serde_json::json!([0, 128]);
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &["weight_block_size", "two positive whole numbers"],
    );
}

#[test]
fn fp8_weights_without_an_fp8_config_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("glm4_moe_fp8", home.path());
    edit_config(&model, |c| {
        c.remove("quantization_config");
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &[
            "model.layers.0.",
            "F8_E4M3",
            "no quantization_config",
            "quant_method",
        ],
    );
    edit_config(&model, |c| {
        c.insert(
            "quantization_config".into(),
            serde_json::json!({"quant_method": "awq", "bits": 4}),
        );
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &["quant_method \"awq\"", "not supported", "fp8"],
    );
}

#[test]
fn bad_glm_router_groups_are_refused_with_what_they_must_be() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("glm4_moe_groups", home.path());
    edit_config(&model, |c| {
        c.insert("n_group".into(), 3.into());
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &["n_group", "3", "divide the 8 routed experts"],
    );
    edit_config(&model, |c| {
        c.insert("n_group".into(), 2.into());
        c.insert("topk_group".into(), 3.into());
    });
    assert_fails_with(
        &analyze(&model, home.path()),
        &["topk_group", "1 to n_group 2"],
    );
}
