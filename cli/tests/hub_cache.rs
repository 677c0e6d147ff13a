//! `--model ORG/NAME[@REVISION]` through a Hugging Face cache laid out as `huggingface_hub`
//! lays it out (blobs, symlinked snapshots, refs), read without a network (issue 23, part 1):
//! a revision by branch and by commit, `HF_HUB_CACHE` and `HF_HOME`, and clear errors for a
//! model not in the cache, an unknown revision, a missing snapshot and a broken symlink.

mod common;

use common::assert_fails_with;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The llama3 fixture as `models--test-org--tiny-llama` under `hub`, refs main and v1.
fn lay_out(hub: &Path) -> PathBuf {
    let repo = hub.join("models--test-org--tiny-llama");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    let fixture = layerstream_tests::fixture_model("llama3");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        let blob = layerstream_planner::progress::sha256_hex(&bytes);
        std::fs::write(repo.join("blobs").join(&blob), &bytes).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{blob}"),
            snapshot.join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{COMMIT}\n")).unwrap();
    repo
}

fn inspect(home: &Path, model: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args(["inspect", "--model", model])
        .current_dir(home);
    for name in ["HF_HUB_CACHE", "HF_HOME", "HOME"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

#[test]
fn a_model_id_opens_its_snapshot_by_branch_or_commit() {
    let home = tempfile::tempdir().unwrap();
    let hub = home.path().join("hub");
    lay_out(&hub);
    let cache = hub.to_str().unwrap();
    for model in [
        "test-org/tiny-llama",
        "test-org/tiny-llama@v1",
        &format!("test-org/tiny-llama@{COMMIT}"),
    ] {
        let out = inspect(home.path(), model, &[("HF_HUB_CACHE", cache)]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{model}: {stderr}");
        assert!(stdout.contains("llama"), "{stdout}");
        assert!(
            stderr.contains(&format!("snapshot {COMMIT}")),
            "{model}: {stderr}"
        );
    }
    // HF_HOME/hub, and ~/.cache/huggingface/hub.
    let hf_home = home.path().join("hf");
    lay_out(&hf_home.join("hub"));
    let out = inspect(
        home.path(),
        "test-org/tiny-llama",
        &[("HF_HOME", hf_home.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = home.path().join("user");
    lay_out(&user.join(".cache/huggingface/hub"));
    let out = inspect(
        home.path(),
        "test-org/tiny-llama",
        &[("HOME", user.to_str().unwrap())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_model_not_in_the_cache_an_unknown_revision_and_broken_snapshots_are_explained() {
    let home = tempfile::tempdir().unwrap();
    let hub = home.path().join("hub");
    let repo = lay_out(&hub);
    let env = [("HF_HUB_CACHE", hub.to_str().unwrap())];
    assert_fails_with(
        &inspect(home.path(), "other-org/absent", &env),
        &[
            "other-org/absent",
            "not in the Hugging Face cache",
            "huggingface-cli download other-org/absent",
        ],
    );
    assert_fails_with(
        &inspect(home.path(), "test-org/tiny-llama@v9", &env),
        &["no revision \"v9\"", "main", "v1"],
    );
    std::fs::write(repo.join("refs/stale"), "f".repeat(40)).unwrap();
    assert_fails_with(
        &inspect(home.path(), "test-org/tiny-llama@stale", &env),
        &["snapshot", "is missing", "interrupted download"],
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    let target = std::fs::read_link(snapshot.join("config.json")).unwrap();
    std::fs::remove_file(snapshot.join(&target)).unwrap();
    assert_fails_with(
        &inspect(home.path(), "test-org/tiny-llama", &env),
        &["config.json", "points to a blob that is not there"],
    );
}
