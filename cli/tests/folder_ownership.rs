//! Issue 15 items 5, 8, 9 and 14: a run deletes or replaces only the files it recorded, a
//! folder holding other files is refused, a lost or unreadable progress.json is recovered
//! from the layers' own records, plots are written atomically, and `--save-activations` on
//! a resumed run computes the layers whose activations are missing.

mod common;

use common::{assert_fails_with, assert_succeeds, docs, fixture_model_path, layerstream, stderr};
use std::path::Path;
use std::process::Output;

fn analyze(home: &Path, out: &Path, extra: &[&str]) -> Output {
    analyze_env(home, out, extra, &[])
}

fn analyze_env(home: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let (model, data) = (fixture_model_path("llama3"), docs());
    let mut args = common::small_analyze_args(&model, &data, out.to_str().unwrap());
    args.extend_from_slice(extra);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args(&args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(home);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn times_computed(out: &Path) -> serde_json::Value {
    let progress: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("progress.json")).unwrap()).unwrap();
    progress["times_computed"].clone()
}

#[test]
fn a_folder_holding_other_files_is_refused_and_left_as_it_is() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("theirs");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("report.json"), b"their report").unwrap();
    std::fs::write(out.join(".draft.txt.tmp-12"), b"their temp").unwrap();
    let output = analyze(home.path(), &out, &[]);
    assert_fails_with(&output, &["not empty", "report.json", "--out"]);
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        b"their report"
    );
    assert!(out.join(".draft.txt.tmp-12").exists());
    // --restart does not make it the run's either.
    let output = analyze(home.path(), &out, &["--restart"]);
    assert_fails_with(&output, &["not empty"]);
    assert_eq!(
        std::fs::read(out.join("report.json")).unwrap(),
        b"their report"
    );
    // An empty folder is fine.
    let empty = home.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_succeeds(&analyze(home.path(), &empty, &[]));
}

#[test]
fn restart_deletes_only_the_files_the_run_recorded() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    assert_succeeds(&analyze(home.path(), &out, &[]));
    let report = std::fs::read(out.join("report.json")).unwrap();
    let theirs = [
        "notes.txt",
        "layers/my_notes.txt",
        "hidden/my_states.safetensors",
        "plots/.sketch.svg.tmp-x",
        ".notes.txt.tmp-7",
    ];
    for name in theirs {
        let path = out.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"mine").unwrap();
    }
    // Resuming (nothing to do) and restarting both leave them.
    assert_succeeds(&analyze(home.path(), &out, &[]));
    let output = analyze(home.path(), &out, &["--restart"]);
    assert_succeeds(&output);
    for name in theirs {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), b"mine", "{name}");
    }
    assert_eq!(std::fs::read(out.join("report.json")).unwrap(), report);
    // Every layer was computed again (once in the new run).
    assert_eq!(
        times_computed(&out),
        serde_json::json!({"0": 1, "1": 1, "2": 1})
    );
}

