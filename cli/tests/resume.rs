//! Checkpoints and resume: a run killed at any instant and run again gives the same
//! report.json, byte for byte, without computing finished layers again; damaged files are
//! recomputed, never used; a different run is refused; a full disk loses nothing.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Setup {
    home: tempfile::TempDir,
    model: PathBuf,
    /// `--checkpoint-every`: "0" writes hidden states after every layer.
    checkpoint_every: &'static str,
}

impl Setup {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let model = deep_model(home.path());
        Setup {
            home,
            model,
            checkpoint_every: "0",
        }
    }

    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "analyze",
            "--device",
            "cpu",
            "--num-samples",
            "8",
            "--seq-len",
            "512",
            "--checkpoint-every",
            self.checkpoint_every,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--model".into(), self.model.display().to_string()]);
        args.extend(["--out".into(), out.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, out: &Path, extra: &[&str]) -> std::process::Output {
        let args = self.args(out, extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        layerstream(&refs, self.home.path())
    }

    fn spawn(&self, out: &Path) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_layerstream"))
            .args(self.args(out, &[]))
            .env("LAYERSTREAM_CACHE_DIR", self.home.path().join("cache"))
            .env("LAYERSTREAM_THREADS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

fn progress(out: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(out.join("progress.json")).ok()?).ok()
}

/// Layer -> times_computed, from progress.json.
fn times_computed(out: &Path) -> Vec<(usize, u64)> {
    let Some(progress) = progress(out) else {
        return Vec::new();
    };
    progress["times_computed"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(layer, times)| (layer.parse().unwrap(), times.as_u64().unwrap()))
        .collect()
}

fn report(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("report.json")).unwrap()
}

/// Whether a write is in flight: a temp file of an atomic write exists.
fn writing(out: &Path) -> bool {
    ["", "layers", "hidden"].iter().any(|sub| {
        std::fs::read_dir(out.join(sub)).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        })
    })
}

#[test]
fn resume_after_kill_gives_identical_report_and_recomputes_nothing_finished() {
    let setup = Setup::new();
    let reference_out = setup.home.path().join("reference");
    let started = Instant::now();
    assert_succeeds(&setup.run(&reference_out, &[]));
    let full = started.elapsed();
    let reference = report(&reference_out);
    assert!(times_computed(&reference_out).iter().all(|&(_, n)| n == 1));

    let mut rng = 0x5eed_u64;
    let mut kills_during_writes = 0;
    for trial in 0..20 {
        let out = setup.home.path().join(format!("trial-{trial}"));
        let mut child = setup.spawn(&out);
        // Every fourth trial waits for a checkpoint write in flight; the others pick an instant.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let fraction = 0.05 + (rng % 900) as f64 / 1000.0;
        let deadline = Instant::now() + full.mul_f64(fraction);
        let wait_for_write = trial % 4 == 0;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if wait_for_write && writing(&out) && progress(&out).is_some() {
                kills_during_writes += 1;
                break;
            }
            if !wait_for_write && Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        let _ = child.kill();
        let _ = child.wait();
        let finished_before: Vec<(usize, u64)> = times_computed(&out);
        let resumed = setup.run(&out, &[]);
        assert_succeeds(&resumed);
        assert_eq!(
            report(&out),
            reference,
            "trial {trial}: report differs after resuming"
        );
        let after = times_computed(&out);
        for (layer, times) in &finished_before {
            assert!(
                after.contains(&(*layer, *times)),
                "trial {trial}: finished layer {layer} was computed again"
            );
        }
        assert!(
            after.iter().all(|&(_, n)| n == 1),
            "trial {trial}: {after:?}"
        );
        assert_eq!(after.len(), 12, "trial {trial}");
    }
    assert!(
        kills_during_writes >= 3,
        "only {kills_during_writes} kills landed during a write"
    );
}

