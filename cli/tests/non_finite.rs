//! Issue 15 item 3: NaN and infinite activations are shown, warned about and named where
//! they first appear; config values that would make them are refused.

mod common;

use common::{assert_fails_with, assert_succeeds, copy_fixture_model, docs, layerstream, stderr};
use std::path::Path;

/// Sets element 0 of `tensor` in `dir/model.safetensors` to NaN.
fn plant_nan(dir: &Path, tensor: &str) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    let (_, dtype, _, data) = owned.iter_mut().find(|t| t.0 == tensor).unwrap();
    let nan: &[u8] = match dtype {
        safetensors::Dtype::F32 => &[0x00, 0x00, 0xc0, 0x7f],
        safetensors::Dtype::BF16 => &[0xc0, 0x7f],
        safetensors::Dtype::F16 => &[0x00, 0x7e],
        other => panic!("unexpected dtype {other:?}"),
    };
    data[..nan.len()].copy_from_slice(nan);
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn a_nan_weight_is_shown_warned_about_and_located() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    plant_nan(&model, "model.layers.1.post_attention_layernorm.weight");
    let out = home.path().join("out");
    let (model, data) = (model.display().to_string(), docs());
    let args = common::small_analyze_args(&model, &data, out.to_str().unwrap());
    let output = layerstream(&args, home.path());
    let table = assert_succeeds(&output);
    assert!(table.contains("NaN/Inf"), "the table shows them:\n{table}");
    let err = stderr(&output);
    assert!(
        err.contains("warning:") && err.contains("first at layer 1 ln2"),
        "warned with the first layer and point:\n{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let places = report["non_finite"]["places"].as_array().unwrap();
    assert_eq!(places[0]["layer"], 1);
    assert_eq!(places[0]["point"], "ln2");
    // ln2 of layer 1 has NaN at dimension 0 of every token (2 x 32 of them).
    assert_eq!(places[0]["count"], 64);
    assert!(report["non_finite"]["total"].as_u64().unwrap() > 64);
    // Layer 0 is untouched and its statistics are as usual.
    assert_eq!(report["layers"][0]["points"]["ln2"]["non_finite"], 0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## NaN and infinite values") && md.contains("NaN/Inf**"),
        "{md}"
    );
}

#[test]
fn a_healthy_run_reports_no_non_finite_values() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let (model, data) = (common::fixture_model_path("llama3"), docs());
    let output = layerstream(
        &common::small_analyze_args(&model, &data, out.to_str().unwrap()),
        home.path(),
    );
    let table = assert_succeeds(&output);
    assert!(!table.contains("NaN/Inf ") && !stderr(&output).contains("warning:"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["non_finite"]["total"], 0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("NaN and infinite"));
}

#[test]
fn config_values_that_make_rope_nan_are_refused() {
    let home = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("rope_theta", serde_json::json!(0)),
        ("rope_theta", serde_json::json!(-10000.0)),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
    ] {
        let model = copy_fixture_model("llama3", &home.path().join(format!("{key}{value}")));
        common::edit_config(&model, |c| {
            c.insert(key.to_string(), value.clone());
        });
        let output = layerstream(
            &["inspect", "--model", model.to_str().unwrap()],
            home.path(),
        );
        assert_fails_with(&output, &[key, "config.json", "positive number"]);
    }
}
