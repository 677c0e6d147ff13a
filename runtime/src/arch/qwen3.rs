//! Qwen3 dense (`model_type: qwen3`): RMSNorm of width head_dim on every query and key head
//! before RoPE, optional attention bias, explicit `head_dim` (may differ from hidden/heads).

use super::{
    Activation, AttentionBias, BlockSpec, Family, ModelSpec, NormLayout, QkNorm, dense_layers,
    norm_eps, shared_spec, windows_from_layer_types,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let bias = config.attention_bias.unwrap_or(false);
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::PerHead,
        attention_bias: AttentionBias {
            qkv: bias,
            output: bias,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-6),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    shared_spec(
        config,
        Family::Qwen3,
        block,
        windows_from_layer_types(config)?,
        dense_layers(config),
    )
}