#[test]
fn a_lost_or_unreadable_progress_file_is_recovered_from_the_layer_records() {
    let home = tempfile::tempdir().unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&analyze(home.path(), &reference, &[]));
    for damage in ["delete", "garbage", "truncate"] {
        let out = home.path().join(damage);
        assert_succeeds(&analyze(home.path(), &out, &["--layers", "0-1"]));
        let path = out.join("progress.json");
        match damage {
            "delete" => std::fs::remove_file(&path).unwrap(),
            "garbage" => std::fs::write(&path, b"\x00\x01 not json").unwrap(),
            _ => {
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
            }
        }
        let status = layerstream(&["status", out.to_str().unwrap()], home.path());
        let text = common::stdout(&status);
        assert!(
            text.contains("2 finished layer(s) have their own records (0-1)"),
            "{damage}: {text}"
        );
        let output = analyze(home.path(), &out, &[]);
        assert_succeeds(&output);
        let err = stderr(&output);
        assert!(
            err.contains("recovering the finished layers from their records")
                && err.contains("2 layer(s) already finished (0, 1)"),
            "{damage}: {err}"
        );
        // Layers 0 and 1 were not computed again; the report is the uninterrupted one's.
        assert_eq!(
            times_computed(&out),
            serde_json::json!({"0": 1, "1": 1, "2": 1})
        );
        assert_eq!(
            std::fs::read(out.join("report.json")).unwrap(),
            std::fs::read(reference.join("report.json")).unwrap(),
            "{damage}"
        );
    }
    // Records of another run are refused, saying what differs.
    let out = home.path().join("other-run");
    assert_succeeds(&analyze(home.path(), &out, &["--threshold", "3"]));
    std::fs::remove_file(out.join("progress.json")).unwrap();
    let output = analyze(home.path(), &out, &[]);
    assert_fails_with(
        &output,
        &["differs", "threshold: 3 then, 6 now", "--restart"],
    );
    // A damaged record's layer is computed again.
    let out = home.path().join("damaged-layer");
    assert_succeeds(&analyze(home.path(), &out, &[]));
    std::fs::remove_file(out.join("progress.json")).unwrap();
    let statistics = out.join("layers/layer_1.safetensors");
    let mut bytes = std::fs::read(&statistics).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&statistics, bytes).unwrap();
    let output = analyze(home.path(), &out, &[]);
    assert_succeeds(&output);
    assert!(stderr(&output).contains("layer 1: layers/layer_1.safetensors is damaged"));
    assert_eq!(
        times_computed(&out),
        serde_json::json!({"0": 1, "1": 2, "2": 1})
    );
}

#[test]
fn a_full_disk_while_writing_a_plot_leaves_no_truncated_plot_and_status_says_so() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    let fault = [(
        "LAYERSTREAM_FAULT_WRITE_PATH",
        "plots/max_abs_and_kurtosis.svg",
    )];
    let output = analyze_env(home.path(), &out, &[], &fault);
    assert_fails_with(
        &output,
        &["No space left on device", "max_abs_and_kurtosis.svg"],
    );
    let plots: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !plots.iter().any(|p| p.contains("max_abs_and_kurtosis.svg")),
        "a partial plot or its temp file was left: {plots:?}"
    );
    let status = layerstream(&["status", out.to_str().unwrap()], home.path());
    let text = common::stdout(&status);
    assert!(
        text.contains("the same command writes report.json, report.md and the plots"),
        "{text}"
    );
    assert_succeeds(&analyze(home.path(), &out, &[]));
    assert!(out.join("plots/max_abs_and_kurtosis.svg").exists());
    let text = common::stdout(&layerstream(
        &["status", out.to_str().unwrap()],
        home.path(),
    ));
    assert!(
        text.contains("finished (report.json, report.md and plots written)"),
        "{text}"
    );
}

#[test]
fn save_activations_on_a_resumed_run_computes_the_layers_missing_them() {
    let home = tempfile::tempdir().unwrap();
    let out = home.path().join("out");
    assert_succeeds(&analyze(home.path(), &out, &["--layers", "0-1"]));
    let output = analyze(home.path(), &out, &["--save-activations", "resid_post"]);
    assert_succeeds(&output);
    assert!(
        stderr(&output).contains("layer(s) 0, 1 were finished by an earlier run without these activations; computing them again"),
        "{}",
        stderr(&output)
    );
    for layer in 0..3 {
        let path = out.join(format!("activations/layer_{layer}_resid_post.safetensors"));
        assert!(path.exists(), "{}", path.display());
    }
    // Asked again, nothing is missing and nothing is computed.
    let output = analyze(home.path(), &out, &["--save-activations", "resid_post"]);
    assert_succeeds(&output);
    assert!(!stderr(&output).contains("computing them again"));
    assert_eq!(
        times_computed(&out),
        serde_json::json!({"0": 2, "1": 2, "2": 1})
    );
}
