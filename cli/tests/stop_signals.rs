//! Issue 15 item 15: SIGTERM, SIGINT and SIGHUP stop a run cleanly: the current layer is
//! abandoned, every finished layer is written, a line says the same command continues, the
//! exit status is 128 + the signal; the same command then finishes with the report an
//! uninterrupted run writes.

mod common;

use common::{assert_succeeds, deep_model, layerstream, stderr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn args(model: &Path, out: &Path) -> Vec<String> {
    [
        "analyze",
        "--device",
        "cpu",
        "--num-samples",
        "8",
        "--seq-len",
        "512",
        "--checkpoint-every",
        "0",
        "--bootstrap",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--model".to_string(),
        model.display().to_string(),
        "--out".to_string(),
        out.display().to_string(),
    ])
    .collect()
}

fn finished_layers(out: &Path) -> usize {
    std::fs::read(out.join("progress.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|p| p["layers"].as_object().map(|l| l.len()))
        .unwrap_or(0)
}

#[test]
fn a_signal_stops_the_run_cleanly_and_the_same_command_continues() {
    let home = tempfile::tempdir().unwrap();
    let model = deep_model(home.path());
    let reference = home.path().join("reference");
    let refs = args(&model, &reference);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_succeeds(&layerstream(&refs, home.path()));
    for (signal, status) in [("TERM", 143), ("INT", 130), ("HUP", 129)] {
        let out = home.path().join(signal);
        let child = Command::new(env!("CARGO_BIN_EXE_layerstream"))
            .args(args(&model, &out))
            .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
            .env("LAYERSTREAM_THREADS", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while finished_layers(&out) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no layer finished"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let output = child.wait_with_output().unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(status), "SIG{signal}:\n{err}");
        assert!(
            err.contains("stopped by SIG") && err.contains("run the same command again"),
            "SIG{signal}:\n{err}"
        );
        let kept = finished_layers(&out);
        assert!((1..12).contains(&kept), "SIG{signal}: {kept} layers kept");
        let again = args(&model, &out);
        let again: Vec<&str> = again.iter().map(String::as_str).collect();
        let output = layerstream(&again, home.path());
        assert_succeeds(&output);
        assert!(stderr(&output).contains(&format!("{kept} layer(s) already finished")));
        assert_eq!(
            std::fs::read(out.join("report.json")).unwrap(),
            std::fs::read(reference.join("report.json")).unwrap(),
            "SIG{signal}"
        );
    }
}
