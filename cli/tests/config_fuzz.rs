//! Fuzzed config.json (issue 15): every key of three families' configs set, one at a time,
//! to values a damaged or hand-edited file holds (zero, negative, huge, fractional, wrong
//! types), plus seeded random pairs of such edits. `inspect` must accept or refuse each with
//! exit 1 and a message naming config.json, within seconds, never panicking or aborting;
//! a config it accepts must run a tiny analysis that either succeeds or is refused cleanly,
//! and any NaN or infinite activation it meets must be warned about, never silent.

mod common;

use common::{copy_fixture_model, docs, layerstream, stderr};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Values a damaged config holds.
fn extreme_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(-1),
        json!(1_000_000_000_000u64),
        json!(u64::MAX),
        json!(0.5),
        json!("64"),
        Value::Null,
        json!([]),
        json!({}),
    ]
}

/// SplitMix64, for reproducible pairs of edits.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Outcome {
    accepted: usize,
    refused: usize,
    analysed: usize,
}

/// Runs `inspect` (and, when accepted, a tiny `analyze`) on `model` with `edits` applied.
fn check(
    home: &Path,
    model: &Path,
    original: &Value,
    edits: &[(String, Value)],
    tally: &mut Outcome,
) {
    let mut config = original.clone();
    for (key, value) in edits {
        config[key.as_str()] = value.clone();
    }
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let what = format!("{edits:?}");
    let started = Instant::now();
    let output = layerstream(&["inspect", "--model", model.to_str().unwrap()], home);
    let err = stderr(&output);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{what}: inspect took {:?}",
        started.elapsed()
    );
    assert!(!err.contains("panicked"), "{what}: panicked\n{err}");
    match output.status.code() {
        Some(0) => tally.accepted += 1,
        Some(1) => {
            assert!(
                err.contains("config.json"),
                "{what}: the error does not name config.json\n{err}"
            );
            tally.refused += 1;
            return;
        }
        other => panic!("{what}: inspect ended with {other:?}\n{err}"),
    }
    let out = home.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let (model_text, data) = (model.display().to_string(), docs());
    let args = [
        "analyze",
        "--model",
        &model_text,
        "--data",
        &data,
        "--device",
        "cpu",
        "--num-samples",
        "1",
        "--seq-len",
        "16",
        "--bootstrap",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = layerstream(&args, home);
    let err = stderr(&output);
    assert!(!err.contains("panicked"), "{what}: analyze panicked\n{err}");
    match output.status.code() {
        Some(0) => {
            tally.analysed += 1;
            let report: Value =
                serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
            if report["non_finite"]["total"].as_u64().unwrap_or(0) > 0 {
                assert!(
                    err.contains("warning:"),
                    "{what}: NaN or Inf without a warning\n{err}"
                );
            }
        }
        Some(1) => {}
        other => panic!("{what}: analyze ended with {other:?}\n{err}"),
    }
}

#[test]
fn fuzzed_configs_are_accepted_or_refused_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let mut tally = Outcome {
        accepted: 0,
        refused: 0,
        analysed: 0,
    };
    let mut seed = 15u64;
    for family in ["llama3", "olmoe", "qwen2_moe"] {
        let model = copy_fixture_model(family, &home.path().join("models"));
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap())
                .unwrap();
        let keys: Vec<String> = original
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.as_str() != "model_type")
            .cloned()
            .collect();
        for key in &keys {
            for value in extreme_values() {
                check(
                    home.path(),
                    &model,
                    &original,
                    &[(key.clone(), value)],
                    &mut tally,
                );
            }
        }
        let values = extreme_values();
        for _ in 0..40 {
            let pick = |state: &mut u64| {
                let key = keys[next(state) as usize % keys.len()].clone();
                (key, values[next(state) as usize % values.len()].clone())
            };
            let edits = [pick(&mut seed), pick(&mut seed)];
            check(home.path(), &model, &original, &edits, &mut tally);
        }
    }
    // Both outcomes are exercised (a fuzzer that only ever sees refusals tests nothing).
    assert!(
        tally.refused > 100 && tally.accepted > 20 && tally.analysed > 10,
        "accepted {}, refused {}, analysed {}",
        tally.accepted,
        tally.refused,
        tally.analysed
    );
}
