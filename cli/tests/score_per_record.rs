//! `score --per-record` against PyTorch (`tests/fixtures/chat/reference.json`, written by
//! `tests/fixtures/score_reference.py` with transformers): per record the tokens, the
//! completion-only NLL (prompt labels at -100), the summed log-probability and the top-k
//! log-probabilities at the last prompt position, records of different lengths in one
//! micro-batch, on every fixture transformers loads; a chat template rendered as
//! `apply_chat_template` renders it; truncation; errors that name the record.

mod common;

use common::{assert_fails_with, assert_succeeds, fixture_model_path, stderr, stdout};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn chat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat")
}

fn score(home: &Path, fixture: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let model = fixture_model_path(fixture);
    let mut args = vec![
        "score",
        "--per-record",
        "--model",
        &model,
        "--device",
        "cpu",
        "--out",
        out,
        "--micro-batch-tokens",
        "96",
    ];
    args.extend_from_slice(extra);
    common::layerstream(&args, home)
}

fn lines(home: &Path, out: &str) -> Vec<Value> {
    std::fs::read_to_string(home.join(out).join("scores.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn close(what: &str, got: f64, want: f64, rtol: f64) {
    assert!(
        (got - want).abs() <= rtol * want.abs().max(1.0),
        "{what}: {got} vs PyTorch {want}"
    );
}

/// Each line against its reference: tokens, scored tokens, NLL, log-probability, top-k.
fn compare(what: &str, got: &[Value], want: &[Value]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let what = format!("{what} record {i}");
        assert_eq!(g["record"], i, "{what}");
        assert_eq!(g["tokens"], w["tokens"], "{what}: tokens");
        assert_eq!(
            g["scored_tokens"], w["scored_tokens"],
            "{what}: scored tokens"
        );
        let f = |v: &Value| v.as_f64().unwrap();
        close(
            &format!("{what} mean NLL"),
            f(&g["mean_nll"]),
            f(&w["mean_nll"]),
            1e-5,
        );
        close(
            &format!("{what} sum"),
            f(&g["sum_logprob"]),
            f(&w["sum_logprob"]),
            1e-5,
        );
        let (gt, wt) = (
            g["top_logprobs"].as_array().unwrap(),
            w["top_logprobs"].as_array().unwrap(),
        );
        assert_eq!(gt.len(), wt.len(), "{what}: top-k");
        for (a, b) in gt.iter().zip(wt) {
            close(
                &format!("{what} top log-probability"),
                f(&a["logprob"]),
                f(&b["logprob"]),
                1e-4,
            );
            assert!(a["token"].is_string(), "{what}: {a}");
        }
        // The same tokens unless two are tied within the tolerance.
        let ids = |t: &[Value]| {
            t.iter()
                .map(|x| x["id"].as_u64().unwrap())
                .collect::<Vec<_>>()
        };
        let distinct = wt
            .windows(2)
            .all(|p| f(&p[0]["logprob"]) - f(&p[1]["logprob"]) > 1e-4);
        if distinct {
            assert_eq!(ids(gt), ids(wt), "{what}: top-k tokens");
        }
    }
}

#[test]
fn every_fixture_scores_records_as_pytorch_does() {
    let home = tempfile::tempdir().unwrap();
    let reference: Value =
        serde_json::from_slice(&std::fs::read(chat_dir().join("reference.json")).unwrap()).unwrap();
    let plain = chat_dir().join("plain.jsonl").display().to_string();
    let records = chat_dir().join("records.jsonl").display().to_string();
    let template = chat_dir().join("template.jinja").display().to_string();
    let fields = [
        "--completion-field",
        "completion",
        "--top-logprobs",
        "3",
        "--id-field",
        "id",
    ];
    for (fixture, want) in reference.as_object().unwrap() {
        let out = format!("{fixture}-plain");
        let args = [
            &[
                "--data",
                &plain,
                "--prompt-field",
                "prompt",
                "--chat-template",
                "none",
            ][..],
            &fields,
        ]
        .concat();
        let output = score(home.path(), fixture, &out, &args);
        assert_succeeds(&output);
        assert!(stdout(&output).contains("4 records"), "{}", stdout(&output));
        compare(
            &format!("{fixture} plain"),
            &lines(home.path(), &out),
            want["plain"].as_array().unwrap(),
        );

        let out = format!("{fixture}-chat");
        let args = [
            &[
                "--data",
                &records,
                "--prompt-field",
                "prompt",
                "--chat-template",
                &template,
            ][..],
            &fields,
        ]
        .concat();
        assert_succeeds(&score(home.path(), fixture, &out, &args));
        let got = lines(home.path(), &out);
        let chat = want["chat"].as_array().unwrap();
        for (g, w) in got.iter().zip(chat) {
            assert_eq!(
                g["rendered"], w["rendered"],
                "{fixture}: rendered as apply_chat_template"
            );
        }
        compare(&format!("{fixture} chat"), &got, chat);
        assert_eq!(got[1]["id"], "colours");
    }
}

#[test]
fn long_records_are_truncated_and_flagged() {
    let home = tempfile::tempdir().unwrap();
    let plain = chat_dir().join("plain.jsonl").display().to_string();
    let args = [
        "--data",
        &plain,
        "--prompt-field",
        "prompt",
        "--completion-field",
        "completion",
        "--max-length",
        "20",
    ];
    assert_succeeds(&score(home.path(), "llama3", "short", &args));
    let short = lines(home.path(), "short");
    let full_args = &args[..6];
    assert_succeeds(&score(home.path(), "llama3", "full", full_args));
    let full = lines(home.path(), "full");
    for (s, f) in short.iter().zip(&full) {
        let (st, ft) = (s["tokens"].as_u64().unwrap(), f["tokens"].as_u64().unwrap());
        assert_eq!(s["truncated"], ft > 20, "{s}");
        assert_eq!(st, ft.min(20), "{s}");
    }
    // Record 2's prompt alone is longer than 20 tokens: nothing of its completion is left.
    assert_eq!(short[2]["scored_tokens"], 0);
    assert!(short[2]["mean_nll"].is_null());
    // A text record scored whole, then cut.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("short/score.json")).unwrap())
            .unwrap();
    assert_eq!(
        summary["truncated_records"],
        short.iter().filter(|l| l["truncated"] == true).count()
    );
}

#[test]
fn bad_records_are_named_and_nothing_is_written() {
    let home = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = home.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            "empty.jsonl",
            "{\"text\": \"fine text\"}\n{\"text\": \"\"}\n",
            vec![],
            vec!["empty.jsonl", "record 1", "line 2", "nothing to score"],
        ),
        (
            "missing.jsonl",
            "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": \"a\"}\n",
            vec![
                "--prompt-field",
                "prompt",
                "--completion-field",
                "completion",
            ],
            vec![
                "missing.jsonl",
                "line 3",
                "no field \"completion\"",
                "--completion-field",
            ],
        ),
        (
            "number.jsonl",
            "{\"text\": 42}\n",
            vec![],
            vec![
                "number.jsonl",
                "line 1",
                "field \"text\" is 42, not a string",
            ],
        ),
        (
            "turns.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"b\"}], \"c\": \"x\"}\n",
            vec!["--completion-field", "c"],
            vec!["turns.jsonl", "line 1", "Conversation roles must alternate"],
        ),
        ("none.jsonl", "\n\n", vec![], vec!["no records"]),
    ];
    let template = chat_dir().join("template.jinja").display().to_string();
    for (name, text, extra, needles) in cases {
        let data = write(name, text);
        let out = format!("out-{name}");
        let mut args = vec!["--data", &data, "--chat-template", &template];
        args.extend(extra.iter());
        assert_fails_with(&score(home.path(), "llama3", &out, &args), &needles);
        assert!(
            !home.path().join(&out).join("scores.jsonl").exists(),
            "{name}"
        );
    }
    // A record with messages and no template to render them.
    let data = write(
        "chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
    );
    let output = score(
        home.path(),
        "llama3",
        "out-chat",
        &["--data", &data, "--chat-template", "none"],
    );
    assert_fails_with(
        &output,
        &[
            "chat.jsonl",
            "line 1",
            "no chat template",
            "--chat-template FILE",
        ],
    );
    assert!(stderr(&output).contains("record 0"));
}

#[test]
fn text_lines_are_records_scored_whole() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("lines.txt");
    std::fs::write(
        &data,
        "the river ran past the mill\n\nthree bears lived in the woods\n",
    )
    .unwrap();
    let data = data.display().to_string();
    assert_succeeds(&score(
        home.path(),
        "llama3",
        "lines",
        &["--data", &data, "--txt-lines"],
    ));
    let got = lines(home.path(), "lines");
    assert_eq!(got.len(), 2);
    for line in &got {
        assert_eq!(
            line["scored_tokens"].as_u64().unwrap() + 1,
            line["tokens"].as_u64().unwrap()
        );
        let mean = line["mean_nll"].as_f64().unwrap();
        assert!((line["perplexity"].as_f64().unwrap() - mean.exp()).abs() < 1e-6 * mean.exp());
    }
}
