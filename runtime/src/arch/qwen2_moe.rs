//! Qwen2-MoE / Qwen1.5-MoE (`model_type: qwen2_moe`): Qwen2's attention (bias on q, k, v
//! per `qkv_bias`), routed experts of width `moe_intermediate_size` plus a shared expert of
//! width `shared_expert_intermediate_size` scaled by `sigmoid(shared_expert_gate(x))`;
//! dense layers as `decoder_sparse_step` / `mlp_only_layers` say.

use super::moe::{moe_spec, qwen_sparse_layers, required};
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, ModelSpec, NormLayout, QkNorm,
    SharedExpertSpec, norm_eps, shared_spec, windows_from_layer_types,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias {
            qkv: config.qkv_bias.unwrap_or(true),
            output: false,
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
    let shared = SharedExpertSpec {
        intermediate: required(
            config,
            "shared_expert_intermediate_size",
            config.shared_expert_intermediate_size,
        )?,
        sigmoid_gate: true,
        module: "shared_expert",
    };
    let moe = moe_spec(
        config,
        expert_width,
        config.norm_topk_prob.unwrap_or(false),
        Some(shared),
        ExpertNaming::MlpExperts,
    )?;
    let layers = qwen_sparse_layers(config, moe)?;
    shared_spec(
        config,
        Family::Qwen2Moe,
        block,
        windows_from_layer_types(config)?,
        layers,
    )
}
