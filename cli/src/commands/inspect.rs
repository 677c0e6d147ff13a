//! `layerstream inspect`: what a model is and how big, from config.json and the safetensors
//! headers alone (no tensor data is read).

use super::expert_sizes::{layer_experts, parameter_count};
use super::open_model;
use super::quantized_sizes::{QuantizedMatrices, quantized_matrices};
use crate::args::InspectArgs;
use anyhow::Result;
use layerstream_planner::{ByteSize, TensorClass};
use layerstream_runtime::Model;
use layerstream_runtime::arch::{Activation, RouterScoring};
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
    activation: String,
    moe: Option<MoeSummary>,
    vocab_size: usize,
    max_position_embeddings: usize,
    rope_type: String,
    rope_theta: f64,
    /// Dimensions of each head that RoPE rotates (`partial_rotary_factor` x head_dim).
    rotary_dims: usize,
    sliding_windows: Vec<Option<usize>>,
    /// Per layer, its token mixer, for hybrid models (`attention`, `gated_attention`,
    /// `delta_net`); absent otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layer_mixers: Vec<String>,
    /// The Gated DeltaNet's shapes, for models with DeltaNet layers.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta_net: Option<String>,
    tied_embeddings: bool,
    parameters: u64,
    total_bytes: u64,
    input_bytes: u64,
    output_bytes: u64,
    layer_bytes: BTreeMap<usize, u64>,
    /// Multi-token-prediction layers the checkpoint carries after the last decoder layer
    /// (`num_nextn_predict_layers`): known, never streamed, not in `layer_bytes`.
    unused_mtp_layers: Vec<usize>,
    /// Their bytes (in `total_bytes`).
    unused_mtp_bytes: u64,
    /// Block-quantized layer matrices by format: count, stored and dequantized bytes.
    quantized: Vec<QuantizedMatrices>,
    dtype_bytes: BTreeMap<&'static str, u64>,
    files: Vec<String>,
}

/// The mixture-of-experts part of `inspect`.
#[derive(Debug, Serialize)]
struct MoeSummary {
    /// Routed experts per MoE layer.
    experts: usize,
    /// Experts chosen per token.
    experts_per_token: usize,
    /// Whether the chosen experts' weights are renormalised to sum to 1.
    normalize_top_k: bool,
    /// How router logits become expert weights: `softmax` (over all experts, then the top
    /// k), `top_k_softmax` (the top k logits, then a softmax over them) or `sigmoid`
    /// (GLM-4.5: sigmoid scores chosen with a selection bias, weighted without it).
    router_scoring: &'static str,
    /// The sigmoid router's expert groups (`n_group`) and the groups kept per token
    /// (`topk_group`); absent for other routers.
    expert_groups: Option<[usize; 2]>,
    /// What the chosen weights are multiplied by (`routed_scaling_factor`; 1 otherwise).
    routed_scaling_factor: f32,
    /// The shared expert's MLP width (absent without one).
    shared_expert_intermediate_size: Option<usize>,
    /// Width of each routed expert's MLP.
    expert_intermediate_size: usize,
    /// Layers with experts.
    moe_layers: Vec<usize>,
    /// Layers with a dense MLP.
    dense_layers: Vec<usize>,
    /// How the routed experts' matrices are stored (`BF16`, `MXFP4`, ...).
    expert_formats: Vec<String>,
    /// Stored bytes of one routed expert (from the headers; the largest, if they differ),
    /// fused or quantized experts included.
    bytes_per_expert: u64,
    /// Bytes of one routed expert once dequantized for the GPU: matrices in bf16, biases in
    /// f32 (absent when no expert matrix is quantized).
    bytes_per_expert_dequantized: Option<u64>,
    /// Bytes of the shared expert per MoE layer (0 without one).
    shared_expert_bytes: u64,
    /// Bytes of a MoE layer outside its routed experts (attention, norms, router, shared expert).
    bytes_per_layer_outside_routed_experts: u64,
    /// Parameters one token passes through: everything but the routed experts, plus
    /// top-k routed experts per MoE layer (embeddings and LM head included).
    active_parameters_per_token: u64,
}

