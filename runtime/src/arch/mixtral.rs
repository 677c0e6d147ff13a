//! Mixtral (`model_type: mixtral`): Mistral's attention (no biases, `sliding_window` on
//! every layer when set), every layer a mixture of `num_local_experts` SwiGLU experts
//! (`w1` gate, `w3` up, `w2` down) of width `intermediate_size`; softmax router, top-k
//! weights always renormalised.

use super::moe::moe_spec;
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, FeedForward, ModelSpec, NormLayout,
    QkNorm, norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias::default(),
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-5),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    let moe = moe_spec(
        config,
        config.intermediate_size,
        true,
        None,
        ExpertNaming::BlockSparseMoe,
    )?;
    let layers = config.num_hidden_layers;
    let windows = vec![config.sliding_window; layers];
    shared_spec(
        config,
        Family::Mixtral,
        block,
        windows,
        vec![FeedForward::Moe(moe); layers],
    )
}
