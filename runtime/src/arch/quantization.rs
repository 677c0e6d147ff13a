//! `quantization_config` of config.json for every family but GPT-OSS (which reads its own
//! MXFP4 form): none, or transformers' fine-grained FP8 (`quant_method: fp8`, DeepSeek-V3's
//! format, as GLM-4.5-Air-FP8 and Qwen3-30B-A3B-FP8 ship): linear weights in F8_E4M3 with
//! one F32 `weight_scale_inv` per `weight_block_size` block. Which tensors are FP8 is read
//! from the checkpoint's headers when the model opens (modules transformers leaves
//! unconverted are stored in their own dtype and stay in it).

use crate::config::ModelConfig;
use crate::error::Result;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The safetensors dtype of FP8 weights.
pub const FP8_DTYPE: &str = "F8_E4M3";

/// The FP8 weights of a model.
#[derive(Clone, PartialEq)]
pub struct Fp8Weights {
    /// Rows per scale block (`weight_block_size[0]`).
    pub block_rows: usize,
    /// Columns per scale block (`weight_block_size[1]`).
    pub block_cols: usize,
    /// The layer weights stored as F8_E4M3 (filled from the headers by `Model::open`).
    pub stored: Arc<BTreeSet<String>>,
}

impl std::fmt::Debug for Fp8Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Fp8Weights {{ blocks {} x {}, {} tensors }}",
            self.block_rows,
            self.block_cols,
            self.stored.len()
        )
    }
}

/// The tensor holding the inverse scales of the FP8 weight `name`
/// (`...weight` -> `...weight_scale_inv`).
pub fn scale_name(name: &str) -> String {
    format!("{name}_scale_inv")
}

/// The FP8 block size of `config`, `None` without a `quantization_config`; any other
/// method is refused.
pub fn fp8_weights(config: &ModelConfig) -> Result<Option<Fp8Weights>> {
    let Some(quantization) = config
        .raw
        .get("quantization_config")
        .filter(|q| !q.is_null())
    else {
        return Ok(None);
    };
    let get = |key: &str| quantization.get(key).filter(|v| !v.is_null());
    let method = get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "fp8" {
        return Err(config.unsupported(
            format!("quantization_config.quant_method {method:?}"),
            "supported: unquantized checkpoints, fine-grained FP8 (quant_method \"fp8\"), and MXFP4 for gpt_oss; use the unquantized checkpoint",
        ));
    }
    if let Some(fmt) = get("fmt").and_then(Value::as_str).filter(|f| *f != "e4m3") {
        return Err(config.unsupported(
            format!("quantization_config.fmt {fmt:?}"),
            "FP8 weights here are E4M3 (\"fmt\": \"e4m3\"), as the released FP8 checkpoints",
        ));
    }
    if let Some(scale) = get("scale_fmt")
        .and_then(Value::as_str)
        .filter(|f| *f != "float")
    {
        return Err(config.unsupported(
            format!("quantization_config.scale_fmt {scale:?}"),
            "FP8 scales here are F32 `weight_scale_inv` tensors (\"scale_fmt\": \"float\")",
        ));
    }
    // transformers' FineGrainedFP8Config defaults to 128 x 128 blocks.
    let (block_rows, block_cols) = match get("weight_block_size") {
        None => (128, 128),
        Some(value) => match value
            .as_array()
            .map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>())
        {
            Some(sizes) if sizes.len() == 2 && sizes.iter().all(|s| s.is_some_and(|s| s > 0)) => (
                sizes[0].unwrap_or(1) as usize,
                sizes[1].unwrap_or(1) as usize,
            ),
            _ => {
                return Err(config.error(format!(
                    "quantization_config.weight_block_size is {value}; it must be two positive whole numbers, e.g. [128, 128]"
                )));
            }
        },
    };
    Ok(Some(Fp8Weights {
        block_rows,
        block_cols,
        stored: Arc::default(),
    }))
}
