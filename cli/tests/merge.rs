//! `layerstream merge` (issue 20): shards of a run merged give the unsharded run's
//! report.json byte for byte (the embedded default and an MoE fixture, in 1, 2, 3 and 5
//! uneven shards; after a kill -9 and resume of a shard; merging merged folders; merging
//! again), and every wrong input is refused naming the folder: a missing, duplicated,
//! mismatched or unfinished shard (exit 1), a shard still running (exit 75, retry later).

mod common;

use common::{assert_fails_with, assert_succeeds, fixture_model_path, layerstream, stderr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

struct Run {
    home: tempfile::TempDir,
    args: Vec<String>,
}

impl Run {
    /// Analyses of `model` (None: the embedded default) over `sequences` sequences.
    fn new(model: Option<&str>, sequences: usize, seq_len: usize) -> Self {
        let mut args: Vec<String> = vec!["analyze".into(), "--device".into(), "cpu".into()];
        if let Some(model) = model {
            let docs = layerstream_tests::fixture_docs().display().to_string();
            args.extend([
                "--model".into(),
                fixture_model_path(model),
                "--data".into(),
                docs,
            ]);
        }
        args.extend(["--num-samples".into(), sequences.to_string()]);
        args.extend(["--seq-len".into(), seq_len.to_string()]);
        Run {
            home: tempfile::tempdir().unwrap(),
            args,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    fn command(&self, out: &str, extra: &[&str]) -> Vec<String> {
        let mut args = self.args.clone();
        args.extend(["--out".into(), out.into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn analyze(&self, out: &str, extra: &[&str]) -> std::process::Output {
        let args = self.command(out, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        layerstream(&args, self.home.path())
    }

    fn merge(&self, shards: &[&str], out: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["merge"];
        args.extend(shards);
        args.extend(["--out", out]);
        args.extend(extra);
        layerstream(&args, self.home.path())
    }

    fn report(&self, out: &str) -> Vec<u8> {
        std::fs::read(self.dir(out).join("report.json")).unwrap()
    }
}

fn assert_identical(run: &Run, merged: &str, whole: &str, what: &str) {
    assert!(
        run.report(merged) == run.report(whole),
        "{what}: merged report.json differs from the unsharded one"
    );
}

fn shards_then_merge(run: &Run, count: usize) -> String {
    let mut names = Vec::new();
    for index in 0..count {
        let name = format!("n{count}-s{index}");
        assert_succeeds(&run.analyze(&name, &["--shard", &format!("{index}/{count}")]));
        names.push(name);
    }
    // In reverse order: the merge sorts them by range.
    names.reverse();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let merged = format!("merged-{count}");
    assert_succeeds(&run.merge(&refs, &merged, &[]));
    merged
}

#[test]
fn the_embedded_default_in_1_2_3_and_5_shards_merges_to_the_unsharded_report() {
    let run = Run::new(None, 7, 48);
    assert_succeeds(&run.analyze("whole", &[]));
    for count in [1, 2, 3, 5] {
        let merged = shards_then_merge(&run, count);
        assert_identical(&run, &merged, "whole", &format!("{count} shards"));
    }
    // Merging merged folders, and merging again into the same folder.
    assert_succeeds(&run.merge(&["n3-s0", "n3-s1"], "first-two", &[]));
    let partial: serde_json::Value = serde_json::from_slice(&run.report("first-two")).unwrap();
    assert_eq!(partial["data"]["shard"]["first_sequence"], 0);
    assert_eq!(partial["data"]["num_sequences"], 4);
    assert_succeeds(&run.merge(&["first-two", "n3-s2"], "again", &[]));
    assert_identical(
        &run,
        "again",
        "whole",
        "a merged folder merged with a shard",
    );
    assert_succeeds(&run.merge(&["first-two", "n3-s2"], "again", &[]));
    assert_identical(&run, "again", "whole", "merged twice into one folder");
}

#[test]
fn an_moe_fixture_in_1_2_3_and_5_shards_merges_to_the_unsharded_report() {
    let run = Run::new(Some("qwen3_moe"), 5, 20);
    assert_succeeds(&run.analyze("whole", &[]));
    for count in [1, 2, 3, 5] {
        let merged = shards_then_merge(&run, count);
        assert_identical(
            &run,
            &merged,
            "whole",
            &format!("qwen3_moe, {count} shards"),
        );
    }
}

#[test]
fn a_shard_killed_and_resumed_merges_to_the_unsharded_report() {
    let run = Run::new(None, 6, 64);
    assert_succeeds(&run.analyze("whole", &["--checkpoint-every", "0"]));
    assert_succeeds(&run.analyze("s0", &["--shard", "0/2", "--checkpoint-every", "0"]));
    let args = run.command("s1", &["--shard", "1/2", "--checkpoint-every", "0"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(&args)
        .env("LAYERSTREAM_CACHE_DIR", run.home.path().join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(run.home.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a layer is finished (or when it is done already).
    let progress = run.dir("s1").join("progress.json");
    for _ in 0..20_000 {
        let layers = std::fs::read(&progress)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map_or(0, |p| p["layers"].as_object().map_or(0, |l| l.len()));
        if layers >= 1 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Unfinished (unless it finished before the kill): refused, naming the shard.
    let early = run.merge(&["s0", "s1"], "merged", &[]);
    if !early.status.success() {
        assert_fails_with(&early, &["s1", "unfinished", "run the same command again"]);
    }
    assert_succeeds(&run.analyze("s1", &["--shard", "1/2", "--checkpoint-every", "0"]));
    assert_succeeds(&run.merge(&["s0", "s1"], "merged", &[]));
    assert_identical(&run, "merged", "whole", "after kill -9 and resume");
}

/// Drops layer `layer` from a finished shard's progress.json (as if it had not finished it).
fn unfinish(dir: &Path, layer: usize) {
    let path = dir.join("progress.json");
    let mut progress: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    progress["layers"]
        .as_object_mut()
        .unwrap()
        .remove(&layer.to_string());
    std::fs::write(&path, serde_json::to_vec_pretty(&progress).unwrap()).unwrap();
}

#[test]
fn wrong_shards_are_refused_naming_them_and_a_running_one_is_retry_later() {
    let run = Run::new(None, 4, 32);
    for index in 0..3 {
        assert_succeeds(&run.analyze(&format!("s{index}"), &["--shard", &format!("{index}/3")]));
    }
    assert_fails_with(
        &run.merge(&["s0", "s2"], "m", &[]),
        &["sequences 1..2", "missing"],
    );
    copy_dir(&run.dir("s1"), &run.dir("s1-copy"));
    assert_fails_with(
        &run.merge(&["s0", "s1", "s1-copy", "s2"], "m", &[]),
        &["s1", "overlap", "given twice"],
    );
    assert_succeeds(&run.analyze("other", &["--shard", "1/3", "--threshold", "4"]));
    assert_fails_with(
        &run.merge(&["s0", "other", "s2"], "m", &[]),
        &["other", "not a shard of the same run"],
    );
    assert_succeeds(&run.analyze("whole-other", &["--num-samples", "5"]));
    assert_fails_with(
        &run.merge(&["s0", "s1", "s2", "whole-other"], "m", &[]),
        &["whole-other"],
    );
    assert_fails_with(
        &run.merge(&["s0", "nowhere"], "m", &[]),
        &["nowhere", "progress.json"],
    );
    assert_fails_with(
        &run.merge(&["s0", "s1"], "s1", &[]),
        &["is one of the shards"],
    );
    unfinish(&run.dir("s2"), 3);
    assert_fails_with(
        &run.merge(&["s0", "s1", "s2"], "m", &[]),
        &["s2", "unfinished", "[3]"],
    );
    assert_succeeds(&run.merge(&["s0", "s1", "s2"], "partial", &["--partial"]));
    let report: serde_json::Value = serde_json::from_slice(&run.report("partial")).unwrap();
    let layers: Vec<u64> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(
        layers,
        vec![0, 1, 2],
        "--partial merges the layers every shard has"
    );
    // A shard whose folder is locked by a run: retry later.
    let _held = layerstream_runtime::checkpoint::FolderLock::take(&run.dir("s0")).unwrap();
    let busy = run.merge(&["s0", "s1"], "m", &[]);
    assert_eq!(busy.status.code(), Some(75), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("still running"), "{}", stderr(&busy));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Massive activations planted in an MoE layer (more than the 20 attributed and listed):
/// the merge chooses the union's largest again, keeps the attribution of its 20 largest only,
/// and gives the unsharded report byte for byte.
#[test]
fn planted_massive_activations_and_their_attribution_merge_exactly() {
    let run = Run::new(None, 8, 64);
    let model = common::copy_fixture_model("olmoe", run.home.path());
    let model = model.display().to_string();
    let run = Run {
        args: {
            let mut args = run.args.clone();
            args.extend([
                "--model".into(),
                model.clone(),
                "--bootstrap".into(),
                "20".into(),
            ]);
            args
        },
        ..run
    };
    assert_succeeds(&run.analyze("baseline", &[]));
    let baseline: serde_json::Value = serde_json::from_slice(&run.report("baseline")).unwrap();
    let counts: Vec<u64> = baseline["layers"][1]["router"]["tokens_per_expert"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    let expert = (0..counts.len()).max_by_key(|&e| counts[e]).unwrap();
    layerstream_tests::plant_massive_expert(Path::new(&model), 1, expert, 200.0);
    assert_succeeds(&run.analyze("whole", &[]));
    let whole: serde_json::Value = serde_json::from_slice(&run.report("whole")).unwrap();
    let massive = &whole["layers"][1]["massive"];
    assert!(massive["total"].as_u64().unwrap() > 40, "{massive}");
    assert_eq!(massive["attributed"], 20);
    for count in [2, 3] {
        let merged = shards_then_merge(&run, count);
        assert_identical(&run, &merged, "whole", &format!("planted, {count} shards"));
    }
}
