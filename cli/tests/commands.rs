//! The commands end to end: the embedded default run, report values against the PyTorch
//! reference, score against PyTorch's loss, inspect against the headers, --help.

mod common;
use common::*;
use layerstream_tests::{FIXTURES, Reference, fixture_model};
use serde_json::Value;

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn analyze_with_no_arguments_runs_the_embedded_default_and_writes_the_report() {
    let home = tempfile::tempdir().unwrap();
    let out = assert_succeeds(&layerstream(&["analyze"], home.path()));
    assert!(
        out.contains("resid_post") && out.contains("report: layerstream-out/report.json"),
        "{out}"
    );
    let report = read_json(&home.path().join("layerstream-out/report.json"));
    assert_eq!(report["schema_version"], 3);
    assert_eq!(report["data"]["num_sequences"], 16);
    assert_eq!(report["data"]["seq_len"], 2048);
    let layers = report["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for layer in layers {
        let points = layer["points"].as_object().unwrap();
        assert_eq!(points.len(), 6);
        assert_eq!(points["resid_post"]["numel"], 16 * 2048 * 128);
        assert_eq!(points["resid_post"]["non_finite"], 0);
        assert_eq!(points["ln1"]["top_dims"].as_array().unwrap().len(), 5);
    }
    // Running again reuses the unpacked assets and gives the same bytes.
    let first = std::fs::read(home.path().join("layerstream-out/report.json")).unwrap();
    assert_succeeds(&layerstream(&["analyze"], home.path()));
    let second = std::fs::read(home.path().join("layerstream-out/report.json")).unwrap();
    assert_eq!(first, second, "report.json is deterministic");
}

#[test]
fn report_statistics_match_the_pytorch_activations() {
    let threshold = 6.0f32;
    for name in ["llama3", "olmo2"] {
        let home = tempfile::tempdir().unwrap();
        let model = fixture_model(name).display().to_string();
        let docs = docs();
        assert_succeeds(&layerstream(
            &[
                "analyze",
                "--model",
                &model,
                "--data",
                &docs,
                "--num-samples",
                "2",
                "--seq-len",
                "32",
                "--device",
                "cpu",
            ],
            home.path(),
        ));
        let report = read_json(&home.path().join("layerstream-out/report.json"));
        let reference = Reference::load(name);
        let mut nonzero_counts = 0;
        for layer in report["layers"].as_array().unwrap() {
            let l = layer["layer"].as_u64().unwrap();
            for (point, summary) in layer["points"].as_object().unwrap() {
                let tensor = reference.get(&format!("blocks.{l}.{point}"));
                let width = *tensor.shape.last().unwrap();
                let what = format!("{name} blocks.{l}.{point}");
                let max_abs = tensor.values.iter().fold(0f32, |m, x| m.max(x.abs()));
                let got_max = summary["max_abs"].as_f64().unwrap() as f32;
                assert!(
                    (got_max - max_abs).abs() <= 1e-4 * max_abs,
                    "{what}: max {got_max} vs {max_abs}"
                );
                // Counts are exact except for values within rounding of the threshold.
                let count = tensor
                    .values
                    .iter()
                    .filter(|x| x.abs() >= threshold)
                    .count() as i64;
                let borderline = tensor
                    .values
                    .iter()
                    .filter(|x| (x.abs() - threshold).abs() <= 1e-3)
                    .count() as i64;
                let got_count = summary["count_ge_threshold"].as_i64().unwrap();
                assert!(
                    (got_count - count).abs() <= borderline,
                    "{what}: count {got_count} vs {count}"
                );
                nonzero_counts += (count > 0) as usize;
                assert_eq!(
                    summary["numel"].as_u64().unwrap() as usize,
                    tensor.values.len(),
                    "{what}"
                );
                let mut per_dim = vec![0f32; width];
                for row in tensor.values.chunks(width) {
                    for (m, x) in per_dim.iter_mut().zip(row) {
                        *m = m.max(x.abs());
                    }
                }
                for entry in summary["top_dims"].as_array().unwrap() {
                    let dim = entry["dim"].as_u64().unwrap() as usize;
                    let value = entry["max_abs"].as_f64().unwrap() as f32;
                    assert!(
                        (value - per_dim[dim]).abs() <= 1e-4 * max_abs,
                        "{what}: dim {dim}"
                    );
                    let larger = per_dim
                        .iter()
                        .filter(|&&m| m > value + 1e-4 * max_abs)
                        .count();
                    assert!(larger < 5, "{what}: dim {dim} is not among the 5 largest");
                }
            }
        }
        assert!(
            nonzero_counts > 0,
            "{name}: the fixture has values above the threshold to count"
        );
    }
}

