//! The job-array recipes of docs/scaling.md, run as far as this machine allows (issue 20):
//! the Slurm array and merge job scripts, the Kubernetes Indexed Job's and SkyPilot's shard
//! and merge commands, each run with the variables its scheduler sets; the merged report is
//! the unsharded run's byte for byte. (No scheduler runs here: the scripts are what its
//! tasks execute.)

mod common;

use common::{assert_succeeds, layerstream};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const ANALYZE_ARGS: &str = "--device cpu --num-samples 5 --seq-len 48";

fn script(home: &Path, file: &str, out: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new("sh");
    command
        .arg(repo().join(file))
        .current_dir(repo())
        .env("LAYERSTREAM", env!("CARGO_BIN_EXE_layerstream"))
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .env("ANALYZE_ARGS", ANALYZE_ARGS)
        .env("OUT", out);
    for name in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "JOB_COMPLETION_INDEX",
        "SKYPILOT_NODE_RANK",
        "SKYPILOT_NUM_NODES",
        "SHARDS",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn unsharded(home: &Path) -> Vec<u8> {
    let mut args = vec!["analyze", "--out", "whole"];
    args.extend(ANALYZE_ARGS.split(' '));
    assert_succeeds(&layerstream(&args, home));
    std::fs::read(home.join("whole/report.json")).unwrap()
}

#[test]
fn the_slurm_array_and_merge_job_give_the_unsharded_report() {
    let home = tempfile::tempdir().unwrap();
    let whole = unsharded(home.path());
    let out = home.path().join("slurm");
    for task in ["0", "1", "2", "3"] {
        let env = [
            ("SLURM_ARRAY_TASK_ID", task),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
        ];
        assert_succeeds(&script(
            home.path(),
            "docs/scaling/slurm-array.sbatch",
            &out,
            &env,
        ));
    }
    // A requeued task runs again: it finds its shard finished.
    let again = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ];
    assert_succeeds(&script(
        home.path(),
        "docs/scaling/slurm-array.sbatch",
        &out,
        &again,
    ));
    assert_succeeds(&script(
        home.path(),
        "docs/scaling/slurm-merge.sbatch",
        &out,
        &[],
    ));
    assert!(std::fs::read(out.join("merged/report.json")).unwrap() == whole);
}

#[test]
fn the_kubernetes_indexed_job_and_skypilot_commands_give_the_unsharded_report() {
    let home = tempfile::tempdir().unwrap();
    let whole = unsharded(home.path());
    let k8s = home.path().join("k8s");
    for index in ["0", "1", "2"] {
        let env = [("JOB_COMPLETION_INDEX", index), ("SHARDS", "3")];
        assert_succeeds(&script(home.path(), "docs/scaling/shard.sh", &k8s, &env));
    }
    assert_succeeds(&script(
        home.path(),
        "docs/scaling/merge.sh",
        &k8s,
        &[("WAIT", "1")],
    ));
    assert!(std::fs::read(k8s.join("merged/report.json")).unwrap() == whole);
    let sky = home.path().join("sky");
    for rank in ["1", "0"] {
        let env = [("SKYPILOT_NODE_RANK", rank), ("SKYPILOT_NUM_NODES", "2")];
        assert_succeeds(&script(home.path(), "docs/scaling/shard.sh", &sky, &env));
    }
    assert_succeeds(&script(home.path(), "docs/scaling/merge.sh", &sky, &[]));
    assert!(std::fs::read(sky.join("merged/report.json")).unwrap() == whole);
    // Outside a job array the shard script says what it needs.
    let outside = script(home.path(), "docs/scaling/shard.sh", &sky, &[]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("run it from a job array"));
}
