//! OLMoE (`model_type: olmoe`): pre-norm, RMSNorm over all query (key) heads before RoPE,
//! optional clamp of q/k/v (`clip_qkv`), every layer a mixture of `num_experts` SwiGLU
//! experts of width `intermediate_size`, softmax router, top-k weights renormalised only
//! with `norm_topk_prob`.

use super::moe::moe_spec;
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, FeedForward, ModelSpec, NormLayout,
    QkNorm, norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let bias = config.attention_bias.unwrap_or(false);
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::AcrossHeads,
        attention_bias: AttentionBias {
            qkv: bias,
            output: bias,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-5),
        clip_qkv: config.clip_qkv.map(|c| c as f32),
        activation: Activation::Silu,
        learned_sinks: false,
    };
    let moe = moe_spec(
        config,
        config.intermediate_size,
        config.norm_topk_prob.unwrap_or(false),
        None,
        ExpertNaming::MlpExperts,
    )?;
    let layers = config.num_hidden_layers;
    shared_spec(
        config,
        Family::Olmoe,
        block,
        vec![None; layers],
        vec![FeedForward::Moe(moe); layers],
    )
}
