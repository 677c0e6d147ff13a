//! `analyze --per-record` through the CLI: each record one sequence of its own length. The
//! statistics themselves are checked record by record in `tests/record_statistics.rs` (CPU)
//! and `gpu_per_record.rs` (CUDA); here the report's massive activations sit at each
//! record's own first token, the report says what the records were, a second run resumes
//! with nothing to compute, and what is not supported yet is refused with a reason.

mod common;

use common::planted::{PLANTED_DIM, default_model, plant_massive_rows};
use common::{assert_fails_with, assert_succeeds, layerstream};
use layerstream_runtime::Model;
use layerstream_runtime::data::TextTokenizer;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const D: usize = PLANTED_DIM;
/// Records of different lengths (each at least 4 tokens, so its median is not the planted
/// row's).
const TEXTS: [&str; 4] = [
    "The river ran past the old mill and into the town, where the bells rang.",
    "Once upon a time there were three bears.",
    "A short one here.",
    "Layer by layer the weights arrive, and every record goes through each before the next one comes; nothing is padded and nothing is packed.",
];

/// Each record's first token as the CLI tokenizes it (the tokenizer's prefix, then the text).
fn first_tokens() -> Vec<u32> {
    let model = Model::open(&default_model()).unwrap();
    let tokenizer = TextTokenizer::load(&model.dir, &model.config).unwrap();
    TEXTS
        .iter()
        .map(|text| {
            let ids = tokenizer.encode(text).unwrap();
            tokenizer.sequence_prefix.first().copied().unwrap_or(ids[0])
        })
        .collect()
}

fn write_records(path: &Path) {
    let lines: Vec<String> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "text": t}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn massive_activations_sit_at_each_records_own_first_token() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("records.jsonl");
    write_records(&data);
    let firsts = first_tokens();
    let planted: BTreeSet<u32> = firsts.iter().copied().collect();
    let model = home.path().join("planted");
    plant_massive_rows(&model, &planted);
    let args = [
        "analyze",
        "--per-record",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--bootstrap",
        "0",
        "--out",
        "out",
    ];
    let run = layerstream(&args, home.path());
    let stdout = assert_succeeds(&run);
    let stderr = common::stderr(&run);
    assert!(stderr.contains("4 records ("), "{stderr}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("out/report.json")).unwrap())
            .unwrap();
    let records = &report["data"]["per_record"];
    assert_eq!(report["data"]["num_sequences"], 4);
    assert_eq!(records["truncated"], 0);
    assert!(records["shortest"].as_u64().unwrap() >= 4, "{records}");
    assert!(records["longest"].as_u64().unwrap() > records["shortest"].as_u64().unwrap());
    // A planted token inside a record is massive there too: count every occurrence.
    let tokenizer_model = Model::open(&default_model()).unwrap();
    let tokenizer = TextTokenizer::load(&tokenizer_model.dir, &tokenizer_model.config).unwrap();
    let occurrences: usize = TEXTS
        .iter()
        .map(|t| {
            let mut ids = tokenizer.sequence_prefix.clone();
            ids.extend(tokenizer.encode(t).unwrap());
            ids.iter().filter(|id| planted.contains(id)).count()
        })
        .sum();
    assert_eq!(
        records["tokens"].as_u64().unwrap() as usize,
        TEXTS
            .iter()
            .map(|t| tokenizer.sequence_prefix.len() + tokenizer.encode(t).unwrap().len())
            .sum::<usize>(),
        "real tokens only"
    );
    for layer in report["layers"].as_array().unwrap() {
        let m = &layer["massive"];
        assert_eq!(m["total"], occurrences, "layer {}: {m}", layer["layer"]);
        assert_eq!(m["at_first"], 4, "each record's position 0: {m}");
        let mut first_seen = BTreeSet::new();
        for entry in m["top"].as_array().unwrap() {
            assert_eq!(entry["dim"], D);
            let (sequence, position) = (
                entry["sequence"].as_u64().unwrap() as usize,
                entry["position"].as_u64().unwrap(),
            );
            assert!(planted.contains(&(entry["token_id"].as_u64().unwrap() as u32)));
            if position == 0 {
                assert_eq!(entry["position_kind"], "first", "{entry}");
                assert_eq!(entry["token_id"], firsts[sequence], "{entry}");
                first_seen.insert(sequence);
            }
        }
        assert_eq!(first_seen, (0..4).collect(), "layer {}", layer["layer"]);
    }
    assert!(stdout.contains("massive activations"), "{stdout}");
    // The same command again: every layer is finished, the report the same.
    let again = assert_succeeds(&layerstream(&args, home.path()));
    assert!(again.contains("no layer left to compute"), "{again}");
    let second: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("out/report.json")).unwrap())
            .unwrap();
    assert_eq!(second["layers"], report["layers"]);
}

#[test]
fn long_records_are_cut_and_unsupported_combinations_refused() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("records.jsonl");
    write_records(&data);
    let data = data.to_str().unwrap();
    let base = [
        "analyze",
        "--per-record",
        "--data",
        data,
        "--bootstrap",
        "0",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        layerstream(&args, home.path())
    };
    let run = with(&["--max-length", "8", "--layers", "0", "--out", "cut"]);
    assert_succeeds(&run);
    let report: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("cut/report.json")).unwrap())
            .unwrap();
    assert_eq!(report["data"]["per_record"]["longest"], 8);
    assert_eq!(report["data"]["per_record"]["max_length"], 8);
    assert!(report["data"]["per_record"]["truncated"].as_u64().unwrap() >= 3);
    assert_fails_with(
        &with(&["--save-activations", "resid_post", "--out", "a"]),
        &["--save-activations with --per-record is not supported yet"],
    );
    assert_fails_with(
        &with(&["--shard", "0/2", "--out", "b"]),
        &["--per-record with --shard is not supported yet"],
    );
    assert_fails_with(
        &with(&["--devices", "0,1", "--out", "e"]),
        &["--per-record with --devices is not supported yet"],
    );
    let empty = home.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let mut args = vec!["analyze", "--per-record", "--data", empty.to_str().unwrap()];
    args.extend(["--out", "c"]);
    assert_fails_with(
        &layerstream(&args, home.path()),
        &["no records (empty data)"],
    );
    let missing = home.path().join("missing.jsonl");
    std::fs::write(&missing, "{\"body\": \"text under another name\"}\n").unwrap();
    let mut args = vec![
        "analyze",
        "--per-record",
        "--data",
        missing.to_str().unwrap(),
    ];
    args.extend(["--out", "d"]);
    assert_fails_with(
        &layerstream(&args, home.path()),
        &["record 0 (line 1)", "no field \"text\"", "--text-field"],
    );
}
