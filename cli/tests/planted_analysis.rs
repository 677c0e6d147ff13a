//! The analysis finds exactly what is planted in the embedded default model. Edits: for
//! each planted dimension D the residual stream is zero at D everywhere (embedding column,
//! o_proj and down_proj rows D), except at the planted tokens, whose embedding is 20000 at D.
//! So ln1/ln2 at D are far above 6 exactly at those tokens' positions (in the layers whose
//! norm weight at D is not zero) and zero elsewhere, and resid_post holds massive
//! activations at D there.
//!
//! - D1 = 10: frequent tokens (>= 8% of positions), every layer: an outlier in all readings.
//! - D2 = 20: one rare token (< 6% of positions), every layer: never an outlier.
//! - D3 = 30: D1's tokens, ln1 and ln2 of layer 0 only: 2 of 8 sublayers, 1 of 4 layers:
//!   exactly 25% in both readings (the edge, counted in).
//! - D4 = 40: D1's tokens, ln1 of layer 0 only: 1 of 8 sublayers (out), 1 of 4 layers (in).

mod common;

use common::{assert_succeeds, layerstream};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

const WORKLOAD: [&str; 4] = ["--num-samples", "4", "--seq-len", "512"];
const D1: usize = 10;
const D2: usize = 20;
const D3: usize = 30;
const D4: usize = 40;
const HIDDEN: usize = 128;

fn bf16(value: f32) -> [u8; 2] {
    ((value.to_bits() >> 16) as u16).to_le_bytes()
}

