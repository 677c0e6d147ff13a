//! A scoring run killed (SIGKILL) at any instant and run again finishes with the same
//! scores.jsonl, byte for byte, without computing finished layers again; a different
//! scoring run into the folder is refused; `--dry-run` plans it.

mod common;

use common::{assert_fails_with, assert_succeeds, deep_model, layerstream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn args(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "score",
        "--per-record",
        "--txt-lines",
        "--device",
        "cpu",
        "--checkpoint-every",
        "0",
        "--max-length",
        "256",
        "--micro-batch-tokens",
        "2048",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--model".into(), model.display().to_string()]);
    args.extend(["--data".into(), data.display().to_string()]);
    args.extend(["--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn times_computed(out: &Path) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(out.join("progress.json")) else {
        return Vec::new();
    };
    let progress: serde_json::Value = serde_json::from_str(&text).unwrap();
    progress["times_computed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn a_killed_scoring_run_resumes_at_its_layer_with_identical_scores() {
    let home = tempfile::tempdir().unwrap();
    let model = deep_model(home.path());
    // Lines of the default text, each a record of its own length.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default-data.txt"),
    )
    .unwrap();
    let data = home.path().join("records.txt");
    let lines: Vec<&str> = text.lines().filter(|l| l.len() > 40).take(300).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let args = args(&model, &data, out, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        layerstream(&refs, home.path())
    };
    let reference_out = home.path().join("reference");
    let started = Instant::now();
    assert_succeeds(&run(&reference_out, &[]));
    let full = started.elapsed();
    let reference = std::fs::read(reference_out.join("scores.jsonl")).unwrap();

    let mut interrupted = 0;
    for trial in 0..6 {
        let out = home.path().join(format!("trial-{trial}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_layerstream"))
            .args(args(&model, &data, &out, &[]))
            .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
            .env("LAYERSTREAM_THREADS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(0.15 + 0.13 * trial as f64));
        let _ = child.kill();
        let _ = child.wait();
        if !out.join("scores.jsonl").exists() && !times_computed(&out).is_empty() {
            interrupted += 1;
        }
        assert_succeeds(&run(&out, &[]));
        assert!(
            std::fs::read(out.join("scores.jsonl")).unwrap() == reference,
            "trial {trial}: scores differ after the resume"
        );
        assert!(
            times_computed(&out).iter().all(|&n| n == 1),
            "trial {trial}: a finished layer was computed again: {:?}",
            times_computed(&out)
        );
    }
    assert!(
        interrupted >= 2,
        "only {interrupted} runs were killed mid-way"
    );

    // Another scoring run into the same folder is refused, naming what differs.
    let output = run(&reference_out, &["--max-length", "100"]);
    assert_fails_with(&output, &["max_length"]);
    assert_eq!(
        std::fs::read(reference_out.join("scores.jsonl")).unwrap(),
        reference
    );
    // --restart starts it over.
    assert_succeeds(&run(&reference_out, &["--max-length", "100", "--restart"]));
}

#[test]
fn dry_run_prints_the_plan_and_runs_nothing() {
    let home = tempfile::tempdir().unwrap();
    let model = deep_model(home.path());
    let data = home.path().join("records.txt");
    std::fs::write(
        &data,
        "one short record\nanother record, a little longer than that\n",
    )
    .unwrap();
    let out = home.path().join("plan");
    let args = args(&model, &data, &out, &["--dry-run", "--vram", "1GiB"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = layerstream(&refs, home.path());
    let text = assert_succeeds(&output);
    assert!(
        text.contains("micro-batch") && text.contains("peak"),
        "{text}"
    );
    assert!(!out.join("scores.jsonl").exists());
}
