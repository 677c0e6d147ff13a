//! Issue 15 items 6, 10, 12 and 13: extreme flags and config values, special tokens and
//! messages, each through the binary where a user meets them: a clear error naming the
//! flag, key, file or tensor, never a panic, an abort or a silent fallback.

mod common;

use common::{assert_fails_with, copy_fixture_model, docs, edit_config, layerstream, stderr};
use serde_json::json;
use std::path::Path;
use std::process::Output;

/// A refusal by the binary: exit 1 (our error) or 2 (a flag clap refused), no panic, the
/// needles in stderr.
fn assert_refused(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    let code = output.status.code();
    assert!(
        matches!(code, Some(1) | Some(2)),
        "expected exit 1 or 2, got {code:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

fn analyze_with(home: &Path, model: &str, extra: &[&str]) -> Output {
    let out = home.join(format!("out-{}", extra.join("_").replace('/', "")));
    let data = docs();
    let mut args = common::small_analyze_args(model, &data, out.to_str().unwrap());
    args.extend_from_slice(extra);
    layerstream(&args, home)
}

#[test]
fn extreme_flags_are_refused_naming_the_flag() {
    let home = tempfile::tempdir().unwrap();
    let model = common::fixture_model_path("llama3");
    for (flag, value, needle) in [
        ("--checkpoint-every", "inf", "--checkpoint-every"),
        ("--checkpoint-every", "NaN", "--checkpoint-every"),
        ("--checkpoint-every=-1", "", "between 0"),
        ("--bootstrap", "4294967296", "--bootstrap"),
        ("--bootstrap", "10000000", "more than 100000"),
        ("--num-samples", "18446744073709551615", "--num-samples"),
        ("--threshold", "1e40", "--threshold"),
        ("--vram", "1e400GiB", "too large"),
        ("--micro-batch-tokens", "0", "at least 1"),
    ] {
        let extra: Vec<&str> = [flag, value]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        assert_refused(&analyze_with(home.path(), &model, &extra), &[needle]);
    }
    // Far more sequences than the data holds: refused on the token count, not by an abort
    // allocating room for them.
    let output = analyze_with(home.path(), &model, &["--num-samples", "1000000000"]);
    assert_fails_with(&output, &["sequences of 32 tokens need", "--num-samples"]);
    // Estimates refuse numbers they would divide by or overflow with.
    for (flag, value) in [
        ("--tflops", "0"),
        ("--h2d-gbps", "-1"),
        ("--disk-gbps", "NaN"),
        ("--num-samples", "0"),
        ("--seq-len", "0"),
    ] {
        let args = [
            "estimate",
            "--model",
            model.as_str(),
            &format!("{flag}={value}"),
        ];
        assert_refused(&layerstream(&args, home.path()), &[flag]);
    }
    let args = [
        "estimate",
        "--model",
        &model,
        "--num-samples",
        "4294967296",
        "--seq-len",
        "128",
    ];
    let output = layerstream(&args, home.path());
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !common::stdout(&output).contains(" 0 B "),
        "hidden bytes overflowed"
    );
    let bad_threads = std::process::Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(["inspect", "--model", &model])
        .env("LAYERSTREAM_THREADS", "abc")
        .output()
        .unwrap();
    assert_refused(&bad_threads, &["LAYERSTREAM_THREADS", "abc"]);
}

#[test]
fn notes_and_refusals_for_settings_that_would_do_nothing() {
    let home = tempfile::tempdir().unwrap();
    let model = common::fixture_model_path("llama3");
    let output = analyze_with(home.path(), &model, &["--batches", "100"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("--batches 100 needs at least 100 sequences"));
    let output = analyze_with(home.path(), &model, &["--save-activations", "router"]);
    assert_refused(&output, &["--save-activations router", "not an activation"]);
}

/// (key, value, words the error must hold) for one family's config.
fn refuse_config(family: &str, edits: &[(&str, serde_json::Value, &[&str])]) {
    let home = tempfile::tempdir().unwrap();
    for (i, (key, value, needles)) in edits.iter().enumerate() {
        let model = copy_fixture_model(family, &home.path().join(i.to_string()));
        edit_config(&model, |c| {
            c.insert(key.to_string(), value.clone());
        });
        let started = std::time::Instant::now();
        let output = layerstream(
            &["inspect", "--model", model.to_str().unwrap()],
            home.path(),
        );
        let mut all = vec!["config.json"];
        all.extend_from_slice(needles);
        assert_fails_with(&output, &all);
        assert!(
            started.elapsed().as_secs() < 10,
            "{key} = {value} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn config_values_that_would_abort_panic_or_make_nan_are_refused() {
    refuse_config(
        "llama3",
        &[
            (
                "num_hidden_layers",
                json!(1_000_000_000_000u64),
                &["num_hidden_layers"],
            ),
            (
                "max_position_embeddings",
                json!(0),
                &["max_position_embeddings"],
            ),
            ("hidden_size", json!("64"), &["`hidden_size`", "string"]),
            ("rms_norm_eps", json!(-1e-5), &["rms_norm_eps"]),
            ("rope_scaling", json!("llama3"), &["rope_scaling"]),
            ("rope_scaling", json!(8), &["rope_scaling"]),
            ("eos_token_id", json!(4_294_967_297u64), &["eos_token_id"]),
            ("eos_token_id", json!(320), &["eos_token_id", "vocab"]),
        ],
    );
    refuse_config(
        "olmoe",
        &[
            ("clip_qkv", json!(-1.0), &["clip_qkv"]),
            ("num_experts", json!(10_000_000), &["num_experts"]),
        ],
    );
    for family in ["qwen2", "mistral"] {
        refuse_config(family, &[("sliding_window", json!(0), &["sliding_window"])]);
    }
}

#[test]
fn a_byte_order_mark_in_config_and_data_is_accepted() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(model.join("config.json"), format!("\u{feff}{config}")).unwrap();
    let data = home.path().join("bom.jsonl");
    let lines = std::fs::read_to_string(docs()).unwrap();
    std::fs::write(&data, format!("\u{feff}{lines}")).unwrap();
    let out = home.path().join("out");
    let (model, data) = (model.display().to_string(), data.display().to_string());
    let output = layerstream(
        &common::small_analyze_args(&model, &data, out.to_str().unwrap()),
        home.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
}

/// Rewrites `tokenizer_config.json` of `model` with `key` set to `value`.
fn edit_tokenizer_config(model: &Path, key: &str, value: serde_json::Value) {
    let path = model.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn special_tokens_never_fall_back_silently() {
    let home = tempfile::tempdir().unwrap();
    for (i, (key, value, needles)) in [
        (
            "eos_token",
            json!("<|not-a-token|>"),
            vec!["eos_token", "<|not-a-token|>"],
        ),
        (
            "bos_token",
            json!("<|not-a-token|>"),
            vec!["bos_token", "<|not-a-token|>"],
        ),
        (
            "add_bos_token",
            json!("yes"),
            vec!["add_bos_token", "true or false"],
        ),
        (
            "add_bos_token",
            json!(true),
            vec!["add_bos_token", "no `bos_token`"],
        ),
    ]
    .into_iter()
    .enumerate()
    {
        // The qwen2 tokenizer puts nothing before a text; here it names no bos_token either.
        let family = if i == 3 { "qwen2" } else { "llama3" };
        let model = copy_fixture_model(family, &home.path().join(i.to_string()));
        if i == 3 {
            edit_tokenizer_config(&model, "bos_token", serde_json::Value::Null);
        }
        edit_tokenizer_config(&model, key, value);
        let output = analyze_with(home.path(), model.to_str().unwrap(), &[]);
        let mut all = vec!["tokenizer_config.json"];
        all.extend(needles);
        assert_fails_with(&output, &all);
    }
}

#[test]
fn messages_name_the_right_thing_once() {
    let home = tempfile::tempdir().unwrap();
    // An I/O error prints the operating system's reason once.
    let model = common::fixture_model_path("llama3");
    let out = home.path().join("odd-out");
    let odd = copy_fixture_model("llama3", &home.path().join("odd"));
    std::fs::remove_file(odd.join("tokenizer_config.json")).unwrap();
    std::fs::create_dir(odd.join("tokenizer_config.json")).unwrap();
    let (odd_text, data) = (odd.display().to_string(), docs());
    let args = common::small_analyze_args(&odd_text, &data, out.to_str().unwrap());
    let output = layerstream(&args, home.path());
    assert_fails_with(&output, &["tokenizer_config.json", "Is a directory"]);
    assert_eq!(
        stderr(&output).matches("Is a directory").count(),
        1,
        "{}",
        stderr(&output)
    );
    // --model pointing at a file.
    let config = format!("{model}/config.json");
    let output = layerstream(&["inspect", "--model", &config], home.path());
    assert_fails_with(&output, &["is a file", "folder"]);
    assert!(!stderr(&output).contains("config.json/config.json"));
    // model.safetensors that is a folder.
    let folder_model = copy_fixture_model("llama3", &home.path().join("folder"));
    std::fs::remove_file(folder_model.join("model.safetensors")).unwrap();
    std::fs::create_dir(folder_model.join("model.safetensors")).unwrap();
    let output = layerstream(
        &["inspect", "--model", folder_model.to_str().unwrap()],
        home.path(),
    );
    assert_fails_with(&output, &["model.safetensors", "is a folder"]);
}

/// Splits `model.safetensors` into two shards with an index that maps one tensor to the
/// shard that does not hold it.
fn wrong_shard_model(into: &Path) -> std::path::PathBuf {
    let model = copy_fixture_model("llama3", into);
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::remove_file(model.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = file.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let half = tensors.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (index, shard) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", index + 1);
        for (tensor, _) in shard {
            weight_map.insert(tensor.clone(), json!(name.clone()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = shard.to_vec();
        std::fs::write(
            model.join(&name),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    let moved = tensors[0].0.clone();
    weight_map.insert(moved, json!("model-00002-of-00002.safetensors"));
    let index = json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        model.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    model
}

#[test]
fn a_tensor_mapped_to_the_wrong_shard_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = wrong_shard_model(home.path());
    let output = layerstream(
        &["inspect", "--model", model.to_str().unwrap()],
        home.path(),
    );
    assert_fails_with(
        &output,
        &[
            "model.safetensors.index.json",
            "does not hold it",
            "model-00001-of-00002",
        ],
    );
}

#[test]
fn a_malformed_tensor_entry_is_named() {
    let home = tempfile::tempdir().unwrap();
    let model = copy_fixture_model("llama3", home.path());
    let path = model.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + header_len].to_vec()).unwrap();
    // One tensor's shape made one row longer than its data (same header length).
    let target = "\"model.norm.weight\":{\"dtype\":\"BF16\",\"shape\":[64]";
    assert!(header.contains(target), "{header}");
    let damaged = header.replace(target, &target.replace("[64]", "[65]"));
    bytes[8..8 + header_len].copy_from_slice(damaged.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let output = layerstream(
        &["inspect", "--model", model.to_str().unwrap()],
        home.path(),
    );
    assert_fails_with(&output, &["model.safetensors", "model.norm.weight"]);
}

/// `layerstream inspect ... | head` with the reader gone: the report commands end quietly by
/// SIGPIPE, as other command-line tools do, not with a panic on the failed print.
#[test]
fn a_report_command_whose_reader_is_gone_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let home = tempfile::tempdir().unwrap();
    let model = common::fixture_model_path("gpt_oss_mxfp4");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(["inspect", "--model", &model])
        .env("LAYERSTREAM_CACHE_DIR", home.path().join("cache"))
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
    assert_eq!(
        output.status.signal(),
        Some(libc_sigpipe()),
        "{:?}",
        output.status
    );
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}
