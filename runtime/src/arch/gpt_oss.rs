//! GPT-OSS (`model_type: gpt_oss`; transformers' `modular_gpt_oss.py`): pre-norm, biases on
//! q, k, v and o, a learned sink logit per query head, `layer_types` alternating sliding
//! (`sliding_window`) and full attention, YaRN RoPE; every layer a mixture of
//! `num_local_experts` experts of width `intermediate_size` behind a biased router (top-k
//! logits, then a softmax over them) with GPT-OSS's clamped SwiGLU (`swiglu_limit`, alpha
//! 1.702; config.json's `hidden_act` is not what the experts use). `head_dim` is read, never
//! derived (hidden / heads is not the head size in the released models).

use super::moe::{moe_spec, required};
use super::{
    Activation, AttentionBias, BlockSpec, ExpertNaming, Family, FeedForward, ModelSpec, NormLayout,
    QkNorm, RouterScoring, norm_eps, shared_spec,
};
use crate::config::ModelConfig;
use crate::error::Result;
use serde_json::Value;

/// The SwiGLU's sigmoid scale in transformers' `GptOssExperts`.
const ALPHA: f32 = 1.702;

pub(super) fn spec(config: &ModelConfig) -> Result<ModelSpec> {
    required(config, "head_dim", config.head_dim)?;
    let bias = config.attention_bias.unwrap_or(true);
    let limit = match config.raw.get("swiglu_limit") {
        None | Some(Value::Null) => 7.0,
        Some(value) => value
            .as_f64()
            .filter(|l| l.is_finite() && *l > 0.0)
            .ok_or_else(|| {
                config.error(format!(
                    "`swiglu_limit` is {value}; it must be a positive number"
                ))
            })?,
    };
    let block = BlockSpec {
        norm_layout: NormLayout::PreNorm,
        qk_norm: QkNorm::None,
        attention_bias: AttentionBias {
            qkv: bias,
            output: bias,
        },
        mlp_bias: false,
        norm_eps: norm_eps(config, 1e-5),
        clip_qkv: None,
        activation: Activation::ClampedSwiglu {
            limit: limit as f32,
            alpha: ALPHA,
        },
        learned_sinks: true,
    };
    let method = config
        .raw
        .get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(Value::as_str);
    let mxfp4 = match method {
        None => false,
        Some("mxfp4") => true,
        Some(other) => {
            return Err(config.unsupported(
                format!("quantization_config.quant_method {other:?}"),
                "GPT-OSS checkpoints here are unquantized or MXFP4",
            ));
        }
    };
    let mut moe = moe_spec(
        config,
        config.intermediate_size,
        false,
        None,
        ExpertNaming::GptOss { mxfp4 },
    )?;
    moe.scoring = RouterScoring::TopKSoftmax;
    let layers = config.num_hidden_layers;
    shared_spec(
        config,
        Family::GptOss,
        block,
        windows(config)?,
        vec![FeedForward::Moe(moe); layers],
    )
}

/// Per layer `Some(sliding_window)` for `sliding_attention` in `layer_types`, `None` for
/// `full_attention` (no `use_sliding_window` switch: the types decide).
fn windows(config: &ModelConfig) -> Result<Vec<Option<usize>>> {
    let layers = config.num_hidden_layers;
    let types = config.layer_types.as_ref().ok_or_else(|| {
        config.error("missing required key `layer_types` for model_type \"gpt_oss\"")
    })?;
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
            "full_attention" => Ok(None),
            "sliding_attention" => {
                required(config, "sliding_window", config.sliding_window).map(Some)
            }
            other => Err(config.unsupported(
                format!("layer_types[{layer}] = {other:?}"),
                "supported layer types: full_attention, sliding_attention",
            )),
        })
        .collect()
}