/// With the default 30 s between hidden-state checkpoints a short run keeps none: a killed
/// run starts from the embeddings again, runs finished layers forward without recomputing
/// their results, and gives the same report.
/// After the model's last layer an analysis writes no hidden states (nothing comes after
/// it): with checkpoints after every layer, the newest is after the one before.
#[test]
fn no_hidden_checkpoint_after_the_models_last_layer() {
    let setup = Setup::new();
    let out = setup.home.path().join("out");
    assert_succeeds(&setup.run(&out, &[]));
    let progress = progress(&out).unwrap();
    let layers = progress["times_computed"].as_object().unwrap().len();
    let hidden = progress["hidden"].as_array().unwrap();
    let after: Vec<u64> = hidden
        .iter()
        .map(|h| h["after_layer"].as_u64().unwrap())
        .collect();
    assert_eq!(after, vec![layers as u64 - 2], "{progress}");
}

#[test]
fn resume_without_hidden_checkpoints_recomputes_no_finished_results() {
    let mut setup = Setup::new();
    setup.checkpoint_every = "30";
    let reference_out = setup.home.path().join("reference");
    assert_succeeds(&setup.run(&reference_out, &[]));
    assert!(
        !reference_out.join("hidden").exists()
            || std::fs::read_dir(reference_out.join("hidden"))
                .unwrap()
                .next()
                .is_none()
    );
    let out = setup.home.path().join("out");
    let mut child = setup.spawn(&out);
    while times_computed(&out).len() < 5 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let finished = times_computed(&out);
    assert!(finished.len() >= 5, "{finished:?}");
    let resumed = setup.run(&out, &[]);
    assert_succeeds(&resumed);
    assert!(
        stderr(&resumed).contains("running layers 0-11"),
        "{}",
        stderr(&resumed)
    );
    assert_eq!(report(&out), report(&reference_out));
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
}

#[test]
fn damaged_checkpoint_files_are_recomputed_never_used() {
    let setup = Setup::new();
    let reference_out = setup.home.path().join("reference");
    assert_succeeds(&setup.run(&reference_out, &[]));
    let reference = report(&reference_out);
    let cases: [(&str, Damage); 3] = [
        ("layers/layer_4.json", |p| flip_byte(p)),
        ("layers/layer_7.safetensors", |p| truncate(p)),
        ("layers/layer_0.safetensors", |p| flip_byte(p)),
    ];
    for (file, damage) in cases {
        let out = setup.home.path().join(file.replace('/', "_"));
        assert_succeeds(&setup.run(&out, &[]));
        damage(&out.join(file));
        let rerun = setup.run(&out, &[]);
        assert_succeeds(&rerun);
        let stderr = stderr(&rerun);
        assert!(
            stderr.contains(&format!("{file} is ")) && stderr.contains("computing the layer again"),
            "{stderr}"
        );
        assert_eq!(report(&out), reference, "{file}: report differs");
        let layer: usize = file
            .trim_start_matches("layers/layer_")
            .split('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            times_computed(&out).contains(&(layer, 2)),
            "{file}: layer {layer} computed again"
        );
        assert_eq!(
            times_computed(&out)
                .iter()
                .filter(|&&(_, n)| n == 2)
                .count(),
            1,
            "{file}: only that layer"
        );
    }
}

#[test]
fn damaged_hidden_states_are_not_resumed_from_and_extending_layers_reuses_finished_ones() {
    let setup = Setup::new();
    let reference_out = setup.home.path().join("reference");
    assert_succeeds(&setup.run(&reference_out, &[]));
    let reference = report(&reference_out);

    // Layers 0-5 first, then all: 0-5 are reused, 6-11 continue from the hidden states.
    let out = setup.home.path().join("extended");
    assert_succeeds(&setup.run(&out, &["--layers", "0-5"]));
    let second = setup.run(&out, &["--layers", "all"]);
    assert_succeeds(&second);
    assert!(
        stderr(&second).contains("running layers 6-11"),
        "{}",
        stderr(&second)
    );
    assert_eq!(report(&out), reference);
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));

    // Same, but the hidden states after layer 5 are damaged: the run starts from the
    // embeddings, and layers 0-5 are still not computed again.
    let out = setup.home.path().join("damaged-hidden");
    assert_succeeds(&setup.run(&out, &["--layers", "0-5"]));
    flip_byte(&out.join("hidden/after_layer_5.safetensors"));
    let second = setup.run(&out, &["--layers", "all"]);
    assert_succeeds(&second);
    let stderr = stderr(&second);
    assert!(
        stderr.contains("hidden/after_layer_5.safetensors is damaged")
            && stderr.contains("running layers 0-11"),
        "{stderr}"
    );
    assert_eq!(report(&out), reference);
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
}

