//! Qwen2 / Qwen2.5 (`model_type: qwen2`): Llama's block with biases on q, k and v (not o);
//! sliding-window layers from `layer_types` or `use_sliding_window` + `max_window_layers`.

use super::{
    Activation, AttentionBias, BlockSpec, Family, ModelSpec, NormLayout, QkNorm, dense_layers,
    norm_eps, shared_spec, windows_from_layer_types,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias {
            qkv: true,
            output: false,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-6),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    shared_spec(
        config,
        Family::Qwen2,
        block,
        windows_from_layer_types(config)?,
        dense_layers(config),
    )
}
