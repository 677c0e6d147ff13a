//! The mixture-of-experts settings every MoE family reads the same way, and Qwen-MoE's rule
//! for which layers are sparse.

use super::{ExpertNaming, FeedForward, MoeSpec, RouterScoring, SharedExpertSpec};
use crate::config::ModelConfig;
use crate::error::Result;

/// Routed-expert settings: expert count (`num_experts` or `num_local_experts`), top-k
/// (`num_experts_per_tok`) and the renormalisation of the top-k weights.
pub(super) fn moe_spec(
    config: &ModelConfig,
    expert_intermediate: usize,
    normalize_top_k: bool,
    shared_expert: Option<SharedExpertSpec>,
    naming: ExpertNaming,
) -> Result<MoeSpec> {
    let num_experts = config.routed_experts().ok_or_else(|| {
        config.error(format!(
            "missing required key `num_experts` (or `num_local_experts`, `n_routed_experts`) for model_type {:?}",
            config.model_type
        ))
    })?;
    let top_k = config.num_experts_per_tok.ok_or_else(|| {
        config.error(format!(
            "missing required key `num_experts_per_tok` for model_type {:?}",
            config.model_type
        ))
    })?;
    if num_experts == 0 || top_k == 0 || top_k > num_experts {
        return Err(config.error(format!(
            "num_experts_per_tok {top_k} must be between 1 and the number of experts {num_experts}"
        )));
    }
    if expert_intermediate == 0 {
        return Err(config.error("the experts' MLP width is 0"));
    }
    // `router_jitter_noise` (Mixtral) is applied only in training, so it is ignored here as
    // transformers ignores it in eval mode.
    Ok(MoeSpec {
        num_experts,
        top_k,
        expert_intermediate,
        scoring: RouterScoring::Softmax,
        normalize_top_k,
        shared_expert,
        naming,
    })
}

/// Qwen-MoE's layer rule: layer `l` is sparse unless it is in `mlp_only_layers` or
/// `(l + 1) % decoder_sparse_step != 0`; dense layers use `intermediate_size`.
pub(super) fn qwen_sparse_layers(config: &ModelConfig, moe: MoeSpec) -> Result<Vec<FeedForward>> {
    let step = config.decoder_sparse_step.unwrap_or(1);
    if step == 0 {
        return Err(config.error("`decoder_sparse_step` is 0; it must be at least 1"));
    }
    let dense_only = config.mlp_only_layers.clone().unwrap_or_default();
    Ok((0..config.num_hidden_layers)
        .map(|layer| {
            if !dense_only.contains(&layer) && (layer + 1) % step == 0 {
                FeedForward::Moe(moe.clone())
            } else {
                FeedForward::Dense {
                    intermediate: config.intermediate_size,
                }
            }
        })
        .collect())
}

/// A key that a family needs, or an error naming it.
pub(super) fn required(config: &ModelConfig, key: &str, value: Option<usize>) -> Result<usize> {
    value.ok_or_else(|| {
        config.error(format!(
            "missing required key `{key}` for model_type {:?}",
            config.model_type
        ))
    })
}
