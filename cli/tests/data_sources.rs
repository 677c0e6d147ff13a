//! `--data DIR`, `--data 'GLOB'` and `--data -` (issue 23, part 3): a folder's data files or
//! a glob's matches are read in sorted order as one stream (what one file holding them in
//! that order gives), standard input as one text document; an empty folder, a stray file in
//! it and a glob without matches are refused naming them.

mod common;

use common::{assert_fails_with, assert_succeeds, fixture_model_path, layerstream};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn score(home: &Path, data: &str, out: &str) -> serde_json::Value {
    let model = fixture_model_path("llama3");
    let args = [
        "score",
        "--model",
        &model,
        "--data",
        data,
        "--num-samples",
        "3",
        "--seq-len",
        "24",
        "--device",
        "cpu",
        "--out",
        out,
    ];
    assert_succeeds(&layerstream(&args, home));
    serde_json::from_slice(&std::fs::read(home.join(out).join("score.json")).unwrap()).unwrap()
}

/// The fixture documents split over three jsonl files, and the same lines in one file.
fn split_documents(home: &Path) {
    let lines: Vec<String> = std::fs::read_to_string(layerstream_tests::fixture_docs())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let dir = home.join("shards");
    std::fs::create_dir_all(&dir).unwrap();
    // Named so that sorting matters: 2 before 10 only in the wrong (numeric) order.
    for (i, (name, range)) in [
        ("part-10.jsonl", 0..2),
        ("part-2.jsonl", 2..4),
        ("part-3.jsonl", 4..lines.len()),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = i;
        std::fs::write(dir.join(name), lines[range].join("\n") + "\n").unwrap();
    }
    std::fs::write(home.join("all.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_folder_and_a_glob_read_their_files_in_sorted_order_as_one_stream() {
    let home = tempfile::tempdir().unwrap();
    split_documents(home.path());
    let one = score(home.path(), "all.jsonl", "one");
    let folder = score(home.path(), "shards", "folder");
    let glob = score(home.path(), "shards/part-*.jsonl", "glob");
    assert_eq!(
        folder["sequences"], one["sequences"],
        "part-10, part-2, part-3 in that order"
    );
    assert_eq!(glob["sequences"], one["sequences"]);
    let model = fixture_model_path("llama3");
    let analyze = |data: &str, out: &str| {
        let args = [
            "analyze",
            "--model",
            &model,
            "--data",
            data,
            "--num-samples",
            "2",
            "--seq-len",
            "16",
            "--device",
            "cpu",
            "--out",
            out,
        ];
        assert_succeeds(&layerstream(&args, home.path()));
        let p: serde_json::Value = serde_json::from_slice(
            &std::fs::read(home.path().join(out).join("progress.json")).unwrap(),
        )
        .unwrap();
        p["data_fingerprint"].as_str().unwrap().to_string()
    };
    let (of_file, of_folder) = (analyze("all.jsonl", "a1"), analyze("shards", "a2"));
    assert!(
        of_folder.starts_with(&of_file) && of_folder.contains("+files:"),
        "{of_file} {of_folder}"
    );
}

#[test]
fn standard_input_is_one_text_document() {
    let home = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(layerstream_tests::fixture_docs()).unwrap();
    std::fs::write(home.path().join("doc.txt"), &text).unwrap();
    let from_file = score(home.path(), "doc.txt", "file");
    let model = fixture_model_path("llama3");
    let mut child = Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args([
            "score",
            "--model",
            &model,
            "--data",
            "-",
            "--num-samples",
            "3",
            "--seq-len",
            "24",
            "--device",
            "cpu",
            "--out",
            "stdin",
        ])
        .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
        .current_dir(home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let from_stdin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.path().join("stdin/score.json")).unwrap())
            .unwrap();
    assert_eq!(from_stdin["sequences"], from_file["sequences"]);
}

#[test]
fn an_empty_folder_a_stray_file_and_a_glob_without_matches_are_refused() {
    let home = tempfile::tempdir().unwrap();
    split_documents(home.path());
    let model = fixture_model_path("llama3");
    let run = |data: &str| {
        let args = [
            "analyze",
            "--model",
            &model,
            "--data",
            data,
            "--num-samples",
            "2",
            "--seq-len",
            "16",
            "--device",
            "cpu",
            "--out",
            "out",
        ];
        layerstream(&args, home.path())
    };
    std::fs::create_dir_all(home.path().join("empty")).unwrap();
    assert_fails_with(&run("empty"), &["empty", "empty folder"]);
    std::fs::write(home.path().join("shards/README.md"), "notes").unwrap();
    assert_fails_with(
        &run("shards"),
        &["README.md", "not a .txt, .jsonl or .parquet"],
    );
    assert_fails_with(
        &run("shards/*.parquet"),
        &["shards/*.parquet", "matches no file"],
    );
}
