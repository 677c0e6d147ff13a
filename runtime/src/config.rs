//! config.json as transformers writes it. Unknown keys are ignored; a key an architecture
//! needs and does not find is an error that names the key and the file.

use crate::error::{Result, RuntimeError};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The keys of config.json that the supported families read. Family-specific defaults are
/// applied by the family files in `arch/`, not here.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelConfig {
    /// Architecture family, e.g. `llama`, `qwen3`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of repeating decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); absent means as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; absent means hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Width of the gated MLP.
    pub intermediate_size: usize,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// Longest sequence the model was built for.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    /// MLP activation name.
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// Bias on attention projections (llama, qwen3, olmo2: all four; mistral: unused).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Bias on MLP projections (llama).
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// RoPE base (older configs).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling (older configs): `{"rope_type": "llama3", "factor": 8, ...}`.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// RoPE parameters (transformers 5 configs): base and scaling in one object.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    /// Fraction of each head that is rotated.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// Sliding-window width in tokens (mistral, qwen2, qwen3).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Whether the sliding window is used (qwen2, qwen3).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Layers below this index use full attention when the window is on (qwen2, qwen3).
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Per-layer attention kind, `full_attention` or `sliding_attention` (transformers 5).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Routed experts (OLMoE, Qwen-MoE spelling).
    #[serde(default)]
    pub num_experts: Option<usize>,
    /// Routed experts (Mixtral spelling; transformers 5 writes it for Qwen3-MoE too).
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    /// Routed experts (glm4_moe, DeepSeek-V3).
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    /// Experts chosen per token.
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    /// Whether the top-k routing weights are renormalised to sum to 1.
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    /// Width of each routed expert (Qwen-MoE).
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    /// Width of the shared expert (Qwen2-MoE).
    #[serde(default)]
    pub shared_expert_intermediate_size: Option<usize>,
    /// Every n-th layer is sparse (Qwen-MoE).
    #[serde(default)]
    pub decoder_sparse_step: Option<usize>,
    /// Layers with a dense MLP instead of experts (Qwen-MoE).
    #[serde(default)]
    pub mlp_only_layers: Option<Vec<usize>>,
    /// Clamp of q, k, v (OLMoE).
    #[serde(default)]
    pub clip_qkv: Option<f64>,
    /// Bias on q, k, v (Qwen2-MoE).
    #[serde(default)]
    pub qkv_bias: Option<bool>,
    /// Token ids from config.json, used when tokenizer_config.json does not name them.
    #[serde(default)]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<Value>,
    /// The whole file, for keys only some families read.
    #[serde(skip)]
    pub raw: Value,
    /// Where it was read from.
    #[serde(skip)]
    pub path: PathBuf,
}

