//! Running the `layerstream` binary in tests, on copies of the fixtures.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `layerstream args...` with the embedded-asset cache in `home`.
pub fn layerstream(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layerstream"))
        .args(args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(home)
        .output()
        .expect("the binary runs")
}

/// As [`layerstream`] with only the scheduler variables `env` set (any the test process
/// inherited are removed).
pub fn layerstream_with_env(args: &[&str], home: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_layerstream"));
    command
        .args(args)
        .env("LAYERSTREAM_CACHE_DIR", home.join("cache"))
        .env("LAYERSTREAM_THREADS", "2")
        .current_dir(home);
    for name in [
        "SLURM_ARRAY_TASK_ID",
        "SLURM_ARRAY_TASK_COUNT",
        "SLURM_ARRAY_TASK_MIN",
        "SLURM_ARRAY_TASK_MAX",
        "JOB_COMPLETION_INDEX",
        "SKYPILOT_NODE_RANK",
        "SKYPILOT_NUM_NODES",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("the binary runs")
}

/// stderr as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts a clean failure: exit code 1 (no panic, which exits 101) and every `needle`
/// in the error message.
pub fn assert_fails_with(output: &Output, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "expected exit 1, stderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    for needle in needles {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// Asserts success and returns stdout.
pub fn assert_succeeds(output: &Output) -> String {
    assert!(output.status.success(), "failed:\n{}", stderr(output));
    stdout(output)
}

/// Copies fixture `name`'s model folder into `into/name` and returns it.
pub fn copy_fixture_model(name: &str, into: &Path) -> PathBuf {
    let source = layerstream_tests::fixture_model(name);
    let dest = into.join(name);
    std::fs::create_dir_all(&dest).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
    }
    dest
}

/// Rewrites `dir/config.json` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(config.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// A fixture's model folder, as a path string.
pub fn fixture_model_path(name: &str) -> String {
    layerstream_tests::fixture_model(name).display().to_string()
}

/// The fixture documents, as a path string.
pub fn docs() -> String {
    layerstream_tests::fixture_docs().display().to_string()
}

/// A 12-layer model built from the embedded default model by repeating its 4 trained
/// layers (layer i has the weights of layer i % 4): real weights, more layers to stop in.
pub fn deep_model(into: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join("default-model");
    let dest = into.join("deep-model");
    std::fs::create_dir_all(&dest).unwrap();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(source.join(name), dest.join(name)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["num_hidden_layers"] = 12.into();
    std::fs::write(dest.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = Vec::new();
    for (name, view) in file.tensors() {
        match name.strip_prefix("model.layers.") {
            Some(rest) => {
                let (index, suffix) = rest.split_once('.').unwrap();
                let index: usize = index.parse().unwrap();
                for layer in (index..12).step_by(4) {
                    tensors.push((format!("model.layers.{layer}.{suffix}"), view.clone()));
                }
            }
            None => tensors.push((name, view)),
        }
    }
    std::fs::write(
        dest.join("model.safetensors"),
        safetensors::serialize(tensors, None).unwrap(),
    )
    .unwrap();
    dest
}

/// A Llama-shaped model whose weights take `layers x ~1.7 GB` but no disk: real config and
/// safetensors header, data left as a sparse hole (`set_len`). Only headers can be read.
pub fn sparse_llama(into: &Path, layers: usize) -> (PathBuf, u64) {
    let dir = into.join("sparse-llama");
    std::fs::create_dir_all(&dir).unwrap();
    let (hidden, inter, vocab, heads, kv_heads) =
        (8192usize, 28672usize, 128256usize, 64usize, 8usize);
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": vocab, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let kv = kv_heads * hidden / heads;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
        ("lm_head.weight".into(), vec![vocab, hidden]),
    ];
    for l in 0..layers {
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("mlp.gate_proj.weight", vec![inter, hidden]),
            ("mlp.up_proj.weight", vec![inter, hidden]),
            ("mlp.down_proj.weight", vec![hidden, inter]),
        ] {
            shapes.push((format!("model.layers.{l}.{name}"), shape));
        }
    }
    let bytes = write_sparse_safetensors(&dir, &shapes);
    (dir, bytes)
}

/// Writes `model.safetensors` with a real bf16 header for `shapes` and the data left as a
/// sparse hole; returns the data bytes.
fn write_sparse_safetensors(dir: &Path, shapes: &[(String, Vec<usize>)]) -> u64 {
    let typed: Vec<(String, &str, Vec<usize>)> = shapes
        .iter()
        .map(|(name, shape)| (name.clone(), "BF16", shape.clone()))
        .collect();
    write_sparse_typed(dir, &typed)
}

/// [`write_sparse_safetensors`] with a dtype per tensor (`BF16` or `U8`).
pub mod glm;
pub mod planted;
pub mod qwen3_next;

/// Writes a sparse `model.safetensors` of `(name, dtype, shape)` tensors in `dir`; returns
/// the data bytes.
pub fn write_sparse_typed(dir: &Path, tensors: &[(String, &str, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let element = match *dtype {
            "U8" | "F8_E4M3" => 1,
            "F32" => 4,
            _ => 2,
        };
        let bytes = element * shape.iter().product::<usize>() as u64;
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let path = dir.join("model.safetensors");
    let mut file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len(8 + text.len() as u64 + offset).unwrap();
    offset
}

/// A GPT-OSS-120B-shaped model as the hub ships it (36 layers of 128 MXFP4 experts, bf16
/// attention, router and biases, ~65 GB in all) over a sparse file: only headers can be read.
pub fn sparse_gpt_oss_120b(into: &Path) -> (PathBuf, u64) {
    let dir = into.join("sparse-gpt-oss-120b");
    std::fs::create_dir_all(&dir).unwrap();
    let (hidden, inter, vocab, heads, kv_heads, head_dim, experts, layers) = (
        2880usize,
        2880usize,
        201088usize,
        64usize,
        8usize,
        64usize,
        128usize,
        36usize,
    );
    let layer_types: Vec<&str> = (0..layers)
        .map(|l| {
            if l % 2 == 0 {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect();
    let config = serde_json::json!({
        "model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"],
        "hidden_size": hidden, "intermediate_size": inter, "num_local_experts": experts,
        "num_experts_per_tok": 4, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "sliding_window": 128,
        "layer_types": layer_types, "attention_bias": true, "swiglu_limit": 7.0,
        "tie_word_embeddings": false, "hidden_act": "silu",
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
            "beta_slow": 1.0, "original_max_position_embeddings": 4096, "truncate": false},
        "rope_theta": 150000.0,
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"]}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let bf16 = |name: String, shape: Vec<usize>| (name, "BF16", shape);
    let mut tensors = vec![
        bf16("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        bf16("model.norm.weight".into(), vec![hidden]),
        bf16("lm_head.weight".into(), vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![q, hidden]),
            ("self_attn.q_proj.bias", vec![q]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![hidden, q]),
            ("self_attn.o_proj.bias", vec![hidden]),
            ("self_attn.sinks", vec![heads]),
            ("mlp.router.weight", vec![experts, hidden]),
            ("mlp.router.bias", vec![experts]),
            ("mlp.experts.gate_up_proj_bias", vec![experts, 2 * inter]),
            ("mlp.experts.down_proj_bias", vec![experts, hidden]),
        ] {
            tensors.push(bf16(format!("{p}.{name}"), shape));
        }
        for (name, rows, cols) in [
            ("gate_up_proj", 2 * inter, hidden),
            ("down_proj", hidden, inter),
        ] {
            let blocks = vec![experts, rows, cols / 32, 16];
            let scales = vec![experts, rows, cols / 32];
            tensors.push((format!("{p}.mlp.experts.{name}_blocks"), "U8", blocks));
            tensors.push((format!("{p}.mlp.experts.{name}_scales"), "U8", scales));
        }
    }
    let bytes = write_sparse_typed(&dir, &tensors);
    (dir, bytes)
}

/// A Qwen3-235B-A22B-shaped MoE model (94 layers of 128 experts, ~4.9 GB per layer, ~470 GB
/// in all) over a sparse file: only headers can be read.
pub fn sparse_qwen3_moe(into: &Path) -> (PathBuf, u64) {
    let dir = into.join("sparse-qwen3-moe");
    std::fs::create_dir_all(&dir).unwrap();
    let (hidden, moe_inter, vocab, heads, kv_heads, head_dim, experts, layers) = (
        4096usize,
        1536usize,
        151936usize,
        64usize,
        4usize,
        128usize,
        128usize,
        94usize,
    );
    let config = serde_json::json!({
        "model_type": "qwen3_moe", "hidden_size": hidden, "intermediate_size": 12288,
        "moe_intermediate_size": moe_inter, "num_experts": experts, "num_experts_per_tok": 8,
        "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim, "vocab_size": vocab, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (q, kv) = (heads * head_dim, kv_heads * head_dim);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
        ("lm_head.weight".into(), vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![q, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, q]),
            ("self_attn.q_norm.weight", vec![head_dim]),
            ("self_attn.k_norm.weight", vec![head_dim]),
            ("mlp.gate.weight", vec![experts, hidden]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
        for e in 0..experts {
            shapes.push((
                format!("{p}.mlp.experts.{e}.gate_proj.weight"),
                vec![moe_inter, hidden],
            ));
            shapes.push((
                format!("{p}.mlp.experts.{e}.up_proj.weight"),
                vec![moe_inter, hidden],
            ));
            shapes.push((
                format!("{p}.mlp.experts.{e}.down_proj.weight"),
                vec![hidden, moe_inter],
            ));
        }
    }
    let bytes = write_sparse_safetensors(&dir, &shapes);
    (dir, bytes)
}

/// `analyze` of 2 sequences x 32 tokens on the CPU, 10 bootstrap resamples: the small run
/// the reliability tests repeat.
pub fn small_analyze_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "analyze",
        "--model",
        model,
        "--data",
        data,
        "--device",
        "cpu",
        "--num-samples",
        "2",
        "--seq-len",
        "32",
        "--out",
        out,
        "--bootstrap",
        "10",
    ]
}
