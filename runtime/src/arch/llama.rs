//! Llama 2 and Llama 3 (`model_type: llama`): pre-norm, GQA, optional attention and MLP
//! biases, RoPE with optional `llama3` / `linear` scaling.

use super::{
    Activation, AttentionBias, BlockSpec, Family, ModelSpec, NormLayout, QkNorm, dense_layers,
    norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let bias = config.attention_bias.unwrap_or(false);
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias {
            qkv: bias,
            output: bias,
        },
        mlp_bias: config.mlp_bias.unwrap_or(false),
        norm_eps: norm_eps(config, 1e-6),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    shared_spec(
        config,
        Family::Llama,
        block,
        vec![None; config.num_hidden_layers],
        dense_layers(config),
    )
}