/// Token ids of the workload, from a saved-activations file of the unedited model.
fn workload_tokens(home: &Path) -> Vec<u32> {
    let mut args = vec![
        "analyze",
        "--layers",
        "0",
        "--points",
        "ln1",
        "--bootstrap",
        "0",
    ];
    args.extend(WORKLOAD);
    args.extend(["--save-activations", "ln1", "--out", "base"]);
    assert_succeeds(&layerstream(&args, home));
    let bytes = std::fs::read(home.join("base/activations/layer_0_ln1.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let ids = file.tensor("token_ids").unwrap();
    assert_eq!(ids.shape(), &[4 * 512]);
    let values = file.tensor("activations").unwrap();
    assert_eq!(values.shape(), &[4 * 512, HIDDEN]);
    ids.data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Copies the default model into `dir` with the edits of the module docs.
fn plant(dir: &Path, frequent: &[u32], rare: u32) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default-model");
    std::fs::create_dir_all(dir).unwrap();
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.shape().to_vec(), view.data().to_vec())))
        .collect();
    let set = |t: &mut (Vec<usize>, Vec<u8>), index: usize, value: f32| {
        t.1[2 * index..2 * index + 2].copy_from_slice(&bf16(value));
    };
    let planted = [D1, D2, D3, D4];
    let embed = tensors.get_mut("model.embed_tokens.weight").unwrap();
    let vocab = embed.0[0];
    for token in 0..vocab {
        for d in planted {
            let on = match d {
                D2 => token as u32 == rare,
                _ => frequent.contains(&(token as u32)),
            };
            set(embed, token * HIDDEN + d, if on { 20000.0 } else { 0.0 });
        }
    }
    for layer in 0..4 {
        let prefix = format!("model.layers.{layer}");
        for (name, columns) in [("self_attn.o_proj", 128), ("mlp.down_proj", 352)] {
            let t = tensors.get_mut(&format!("{prefix}.{name}.weight")).unwrap();
            for d in planted {
                for c in 0..columns {
                    set(t, d * columns + c, 0.0);
                }
            }
        }
        let ln1 = [
            (D1, 1.0),
            (D2, 1.0),
            (D3, (layer == 0) as u8 as f32),
            (D4, (layer == 0) as u8 as f32),
        ];
        let ln2 = [
            (D1, 1.0),
            (D2, 1.0),
            (D3, (layer == 0) as u8 as f32),
            (D4, 0.0),
        ];
        for (name, weights) in [("input_layernorm", ln1), ("post_attention_layernorm", ln2)] {
            let t = tensors.get_mut(&format!("{prefix}.{name}.weight")).unwrap();
            for (d, w) in weights {
                set(t, d, w);
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape.clone(), data)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn dims(reading: &Value) -> Vec<usize> {
    reading["dims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dim"].as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn the_report_finds_exactly_the_planted_features_and_massive_activations() {
    let home = tempfile::tempdir().unwrap();
    let tokens = workload_tokens(home.path());
    // The most frequent tokens after position 0 until they cover >= 8%; a rare one for D2.
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, &t) in tokens.iter().enumerate() {
        if i % 512 != 0 {
            *counts.entry(t).or_insert(0) += 1;
        }
    }
    let mut by_count: Vec<(u32, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut frequent = Vec::new();
    let mut covered = 0;
    for &(t, n) in &by_count {
        if covered * 100 >= 8 * tokens.len() {
            break;
        }
        frequent.push(t);
        covered += n;
    }
    let rare = by_count
        .iter()
        .find(|(_, n)| *n >= 5 && *n * 100 < 2 * tokens.len())
        .unwrap()
        .0;
    let positions = |set: &[u32]| tokens.iter().filter(|t| set.contains(t)).count();
    let (frequent_positions, rare_positions) = (positions(&frequent), positions(&[rare]));

    let model = home.path().join("planted");
    plant(&model, &frequent, rare);
    let mut args = vec![
        "analyze",
        "--model",
        model.to_str().unwrap(),
        "--out",
        "planted-out",
    ];
    args.extend(WORKLOAD);
    args.extend(["--bootstrap", "200", "--seed", "7"]);
    args.extend(["--save-activations", "ln1,ln2,attn_in_o,resid_post"]);
    let out = assert_succeeds(&layerstream(&args, home.path()));
    assert!(out.contains("outlier features at ln1+ln2"), "{out}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(home.path().join("planted-out/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["schema_version"], 3);
    let ln = &report["outlier_features"][0];
    assert_eq!(ln["points"], serde_json::json!(["ln1", "ln2"]));
    let readings = ln["readings"].as_array().unwrap();
    let names: Vec<(String, String)> = readings
        .iter()
        .map(|r| {
            (
                r["layer_reading"].as_str().unwrap().into(),
                r["position_reading"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(names[0], ("sublayers".into(), "union".into()));
    for r in readings {
        let expect = match r["layer_reading"].as_str().unwrap() {
            "sublayers" => vec![D1, D3],
            _ => vec![D1, D3, D4],
        };
        assert_eq!(
            dims(r),
            expect,
            "{} / {}",
            r["layer_reading"],
            r["position_reading"]
        );
    }
    // D1's numbers under the primary reading: all 8 sublayers; its positions exactly.
    let total = tokens.len() as f64;
    let d1 = &readings[0]["dims"][0];
    assert_eq!(d1["layer_fraction"], 1.0);
    assert!(
        (d1["position_fraction"].as_f64().unwrap() - frequent_positions as f64 / total).abs()
            < 1e-12
    );
    assert_eq!(d1["sign_consistency"], 1.0);
    assert!(d1["max_abs"].as_f64().unwrap() > 6.0);
    assert_eq!(d1["layer_agreement"], 1.0);
    assert_eq!(d1["selection_probability"], 1.0);
    let d3 = &readings[0]["dims"][1];
    assert_eq!(d3["layer_fraction"], 0.25, "2 of 8 sublayers: the edge");
    assert_eq!(
        readings[2]["dims"][2]["layer_fraction"], 0.25,
        "D4: 1 of 4 layers"
    );
    // D2 is in every layer but at too few positions under every reading.
    assert!(rare_positions * 100 < 6 * tokens.len());
    assert_eq!(ln["classification"]["kind"], "systematic");
    assert_eq!(ln["cross_batch"]["batches"].as_array().unwrap().len(), 2);

    // Massive activations: resid_post holds 20000 at every planted position and dimension.
    for layer in report["layers"].as_array().unwrap() {
        let m = &layer["massive"];
        assert_eq!(
            m["total"].as_u64().unwrap() as usize,
            3 * frequent_positions + rare_positions,
            "layer {}",
            layer["layer"]
        );
        assert_eq!(
            m["tokens"].as_u64().unwrap() as usize,
            frequent_positions + rare_positions
        );
        // Both readings find them: the planted tokens' other dimensions are small too.
        assert_eq!(m["per_token_median"]["total"], m["total"]);
        assert_eq!(m["per_token_median"]["tokens"], m["tokens"]);
        // A dense model: no expert attribution.
        assert_eq!(m["attributed"], 0);
        assert_eq!(m["dominant_experts"], serde_json::json!([]));
        for entry in m["top"].as_array().unwrap() {
            assert!(entry.get("attribution").is_none(), "{entry}");
            let dim = entry["dim"].as_u64().unwrap() as usize;
            let id = entry["token_id"].as_u64().unwrap() as u32;
            assert!([D1, D2, D3, D4].contains(&dim));
            assert!(frequent.contains(&id) || id == rare);
            assert_eq!(
                tokens[entry["sequence"].as_u64().unwrap() as usize * 512
                    + entry["position"].as_u64().unwrap() as usize],
                id
            );
        }
    }
    // The independent reference agrees, on the planted features and massive activations.
    let coverage =
        layerstream_tests::assert_report_matches_reference(&home.path().join("planted-out"), 6.0);
    assert_eq!(
        coverage.by_sequence,
        4 * (3 * frequent_positions + rare_positions)
    );
    assert_eq!(coverage.outlier_groups[0].1, vec![D1, D3]);
    // report.md and the plots are written.
    let md = std::fs::read_to_string(home.path().join("planted-out/report.md")).unwrap();
    assert!(md.contains("**systematic**"), "{md}");
    for plot in [
        "outlier_heatmap_ln1_ln2",
        "max_abs_and_kurtosis",
        "massive_magnitudes",
    ] {
        for ext in ["svg", "png"] {
            let path = home.path().join(format!("planted-out/plots/{plot}.{ext}"));
            assert!(
                std::fs::metadata(&path).unwrap().len() > 1000,
                "{}",
                path.display()
            );
        }
    }

    // The bootstrap is fixed by its seed: the same command gives the same bytes; another
    // seed other intervals.
    let first = std::fs::read(home.path().join("planted-out/report.json")).unwrap();
    let mut again = args.clone();
    again.push("--restart");
    assert_succeeds(&layerstream(&again, home.path()));
    assert_eq!(
        first,
        std::fs::read(home.path().join("planted-out/report.json")).unwrap()
    );
    let mut other = again.clone();
    let seed = other.iter().position(|a| *a == "7").unwrap();
    other[seed] = "8";
    assert_succeeds(&layerstream(&other, home.path()));
    assert_ne!(
        first,
        std::fs::read(home.path().join("planted-out/report.json")).unwrap()
    );

    // compare: one row per analysis.
    let compare = assert_succeeds(&layerstream(
        &["compare", "base", "planted-out", "--out", "cmp"],
        home.path(),
    ));
    assert!(compare.contains("systematic"), "{compare}");
    assert!(home.path().join("cmp/compare.png").exists());
}
