//! `--progress` when stderr is a pipe (a Kaggle cell, a Slurm log, `nohup`): `auto` and
//! `lines` print a line per finished layer while the run goes on (and a still-running line
//! inside a long layer), `json` one object per event, `none` nothing (issue 23, part 4).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn spawn(home: &std::path::Path, mode: &str, every_ms: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args([
            "analyze",
            "--device",
            "cpu",
            "--num-samples",
            "8",
            "--seq-len",
            "2048",
            "--out",
            mode,
            "--progress",
            mode,
        ])
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "1")
        .env("LAYERSTREAM_PROGRESS_EVERY_MS", every_ms)
        .current_dir(home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn lines_arrive_while_the_run_is_going() {
    let home = tempfile::tempdir().unwrap();
    for mode in ["auto", "lines"] {
        let mut child = spawn(home.path(), mode, "30000");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("layer 0 done") {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "{mode}: no layer line"
            );
        }
        assert!(
            line.contains("(1/4)")
                && line.contains("tokens/s")
                && line.contains("ETA")
                && line.contains("host memory peak"),
            "{line}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{mode}: the first layer's line came only at the end"
        );
        let rest: Vec<String> = stderr.lines().map(Result::unwrap).collect();
        assert!(child.wait().unwrap().success());
        assert!(
            rest.iter().any(|l| l.starts_with("layer 3 done (4/4)")),
            "{mode}: {rest:?}"
        );
    }
}

#[test]
fn json_is_one_object_per_event_and_none_is_silent() {
    let home = tempfile::tempdir().unwrap();
    // A still-running event every 50 ms inside the layers.
    let child = spawn(home.path(), "json", "50");
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    // Every line is an event: the run's own lines too.
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"run_started"), "{kinds:?}");
    assert!(events.iter().any(
        |e| e["event"] == "message" && e["message"].as_str().unwrap().starts_with("analyzing")
    ));
    // progress.json recorded every layer, each said as it happened.
    let recorded: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "checkpoint_written")
        .flat_map(|e| {
            e["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_u64().unwrap())
        })
        .collect();
    assert_eq!(recorded, vec![0, 1, 2, 3], "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "layer_finished").count(),
        4,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"layer_running"), "{kinds:?}");
    let last = events
        .iter()
        .rev()
        .find(|e| e["event"] == "layer_finished")
        .unwrap();
    assert_eq!(
        (last["layer"].as_u64(), last["layers"].as_u64()),
        (Some(3), Some(4))
    );
    assert!(last["tokens_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(last["memory"]["where"], "host");
    assert!(last["memory"]["peak_bytes"].as_u64().unwrap() > 0);
    // The same command again: a resume event with the finished layers.
    let again = spawn(home.path(), "json", "50").wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&again.stderr);
    let resume: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "resume")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(resume["layers_finished"], serde_json::json!([0, 1, 2, 3]));
    // The error a run ends with is an event too.
    let failed = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args([
            "analyze",
            "--device",
            "cpu",
            "--data",
            "missing.txt",
            "--progress",
            "json",
        ])
        .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
        .current_dir(home.path())
        .output()
        .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let text = String::from_utf8_lossy(&failed.stderr);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "error", "{text}");
    assert!(
        last["message"].as_str().unwrap().contains("missing.txt"),
        "{text}"
    );
    let quiet = spawn(home.path(), "none", "50").wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        !text.contains("layer 0 done") && !text.contains("\"event\""),
        "{text}"
    );
}
