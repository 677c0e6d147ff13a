//! Hidden states that do not fit the host budget live in a file in the output folder (the
//! planner's `disk` placement; the CPU backend moves them there when they and a layer do not
//! fit --ram): same report, checkpoints written from the file, resume into it.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

fn analyze(home: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture_model_path("olmoe");
    let mut args = vec![
        "analyze",
        "--model",
        &model,
        "--device",
        "cpu",
        "--num-samples",
        "32",
        "--seq-len",
        "64",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    layerstream(&args, home)
}

#[test]
fn hidden_states_that_do_not_fit_ram_live_in_a_file_and_give_the_same_report() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, &[]));
    // 32 x 64 x 64 f32 = 512 KiB of hidden states against 300 KiB.
    let out = home.path().join("disk");
    let output = analyze(home.path(), &out, &["--ram", "300KiB"]);
    assert_succeeds(&output);
    let err = stderr(&output);
    assert!(
        err.contains("the workload's hidden states (512.00 KiB) and a layer do not fit --ram together: they live in a file in"),
        "{err}"
    );
    assert!(err.contains("layer 0 runs in 3 parts"), "{err}");
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        std::fs::read(reference.join("report.json")).unwrap()
    );
    assert!(!out.join("work").exists(), "the workload file is deleted");
}

#[test]
fn hidden_states_on_disk_are_checkpointed_from_the_file_and_resumed_into_it() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, &[]));
    let out = home.path().join("disk");
    let first = analyze(
        home.path(),
        &out,
        &[
            "--ram",
            "300KiB",
            "--layers",
            "0",
            "--checkpoint-every",
            "0",
        ],
    );
    assert_succeeds(&first);
    let progress: Value =
        serde_json::from_slice(&std::fs::read(out.join("progress.json")).unwrap()).unwrap();
    assert_eq!(progress["hidden"][0]["after_layer"], 0);
    assert!(out.join("hidden/after_layer_0.safetensors").exists());
    let second = analyze(home.path(), &out, &["--ram", "300KiB"]);
    assert_succeeds(&second);
    assert!(
        stderr(&second).contains("running layers 1-1"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        std::fs::read(reference.join("report.json")).unwrap(),
        "resumed from the checkpoint written out of the file"
    );
}

#[test]
fn estimate_puts_hidden_states_on_disk_when_the_host_budget_is_too_small() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("olmoe");
    let estimate = |ram: &str| -> Value {
        let out = assert_succeeds(&layerstream(
            &[
                "estimate",
                "--model",
                &model,
                "--num-samples",
                "32",
                "--seq-len",
                "64",
                "--overhead",
                "1MiB",
                "--micro-batch-tokens",
                "64",
                "--vram",
                "2700KiB",
                "--ram",
                ram,
                "--json",
            ],
            home.path(),
        ));
        serde_json::from_str(&out).unwrap()
    };
    let host = estimate("64MiB");
    assert_eq!(host["plan"]["hidden_placement"], "pinned_host");
    assert_eq!(host["plan"]["disk_bytes"], 0);
    let disk = estimate("700KiB");
    assert_eq!(disk["plan"]["hidden_placement"], "disk");
    assert_eq!(disk["plan"]["disk_bytes"], 512 * 1024);
    assert_eq!(disk["plan"]["host_budget_bytes"], 700 * 1024);
    // Pinned host memory keeps three micro-batch slots on the device (one uploading, one
    // computing, one downloading), a file one; the micro-batch is one sequence in both.
    let hidden = |e: &Value| e["plan"]["regions"]["hidden"].as_u64().unwrap();
    assert_eq!(host["plan"]["micro_batch_sequences"], 1);
    assert_eq!(disk["plan"]["micro_batch_sequences"], 1);
    assert_eq!(hidden(&host), 3 * hidden(&disk));
}
