//! `layerstream inspect`: what a model is and how big, from config.json and the safetensors
//! headers alone (no tensor data is read).

use super::open_model;
use crate::args::InspectArgs;
use anyhow::Result;
use layerstream_planner::{ByteSize, TensorClass};
use serde::Serialize;
use std::collections::BTreeMap;

/// What `inspect --json` prints.
#[derive(Debug, Serialize)]
struct ModelSummary {
    model: String,
    model_type: String,
    architectures: Vec<String>,
    num_layers: usize,
    hidden_size: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    intermediate_size: usize,
    experts: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rope_type: String,
    rope_theta: f64,
    sliding_windows: Vec<Option<usize>>,
    tied_embeddings: bool,
    parameters: u64,
    total_bytes: u64,
    input_bytes: u64,
    output_bytes: u64,
    layer_bytes: BTreeMap<usize, u64>,
    dtype_bytes: BTreeMap<&'static str, u64>,
    files: Vec<String>,
}

/// Runs `inspect`.
pub fn inspect(args: &InspectArgs) -> Result<()> {
    let named = open_model(&args.model)?;
    let model = &named.model;
    let spec = &model.spec;
    let inventory = model.weights.inventory();
    let summary = ModelSummary {
        model: named.name.clone(),
        model_type: model.config.model_type.clone(),
        architectures: model
            .config
            .raw
            .get("architectures")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default(),
        num_layers: spec.num_layers,
        hidden_size: spec.hidden_size,
        num_heads: spec.num_heads,
        num_kv_heads: spec.num_kv_heads,
        head_dim: spec.head_dim,
        intermediate_size: spec.intermediate_size,
        experts: None,
        vocab_size: spec.vocab_size,
        max_position_embeddings: spec.max_position_embeddings,
        rope_type: spec.rope.rope_type.clone(),
        rope_theta: spec.rope.theta,
        sliding_windows: spec.sliding_windows.clone(),
        tied_embeddings: spec.tied_embeddings,
        parameters: inventory.parameter_count(),
        total_bytes: inventory.total_bytes(),
        input_bytes: inventory.class_bytes(TensorClass::Input),
        output_bytes: inventory.class_bytes(TensorClass::Output),
        layer_bytes: inventory.layer_bytes(),
        dtype_bytes: inventory.dtype_bytes(),
        files: inventory
            .files
            .iter()
            .map(|f| {
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn print_table(s: &ModelSummary) {
    let row = |key: &str, value: String| println!("{key:<16} {value}");
    row("model", s.model.clone());
    row(
        "architecture",
        format!("{} ({})", s.model_type, s.architectures.join(", ")),
    );
    row("layers", s.num_layers.to_string());
    row("hidden size", s.hidden_size.to_string());
    row(
        "attention",
        format!(
            "{} query heads, {} key/value heads, head_dim {}",
            s.num_heads, s.num_kv_heads, s.head_dim
        ),
    );
    let windows: Vec<String> = s
        .sliding_windows
        .iter()
        .enumerate()
        .filter_map(|(l, w)| w.map(|w| format!("layer {l}: {w}")))
        .collect();
    row(
        "sliding window",
        if windows.is_empty() {
            "none (full causal attention)".into()
        } else {
            windows.join(", ")
        },
    );
    row(
        "mlp",
        format!("gated SiLU, intermediate {}", s.intermediate_size),
    );
    row(
        "experts",
        s.experts
            .map_or("none (dense model)".into(), |e| e.to_string()),
    );
    row("vocabulary", s.vocab_size.to_string());
    row("max positions", s.max_position_embeddings.to_string());
    row("rope", format!("{}, theta {}", s.rope_type, s.rope_theta));
    row(
        "embeddings",
        if s.tied_embeddings {
            "tied to the LM head".into()
        } else {
            "separate LM head".into()
        },
    );
    row(
        "parameters",
        format!("{} ({:.3} B)", s.parameters, s.parameters as f64 / 1e9),
    );
    row(
        "total bytes",
        format!("{} ({})", s.total_bytes, ByteSize(s.total_bytes)),
    );
    row(
        "input bytes",
        format!("{} (embeddings)", ByteSize(s.input_bytes)),
    );
    row(
        "output bytes",
        format!("{} (final norm, LM head)", ByteSize(s.output_bytes)),
    );
    let sizes: Vec<u64> = s.layer_bytes.values().copied().collect();
    if sizes.windows(2).all(|w| w[0] == w[1]) {
        row(
            "bytes per layer",
            format!(
                "{} (every layer)",
                ByteSize(sizes.first().copied().unwrap_or(0))
            ),
        );
    } else {
        for (layer, bytes) in &s.layer_bytes {
            row(
                &format!("layer {layer} bytes"),
                ByteSize(*bytes).to_string(),
            );
        }
    }
    let dtypes: Vec<String> = s
        .dtype_bytes
        .iter()
        .map(|(d, b)| format!("{d} {}", ByteSize(*b)))
        .collect();
    row("dtypes", dtypes.join(", "));
    row("files", s.files.join(", "));
}
