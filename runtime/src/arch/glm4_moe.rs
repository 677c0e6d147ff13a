//! GLM-4.5 and GLM-4.5-Air (`model_type: glm4_moe`; transformers' `modeling_glm4_moe.py`,
//! whose MoE is DeepSeek-V3's): Llama pre-norm, q/k/v biased per `attention_bias` and o
//! never, per-head q/k RMSNorm before RoPE when `use_qk_norm`, partial rotary
//! (`partial_rotary_factor`, 0.5 by default: the first half of each head rotates with NeoX
//! halves, the rest passes), dense SwiGLU layers of width `intermediate_size` below
//! `first_k_dense_replace`, then a sigmoid router with a selection-only bias
//! (`e_score_correction_bias`), group-limited choice (`n_group`, `topk_group`), unbiased
//! weights normalized (`norm_topk_prob`) and scaled (`routed_scaling_factor`), and
//! `n_shared_experts` ungated shared experts as one MLP. `num_nextn_predict_layers` MTP layers
//! after the last one are known and unused (transformers never builds them).

use super::moe::{moe_spec, required};
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, FeedForward, ModelSpec, NormLayout,
    QkNorm, RouterScoring, SharedExpertSpec, flag, norm_eps, shared_spec, whole,
};
use crate::config::ModelConfig;
use crate::error::Result;
use serde_json::Value;

/// Expert groups at most (a bit each in the GPU router's kept-group mask).
pub const MAX_GROUPS: usize = 64;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: match flag(config, "use_qk_norm", false)? {
            true => QkNorm::PerHead,
            false => QkNorm::None,
        },
        attention_bias: AttentionBias {
            qkv: config.attention_bias.unwrap_or(false),
            output: false,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-5),
        clip_qkv: None,
        activation: Activation::Silu,
        learned_sinks: false,
    };
    let expert_width = required(
        config,
        "moe_intermediate_size",
        config.moe_intermediate_size,
    )?;
    let shared_count = whole(config, "n_shared_experts", 1)?;
    if shared_count == 0 {
        return Err(config.error(
            "`n_shared_experts` is 0; transformers' glm4_moe always has a shared expert (1 in the released models)",
        ));
    }
    let shared = SharedExpertSpec {
        intermediate: expert_width * shared_count,
        sigmoid_gate: false,
        module: "shared_experts",
    };
    let mut moe = moe_spec(
        config,
        expert_width,
        flag(config, "norm_topk_prob", true)?,
        Some(shared),
        ExpertNaming::MlpExperts,
    )?;
    moe.scoring = sigmoid_scoring(config, moe.num_experts, moe.top_k)?;
    let dense_below = whole(config, "first_k_dense_replace", 1)?;
    let layers = (0..config.num_hidden_layers)
        .map(|layer| match layer < dense_below {
            true => FeedForward::Dense {
                intermediate: config.intermediate_size,
            },
            false => FeedForward::Moe(moe.clone()),
        })
        .collect();
    let windows = vec![None; config.num_hidden_layers];
    shared_spec(config, Family::Glm4Moe, block, windows, layers)
}

/// The router's group-limited sigmoid scoring, checked against the expert count.
fn sigmoid_scoring(config: &ModelConfig, experts: usize, top_k: usize) -> Result<RouterScoring> {
    let groups = whole(config, "n_group", 1)?;
    let top_groups = whole(config, "topk_group", 1)?;
    if groups == 0 || groups > MAX_GROUPS || !experts.is_multiple_of(groups) {
        return Err(config.error(format!(
            "`n_group` is {groups}; it must divide the {experts} routed experts (1 to {MAX_GROUPS} groups)"
        )));
    }
    let per_group = experts / groups;
    if groups > 1 && per_group < 2 {
        return Err(config.error(format!(
            "`n_group` {groups} leaves {per_group} expert per group; a group's score is the sum of its two best experts, so groups need at least 2"
        )));
    }
    if top_groups == 0 || top_groups > groups || top_k > top_groups * per_group {
        return Err(config.error(format!(
            "`topk_group` is {top_groups}: it must be 1 to n_group {groups}, and its groups must hold num_experts_per_tok {top_k} experts ({per_group} each)"
        )));
    }
    let scaling = match config.raw.get("routed_scaling_factor") {
        None | Some(Value::Null) => 1.0,
        Some(value) => value
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| {
                config.error(format!(
                    "`routed_scaling_factor` is {value}; it must be a positive number"
                ))
            })?,
    };
    Ok(RouterScoring::Sigmoid {
        groups,
        top_groups,
        scaling: scaling as f32,
    })
}
