//! One run at a time per output folder (issue 15, item 2): a second run into a folder a run
//! holds is refused, naming the process, before it touches anything; the lock goes with the
//! process, kill -9 included. The first run is held inside its work by reading its data from
//! a FIFO the test writes only when it is ready, so nothing depends on timing.

mod common;

use common::{assert_fails_with, assert_succeeds, docs, fixture_model_path, layerstream};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fifo(at: &Path) -> PathBuf {
    let path = at.join("held.txt");
    let made = Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    path
}

fn args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    common::small_analyze_args(model, data, out)
}

/// Starts a run whose data is the FIFO; returns once it holds the folder's lock.
fn start_held_run(home: &Path, args: &[&str], out: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let lock = out.join(".layerstream.lock");
    let started = Instant::now();
    let pid = child.id().to_string();
    while std::fs::read_to_string(&lock).map_or(true, |held| held.trim() != pid) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run did not take the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn feed(fifo: &Path) {
    let text = std::fs::read_to_string(docs()).unwrap();
    let mut writer = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
    // The .txt reader takes the whole stream as one document; repeat it to have tokens.
    for _ in 0..20 {
        writer.write_all(text.as_bytes()).unwrap();
    }
}

#[test]
fn a_second_run_into_a_folder_in_use_is_refused_naming_the_process() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let out = home.path().join("run");
    let (out_str, held) = (out.to_str().unwrap(), fifo(home.path()));
    let first = start_held_run(
        home.path(),
        &args(&model, held.to_str().unwrap(), out_str),
        &out,
    );
    let second = layerstream(&args(&model, &docs(), out_str), home.path());
    assert_fails_with(
        &second,
        &[
            "is in use by another layerstream run",
            &format!("process {}", first.id()),
        ],
    );
    // The refused run touched nothing: the first finishes and its report is a plain run's.
    feed(&held);
    let first = first.wait_with_output().unwrap();
    assert_succeeds(&first);
    let alone = home.path().join("alone");
    let fed = home.path().join("fed.txt");
    let text = std::fs::read_to_string(docs()).unwrap().repeat(20);
    std::fs::write(&fed, text).unwrap();
    let plain = args(&model, fed.to_str().unwrap(), alone.to_str().unwrap());
    assert_succeeds(&layerstream(&plain, home.path()));
    let report = |dir: &Path| std::fs::read(dir.join("report.json")).unwrap();
    let mut first_report = String::from_utf8(report(&out)).unwrap();
    let alone_report = String::from_utf8(report(&alone)).unwrap();
    // The data's name is its path; everything else is the same.
    first_report = first_report.replace(held.to_str().unwrap(), fed.to_str().unwrap());
    assert_eq!(first_report, alone_report);
    // Finished, the folder is free again: the same command resumes (nothing left to do).
    let again = layerstream(&args(&model, &docs(), out_str), home.path());
    assert!(
        !common::stderr(&again).contains("in use"),
        "{}",
        common::stderr(&again)
    );
}

#[test]
fn the_lock_of_a_killed_run_is_released() {
    let home = tempfile::tempdir().unwrap();
    let model = fixture_model_path("llama3");
    let out = home.path().join("run");
    let (out_str, held) = (out.to_str().unwrap(), fifo(home.path()));
    let mut killed = start_held_run(
        home.path(),
        &args(&model, held.to_str().unwrap(), out_str),
        &out,
    );
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    let next = layerstream(&args(&model, &docs(), out_str), home.path());
    assert_succeeds(&next);
}

/// Runs started together into one folder, again and again, with different and with equal
/// settings: one run owns the folder at a time; every other is refused with the lock's
/// message or the settings it differs in (never a false "No such file"), and report.json is
/// the report of the settings progress.json records.
#[test]
fn runs_started_together_never_mix_or_break_each_other() {
    let home = tempfile::tempdir().unwrap();
    let (model, data) = (fixture_model_path("llama3"), docs());
    for round in 0..6 {
        let out = home.path().join(format!("round{round}"));
        let out_text = out.display().to_string();
        let thresholds = if round % 2 == 0 {
            ["6", "3"]
        } else {
            ["6", "6"]
        };
        let children: Vec<Child> = thresholds
            .iter()
            .map(|threshold| {
                let mut a = args(&model, &data, &out_text);
                a.extend(["--threshold", threshold]);
                Command::new(env!("CARGO_BIN_EXE_layerstream"))
                    .args(&a)
                    .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
                    .env("LAYERSTREAM_THREADS", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let succeeded = outputs.iter().filter(|o| o.status.success()).count();
        assert!(succeeded >= 1, "round {round}: no run succeeded");
        for output in outputs.iter().filter(|o| !o.status.success()) {
            let err = common::stderr(output);
            assert!(
                err.contains("in use by another layerstream run") || err.contains("differs"),
                "round {round}: {err}"
            );
        }
        let progress: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("progress.json")).unwrap()).unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        let recorded: f64 = progress["settings"]["threshold"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(report["settings"]["threshold"].as_f64().unwrap(), recorded);
        // The report is exactly what a run alone with those settings writes.
        let alone = home.path().join(format!("alone{round}"));
        let threshold = recorded.to_string();
        let mut a = args(&model, &data, alone.to_str().unwrap());
        a.extend(["--threshold", &threshold]);
        assert_succeeds(&layerstream(&a, home.path()));
        assert_eq!(
            std::fs::read(out.join("report.json")).unwrap(),
            std::fs::read(alone.join("report.json")).unwrap(),
            "round {round}"
        );
    }
}