fn moe_summary(model: &Model, parameters: u64) -> Option<MoeSummary> {
    let spec = &model.spec;
    let inventory = model.weights.inventory();
    let moe_layers: Vec<usize> = (0..spec.num_layers)
        .filter(|&l| spec.moe(l).is_some())
        .collect();
    let first = spec.moe(*moe_layers.first()?)?;
    let mut active = parameters;
    let (mut bytes_per_expert, mut dequantized, mut quantized) = (0, 0, false);
    let mut routed_bytes = 0u64;
    let mut formats = std::collections::BTreeSet::new();
    for &layer in &moe_layers {
        let experts = layer_experts(model, layer);
        if layer == moe_layers[0] {
            routed_bytes = experts.stored_bytes.iter().sum();
        }
        let routed: u64 = experts.parameters.iter().sum();
        let top_k = spec.moe(layer).map_or(0, |m| m.top_k) as u64;
        active = active - routed + routed * top_k / experts.parameters.len().max(1) as u64;
        let largest = experts.stored_bytes.iter().copied().max().unwrap_or(0);
        bytes_per_expert = bytes_per_expert.max(largest);
        dequantized = dequantized.max(experts.bf16_bytes.iter().copied().max().unwrap_or(0));
        quantized |= experts.quantized();
        formats.extend(experts.matrix_formats);
    }
    let first_layer = moe_layers[0];
    let layer_bytes = inventory
        .layer_bytes()
        .get(&first_layer)
        .copied()
        .unwrap_or(0);
    Some(MoeSummary {
        experts: first.num_experts,
        experts_per_token: first.top_k,
        normalize_top_k: first.normalize_top_k,
        router_scoring: match first.scoring {
            RouterScoring::Softmax => "softmax",
            RouterScoring::TopKSoftmax => "top_k_softmax",
            RouterScoring::Sigmoid { .. } => "sigmoid",
        },
        expert_groups: match first.scoring {
            RouterScoring::Sigmoid {
                groups, top_groups, ..
            } => Some([groups, top_groups]),
            RouterScoring::Softmax | RouterScoring::TopKSoftmax => None,
        },
        routed_scaling_factor: match first.scoring {
            RouterScoring::Sigmoid { scaling, .. } => scaling,
            RouterScoring::Softmax | RouterScoring::TopKSoftmax => 1.0,
        },
        shared_expert_intermediate_size: first.shared_expert.as_ref().map(|s| s.intermediate),
        expert_intermediate_size: first.expert_intermediate,
        dense_layers: (0..spec.num_layers)
            .filter(|l| !moe_layers.contains(l))
            .collect(),
        expert_formats: formats.into_iter().collect(),
        bytes_per_expert,
        bytes_per_expert_dequantized: quantized.then_some(dequantized),
        shared_expert_bytes: inventory.shared_expert_bytes(first_layer),
        bytes_per_layer_outside_routed_experts: layer_bytes.saturating_sub(routed_bytes),
        moe_layers,
        active_parameters_per_token: active,
    })
}

/// How the router weighs its choice, for the table.
fn router_description(moe: &MoeSummary) -> String {
    match (moe.router_scoring, moe.normalize_top_k) {
        ("top_k_softmax", _) => "softmax over the top-k logits".into(),
        ("sigmoid", normalize) => {
            let groups = moe.expert_groups.map_or(String::new(), |[g, kept]| {
                if g > 1 {
                    format!(", best {kept} of {g} expert groups")
                } else {
                    String::new()
                }
            });
            format!(
                "sigmoid chosen with a selection bias{groups}, unbiased weights{} x {}",
                if normalize { " renormalised" } else { "" },
                moe.routed_scaling_factor
            )
        }
        (_, true) => "weights renormalised".into(),
        _ => "softmax weights as they are".into(),
    }
}

/// The gated MLP's activation, for the table.
fn activation_name(activation: Activation) -> String {
    match activation {
        Activation::Silu => "gated SiLU".into(),
        Activation::ClampedSwiglu { limit, alpha } => {
            format!("clamped SwiGLU (limit {limit}, alpha {alpha})")
        }
    }
}

