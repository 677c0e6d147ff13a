//! Every kind of bad input gets a clear error naming the file, tensor or layer, exit code 1
//! and no panic.

mod common;
use common::*;
use safetensors::tensor::TensorView;
use std::path::Path;

fn analyze(model: &Path, extra: &[&str], home: &Path) -> std::process::Output {
    let model = model.display().to_string();
    let docs = docs();
    let mut args = vec![
        "analyze",
        "--model",
        &model,
        "--data",
        &docs,
        "--num-samples",
        "2",
        "--seq-len",
        "32",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    layerstream(&args, home)
}

#[test]
fn missing_config_key_names_key_and_file() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    edit_config(&model, |c| {
        c.remove("num_attention_heads");
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["num_attention_heads", "config.json"],
    );
}

#[test]
fn malformed_config_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    std::fs::write(model.join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["config.json", "not valid JSON"],
    );
}

#[test]
fn unknown_model_type_lists_the_supported_ones() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    edit_config(&model, |c| {
        c.insert("model_type".into(), "gpt_bigcode".into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "\"gpt_bigcode\" is not supported",
            "llama, mistral, qwen2, qwen3, olmo2",
        ],
    );
}

#[test]
fn missing_tensor_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama2", home.path());
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.layers.1.mlp.down_proj.weight")
        .collect();
    let rewritten = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, rewritten).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.1.mlp.down_proj.weight is missing",
            "layer 1 of a llama model",
        ],
    );
}

#[test]
fn missing_lm_head_of_an_untied_model_says_how_to_tie() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen3", home.path());
    edit_config(&model, |c| {
        c.insert("tie_word_embeddings".into(), false.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["lm_head.weight is missing", "tie_word_embeddings"],
    );
}

#[test]
fn shape_that_disagrees_with_config_names_tensor_and_file() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("mistral", home.path());
    edit_config(&model, |c| {
        c.insert("intermediate_size".into(), 128.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "model.safetensors",
            "[96, 64]",
            "[128, 64]",
            "intermediate_size",
        ],
    );
}

#[test]
fn more_layers_in_the_checkpoint_than_in_config_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    edit_config(&model, |c| {
        c.insert("num_hidden_layers".into(), 2.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.2.",
            "num_hidden_layers 2",
            "num_nextn_predict_layers 0",
        ],
    );
}

/// GLM-4.5's checkpoints carry a multi-token-prediction layer after the last decoder layer
/// (`num_nextn_predict_layers`), which transformers never builds: known and unused, not an
/// error, not streamed, shown by `inspect`; one more layer than that is still refused.
#[test]
fn declared_multi_token_prediction_layers_are_known_and_unused() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    edit_config(&model, |c| {
        c.insert("num_hidden_layers".into(), 2.into());
        c.insert("num_nextn_predict_layers".into(), 1.into());
    });
    let out = assert_succeeds(&analyze(&model, &[], home.path()));
    assert!(
        out.contains("2 layers") || out.contains("layers 0-1"),
        "{out}"
    );
    let dir = model.display().to_string();
    let json = assert_succeeds(&layerstream(
        &["inspect", "--model", &dir, "--json"],
        home.path(),
    ));
    let summary: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(summary["unused_mtp_layers"], serde_json::json!([2]));
    assert!(summary["unused_mtp_bytes"].as_u64().unwrap() > 0);
    assert_eq!(summary["layer_bytes"].as_object().unwrap().len(), 2);
    let table = assert_succeeds(&layerstream(&["inspect", "--model", &dir], home.path()));
    assert!(
        table.contains("unused layers") && table.contains("multi-token"),
        "{table}"
    );
    edit_config(&model, |c| {
        c.insert("num_hidden_layers".into(), 1.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["model.layers.2.", "num_nextn_predict_layers 1"],
    );
    edit_config(&model, |c| {
        c.insert("num_nextn_predict_layers".into(), "one".into());
    });
    assert_fails_with(
        &layerstream(&["inspect", "--model", &dir], home.path()),
        &["num_nextn_predict_layers", "whole number"],
    );
}

#[test]
fn truncated_safetensors_says_truncated() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("olmo2", home.path());
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["model.safetensors", "truncated", "fetch the file again"],
    );
    std::fs::write(&path, &bytes[..5]).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn missing_shard_of_an_index_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen2", home.path());
    std::fs::remove_file(model.join("model-00003-of-00011.safetensors")).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.safetensors.index.json",
            "model-00003-of-00011.safetensors",
        ],
    );
}

