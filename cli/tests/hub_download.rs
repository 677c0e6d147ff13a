//! `--download` against a hub served on 127.0.0.1 by the test (`hub_server`): a run fetches
//! config, tokenizer and weights into the Hugging Face cache layout (refs, snapshots linked
//! to blobs) and never `original/`; the cache then serves without a network; a transfer
//! broken off mid-file and a `.part` left by a killed run resume from where they stopped;
//! `estimate` and `inspect` read only the safetensors headers by range requests; 404 and
//! 401 say what to do; without `--download` the error names the flag.

mod common;
mod hub_server;

use common::{assert_fails_with, assert_succeeds, stderr, stdout};
use hub_server::{HubServer, Repo, etag, fixture_repo_dir};
use std::path::Path;
use std::process::{Command, Output};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `layerstream args` with the hub at `endpoint` and the cache in `home/hub`.
fn run(home: &Path, endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args(args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("HF_ENDPOINT", endpoint)
        .env("HOME", home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HOME")
        .env_remove("LAYERSTREAM_DOWNLOAD")
        .current_dir(home);
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn analyze_args<'a>(model: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "analyze",
        "--model",
        model,
        "--device",
        "cpu",
        "--num-samples",
        "2",
        "--seq-len",
        "32",
        "--bootstrap",
        "0",
        "--out",
        out,
    ]
}

fn report_layers(path: &Path) -> serde_json::Value {
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path.join("report.json")).unwrap()).unwrap();
    report["layers"].clone()
}