/// Runs `inspect`.
pub fn inspect(args: &InspectArgs) -> Result<()> {
    let named = open_model(&args.model, crate::hub_download::Need::Headers)?;
    let model = &named.model;
    let spec = &model.spec;
    let inventory = model.weights.inventory();
    let parameters = parameter_count(model);
    // Layers past num_hidden_layers are declared MTP layers (the model refuses others).
    let (layer_bytes, unused_mtp): (BTreeMap<usize, u64>, BTreeMap<usize, u64>) = inventory
        .layer_bytes()
        .into_iter()
        .partition(|(l, _)| *l < spec.num_layers);
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
        activation: activation_name(spec.block.activation),
        moe: moe_summary(model, parameters),
        vocab_size: spec.vocab_size,
        max_position_embeddings: spec.max_position_embeddings,
        rope_type: spec.rope.rope_type.clone(),
        rope_theta: spec.rope.theta,
        rotary_dims: spec.rope.inv_freq.len() * 2,
        sliding_windows: spec.sliding_windows.clone(),
        layer_mixers: spec.mixer_names(),
        delta_net: (0..spec.num_layers)
            .find_map(|l| spec.delta_net(l))
            .map(|d| {
                format!(
                    "{} key heads of {}, {} value heads of {}, conv kernel {}",
                    d.key_heads, d.key_dim, d.value_heads, d.value_dim, d.conv_kernel
                )
            }),
        tied_embeddings: spec.tied_embeddings,
        parameters,
        total_bytes: inventory.total_bytes(),
        input_bytes: inventory.class_bytes(TensorClass::Input),
        output_bytes: inventory.class_bytes(TensorClass::Output),
        layer_bytes,
        unused_mtp_bytes: unused_mtp.values().sum(),
        unused_mtp_layers: unused_mtp.into_keys().collect(),
        quantized: quantized_matrices(model),
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

fn format_layers(layers: &[usize]) -> String {
    let names: Vec<String> = layers.iter().map(usize::to_string).collect();
    names.join(", ")
}

fn print_table(s: &ModelSummary) {
    let row = |key: &str, value: String| println!("{key:<18} {value}");
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
    if !s.layer_mixers.is_empty() {
        let layers_of = |kind: &str| -> Vec<usize> {
            (0..s.layer_mixers.len())
                .filter(|&l| s.layer_mixers[l] == kind)
                .collect()
        };
        let kinds = [
            ("attention", "attn layers"),
            ("gated_attention", "gated attn layers"),
            ("delta_net", "deltanet layers"),
        ];
        for (kind, key) in kinds {
            let of = layers_of(kind);
            if !of.is_empty() {
                row(key, format_layers(&of));
            }
        }
    }
    if let Some(delta) = &s.delta_net {
        row("gated deltanet", delta.clone());
    }
    row(
        "mlp",
        format!(
            "{}, intermediate {} (dense layers)",
            s.activation, s.intermediate_size
        ),
    );
    match &s.moe {
        None => row("experts", "none (dense model)".into()),
        Some(moe) => {
            row(
                "experts",
                format!(
                    "{} routed, top-{} per token ({}), expert width {}",
                    moe.experts,
                    moe.experts_per_token,
                    router_description(moe),
                    moe.expert_intermediate_size
                ),
            );
            row("moe layers", format_layers(&moe.moe_layers));
            if !moe.dense_layers.is_empty() {
                row("dense layers", format_layers(&moe.dense_layers));
            }
            let stored = format!(
                "{} stored ({})",
                ByteSize(moe.bytes_per_expert),
                moe.expert_formats.join(", ")
            );
            row(
                "bytes per expert",
                match moe.bytes_per_expert_dequantized {
                    Some(bf16) => format!("{stored}, {} dequantized to bf16", ByteSize(bf16)),
                    None => stored,
                },
            );
            if let Some(width) = moe.shared_expert_intermediate_size {
                row(
                    "shared expert",
                    format!(
                        "width {width}, {} per MoE layer",
                        ByteSize(moe.shared_expert_bytes)
                    ),
                );
            }
            row(
                "layer w/o experts",
                format!(
                    "{} (attention, norms, router, shared expert)",
                    ByteSize(moe.bytes_per_layer_outside_routed_experts)
                ),
            );
            row(
                "active params",
                format!(
                    "{} per token ({:.3} B)",
                    moe.active_parameters_per_token,
                    moe.active_parameters_per_token as f64 / 1e9
                ),
            );
        }
    }
    print_sizes(s);
}

/// Vocabulary, positions, rope, sizes, dtypes and files.
fn print_sizes(s: &ModelSummary) {
    let row = |key: &str, value: String| println!("{key:<18} {value}");
    row("vocabulary", s.vocab_size.to_string());
    row("max positions", s.max_position_embeddings.to_string());
    row(
        "rope",
        format!(
            "{}, theta {}, {} of {} head dims rotated",
            s.rope_type, s.rope_theta, s.rotary_dims, s.head_dim
        ),
    );
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
    if !s.unused_mtp_layers.is_empty() {
        row(
            "unused layers",
            format!(
                "{} ({}): multi-token prediction, which transformers does not run; not streamed",
                format_layers(&s.unused_mtp_layers),
                ByteSize(s.unused_mtp_bytes)
            ),
        );
    }
    for q in &s.quantized {
        row(
            "quantized",
            format!(
                "{} matrices in {}: {} stored, {} dequantized to bf16 on the GPU",
                q.matrices,
                q.format,
                ByteSize(q.stored_bytes),
                ByteSize(q.bf16_bytes)
            ),
        );
    }
    let dtypes: Vec<String> = s
        .dtype_bytes
        .iter()
        .map(|(d, b)| format!("{d} {}", ByteSize(*b)))
        .collect();
    row("dtypes", dtypes.join(", "));
    row("files", s.files.join(", "));
}
