//! Defects a fault sweep found (issue 15), each pinned through the binary.

mod common;

use common::{assert_succeeds, docs, fixture_model_path, layerstream, stdout};
use std::path::Path;

fn analyze(home: &Path, fixture: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let (model, data) = (fixture_model_path(fixture), docs());
    let out = out.to_str().unwrap();
    let mut args = common::small_analyze_args(&model, &data, out);
    args.extend_from_slice(extra);
    layerstream(&args, home)
}

/// Item 4: `--points router` on a MoE model with a dense layer finished every layer and then
/// failed reading the dense layer's (never written) summary.
#[test]
fn router_points_on_a_model_with_a_dense_layer_write_the_report() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("router");
    // qwen2_moe fixture: layer 0 is dense, layer 1 MoE.
    assert_succeeds(&analyze(
        home.path(),
        "qwen2_moe",
        &out,
        &["--points", "router"],
    ));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(
        layers[0]["router"].is_null(),
        "the dense layer has no router"
    );
    assert!(
        !layers[1]["router"].is_null(),
        "the MoE layer's routing is reported"
    );
    // status agrees that the run is finished, and the same command does nothing more.
    let status = layerstream(&["status", out.to_str().unwrap()], home.path());
    let status = format!("{}{}", stdout(&status), common::stderr(&status));
    assert!(!status.contains("interrupted"), "{status}");
    assert_succeeds(&analyze(
        home.path(),
        "qwen2_moe",
        &out,
        &["--points", "router"],
    ));
}

/// Item 11: the layer statistics files of identical runs are identical (safetensors wrote
/// its metadata map in hash order).
#[test]
fn identical_runs_write_identical_layer_files_with_a_sorted_header() {
    let home = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let out = home.path().join(format!("run{i}"));
            assert_succeeds(&analyze(home.path(), "olmoe", &out, &[]));
            std::fs::read(out.join("layers").join("layer_0.safetensors")).unwrap()
        })
        .collect();
    assert!(files.windows(2).all(|w| w[0] == w[1]), "layer files differ");
    let len = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&files[0][8..8 + len]).unwrap();
    let (seq_len, threshold) = (header.find("\"seq_len\""), header.find("\"threshold\""));
    assert!(seq_len.unwrap() < threshold.unwrap(), "{header}");
}

/// Item 16: a resume with nothing left printed "... through 0 layers in 0.00 s
/// (2965966691 tokens/s)".
#[test]
fn a_resume_with_nothing_left_says_so_instead_of_a_throughput() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("done");
    assert_succeeds(&analyze(home.path(), "llama3", &out, &[]));
    let again = analyze(home.path(), "llama3", &out, &[]);
    let printed = assert_succeeds(&again);
    let text = format!("{printed}{}", stdout(&again));
    assert!(text.contains("no layer left to compute"), "{text}");
    assert!(!text.contains("through 0 layers"), "{text}");
}