#[test]
fn score_matches_the_pytorch_loss_for_every_family() {
    for name in FIXTURES {
        let home = tempfile::tempdir().unwrap();
        let model = fixture_model(name).display().to_string();
        let docs = docs();
        // The fixture's own workload (qwen3_next's sequences are 72 tokens).
        let reference = Reference::load(name);
        let seq_len = reference.seq_len.to_string();
        let out = assert_succeeds(&layerstream(
            &[
                "score",
                "--model",
                &model,
                "--data",
                &docs,
                "--num-samples",
                "2",
                "--seq-len",
                &seq_len,
                "--device",
                "cpu",
            ],
            home.path(),
        ));
        assert!(out.contains("overall"), "{out}");
        let score = read_json(&home.path().join("layerstream-out/score.json"));
        let loss = reference.get("loss").values[0] as f64;
        let mean_nll = score["overall"]["mean_nll"].as_f64().unwrap();
        assert!(
            (mean_nll - loss).abs() <= 1e-5 * loss,
            "{name}: mean NLL {mean_nll} vs PyTorch loss {loss}"
        );
        assert!(
            (score["overall"]["perplexity"].as_f64().unwrap() - loss.exp()).abs()
                <= 1e-4 * loss.exp()
        );
        let nll = &reference.get("nll").values;
        let scored = reference.seq_len - 1;
        for (i, sequence) in score["sequences"].as_array().unwrap().iter().enumerate() {
            let expected: f64 = nll[i * scored..(i + 1) * scored]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>()
                / scored as f64;
            let got = sequence["mean_nll"].as_f64().unwrap();
            assert!(
                (got - expected).abs() <= 1e-5 * expected,
                "{name} sequence {i}: {got} vs {expected}"
            );
            assert_eq!(sequence["tokens_scored"], scored);
        }
    }
}

#[test]
fn inspect_reports_sizes_from_the_headers() {
    let home = tempfile::tempdir().unwrap();
    let model_dir = fixture_model("qwen2");
    let model = model_dir.display().to_string();
    let out = assert_succeeds(&layerstream(
        &["inspect", "--model", &model, "--json"],
        home.path(),
    ));
    let summary: Value = serde_json::from_str(&out).unwrap();
    // What the safetensors files hold, read independently.
    let (mut parameters, mut bytes) = (0u64, 0u64);
    let mut files = 0;
    for entry in std::fs::read_dir(&model_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files += 1;
            let data = std::fs::read(&path).unwrap();
            for (_, view) in safetensors::SafeTensors::deserialize(&data)
                .unwrap()
                .tensors()
            {
                parameters += view.shape().iter().product::<usize>() as u64;
                bytes += view.data().len() as u64;
            }
        }
    }
    assert_eq!(summary["parameters"], parameters);
    assert_eq!(summary["total_bytes"], bytes);
    assert_eq!(summary["files"].as_array().unwrap().len(), files);
    assert_eq!(summary["num_layers"], 2);
    assert_eq!(summary["tied_embeddings"], true);
    assert_eq!(summary["sliding_windows"], serde_json::json!([null, 12]));
    assert_eq!(summary["layer_bytes"].as_object().unwrap().len(), 2);
    let table = assert_succeeds(&layerstream(&["inspect", "--model", &model], home.path()));
    for line in [
        "experts",
        "none (dense model)",
        "bytes per layer",
        "layer 1: 12",
        "parameters",
    ] {
        assert!(table.contains(line), "missing {line:?} in:\n{table}");
    }
}

#[test]
fn help_of_every_command_lists_its_flags() {
    let home = tempfile::tempdir().unwrap();
    let shared = [
        "--model",
        "--data",
        "--text-field",
        "--num-samples",
        "--seq-len",
        "--device",
        "--threads",
        "--micro-batch-tokens",
        "--out",
    ];
    for (command, own) in [
        ("analyze", &["--layers", "--points", "--threshold"][..]),
        ("score", &[][..]),
        ("inspect", &["--json"][..]),
    ] {
        let help = assert_succeeds(&layerstream(&[command, "--help"], home.path()));
        let expected: Vec<&str> = if command == "inspect" {
            vec!["--model"]
        } else {
            shared.to_vec()
        };
        for flag in expected.iter().chain(own) {
            assert!(
                help.contains(flag),
                "{command} --help lacks {flag}:\n{help}"
            );
        }
    }
}

#[test]
fn inspect_reports_experts_top_k_active_parameters_and_bytes_per_expert() {
    let home = tempfile::tempdir().unwrap();
    let model_dir = fixture_model("qwen2_moe");
    let model = model_dir.display().to_string();
    let out = assert_succeeds(&layerstream(
        &["inspect", "--model", &model, "--json"],
        home.path(),
    ));
    let moe = &serde_json::from_str::<Value>(&out).unwrap()["moe"];
    // From the headers, independently: all parameters, and those of routed experts.
    let data = std::fs::read(model_dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&data).unwrap();
    let (mut all, mut routed, mut expert0_bytes, mut shared_bytes) = (0u64, 0u64, 0u64, 0u64);
    for (name, view) in file.tensors() {
        let numel = view.shape().iter().product::<usize>() as u64;
        all += numel;
        if name.contains(".mlp.experts.") {
            routed += numel;
        }
        if name.starts_with("model.layers.1.mlp.experts.0.") {
            expert0_bytes += view.data().len() as u64;
        }
        if name.starts_with("model.layers.1.mlp.shared_expert.") {
            shared_bytes += view.data().len() as u64;
        }
    }
    // One MoE layer of 4 experts, top-2.
    assert_eq!(moe["experts"], 4);
    assert_eq!(moe["experts_per_token"], 2);
    assert_eq!(moe["moe_layers"], serde_json::json!([1]));
    assert_eq!(moe["dense_layers"], serde_json::json!([0]));
    assert_eq!(moe["bytes_per_expert"], expert0_bytes);
    assert_eq!(moe["shared_expert_bytes"], shared_bytes);
    assert_eq!(
        moe["active_parameters_per_token"],
        all - routed + routed / 2
    );
    let dense = assert_succeeds(&layerstream(
        &[
            "inspect",
            "--model",
            &fixture_model("llama2").display().to_string(),
            "--json",
        ],
        home.path(),
    ));
    assert_eq!(
        serde_json::from_str::<Value>(&dense).unwrap()["moe"],
        Value::Null
    );
}

