//! The analysis names the expert that produces planted massive activations. Edit of a MoE
//! fixture (`plant_massive_expert`): in layer L, expert E's (the busiest one's) up_proj
//! becomes its gate_proj (so every intermediate value `silu(z) * z` is >= 0) and its
//! down_proj row D becomes a large constant, so every token routed to E gets a large positive
//! value at D in `mlp_out` and `resid_post`, far above 1000x its token's median: massive
//! activations made by expert E.
//!
//! Checked for OLMoE (routed experts only) and Qwen2-MoE (with a gated shared expert): every
//! attributed value of layer L sits at D and is dominated by E, E is among its token's
//! experts, the contributions plus the shared expert's add up to the `mlp_out` the forward
//! pass saved, and the report does not depend on the micro-batch size or on layer splitting.

mod common;

use common::{assert_succeeds, copy_fixture_model, layerstream};
use layerstream_tests::reference_analysis::SavedActivations;
use layerstream_tests::{PLANTED_MASSIVE_DIM as DIM, plant_massive_expert};
use serde_json::Value;
use std::path::Path;

const DOWN_VALUE: f32 = 200.0;
const SEQ_LEN: usize = 64;

fn analyze(home: &Path, model: &Path, out: &str, extra: &[&str]) -> Value {
    let model = model.display().to_string();
    let mut args = vec![
        "analyze",
        "--model",
        &model,
        "--device",
        "cpu",
        "--num-samples",
        "8",
        "--seq-len",
        "64",
        "--bootstrap",
        "20",
        "--out",
        out,
    ];
    args.extend(extra);
    let output = layerstream(&args, home);
    assert_succeeds(&output);
    let text = std::fs::read_to_string(home.join(out).join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `(sequences, seq_len, hidden)` f32 values of saved activations.
fn saved(home: &Path, out: &str, layer: usize, point: &str) -> (Vec<usize>, Vec<f32>) {
    let saved = SavedActivations::read(&home.join(out), layer, point);
    (
        vec![saved.sequences, saved.seq_len, saved.width],
        saved.values,
    )
}

/// The expert of `layer` most tokens are routed to in the unedited model (the edit does
/// not change the routing of its own layer).
fn busiest_expert(home: &Path, model: &Path, layer: usize) -> usize {
    let report = analyze(home, model, "baseline", &[]);
    let counts = report["layers"][layer]["router"]["tokens_per_expert"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect::<Vec<_>>();
    (0..counts.len()).max_by_key(|&e| counts[e]).unwrap()
}

fn check_fixture(fixture: &str, layer: usize, split_ram: Option<&str>) {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model(fixture, home.path());
    let expert = busiest_expert(home.path(), &model, layer);
    plant_massive_expert(&model, layer, expert, DOWN_VALUE);
    let save = ["--save-activations", "mlp_out,ln1,ln2,attn_in_o,resid_post"];
    let report = analyze(home.path(), &model, "out", &save);
    // The independent reference agrees on the planted MoE massive activations.
    let coverage =
        layerstream_tests::assert_report_matches_reference(&home.path().join("out"), 6.0);
    assert!(coverage.by_sequence >= 10, "{fixture}: {coverage:?}");
    let massive = &report["layers"][layer]["massive"];
    let listed = massive["top"].as_array().unwrap();
    assert!(
        listed.len() >= 10,
        "{fixture}: the planted expert makes massive activations: {massive}"
    );
    assert_eq!(massive["attributed"], listed.len());
    assert_eq!(
        massive["dominant_experts"],
        serde_json::json!([[expert, listed.len()]]),
        "{fixture}: expert {expert} dominates every listed value"
    );
    let (shape, mlp_out) = saved(home.path(), "out", layer, "mlp_out");
    let hidden = shape[2];
    for entry in listed {
        assert_eq!(entry["dim"], DIM);
        let value = entry["value"].as_f64().unwrap();
        let attribution = &entry["attribution"];
        let experts = attribution["experts"].as_array().unwrap();
        assert_eq!(experts[0]["expert"], expert, "{entry}");
        assert!(experts[0]["contribution"].as_f64().unwrap() > 0.9 * value);
        let routed: f64 = experts
            .iter()
            .map(|e| e["contribution"].as_f64().unwrap())
            .sum();
        let shared = attribution["shared_expert"].as_f64();
        assert_eq!(shared.is_some(), fixture == "qwen2_moe", "{entry}");
        let block = routed + shared.unwrap_or(0.0);
        let (s, p) = (
            entry["sequence"].as_u64().unwrap() as usize,
            entry["position"].as_u64().unwrap() as usize,
        );
        let forward = mlp_out[(s * SEQ_LEN + p) * hidden + DIM] as f64;
        assert!(
            (block - forward).abs() <= 1e-4 * forward.abs(),
            "{fixture}: contributions add up to {block}, the forward pass's mlp_out is {forward}"
        );
        let residual = attribution["residual"].as_f64().unwrap();
        assert!(
            (value - block - residual).abs() <= 1e-6 * value.abs() + 1e-3,
            "{entry}"
        );
        assert!(residual.abs() < 0.01 * value, "{entry}");
    }
    let markdown = std::fs::read_to_string(home.path().join("out/report.md")).unwrap();
    assert!(
        markdown.contains(&format!(
            "| {layer} | {} | {expert} ({}) |",
            listed.len(),
            listed.len()
        )),
        "{markdown}"
    );

    // One sequence per micro-batch: the same report.
    let small = analyze(
        home.path(),
        &model,
        "small",
        &["--micro-batch-tokens", "64"],
    );
    assert_eq!(small, report, "{fixture}: micro-batches of one sequence");
    if let Some(ram) = split_ram {
        let split = analyze(home.path(), &model, "split", &["--ram", ram]);
        assert_eq!(split, report, "{fixture}: split into expert groups");
    }
}

#[test]
fn olmoe_massive_activations_are_attributed_to_the_planted_expert() {
    check_fixture("olmoe", 0, Some("400KiB"));
}

#[test]
fn qwen2_moe_attribution_includes_the_shared_expert() {
    check_fixture("qwen2_moe", 1, None);
}

#[test]
fn values_carried_from_an_earlier_layer_are_attributed_to_the_residual() {
    // Planted in OLMoE's layer 0; layer 1 (also MoE) holds the same tokens' values at D,
    // brought in by the residual stream: attributed, no expert dominates.
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("olmoe", home.path());
    let expert = busiest_expert(home.path(), &model, 0);
    plant_massive_expert(&model, 0, expert, DOWN_VALUE);
    let report = analyze(home.path(), &model, "out", &[]);
    let carried = &report["layers"][1]["massive"];
    let listed = carried["top"].as_array().unwrap();
    assert!(listed.len() >= 10, "{carried}");
    assert_eq!(carried["attributed"], listed.len());
    assert_eq!(carried["dominant_experts"], serde_json::json!([]));
    for entry in listed {
        let value = entry["value"].as_f64().unwrap();
        let residual = entry["attribution"]["residual"].as_f64().unwrap();
        assert!(residual > 0.5 * value, "{entry}");
    }
}