/// A finished run's re-run (to write the report again) reads no hidden states: they are
/// checked against their record only when a run is about to start from them, so damaging
/// them changes nothing here (the test above has the run that needs them).
#[test]
fn a_finished_runs_rerun_reads_no_hidden_states() {
    let setup = Setup::new();
    let out = setup.home.path().join("out");
    assert_succeeds(&setup.run(&out, &["--layers", "0-5"]));
    let first = report(&out);
    flip_byte(&out.join("hidden/after_layer_5.safetensors"));
    let again = setup.run(&out, &["--layers", "0-5"]);
    assert_succeeds(&again);
    assert!(
        !stderr(&again).contains("after_layer_5"),
        "{}",
        stderr(&again)
    );
    assert_eq!(report(&out), first);
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
}

#[test]
fn damaged_progress_file_is_recovered_from_the_layer_records() {
    let setup = Setup::new();
    let out = setup.home.path().join("out");
    assert_succeeds(&setup.run(&out, &["--layers", "0-2"]));
    truncate(&out.join("progress.json"));
    let output = setup.run(&out, &["--layers", "0-2"]);
    assert_succeeds(&output);
    assert!(stderr(&output).contains("progress.json cannot be read"));
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
    assert_succeeds(&setup.run(&out, &["--layers", "0-2", "--restart"]));
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
}

#[test]
fn a_different_run_in_the_same_folder_is_refused_with_what_differs() {
    let setup = Setup::new();
    let out = setup.home.path().join("out");
    assert_succeeds(&setup.run(&out, &["--layers", "0-1"]));
    assert_fails_with(
        &setup.run(&out, &["--layers", "0-1", "--threshold", "5"]),
        &["differs", "threshold: 6 then, 5 now", "--restart"],
    );
    let other_model = copy_fixture_model("llama3", setup.home.path());
    let args = [
        "analyze",
        "--device",
        "cpu",
        "--num-samples",
        "8",
        "--seq-len",
        "64",
        "--model",
        other_model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    assert_fails_with(
        &layerstream(&args, setup.home.path()),
        &["the model differs", "the data differs", "--restart"],
    );
    // Settings that do not change results (micro-batch size) just continue.
    assert_succeeds(&setup.run(&out, &["--layers", "0-1", "--micro-batch-tokens", "512"]));
}

#[test]
fn a_full_disk_stops_the_run_and_the_same_command_continues_it() {
    let setup = Setup::new();
    let reference_out = setup.home.path().join("reference");
    assert_succeeds(&setup.run(&reference_out, &[]));
    let out = setup.home.path().join("out");
    let args = setup.args(&out, &[]);
    let failed = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(&args)
        .env("LAYERSTREAM_CACHE_DIR", setup.home.path().join("cache"))
        .env("LAYERSTREAM_FAULT_WRITE", "14")
        .output()
        .unwrap();
    assert_fails_with(
        &failed,
        &["No space left on device", "run the same command again"],
    );
    let done_before = times_computed(&out);
    assert!(
        !done_before.is_empty() && done_before.len() < 12,
        "{done_before:?}"
    );
    let status = layerstream(&["status", out.to_str().unwrap()], setup.home.path());
    assert!(
        stdout(&status).contains("interrupted"),
        "{}",
        stdout(&status)
    );
    assert_succeeds(&setup.run(&out, &[]));
    assert_eq!(report(&out), report(&reference_out));
    assert!(times_computed(&out).iter().all(|&(_, n)| n == 1));
}

/// A way to damage a file.
type Damage = fn(&Path);

fn flip_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 3]).unwrap();
}
