//! Running the `layerstream` binary in tests, on copies of the fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `layerstream args...` with the embedded-asset cache in `home`.
pub fn layerstream(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(home)
        .output()
        .expect("the binary runs")
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts a clean failure: exit code 1 (no panic, which exits 101) and every `needle`
/// in the error message.
pub fn assert_fails_with(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1, stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// Asserts success and returns stdout.
pub fn assert_succeeds(output: &Output) -> String {
    assert!(output.status.success(), "failed:\n{}", stderr(output));
    stdout(output)
}

/// Copies fixture `name`'s model folder into `into/name` and returns it.
pub fn copy_fixture_model(name: &str, into: &Path) -> PathBuf {
    let source = layerstream_tests::fixture_model(name);
    let dest = into.join(name);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
    dest
}

/// Rewrites `dir/config.json` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// The fixture documents, as a path string.
pub fn docs() -> String {
    layerstream_tests::fixture_docs().display().to_string()
}

/// A 12-layer model built from the embedded default model by repeating its 4 trained
/// layers (layer i has the weights of layer i % 4): real weights, more layers to stop in.
pub fn deep_model(into: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("default-model");
    let dest = into.join("deep-model");
    std::fs::create_dir_all(&dest).unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(source.join(name), dest.join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["num_hidden_layers"] = 12.into();
    std::fs::write(dest.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (index, suffix) = rest.split_once('.').unwrap();
                let index: usize = index.parse().unwrap();
                for layer in (index..12).step_by(4) {
                    tensors.push((format!("model.layers.{layer}.{suffix}"), view.clone()));
                }
            }
            None => tensors.push((name, view)),
        }
    }
    std::fs::write(
        dest.join("model.safetensors"),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    dest
}
