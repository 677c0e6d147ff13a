//! Architectures: one file per family turns config.json into a [`ModelSpec`] over shared
//! blocks (RMSNorm, RoPE, grouped-query attention, gated MLP).

mod glm4_moe;
mod gpt_oss;
mod llama;
mod mistral;
mod mixtral;
mod moe;
mod olmo2;
mod olmoe;
pub mod quantization;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;
mod qwen3_next;
pub mod rope;
pub mod spec;
mod tensor_table;

use crate::config::ModelConfig;
use crate::error::{Result, RuntimeError};
use rope::RopeSpec;
use serde_json::Value;
pub use spec::{
    Activation, AttentionBias, BlockSpec, DeltaNetSpec, ExpertNaming, Family, FeedForward,
    LayerTensor, Layout, Mixer, ModelSpec, MoeSpec, NormLayout, QkNorm, RouterScoring,
    SharedExpertSpec, WeightRole,
};

/// `model_type` values this build implements.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "olmo2",
    "olmoe",
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "gpt_oss",
    "glm4_moe",
    "qwen3_next",
];

/// Reads the family-specific options of config.json into a spec.
pub fn model_spec(config: &ModelConfig) -> Result<ModelSpec> {
    let mut spec = match config.model_type.as_str() {
        "llama" => llama::spec(config),
        "mistral" => mistral::spec(config),
        "qwen2" => qwen2::spec(config),
        "qwen3" => qwen3::spec(config),
        "olmo2" => olmo2::spec(config),
        "olmoe" => olmoe::spec(config),
        "qwen3_moe" => qwen3_moe::spec(config),
        "qwen2_moe" => qwen2_moe::spec(config),
        "mixtral" => mixtral::spec(config),
        "gpt_oss" => gpt_oss::spec(config),
        "glm4_moe" => glm4_moe::spec(config),
        "qwen3_next" => qwen3_next::spec(config),
        other => Err(RuntimeError::UnsupportedModelType {
            path: config.path.clone(),
            model_type: other.to_string(),
            supported: SUPPORTED_MODEL_TYPES.to_vec(),
        }),
    }?;
    // GPT-OSS reads its own quantization_config (MXFP4).
    if spec.family != Family::GptOss {
        spec.fp8 = quantization::fp8_weights(config)?;
    }
    Ok(spec)
}

/// The parts of a spec every family reads the same way; the family supplies the block
/// options, the per-layer sliding windows and the per-layer feed-forward blocks.
fn shared_spec(
    config: &ModelConfig,
    family: Family,
    block: BlockSpec,
    sliding_windows: Vec<Option<usize>>,
    feed_forward: Vec<FeedForward>,
) -> Result<ModelSpec> {
    let positive = |key: &str, value: usize| {
        if value == 0 {
            Err(config.error(format!("`{key}` is 0; it must be positive")))
        } else {
            Ok(())
        }
    };
    positive("hidden_size", config.hidden_size)?;
    positive("num_hidden_layers", config.num_hidden_layers)?;
    positive("num_attention_heads", config.num_attention_heads)?;
    positive("num_key_value_heads", config.kv_heads())?;
    positive("intermediate_size", config.intermediate_size)?;
    positive("vocab_size", config.vocab_size)?;
    if !config.num_attention_heads.is_multiple_of(config.kv_heads()) {
        return Err(config.error(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            config.num_attention_heads,
            config.kv_heads()
        )));
    }
    let activation = config.hidden_act.as_deref().unwrap_or("silu");
    if !matches!(activation, "silu" | "swish") {
        return Err(config.unsupported(
            format!("hidden_act {activation:?}"),
            format!("{} models here use silu (SwiGLU)", family.model_type()),
        ));
    }
    let head_dim = config.resolved_head_dim()?;
    if !head_dim.is_multiple_of(2) {
        return Err(config.error(format!("head_dim {head_dim} is odd; RoPE needs pairs")));
    }
    Ok(ModelSpec {
        family,
        hidden_size: config.hidden_size,
        num_layers: config.num_hidden_layers,
        num_heads: config.num_attention_heads,
        num_kv_heads: config.kv_heads(),
        head_dim,
        intermediate_size: config.intermediate_size,
        feed_forward,
        vocab_size: config.vocab_size,
        max_position_embeddings: config.max_position_embeddings,
        block,
        rope: RopeSpec::read(config, head_dim, family.partial_rotary_default())?,
        sliding_windows,
        tied_embeddings: config.tie_word_embeddings.unwrap_or(false),
        unused_mtp_layers: mtp_layers(config)?,
        fp8: None,
        mixers: vec![Mixer::Attention { gated: false }; config.num_hidden_layers],
        zero_centred_norms: false,
    })
}

/// `num_nextn_predict_layers` (0 when absent).
fn mtp_layers(config: &ModelConfig) -> Result<usize> {
    match config.raw.get("num_nextn_predict_layers") {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(value) => value
            .as_u64()
            .filter(|&n| n <= 16)
            .map(|n| n as usize)
            .ok_or_else(|| {
                config.error(format!(
                    "`num_nextn_predict_layers` is {value}; it must be a whole number of layers (0 to 16)"
                ))
            }),
    }
}

/// Every layer a dense MLP of width `intermediate_size`.
fn dense_layers(config: &ModelConfig) -> Vec<FeedForward> {
    let dense = FeedForward::Dense {
        intermediate: config.intermediate_size,
    };
    vec![dense; config.num_hidden_layers]
}

/// RMSNorm epsilon with the family's default.
fn norm_eps(config: &ModelConfig, default: f64) -> f32 {
    config.rms_norm_eps.unwrap_or(default) as f32
}

/// Sliding windows of families that read `layer_types` (transformers 5) or derive them from
/// `use_sliding_window` / `max_window_layers` (qwen2, qwen3): a layer slides when its type is
/// `sliding_attention` and the window is switched on.
fn windows_from_layer_types(config: &ModelConfig) -> Result<Vec<Option<usize>>> {
    let window = if config.use_sliding_window.unwrap_or(false) {
        config.sliding_window
    } else {
        None
    };
    let layers = config.num_hidden_layers;
    let types: Vec<String> = match &config.layer_types {
        Some(types) => {
            if types.len() != layers {
                return Err(config.error(format!(
                    "`layer_types` has {} entries but num_hidden_layers is {layers}",
                    types.len()
                )));
            }
            types.clone()
        }
        None => (0..layers)
            .map(|i| {
                let sliding = window.is_some() && i >= config.max_window_layers.unwrap_or(28);
                if sliding {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
                .to_string()
            })
            .collect(),
    };
    types
        .iter()
        .enumerate()
        .map(|(layer, kind)| match kind.as_str() {
            "full_attention" => Ok(None),
            "sliding_attention" => Ok(window),
            other => Err(config.unsupported(
                format!("layer_types[{layer}] = {other:?}"),
                "supported layer types: full_attention, sliding_attention",
            )),
        })
        .collect()
}

/// A whole-number key of config.json, `default` when absent.
pub(super) fn whole(config: &ModelConfig, key: &str, default: usize) -> Result<usize> {
    match config.raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .filter(|&n| n <= 1 << 20)
            .map(|n| n as usize)
            .ok_or_else(|| config.error(format!("`{key}` is {value}; it must be a whole number"))),
    }
}

/// A true/false key of config.json, `default` when absent.
pub(super) fn flag(config: &ModelConfig, key: &str, default: bool) -> Result<bool> {
    match config.raw.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_bool()
            .ok_or_else(|| config.error(format!("`{key}` is {value}; it must be true or false"))),
    }
}
