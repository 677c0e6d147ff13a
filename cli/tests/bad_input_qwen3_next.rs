//! Bad input for Qwen3-Next (issue 18): every refusal names the key, tensor or point and the
//! file, exits 1 and does not panic.

mod common;

use common::{assert_fails_with, copy_fixture_model, docs, edit_config, layerstream};
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
        "--out",
        "out",
    ];
    args.extend(extra);
    layerstream(&args, home)
}

#[test]
fn attn_gate_of_a_model_without_output_gates_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("llama3");
    assert_fails_with(
        &analyze(&model, &["--points", "ln1,attn_gate"], home.path()),
        &["attn_gate", "llama", "no output gate", "qwen3_next"],
    );
}

#[test]
fn value_heads_that_do_not_divide_over_key_heads_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen3_next", home.path());
    edit_config(&model, |c| {
        c.insert("linear_num_value_heads".into(), 3.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "linear_num_value_heads",
            "linear_num_key_heads",
            "config.json",
        ],
    );
}

#[test]
fn a_conv_kernel_that_disagrees_with_the_weights_names_the_tensor() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen3_next", home.path());
    edit_config(&model, |c| {
        c.insert("linear_conv_kernel_dim".into(), 3.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.0.linear_attn.conv1d.weight",
            "linear_conv_kernel_dim",
        ],
    );
}

#[test]
fn an_unknown_layer_type_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen3_next", home.path());
    edit_config(&model, |c| {
        let types = [
            "linear_attention",
            "full_attention",
            "sliding_attention",
            "full_attention",
        ];
        c.insert("layer_types".into(), serde_json::json!(types));
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "layer_types[2]",
            "sliding_attention",
            "linear_attention, full_attention",
        ],
    );
}

#[test]
fn a_schedule_putting_attention_where_the_checkpoint_has_a_delta_net_names_the_tensor() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("qwen3_next", home.path());
    edit_config(&model, |c| {
        c.insert("full_attention_interval".into(), 1.into());
    });
    assert_fails_with(
        &analyze(&model, &[], home.path()),
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "is missing",
            "full attention",
            "layer_types",
        ],
    );
}
