//! Qwen3-MoE (`model_type: qwen3_moe`): Qwen3's attention (per-head q/k RMSNorm), experts of
//! width `moe_intermediate_size` in the layers `decoder_sparse_step` / `mlp_only_layers`
//! leave sparse, dense MLPs of width `intermediate_size` elsewhere; softmax router, top-k
//! weights renormalised only with `norm_topk_prob`.

use super::moe::{moe_spec, qwen_sparse_layers, required};
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, ModelSpec, NormLayout, QkNorm,
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
    let expert_width = required(
        config,
        "moe_intermediate_size",
        config.moe_intermediate_size,
    )?;
    let moe = moe_spec(
        config,
        expert_width,
        config.norm_topk_prob.unwrap_or(false),
        None,
        ExpertNaming::MlpExperts,
    )?;
    let layers = qwen_sparse_layers(config, moe)?;
    shared_spec(
        config,
        Family::Qwen3Moe,
        block,
        windows_from_layer_types(config)?,
        layers,
    )
}
