//! What a model's block-quantized layer matrices (MXFP4, FP8) weigh as stored and once
//! dequantized for the GPU, for `inspect`.

use layerstream_planner::format::{TensorRef, WeightFormat, align};
use layerstream_runtime::Model;
use serde::Serialize;
use std::collections::BTreeMap;

/// One stored format's matrices over the decoder layers (MTP layers left out).
#[derive(Debug, Serialize)]
pub struct QuantizedMatrices {
    /// `MXFP4`, or `FP8 (128 x 128 blocks)`.
    pub format: String,
    /// How many.
    pub matrices: usize,
    /// Their values and scales as stored (what streams from disk and over PCIe).
    pub stored_bytes: u64,
    /// Their values dequantized to bf16 (what they take on the GPU).
    pub bf16_bytes: u64,
}

fn format_name(format: WeightFormat) -> String {
    match format {
        WeightFormat::Mxfp4 => "MXFP4".into(),
        WeightFormat::Fp8 {
            block_rows,
            block_cols,
        } => format!("FP8 E4M3 ({block_rows} x {block_cols} blocks)"),
        WeightFormat::Dense(dtype) => dtype.name().into(),
    }
}

/// The quantized matrices of `model`'s decoder layers, by format.
pub fn quantized_matrices(model: &Model) -> Vec<QuantizedMatrices> {
    let index = layerstream_planner::split::index_by_name(model.weights.inventory());
    let byte_len = |name: &str| index.get(name).map(|t| t.byte_len);
    let mut by_format: BTreeMap<String, QuantizedMatrices> = BTreeMap::new();
    for layer in 0..model.spec.num_layers {
        for tensor in model.spec.layer_tensors(layer) {
            let TensorRef::Quantized { format, .. } = &tensor.source else {
                continue;
            };
            let name = format_name(*format);
            let entry = by_format
                .entry(name.clone())
                .or_insert_with(|| QuantizedMatrices {
                    format: name,
                    matrices: 0,
                    stored_bytes: 0,
                    bf16_bytes: 0,
                });
            entry.matrices += 1;
            let ranges = tensor.source.byte_ranges(&byte_len).unwrap_or_default();
            entry.stored_bytes += ranges.iter().map(|r| r.len).sum::<u64>();
            let values = tensor.shape.iter().product::<usize>() / tensor.layout.stride();
            entry.bf16_bytes += align(2 * values as u64);
        }
    }
    by_format.into_values().collect()
}
