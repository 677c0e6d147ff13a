//! `analyze --devices` (issue 20): one shard process per device, merged into `--out`; on
//! this machine the shards run on the CPU (`--device cpu`), the supervision and the merge are
//! the same. The merged report is the unsharded run's byte for byte, also when a shard
//! process is killed with SIGKILL mid-run (the supervisor starts it again and it resumes).

mod common;

use common::{assert_fails_with, assert_succeeds, layerstream, stderr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD: [&str; 6] = ["--device", "cpu", "--num-samples", "8", "--seq-len", "2048"];

fn args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["analyze", "--out", out, "--checkpoint-every", "0"];
    args.extend(WORKLOAD);
    args.extend(extra);
    args
}

#[test]
fn devices_run_one_shard_per_device_and_merge_to_the_unsharded_report() {
    let home = tempfile::tempdir().unwrap();
    assert_succeeds(&layerstream(&args("whole", &[]), home.path()));
    let multi = layerstream(&args("multi", &["--devices", "0,1,2"]), home.path());
    assert_succeeds(&multi);
    assert!(
        stderr(&multi).contains("3 shards on GPUs 0, 1, 2"),
        "{}",
        stderr(&multi)
    );
    let report = |out: &str| std::fs::read(home.path().join(out).join("report.json")).unwrap();
    assert!(report("multi") == report("whole"), "merged report differs");
    for i in 0..3 {
        assert!(
            home.path()
                .join(format!("multi/shards/shard-{i}/report.json"))
                .exists()
        );
    }
    // The same command again finds everything finished and merges again.
    assert_succeeds(&layerstream(
        &args("multi", &["--devices", "0,1,2"]),
        home.path(),
    ));
    assert!(report("multi") == report("whole"));
    assert_fails_with(
        &layerstream(&args("bad", &["--devices", "0,0"]), home.path()),
        &["--devices 0,0", "named twice"],
    );
    assert_fails_with(
        &layerstream(
            &args("bad", &["--devices", "0,1", "--shard", "0/2"]),
            home.path(),
        ),
        &["--devices runs its own shards"],
    );
}

#[test]
fn a_shard_process_killed_mid_run_is_started_again_and_the_report_is_unchanged() {
    let home = tempfile::tempdir().unwrap();
    assert_succeeds(&layerstream(&args("whole", &[]), home.path()));
    let supervisor = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(args("multi", &["--devices", "0,1"]))
        .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
        .env("LAYERSTREAM_THREADS", "1")
        .current_dir(home.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let shard = home.path().join("multi/shards/shard-1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed = false;
    while Instant::now() < deadline && !killed {
        let layers = std::fs::read(shard.join("progress.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map_or(0, |p| p["layers"].as_object().map_or(0, |l| l.len()));
        let pid = std::fs::read_to_string(shard.join(".layerstream.lock")).unwrap_or_default();
        if (1..4).contains(&layers) && !pid.trim().is_empty() {
            let status = Command::new("kill")
                .args(["-9", pid.trim()])
                .status()
                .unwrap();
            killed = status.success();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        killed,
        "the shard finished (or never started) before it could be killed"
    );
    let output = supervisor.wait_with_output().unwrap();
    assert_succeeds(&output);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("shard 1 (GPU 1) ended") && err.contains("starting it again"),
        "{err}"
    );
    let report = |out: &str| std::fs::read(home.path().join(out).join("report.json")).unwrap();
    assert!(
        report("multi") == report("whole"),
        "merged report differs after the kill"
    );
}
