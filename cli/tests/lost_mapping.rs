//! Issue 15 item 7: a model file cut short during a run ends it with an error naming the
//! file (no silent SIGBUS); finished layers are kept and the same command continues once
//! the file is back. `LAYERSTREAM_FAULT_TRUNCATE=N` cuts the file as layer N is loaded;
//! `N:unchecked` skips the length check, so the read meets the lost mapping itself.

mod common;

use common::{assert_fails_with, assert_succeeds, copy_fixture_model, docs, stderr};
use std::path::Path;

fn run(home: &Path, model: &Path, out: &Path, fault: Option<&str>) -> std::process::Output {
    let (model, data) = (model.display().to_string(), docs());
    let mut args = common::small_analyze_args(&model, &data, out.to_str().unwrap());
    args.extend(["--checkpoint-every", "0"]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args(&args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2");
    if let Some(fault) = fault {
        command.env("LAYERSTREAM_FAULT_TRUNCATE", fault);
    }
    command.output().unwrap()
}

#[test]
fn a_model_file_cut_during_the_run_is_named_and_the_run_continues_later() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    let original = std::fs::read(model.join("model.safetensors")).unwrap();
    let reference = home.path().join("reference");
    assert_succeeds(&run(home.path(), &model, &reference, None));
    for (fault, needles) in [
        ("2", ["model.safetensors", "changed during the run"]),
        ("2:unchecked", ["model.safetensors", "lost its backing"]),
    ] {
        let out = home.path().join(fault.replace(':', "-"));
        let output = run(home.path(), &model, &out, Some(fault));
        assert_fails_with(&output, &needles);
        assert!(
            !stderr(&output).contains("Bus error"),
            "{}",
            stderr(&output)
        );
        std::fs::write(model.join("model.safetensors"), &original).unwrap();
        assert_succeeds(&run(home.path(), &model, &out, None));
        assert_eq!(
            std::fs::read(out.join("report.json")).unwrap(),
            std::fs::read(reference.join("report.json")).unwrap(),
            "{fault}"
        );
    }
}
