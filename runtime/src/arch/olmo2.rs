//! OLMo 2 (`model_type: olmo2`): no norm before the sublayers; RMSNorm on the attention and
//! MLP outputs before each residual add, and RMSNorm over all query (key) heads together
//! before RoPE.

use super::{
    Activation, AttentionBias, BlockSpec, Family, ModelSpec, NormLayout, QkNorm, dense_layers,
    norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let bias = config.attention_bias.unwrap_or(false);
    let block = BlockSpec {
        norm_layout: NormLayout::PostSublayerNorm,
        qk_norm: QkNorm::AcrossHeads,
        attention_bias: AttentionBias {
            qkv: bias,
            output: bias,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-5),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    shared_spec(
        config,
        Family::Olmo2,
        block,
        vec![None; config.num_hidden_layers],
        dense_layers(config),
    )
}