impl ModelConfig {
    /// Reads `DIR/config.json`.
    pub fn load(model_dir: &Path) -> Result<Self> {
        if model_dir.is_file() {
            return Err(RuntimeError::Config {
                path: model_dir.to_path_buf(),
                message: "is a file; --model must be the model's folder (with config.json, tokenizer.json and model.safetensors)".into(),
            });
        }
        let path = model_dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RuntimeError::Config {
                    path: path.clone(),
                    message: "not found; --model must be a folder with config.json, tokenizer.json and model.safetensors (or model.safetensors.index.json with its shards)".into(),
                }
            } else {
                RuntimeError::io("cannot read", &path, e)
            }
        })?;
        Self::parse(&text, path)
    }

    /// Parses config.json text; `path` is used in errors.
    pub fn parse(text: &str, path: PathBuf) -> Result<Self> {
        // Some editors save a byte-order mark; JSON parsers do not expect one.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let raw: Value = serde_json::from_str(text).map_err(|e| RuntimeError::Config {
            path: path.clone(),
            message: format!("not valid JSON: {e}"),
        })?;
        if raw.get("model_type").is_none() {
            return Err(RuntimeError::Config {
                path,
                message:
                    "missing required key `model_type`; transformers writes it when saving a model"
                        .into(),
            });
        }
        let mut config: ModelConfig =
            serde_path_to_error::deserialize(raw.clone()).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    String::new()
                } else {
                    format!("`{key}`: ")
                };
                RuntimeError::Config {
                    path: path.clone(),
                    message: format!(
                        "{key}{} (model_type {:?})",
                        e.inner(),
                        raw.get("model_type").and_then(Value::as_str).unwrap_or("?")
                    ),
                }
            })?;
        config.raw = raw;
        config.path = path;
        crate::config_values::check_values(&config)?;
        Ok(config)
    }

    /// Key/value heads, defaulting to the number of query heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width, from `head_dim` or hidden_size / num_attention_heads.
    pub fn resolved_head_dim(&self) -> Result<usize> {
        match self.head_dim {
            Some(head_dim) => Ok(head_dim),
            None if self.num_attention_heads > 0
                && self.hidden_size.is_multiple_of(self.num_attention_heads) =>
            {
                Ok(self.hidden_size / self.num_attention_heads)
            }
            None => Err(self.error(format!(
                "hidden_size {} is not divisible by num_attention_heads {} and head_dim is not given",
                self.hidden_size, self.num_attention_heads
            ))),
        }
    }

    /// An error about this config file.
    pub fn error(&self, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Config {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// An "unsupported" error about this config file.
    pub fn unsupported(&self, what: impl Into<String>, hint: impl Into<String>) -> RuntimeError {
        RuntimeError::UnsupportedFeature {
            path: self.path.clone(),
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// Routed experts from `num_experts` or `num_local_experts`.
    pub fn routed_experts(&self) -> Option<usize> {
        self.num_experts
            .or(self.num_local_experts)
            .or(self.n_routed_experts)
    }

    /// The first id of `eos_token_id`, which may be a number or a list.
    pub fn first_eos_token_id(&self) -> Option<u32> {
        first_token_id(self.eos_token_id.as_ref()?)
    }
}

fn first_token_id(value: &Value) -> Option<u32> {
    match value {
        Value::Number(n) => n.as_u64().and_then(|v| u32::try_from(v).ok()),
        Value::Array(items) => items.first().and_then(first_token_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
        "num_attention_heads":4,"intermediate_size":128,"vocab_size":100,
        "max_position_embeddings":256,"some_future_key":{"x":1}}"#;

    #[test]
    fn tolerates_unknown_keys() {
        let config = ModelConfig::parse(MINIMAL, "config.json".into()).unwrap();
        assert_eq!(config.kv_heads(), 4);
        assert_eq!(config.resolved_head_dim().unwrap(), 16);
    }

    #[test]
    fn missing_key_error_names_key_and_file() {
        let text = MINIMAL.replace("\"intermediate_size\":128,", "");
        let err = ModelConfig::parse(&text, "/m/config.json".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("intermediate_size"), "{err}");
        assert!(err.contains("/m/config.json"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_and_a_byte_order_mark_is_accepted() {
        let text = MINIMAL.replace("\"hidden_size\":64", "\"hidden_size\":\"64\"");
        let err = ModelConfig::parse(&text, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`hidden_size`") && err.contains("string"),
            "{err}"
        );
        let config = ModelConfig::parse(&format!("\u{feff}{MINIMAL}"), "c.json".into()).unwrap();
        assert_eq!(config.hidden_size, 64);
    }

    #[test]
    fn missing_model_type_is_named() {
        let text = MINIMAL.replace("\"model_type\":\"llama\",", "");
        let err = ModelConfig::parse(&text, "c.json".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_type"), "{err}");
    }

    #[test]
    fn eos_may_be_a_list() {
        let text = MINIMAL.replace(
            "\"vocab_size\":100,",
            "\"vocab_size\":100,\"eos_token_id\":[7,9],",
        );
        let config = ModelConfig::parse(&text, "c.json".into()).unwrap();
        assert_eq!(config.first_eos_token_id(), Some(7));
    }
}
