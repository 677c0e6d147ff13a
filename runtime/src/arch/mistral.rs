//! Mistral (`model_type: mistral`): Llama's block without biases; `sliding_window`, when
//! set, limits every layer's attention to the last `sliding_window` positions.

use super::{
    Activation, AttentionBias, BlockSpec, Family, ModelSpec, NormLayout, QkNorm, dense_layers,
    norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias::default(),
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-6),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    let windows = vec![config.sliding_window; config.num_hidden_layers];
    shared_spec(
        config,
        Family::Mistral,
        block,
        windows,
        dense_layers(config),
    )
}