#[test]
fn inspect_sizes_fused_and_mxfp4_experts_from_the_headers() {
    let home = tempfile::tempdir().unwrap();
    let inspect = |name: &str| {
        let model = fixture_model(name).display().to_string();
        let out = assert_succeeds(&layerstream(
            &["inspect", "--model", &model, "--json"],
            home.path(),
        ));
        serde_json::from_str::<Value>(&out).unwrap()
    };
    // Per expert, independently: the bytes of layer 0's expert tensors over the expert count,
    // and parameters counted as values (MXFP4: two per block byte, scales none).
    let from_headers = |name: &str| {
        let data = std::fs::read(fixture_model(name).join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&data).unwrap();
        let (mut expert_bytes, mut parameters) = (0u64, 0u64);
        for (tensor, view) in file.tensors() {
            let numel = view.shape().iter().product::<usize>() as u64;
            parameters += match tensor.as_str() {
                t if t.ends_with("_blocks") => 2 * numel,
                t if t.ends_with("_scales") => 0,
                _ => numel,
            };
            if tensor.starts_with("model.layers.0.mlp.experts.") {
                expert_bytes += view.data().len() as u64;
            }
        }
        (expert_bytes / 4, parameters)
    };
    let fused = inspect("gpt_oss");
    let mxfp4 = inspect("gpt_oss_mxfp4");
    for (summary, name) in [(&fused, "gpt_oss"), (&mxfp4, "gpt_oss_mxfp4")] {
        let (expert_bytes, parameters) = from_headers(name);
        assert_eq!(summary["moe"]["bytes_per_expert"], expert_bytes, "{name}");
        assert_eq!(summary["parameters"], parameters, "{name}");
        assert_eq!(summary["moe"]["router_scoring"], "top_k_softmax", "{name}");
    }
    // The same model either way: as many parameters, as many active per token.
    assert_eq!(fused["parameters"], mxfp4["parameters"]);
    let active = &fused["moe"]["active_parameters_per_token"];
    assert_eq!(active, &mxfp4["moe"]["active_parameters_per_token"]);
    assert!(active.as_u64().unwrap() < fused["parameters"].as_u64().unwrap());
    assert_eq!(fused["moe"]["expert_formats"], serde_json::json!(["F32"]));
    assert_eq!(mxfp4["moe"]["expert_formats"], serde_json::json!(["MXFP4"]));
    assert_eq!(fused["moe"]["bytes_per_expert_dequantized"], Value::Null);
    // Dequantized: gate_up (2 x 32 x 64) and down (64 x 32) in bf16, 64 + 64 bias values in f32.
    assert_eq!(
        mxfp4["moe"]["bytes_per_expert_dequantized"],
        2 * (2 * 32 * 64 + 64 * 32) + 4 * (64 + 64)
    );
}

#[test]
fn analyze_reports_expert_load_that_matches_pytorch_routing() {
    for name in layerstream_tests::MOE_FIXTURES {
        let home = tempfile::tempdir().unwrap();
        let model = fixture_model(name).display().to_string();
        let docs = docs();
        let reference = Reference::load(name);
        let seq_len = reference.seq_len.to_string();
        assert_succeeds(&layerstream(
            &[
                "analyze",
                "--model",
                &model,
                "--data",
                &docs,
                "--num-samples",
                "2",
                "--seq-len",
                &seq_len,
                "--device",
                "cpu",
                "--micro-batch-tokens",
                &seq_len,
            ],
            home.path(),
        ));
        let report = read_json(&home.path().join("layerstream-out/report.json"));
        for layer in report["layers"].as_array().unwrap() {
            let l = layer["layer"].as_u64().unwrap();
            let Some(chosen) = reference
                .int_tensors
                .get(&format!("blocks.{l}.router.experts"))
            else {
                assert!(layer.get("router").is_none(), "{name} layer {l} is dense");
                continue;
            };
            let router = &layer["router"];
            let experts = router["num_experts"].as_u64().unwrap() as usize;
            let mut expected = vec![0u64; experts];
            for &e in chosen {
                expected[e as usize] += 1;
            }
            let got: Vec<u64> = router["tokens_per_expert"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(got, expected, "{name} layer {l}: tokens per expert");
            assert_eq!(router["tokens"], 2 * reference.seq_len);
        }
    }
}
