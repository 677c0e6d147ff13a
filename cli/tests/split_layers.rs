//! Layers that do not fit whole run in parts (attention, then expert groups; a dense MLP is
//! one part): planned by `estimate` for a GPU budget, chosen by the CPU backend for --ram,
//! and always giving the report of the unsplit run.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn analyze(home: &Path, fixture: &str, out: &Path, ram: Option<&str>) -> std::process::Output {
    let model = fixture_model_path(fixture);
    let mut args = vec![
        "analyze",
        "--model",
        &model,
        "--device",
        "cpu",
        "--num-samples",
        "4",
        "--seq-len",
        "64",
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(ram) = ram {
        args.extend(["--ram", ram]);
    }
    layerstream(&args, home)
}

fn assert_split_run_matches(fixture: &str, ram: &str, expected_line: &str) {
    let home = tempfile::tempdir().unwrap();
    let whole = home.path().join("whole");
    let output = analyze(home.path(), fixture, &whole, None);
    assert_succeeds(&output);
    assert!(
        !stderr(&output).contains("parts to fit"),
        "{}",
        stderr(&output)
    );
    let split = home.path().join("split");
    let output = analyze(home.path(), fixture, &split, Some(ram));
    assert_succeeds(&output);
    assert!(
        stderr(&output).contains(expected_line),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(split.join("report.json")).unwrap(),
        std::fs::read(whole.join("report.json")).unwrap(),
        "{fixture}: the split run's report is the whole run's"
    );
}

#[test]
fn a_moe_layer_too_large_for_the_ram_budget_runs_in_expert_groups() {
    // olmoe fixture: 243 KiB of f32 weights per layer, 8 experts.
    assert_split_run_matches(
        "olmoe",
        "400KiB",
        "layer 0 runs in 3 parts to fit the budget (attention, experts 0-3, experts 4-7)",
    );
}

#[test]
fn a_dense_layer_too_large_for_the_ram_budget_runs_as_attention_then_mlp() {
    assert_split_run_matches(
        "llama3",
        "300KiB",
        "layer 0 runs in 2 parts to fit the budget (attention, mlp)",
    );
}

#[test]
fn estimate_plans_split_layers_for_a_small_gpu_budget() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("olmoe");
    let estimate = |vram: &str, json: bool| {
        let mut args = vec![
            "estimate",
            "--model",
            &model,
            "--num-samples",
            "4",
            "--seq-len",
            "64",
            "--overhead",
            "1MiB",
            "--micro-batch-tokens",
            "64",
            "--vram",
            vram,
        ];
        if json {
            args.push("--json");
        }
        assert_succeeds(&layerstream(&args, home.path()))
    };
    let roomy: Value = serde_json::from_str(&estimate("8MiB", true)).unwrap();
    assert_eq!(roomy["plan"]["split_layers"], serde_json::json!([]));
    assert_eq!(roomy["plan"]["regions"]["accumulator"], 0);
    let whole_layer = roomy["plan"]["layers"][0]["weight_bytes"].as_u64().unwrap();

    let tight: Value = serde_json::from_str(&estimate("1545KiB", true)).unwrap();
    let plan = &tight["plan"];
    assert_eq!(plan["split_layers"], serde_json::json!([0, 1]));
    let parts = plan["layers"][0]["parts"].as_array().unwrap();
    // The statistics accumulators (histogram, position bits) leave room for pairs of experts
    // at the smallest budget that fits: attention, then 4 groups of 2.
    assert_eq!(parts.len(), 5, "attention and 4 pairs of experts");
    assert_eq!(parts[0]["kind"], "attention");
    assert_eq!(parts[2]["kind"], "feed_forward");
    assert_eq!(parts[2]["first_expert"], 2);
    assert_eq!(parts[2]["end_expert"], 4);
    let largest = parts
        .iter()
        .map(|p| p["weight_bytes"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(largest < whole_layer / 4);
    assert_eq!(plan["regions"]["staging"].as_u64().unwrap(), 2 * largest);
    assert_eq!(
        plan["regions"]["accumulator"], plan["regions"]["hidden"],
        "the expert groups' sums, as large as the hidden states"
    );
    assert!(plan["peak_bytes"].as_u64().unwrap() <= 1545 << 10);

    let text = estimate("1545KiB", false);
    assert!(
        text.contains(
            "split layers     2 of 2 (0-1), each as attention, experts 0-1, experts 2-3, experts 4-5, experts 6-7"
        ),
        "{text}"
    );
}