#[test]
fn a_run_downloads_what_it_reads_into_the_cache_layout_and_then_runs_offline() {
    let home = tempfile::tempdir().unwrap();
    let served = fixture_repo_dir(
        "qwen2",
        home.path(),
        &[
            ("original/consolidated.00.pth", b"not read"),
            ("README.md", b"# card"),
        ],
    );
    let server = HubServer::start(vec![Repo::from_dir("org/tiny-qwen2", COMMIT, &served)]);
    let output = run(
        home.path(),
        &server.endpoint,
        &[&analyze_args("org/tiny-qwen2", "out")[..], &["--download"]].concat(),
        &[],
    );
    assert_succeeds(&output);
    let repo = home.path().join("hub/models--org--tiny-qwen2");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        COMMIT
    );
    let snapshot = repo.join("snapshots").join(COMMIT);
    for file in std::fs::read_dir(&served).unwrap().flatten() {
        let name = file.file_name();
        if file.path().is_dir() || name == "README.md" {
            continue;
        }
        let link = snapshot.join(&name);
        assert!(link.is_symlink(), "{}", link.display());
        let target = std::fs::canonicalize(&link).unwrap();
        assert!(target.starts_with(std::fs::canonicalize(repo.join("blobs")).unwrap()));
        assert_eq!(
            std::fs::read(&link).unwrap(),
            std::fs::read(file.path()).unwrap()
        );
    }
    let asked: Vec<String> = server.log().iter().map(|r| r.path.clone()).collect();
    assert!(
        !asked
            .iter()
            .any(|p| p.contains("original/") || p.contains("README")),
        "{asked:?}"
    );
    // The same analysis of the folder itself gives the same layers.
    let folder = served.to_str().unwrap().to_string();
    assert_succeeds(&run(
        home.path(),
        &server.endpoint,
        &analyze_args(&folder, "direct"),
        &[],
    ));
    assert_eq!(
        report_layers(&home.path().join("out")),
        report_layers(&home.path().join("direct"))
    );
    // Without a hub (and without --download) the cache serves it.
    drop(server);
    let output = run(
        home.path(),
        "http://127.0.0.1:9",
        &analyze_args("org/tiny-qwen2", "again"),
        &[],
    );
    assert_succeeds(&output);
    assert!(
        stderr(&output).contains(&format!("snapshot {COMMIT}")),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_broken_transfer_and_a_killed_runs_part_file_resume_where_they_stopped() {
    let home = tempfile::tempdir().unwrap();
    let served = fixture_repo_dir("llama3", home.path(), &[]);
    let weights = std::fs::read(served.join("model.safetensors")).unwrap();
    let half = weights.len() as u64 / 2;
    let server = HubServer::start(vec![Repo::from_dir("org/llama", COMMIT, &served)]);
    server.interrupt("model.safetensors", half);
    let args = [&analyze_args("org/llama", "out")[..], &["--download"]].concat();
    assert_succeeds(&run(home.path(), &server.endpoint, &args, &[]));
    let weight_requests: Vec<_> = server
        .log()
        .into_iter()
        .filter(|r| {
            r.path.ends_with("/model.safetensors") && r.range.as_deref() != Some("bytes=0-0")
        })
        .collect();
    assert_eq!(weight_requests[0].sent, half, "{weight_requests:?}");
    assert!(
        weight_requests
            .iter()
            .any(|r| r.range.as_deref() == Some(&format!("bytes={half}-"))),
        "the retry asks for the rest: {weight_requests:?}"
    );
    let snapshot = home
        .path()
        .join("hub/models--org--llama/snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );

    // A `.part` file a killed download left: the next run asks only for the rest.
    let home = tempfile::tempdir().unwrap();
    let blobs = home.path().join("hub/models--org--llama/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let third = weights.len() / 3;
    std::fs::write(
        blobs.join(format!("{}.part", etag(&weights))),
        &weights[..third],
    )
    .unwrap();
    let server = HubServer::start(vec![Repo::from_dir("org/llama", COMMIT, &served)]);
    assert_succeeds(&run(home.path(), &server.endpoint, &args, &[]));
    let sent: u64 = server
        .log()
        .iter()
        .filter(|r| {
            r.path.ends_with("/model.safetensors") && r.range.as_deref() != Some("bytes=0-0")
        })
        .map(|r| r.sent)
        .sum();
    assert_eq!(sent, (weights.len() - third) as u64, "{:?}", server.log());
    let snapshot = home
        .path()
        .join("hub/models--org--llama/snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn estimate_and_inspect_read_only_the_headers() {
    let home = tempfile::tempdir().unwrap();
    let served = fixture_repo_dir("qwen2", home.path(), &[]);
    let server = HubServer::start(vec![Repo::from_dir("org/big", COMMIT, &served)]);
    let folder = served.to_str().unwrap().to_string();
    let estimate = |model: &str, extra: &[&str], env: &[(&str, &str)]| {
        let args = [
            &[
                "estimate",
                "--model",
                model,
                "--num-samples",
                "4",
                "--seq-len",
                "64",
                "--vram",
                "1GiB",
                // A fixed host budget: 80% of the memory available moves between the runs.
                "--ram",
                "16GiB",
            ][..],
            extra,
        ]
        .concat();
        run(home.path(), &server.endpoint, &args, env)
    };
    let local = estimate(&folder, &[], &[]);
    assert_succeeds(&local);
    let remote = estimate("org/big", &["--download"], &[]);
    assert_succeeds(&remote);
    let table = |o: &Output| stdout(o).replace(&folder, "org/big");
    assert_eq!(table(&remote), table(&local));
    // Only ranges of the weights were read, each no larger than a header.
    let weights: u64 = std::fs::read_dir(&served)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let log = server.log();
    let read: u64 = log
        .iter()
        .filter(|r| r.path.ends_with(".safetensors"))
        .map(|r| r.sent)
        .sum();
    assert!(
        log.iter()
            .filter(|r| r.path.ends_with(".safetensors"))
            .all(|r| r.range.is_some())
    );
    assert!(read * 10 < weights, "read {read} of {weights} weight bytes");
    let snapshot = home
        .path()
        .join("hub/models--org--big/snapshots")
        .join(COMMIT);
    assert!(snapshot.join("config.json").exists());
    assert!(
        !snapshot.join("model-00001-of-00011.safetensors").exists(),
        "no weights in the cache"
    );
    // inspect from the same headers (LAYERSTREAM_DOWNLOAD=1 as the flag).
    let inspect = run(
        home.path(),
        &server.endpoint,
        &["inspect", "--model", "org/big"],
        &[("LAYERSTREAM_DOWNLOAD", "1")],
    );
    assert_succeeds(&inspect);
    let direct = run(
        home.path(),
        &server.endpoint,
        &["inspect", "--model", &folder],
        &[],
    );
    assert_eq!(
        stdout(&inspect).replace("org/big", &folder),
        stdout(&direct)
    );
}

#[test]
fn not_found_and_unauthorized_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let served = fixture_repo_dir("llama3", home.path(), &[]);
    let mut gated = Repo::from_dir("org/gated", COMMIT, &served);
    gated.token = Some("secret".into());
    let server = HubServer::start(vec![Repo::from_dir("org/llama", COMMIT, &served), gated]);
    let inspect = |model: &str, env: &[(&str, &str)]| {
        run(
            home.path(),
            &server.endpoint,
            &["inspect", "--model", model, "--download"],
            env,
        )
    };
    assert_fails_with(
        &inspect("org/missing", &[]),
        &["org/missing", "404 Not Found", "check the id"],
    );
    assert_fails_with(
        &inspect("org/llama@v9", &[]),
        &["org/llama@v9", "404 Not Found", "revision"],
    );
    assert_fails_with(
        &inspect("org/gated", &[]),
        &["org/gated", "401 Unauthorized", "HF_TOKEN"],
    );
    assert_fails_with(
        &inspect("org/gated", &[("HF_TOKEN", "wrong")]),
        &["401", "token in HF_TOKEN cannot read it"],
    );
    assert_succeeds(&inspect("org/gated", &[("HF_TOKEN", "secret")]));
    // Without --download, the error says how to get it.
    let output = run(
        home.path(),
        &server.endpoint,
        &["inspect", "--model", "org/llama"],
        &[],
    );
    assert_fails_with(
        &output,
        &["org/llama", "not in the Hugging Face cache", "--download"],
    );
    assert!(
        server
            .log()
            .iter()
            .all(|r| !r.path.contains("org/llama/") || r.path.contains("api"))
    );
}

#[test]
fn a_hub_that_cannot_be_reached_is_named() {
    let home = tempfile::tempdir().unwrap();
    let output = run(
        home.path(),
        "http://127.0.0.1:9",
        &["inspect", "--model", "org/x", "--download"],
        &[],
    );
    assert_fails_with(&output, &["org/x", "cannot reach the hub", "HF_ENDPOINT"]);
}
