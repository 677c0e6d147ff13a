//! Issue 14: massive activations by the paper's definition. The embedded default model,
//! edited so the residual stream is the embedding at every layer (every o_proj and down_proj
//! zero): the embedding row of each sequence's first token holds 30,000 at dimension D and
//! 50 everywhere else, so that token's own median is 50 (30,000 is only 600x it) while the
//! sequence's median is that of the other tokens (small). The primary reading (the
//! sequence's median) finds exactly D at every position holding those tokens in every layer;
//! the per-token reading finds nothing; report.md says both; the independent reference
//! agrees with report.json.

mod common;

use common::planted::{PLANTED_DIM, plant_massive_rows};
use common::{assert_succeeds, layerstream};
use layerstream_tests::assert_report_matches_reference;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const D: usize = PLANTED_DIM;
const WORKLOAD: [&str; 4] = ["--num-samples", "3", "--seq-len", "256"];

/// The workload's token ids, from a saved-activations run of the unedited model.
fn workload_tokens(home: &Path) -> Vec<u32> {
    let mut args = vec!["analyze", "--layers", "0", "--points", "ln1"];
    args.extend(WORKLOAD);
    args.extend([
        "--bootstrap",
        "0",
        "--save-activations",
        "ln1",
        "--out",
        "base",
    ]);
    assert_succeeds(&layerstream(&args, home));
    let bytes = std::fs::read(home.join("base/activations/layer_0_ln1.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let ids = file.tensor("token_ids").unwrap();
    ids.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn a_large_first_token_is_massive_by_the_sequence_median_not_by_its_own() {
    let home = tempfile::tempdir().unwrap();
    let tokens = workload_tokens(home.path());
    let first: BTreeSet<u32> = tokens.chunks_exact(256).map(|s| s[0]).collect();
    let planted = tokens.iter().filter(|t| first.contains(t)).count();
    assert!(
        planted * 10 < tokens.len(),
        "the planted tokens are few: {planted}"
    );
    let model = home.path().join("planted");
    plant_massive_rows(&model, &first);
    let mut args = vec![
        "analyze",
        "--model",
        model.to_str().unwrap(),
        "--out",
        "out",
    ];
    args.extend(WORKLOAD);
    args.extend([
        "--bootstrap",
        "0",
        "--save-activations",
        "resid_post,ln1,ln2,attn_in_o",
    ]);
    let stdout = assert_succeeds(&layerstream(&args, home.path()));
    assert!(
        stdout.contains(&format!(
            "{} in 4 layer(s); per-token median reading: 0 in 0 layer(s)",
            4 * planted
        )),
        "{stdout}"
    );
    let out = home.path().join("out");
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["massive_median"], "per_sequence");
    for layer in report["layers"].as_array().unwrap() {
        let m = &layer["massive"];
        assert_eq!(m["total"], planted, "layer {}", layer["layer"]);
        assert_eq!(m["tokens"], planted);
        assert_eq!(m["dims"], serde_json::json!([[D, planted]]));
        // Each sequence's position 0; the other places are later occurrences of those tokens.
        assert_eq!(m["at_first"], 3);
        let places = ["at_first", "at_first_delimiter", "elsewhere"];
        let placed: u64 = places.iter().map(|k| m[k].as_u64().unwrap()).sum();
        assert_eq!(placed as usize, planted);
        assert_eq!(m["per_token_median"]["total"], 0);
        let entry = &m["top"][0];
        assert_eq!(entry["dim"], D);
        assert_eq!(entry["value"], 29952.0, "30,000 in bf16");
        assert_eq!(entry["token_median"], 50.0);
        assert!(
            entry["sequence_median"].as_f64().unwrap() < 29.952,
            "{entry}"
        );
        let g = &m["magnitudes"];
        assert_eq!(g["top1"], 29952.0);
        assert!(g["median"].as_f64().unwrap() < 1.0, "{g}");
    }
    assert_eq!(report["massive_activations"]["total"], 4 * planted);
    assert_eq!(report["massive_activations"]["per_token_median_total"], 0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("per-token reading: 0 in 0 layer(s)"), "{md}");
    assert!(md.contains("| top-1 | top-2 | top-3 | median |"), "{md}");
    for ext in ["svg", "png"] {
        let plot = out.join(format!("plots/massive_magnitudes.{ext}"));
        assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
    }
    let coverage = assert_report_matches_reference(&out, 6.0);
    assert_eq!(
        (coverage.massive_layers, coverage.by_sequence),
        (4, 4 * planted)
    );
    assert_eq!(coverage.by_token, 0);
}
