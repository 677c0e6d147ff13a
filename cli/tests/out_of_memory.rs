//! Out of memory during a run: the micro-batch is halved and the layer continued, results
//! unchanged; below one sequence per micro-batch the run stops clearly and keeps what it
//! finished. Faults are injected with LAYERSTREAM_FAULT_ALLOC=N (the N-th reservation fails):
//! reservations go hidden states, then per layer its weights and its micro-batch buffers, so
//! N = 2 + 2 * layer + 1 hits layer `layer`'s micro-batch buffers.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

fn analyze(home: &Path, out: &Path, samples: &str, fault: Option<usize>) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args([
            "analyze",
            "--device",
            "cpu",
            "--num-samples",
            samples,
            "--seq-len",
            "256",
            "--micro-batch-tokens",
            "1024",
            "--out",
        ])
        .arg(out)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2");
    if let Some(n) = fault {
        command.env("LAYERSTREAM_FAULT_ALLOC", n.to_string());
    }
    command.output().unwrap()
}

#[test]
fn halving_after_an_injected_out_of_memory_gives_the_same_report() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, "8", None));
    let faulted = home.path().join("faulted");
    let output = analyze(home.path(), &faulted, "8", Some(2 + 2 * 2 + 1));
    assert_succeeds(&output);
    let err = stderr(&output);
    assert!(
        err.contains("layer 2: out of memory")
            && err.contains("micro-batch 4 -> 2 sequences for the rest of the run"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(faulted.join("report.json")).unwrap(),
        std::fs::read(reference.join("report.json")).unwrap(),
        "same report with the smaller micro-batch"
    );
}

#[test]
fn out_of_memory_at_one_sequence_stops_clearly_and_keeps_finished_layers() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, "1", None));
    let out = home.path().join("out");
    let failed = analyze(home.path(), &out, "1", Some(2 + 2 + 1));
    assert_fails_with(
        &failed,
        &[
            "layer 1 does not fit even with one sequence (256 tokens) per micro-batch",
            "--vram",
            "run the same command again",
        ],
    );
    let status = stdout(&layerstream(
        &["status", out.to_str().unwrap()],
        home.path(),
    ));
    assert!(status.contains("layers done        1 (0)"), "{status}");
    assert_succeeds(&analyze(home.path(), &out, "1", None));
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        std::fs::read(reference.join("report.json")).unwrap()
    );
}

#[test]
fn a_ram_budget_is_kept_by_halving_the_micro_batch() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, "8", None));
    let out = home.path().join("out");
    let args = [
        "analyze",
        "--device",
        "cpu",
        "--num-samples",
        "8",
        "--seq-len",
        "256",
        "--micro-batch-tokens",
        "1024",
        "--ram",
        "5MiB",
        "--out",
        out.to_str().unwrap(),
    ];
    let output = layerstream(&args, home.path());
    assert_succeeds(&output);
    assert!(
        stderr(&output).contains("micro-batch 4 -> 2 sequences"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        std::fs::read(reference.join("report.json")).unwrap()
    );
}
