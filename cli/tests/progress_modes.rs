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
            line.contains("(1/4)") && line.contains("tokens/s") && line.contains("ETA"),
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
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "run_started");
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
    let quiet = spawn(home.path(), "none", "50").wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&quiet.stderr);
    assert!(
        !text.contains("layer 0 done") && !text.contains("\"event\""),
        "{text}"
    );
}
