//! GPT-OSS through the binary (issue 16; fidelity against PyTorch is `tests/fidelity.rs`):
//! the MXFP4 fixture analysed on the CPU with the learned sinks' mass reported, and bad
//! input in the MXFP4 experts and the config refused naming the tensor or key.

mod common;

use common::{
    assert_fails_with, assert_succeeds, copy_fixture_model, docs, edit_config, layerstream,
    small_analyze_args,
};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

fn analyze(home: &Path, model: &Path, out: &str) -> std::process::Output {
    let (model, data) = (model.display().to_string(), docs());
    layerstream(&small_analyze_args(&model, &data, out), home)
}

/// Rewrites `dir/model.safetensors`: `edit(name, dtype, shape, bytes)` returns the tensor to
/// write, or `None` to leave it out.
fn rewrite(
    dir: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let (dtype, shape, data) = edit(
                &name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )?;
            Some((name, dtype, shape, data))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

const BLOCKS: &str = "model.layers.0.mlp.experts.gate_up_proj_blocks";
const SCALES: &str = "model.layers.0.mlp.experts.gate_up_proj_scales";

#[test]
fn the_mxfp4_fixture_runs_on_the_cpu_and_reports_the_learned_sinks() {
    let home = tempfile::tempdir().unwrap();
    let model = layerstream_tests::fixture_model("gpt_oss_mxfp4");
    assert_succeeds(&analyze(home.path(), &model, "out"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["model"]["model_type"], "gpt_oss");
    for layer in report["layers"].as_array().unwrap() {
        let sinks = &layer["attention_sinks"];
        let learned = sinks["learned_sink"].as_array().unwrap();
        assert_eq!(learned.len(), 4, "{sinks}");
        assert!(learned.iter().all(|p| p.as_f64().unwrap() > 0.0), "{sinks}");
        assert!(layer["router"]["num_experts"] == 4, "{layer}");
    }
}

#[test]
fn mxfp4_blocks_and_scales_that_do_not_fit_are_refused_naming_the_tensor() {
    let home = tempfile::tempdir().unwrap();
    // A scale tensor missing.
    let missing = copy_fixture_model("gpt_oss_mxfp4", &home.path().join("missing"));
    rewrite(&missing, |name, dtype, shape, data| {
        (name != SCALES).then_some((dtype, shape, data))
    });
    assert_fails_with(&analyze(home.path(), &missing, "a"), &[SCALES]);
    // Blocks whose shape disagrees with the scales (two groups of 16 bytes as one of 32).
    let shape = copy_fixture_model("gpt_oss_mxfp4", &home.path().join("shape"));
    rewrite(&shape, |name, dtype, shape, data| match name == BLOCKS {
        true => Some((dtype, vec![shape[0], shape[1], 1, 32], data)),
        false => Some((dtype, shape, data)),
    });
    assert_fails_with(
        &analyze(home.path(), &shape, "b"),
        &[BLOCKS, "[4, 64, 2, 16]"],
    );
    // Blocks of the wrong dtype.
    let dtype = copy_fixture_model("gpt_oss_mxfp4", &home.path().join("dtype"));
    rewrite(&dtype, |name, dtype, shape, data| match name == BLOCKS {
        true => Some((Dtype::I8, shape, data)),
        false => Some((dtype, shape, data)),
    });
    assert_fails_with(
        &analyze(home.path(), &dtype, "c"),
        &[BLOCKS, "MXFP4 blocks are U8"],
    );
}

#[test]
fn gpt_oss_configs_without_what_they_need_name_the_key() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("gpt_oss", home.path());
    edit_config(&model, |c| {
        c.remove("head_dim");
    });
    assert_fails_with(&analyze(home.path(), &model, "a"), &["head_dim"]);
    edit_config(&model, |c| {
        c.insert("head_dim".into(), 32.into());
        c.insert("swiglu_limit".into(), (-1.0).into());
    });
    assert_fails_with(&analyze(home.path(), &model, "b"), &["swiglu_limit"]);
    edit_config(&model, |c| {
        c.insert("swiglu_limit".into(), 7.0.into());
        c.insert(
            "quantization_config".into(),
            serde_json::json!({"quant_method": "fp8"}),
        );
    });
    assert_fails_with(&analyze(home.path(), &model, "c"), &["quant_method", "fp8"]);
}
