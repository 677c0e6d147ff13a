//! report.json against the independent reference (`reference_analysis.rs`) computed from
//! the activations the same run saved.

use crate::reference_analysis::{Found, SavedActivations, massive_reference, outlier_reference};
use serde_json::Value;
use std::path::Path;

/// What a comparison covered, so a test can require that it was not empty.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReferenceCoverage {
    /// Layers whose massive activations were compared.
    pub massive_layers: usize,
    /// Massive activations by the sequence's median, over those layers.
    pub by_sequence: usize,
    /// By the token's median.
    pub by_token: usize,
    /// Outlier groups compared, with the dimensions of their primary reading.
    pub outlier_groups: Vec<(Vec<String>, Vec<usize>)>,
}

fn listed(entries: &Value) -> Vec<Found> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap() as usize;
            let value = e["value"].as_f64().unwrap() as f32;
            (n("sequence"), n("position"), n("dim"), value)
        })
        .collect()
}

fn assert_close(what: &str, got: f64, expect: f64) {
    assert!(
        (got - expect).abs() <= 1e-6 * expect.abs().max(1e-30),
        "{what}: report {got}, reference {expect}"
    );
}

/// Asserts that `OUT/report.json` says what the reference computes from `OUT/activations`
/// (`resid_post` of every analysed layer for massive activations, every point of each
/// outlier group), with outlier threshold `threshold`; returns what was compared.
pub fn assert_report_matches_reference(out: &Path, threshold: f32) -> ReferenceCoverage {
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let layers: Vec<usize> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_u64().unwrap() as usize)
        .collect();
    let mut coverage = ReferenceCoverage::default();
    for entry in report["layers"].as_array().unwrap() {
        let m = &entry["massive"];
        if m.is_null() {
            continue;
        }
        let layer = entry["layer"].as_u64().unwrap() as usize;
        let r = massive_reference(&SavedActivations::read(out, layer, "resid_post"));
        let at = |what: &str| format!("layer {layer} {what}");
        assert_eq!(m["total"], r.by_sequence.len(), "{}", at("total"));
        assert_eq!(m["tokens"], r.tokens, "{}", at("tokens"));
        let top = listed(&m["top"]);
        assert_eq!(top, r.by_sequence[..top.len()], "{}", at("largest"));
        assert_eq!(top.len(), r.by_sequence.len().min(20), "{}", at("listed"));
        let p = &m["per_token_median"];
        assert_eq!(p["total"], r.by_token.len(), "{}", at("per-token total"));
        assert_eq!(p["tokens"], r.tokens_by_token, "{}", at("per-token tokens"));
        let top = listed(&p["top"]);
        assert_eq!(top, r.by_token[..top.len()], "{}", at("per-token largest"));
        for (k, name) in ["top1", "top2", "top3", "median"].iter().enumerate() {
            let got = m["magnitudes"][name].as_f64().unwrap();
            assert_close(&at(name), got, r.magnitudes[k]);
        }
        coverage.massive_layers += 1;
        coverage.by_sequence += r.by_sequence.len();
        coverage.by_token += r.by_token.len();
    }
    for group in report["outlier_features"].as_array().unwrap() {
        let points: Vec<String> = group["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        // A hybrid model's attn_in_o group covers the layers of one kind of mixer.
        let of: Vec<usize> = match group["layer_indices"].as_array() {
            Some(of) => of.iter().map(|l| l.as_u64().unwrap() as usize).collect(),
            None => layers.clone(),
        };
        let activations: Vec<Vec<SavedActivations>> = of
            .iter()
            .map(|&l| {
                points
                    .iter()
                    .map(|p| SavedActivations::read(out, l, p))
                    .collect()
            })
            .collect();
        let expect = outlier_reference(&activations, threshold);
        let readings = group["readings"].as_array().unwrap();
        let order = [
            ("sublayers", "union"),
            ("sublayers", "mean"),
            ("layers", "union"),
            ("layers", "mean"),
        ];
        assert_eq!(readings.len(), 4);
        for (k, reading) in readings.iter().enumerate() {
            assert_eq!(
                (
                    reading["layer_reading"].as_str().unwrap(),
                    reading["position_reading"].as_str().unwrap()
                ),
                order[k]
            );
            let dims: Vec<usize> = reading["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["dim"].as_u64().unwrap() as usize)
                .collect();
            assert_eq!(dims, expect[k], "{points:?} reading {:?}", order[k]);
        }
        coverage.outlier_groups.push((points, expect[0].clone()));
    }
    coverage
}
