//! Qwen3-Next (`model_type: qwen3_next`; transformers' `modeling_qwen3_next.py`): a hybrid
//! of Gated DeltaNet layers (`linear_attn`) and gated full-attention layers (`self_attn`),
//! layer `i` full attention iff `(i + 1) % full_attention_interval == 0` unless `layer_types`
//! says otherwise. Zero-centred RMSNorms (`x rsqrt(mean(x^2) + eps) (1 + w)` in f32) for the
//! block, final and per-head q/k norms; gated attention (q_proj emits per head
//! `[query | gate]`, the heads' output times `sigmoid(gate)`), partial rotary 0.25; the
//! Qwen2-MoE block on every layer (`decoder_sparse_step` / `mlp_only_layers`): softmax
//! router, top-k renormalised per `norm_topk_prob`, a shared expert scaled by
//! `sigmoid(shared_expert_gate(x))`. The `mtp.*` tensors are known and unused.

use super::moe::{moe_spec, qwen_sparse_layers, required};
use super::{
    Activation, AttentionBias, BlockSpec, DeltaNetSpec, ExpertNaming, Family, Mixer, ModelSpec,
    NormLayout, QkNorm, SharedExpertSpec, norm_eps, shared_spec, whole,
};
use crate::config::ModelConfig;
use crate::error::Result;

/// The convolution kernel's longest width (the GPU kernel keeps a window per thread).
pub const MAX_CONV_KERNEL: usize = 8;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    // transformers' Qwen3NextConfig defaults head_dim to 256, not hidden / heads.
    let mut config = config.clone();
    config.head_dim.get_or_insert(256);
    let config = &config;
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
    let shared = SharedExpertSpec {
        intermediate: required(
            config,
            "shared_expert_intermediate_size",
            config.shared_expert_intermediate_size,
        )?,
        sigmoid_gate: true,
        module: "shared_expert",
    };
    let expert_width = required(
        config,
        "moe_intermediate_size",
        config.moe_intermediate_size,
    )?;
    let moe = moe_spec(
        config,
        expert_width,
        config.norm_topk_prob.unwrap_or(true),
        Some(shared),
        ExpertNaming::MlpExperts,
    )?;
    let layers = qwen_sparse_layers(config, moe)?;
    let windows = vec![None; config.num_hidden_layers];
    let mut spec = shared_spec(config, Family::Qwen3Next, block, windows, layers)?;
    spec.mixers = mixers(config, delta_net(config)?)?;
    spec.zero_centred_norms = true;
    Ok(spec)
}

/// The Gated DeltaNet's shapes, checked.
fn delta_net(config: &ModelConfig) -> Result<DeltaNetSpec> {
    let positive = |key: &str, default: usize| -> Result<usize> {
        match whole(config, key, default)? {
            0 => Err(config.error(format!("`{key}` is 0; it must be positive"))),
            n => Ok(n),
        }
    };
    let spec = DeltaNetSpec {
        key_heads: positive("linear_num_key_heads", 16)?,
        value_heads: positive("linear_num_value_heads", 32)?,
        key_dim: positive("linear_key_head_dim", 128)?,
        value_dim: positive("linear_value_head_dim", 128)?,
        conv_kernel: positive("linear_conv_kernel_dim", 4)?,
    };
    if !spec.value_heads.is_multiple_of(spec.key_heads) {
        return Err(config.error(format!(
            "`linear_num_value_heads` {} is not a multiple of `linear_num_key_heads` {}; each value head reads one key head",
            spec.value_heads, spec.key_heads
        )));
    }
    if spec.conv_kernel > MAX_CONV_KERNEL {
        return Err(config.unsupported(
            format!("linear_conv_kernel_dim {}", spec.conv_kernel),
            format!(
                "convolution kernels up to {MAX_CONV_KERNEL} are supported (Qwen3-Next uses 4)"
            ),
        ));
    }
    Ok(spec)
}

/// Each layer's mixer, from `layer_types` (transformers' legacy names accepted) or from
/// `full_attention_interval`.
fn mixers(config: &ModelConfig, delta: DeltaNetSpec) -> Result<Vec<Mixer>> {
    let layers = config.num_hidden_layers;
    let full = Mixer::Attention { gated: true };
    let Some(types) = &config.layer_types else {
        let interval = whole(config, "full_attention_interval", 4)?;
        if interval == 0 {
            return Err(config.error("`full_attention_interval` is 0; it must be at least 1"));
        }
        return Ok((0..layers)
            .map(|i| match (i + 1).is_multiple_of(interval) {
                true => full,
                false => Mixer::DeltaNet(delta),
            })
            .collect());
    };
    if types.len() != layers {
        return Err(config.error(format!(
            "`layer_types` has {} entries but num_hidden_layers is {layers}",
            types.len()
        )));
    }
    types
        .iter()
        .enumerate()
        .map(|(layer, kind)| match kind.as_str() {
            "full_attention" | "attention" => Ok(full),
            "linear_attention" | "mamba" | "conv" => Ok(Mixer::DeltaNet(delta)),
            other => Err(config.unsupported(
                format!("layer_types[{layer}] = {other:?}"),
                "qwen3_next layer types: linear_attention, full_attention",
            )),
        })
        .collect()
}
