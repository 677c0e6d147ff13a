//! `--shard I/N` and `--shard env` (issue 20): a shard runs exactly its range of the whole
//! packed data (the formula `floor(i S / N) .. floor((i + 1) S / N)`), records the whole
//! data's fingerprint and its range, and its per-sequence results are those of the unsharded
//! run, bit for bit: what a merge of shards concatenates.

mod common;

use common::{assert_fails_with, assert_succeeds, fixture_model_path, layerstream};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn analyze(home: &Path, model: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let docs = layerstream_tests::fixture_docs();
    let mut args = vec![
        "analyze",
        "--model",
        model,
        "--data",
        docs.to_str().unwrap(),
        "--num-samples",
        "5",
        "--seq-len",
        "20",
        "--device",
        "cpu",
        "--out",
        out,
    ];
    args.extend(extra);
    layerstream(&args, home)
}

/// The per-sequence statistics tensors `(sequences, ...)` of a layer file, by name.
fn per_sequence(folder: &Path, layer: usize) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(folder.join(format!("layers/layer_{layer}.safetensors"))).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| {
            n.ends_with(".max_abs") || n.ends_with(".count_ge") || n.ends_with(".sum_abs_ge")
        })
        .map(|n| {
            let t = tensors.tensor(&n).unwrap();
            (n, t.shape().to_vec(), t.data().to_vec())
        })
        .collect()
}

#[test]
fn each_shard_is_its_range_of_the_whole_run_bit_for_bit() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("qwen3_moe");
    assert_succeeds(&analyze(home.path(), &model, "whole", &[]));
    let whole = home.path().join("whole");
    let whole_progress = read_json(&whole.join("progress.json"));
    // 5 sequences in 3 shards: 0..1, 1..3, 3..5.
    for (index, range) in [(0usize, 0..1usize), (1, 1..3), (2, 3..5)] {
        let out = format!("shard-{index}");
        let shard = format!("{index}/3");
        assert_succeeds(&analyze(home.path(), &model, &out, &["--shard", &shard]));
        let folder = home.path().join(&out);
        let report = read_json(&folder.join("report.json"));
        let data = &report["data"];
        assert_eq!(data["num_sequences"], range.len());
        assert_eq!(data["shard"]["index"], index);
        assert_eq!(data["shard"]["count"], 3);
        assert_eq!(data["shard"]["first_sequence"], range.start);
        assert_eq!(data["shard"]["total_sequences"], 5);
        let progress = read_json(&folder.join("progress.json"));
        assert_eq!(
            progress["data_fingerprint"], whole_progress["data_fingerprint"],
            "every shard records the whole data's fingerprint"
        );
        let expected = format!("{index}/3 (sequences {}..{} of 5)", range.start, range.end);
        assert_eq!(progress["settings"]["shard"], expected.as_str());
        for layer in 0..3 {
            for ((name, shape, bytes), (whole_name, whole_shape, whole_bytes)) in
                per_sequence(&folder, layer)
                    .iter()
                    .zip(per_sequence(&whole, layer))
            {
                assert_eq!(name, &whole_name);
                assert_eq!(shape[0], range.len(), "{name}");
                let row = bytes.len() / shape[0];
                assert_eq!(whole_shape[0], 5);
                assert_eq!(
                    bytes.as_slice(),
                    &whole_bytes[range.start * row..range.end * row],
                    "shard {index} layer {layer} {name}"
                );
            }
        }
    }
}

#[test]
fn score_numbers_a_shard_s_sequences_as_in_the_whole_data() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let docs = layerstream_tests::fixture_docs();
    let score = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "score",
            "--model",
            &model,
            "--data",
            docs.to_str().unwrap(),
            "--num-samples",
            "4",
            "--seq-len",
            "16",
            "--device",
            "cpu",
            "--out",
            out,
        ];
        args.extend(extra);
        assert_succeeds(&layerstream(&args, home.path()));
        read_json(&home.path().join(out).join("score.json"))
    };
    let whole = score("whole", &[]);
    let shard = score("shard", &["--shard", "1/2"]);
    assert_eq!(shard["shard"], "1/2 (sequences 2..4 of 4)");
    let sequences = shard["sequences"].as_array().unwrap();
    assert_eq!(sequences.len(), 2);
    for line in sequences {
        let i = line["sequence"].as_u64().unwrap() as usize;
        assert!(i == 2 || i == 3);
        assert_eq!(line, &whole["sequences"][i], "sequence {i}");
    }
}

#[test]
fn shard_env_reads_the_scheduler_and_bad_shards_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let docs = layerstream_tests::fixture_docs();
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "analyze",
            "--model",
            &model,
            "--data",
            docs.to_str().unwrap(),
            "--num-samples",
            "4",
            "--seq-len",
            "16",
            "--device",
            "cpu",
            "--out",
            "out",
            "--restart",
        ];
        args.extend(extra);
        common::layerstream_with_env(&args, home.path(), env)
    };
    let out = run(
        &["--shard", "env"],
        &[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ],
    );
    assert_succeeds(&out);
    let stderr = common::stderr(&out);
    assert!(
        stderr.contains("shard 1/2 (sequences 2..4 of 4) from SLURM_ARRAY_TASK_ID=1"),
        "{stderr}"
    );
    let report = read_json(&home.path().join("out/report.json"));
    assert_eq!(report["data"]["shard"]["first_sequence"], 2);
    assert_fails_with(
        &run(&["--shard", "env"], &[]),
        &["--shard env", "SLURM_ARRAY_TASK_ID"],
    );
    assert_fails_with(
        &run(&["--shard", "env"], &[("JOB_COMPLETION_INDEX", "0")]),
        &["JOB_COMPLETION_INDEX=0", "--shard env/N"],
    );
    assert_fails_with(&run(&["--shard", "2/2"], &[]), &["zero-based"]);
    assert_fails_with(
        &run(&["--shard", "0/5"], &[]),
        &["4 sequences cannot fill 5 shards"],
    );
    // A malformed flag is clap's usage error (exit 2), with the rule.
    let malformed = run(&["--shard", "x"], &[]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(common::stderr(&malformed).contains("expected I/N"));
}

#[test]
fn a_shard_is_planned_for_its_own_sequences() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let out = analyze(home.path(), &model, "out", &["--shard", "1/2", "--dry-run"]);
    let stdout = common::stdout(&assert_succeeds_output(out));
    assert!(
        stdout.contains("workload         3 sequences x 20 tokens"),
        "{stdout}"
    );
}

fn assert_succeeds_output(out: std::process::Output) -> std::process::Output {
    assert!(out.status.success(), "{}", common::stderr(&out));
    out
}