#[test]
fn model_folder_without_weights_or_config_is_explained() {
    let home = tempfile::tempdir().unwrap();
    let empty = home.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails_with(
        &analyze(&empty, &[], home.path()),
        &["config.json", "not found"],
    );
    let model = copy_fixture_model("olmo2", home.path());
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["no model.safetensors"],
    );
}

#[test]
fn empty_data_file_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("empty.txt");
    std::fs::write(&data, "").unwrap();
    let model = layerstream_tests::fixture_model("qwen3")
        .display()
        .to_string();
    let out = layerstream(
        &[
            "analyze",
            "--model",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--seq-len",
            "32",
            "--device",
            "cpu",
        ],
        home.path(),
    );
    assert_fails_with(&out, &["empty.txt", "has no text"]);
}

#[test]
fn too_little_data_says_how_many_tokens() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("qwen3");
    assert_fails_with(
        &analyze(&model, &["--num-samples", "100"], home.path()),
        &[
            "docs.jsonl",
            "tokens (5 documents",
            "100 sequences of 32 tokens need 3200",
        ],
    );
}

#[test]
fn seq_len_above_max_position_embeddings_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("qwen3");
    assert_fails_with(
        &analyze(&model, &["--seq-len", "129"], home.path()),
        &[
            "--seq-len 129",
            "max_position_embeddings 128",
            "config.json",
        ],
    );
}

#[test]
fn layer_out_of_range_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("llama3");
    assert_fails_with(
        &analyze(&model, &["--layers", "0,3"], home.path()),
        &["layer 3 is out of range", "3 layers (0-2)"],
    );
}

#[test]
fn unwritable_output_folder_is_refused_before_work() {
    let home = tempfile::tempdir().unwrap();
    let blocker = home.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let out_dir = blocker.join("out");
    let model = layerstream_tests::fixture_model("llama3");
    assert_fails_with(
        &analyze(&model, &["--out", out_dir.to_str().unwrap()], home.path()),
        &["cannot create the output folder", "a-file/out", "--out"],
    );
}

#[test]
fn cuda_without_a_cuda_backend_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("llama3")
        .display()
        .to_string();
    let docs = docs();
    let out = layerstream(
        &[
            "analyze",
            "--model",
            &model,
            "--data",
            &docs,
            "--num-samples",
            "2",
            "--seq-len",
            "32",
            "--device",
            "cuda",
        ],
        home.path(),
    );
    assert_fails_with(
        &out,
        &["--device cuda", "no NVIDIA driver library", "--device cpu"],
    );
}

#[test]
fn unsupported_rope_type_is_refused_not_computed_differently() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    edit_config(&model, |c| {
        c.insert(
            "rope_scaling".into(),
            serde_json::json!({"rope_type": "longrope", "factor": 4.0}),
        );
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["rope_type \"longrope\" is not supported", "yarn"],
    );
}

#[test]
fn moe_config_without_top_k_names_the_key() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("olmoe", home.path());
    edit_config(&model, |c| {
        c.remove("num_experts_per_tok");
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &["num_experts_per_tok", "config.json", "olmoe"],
    );
}

#[test]
fn a_stacked_expert_tensor_whose_expert_count_disagrees_with_config_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("olmoe", home.path());
    let path = model.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("model.layers.0.mlp.experts."))
        .collect();
    // Layer 0's experts stacked, but 4 of them where config.json says 8.
    let gate_up = vec![0u8; 4 * 4 * 64 * 64];
    let down = vec![0u8; 4 * 4 * 64 * 32];
    kept.push((
        "model.layers.0.mlp.experts.gate_up_proj".into(),
        TensorView::new(safetensors::Dtype::F32, vec![4, 64, 64], &gate_up).unwrap(),
    ));
    kept.push((
        "model.layers.0.mlp.experts.down_proj".into(),
        TensorView::new(safetensors::Dtype::F32, vec![4, 64, 32], &down).unwrap(),
    ));
    std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.0.mlp.experts.gate_up_proj",
            "[8, 64, 64]",
            "[4, 64, 64]",
            "number of experts",
        ],
    );
}
