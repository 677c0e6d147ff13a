//! What a MoE layer's routed experts weigh and hold, read through the spec's tensor table
//! (so experts fused into one stacked tensor, or stored as MXFP4 blocks, count like separate
//! ones): stored bytes and parameters per expert, the formats their matrices are stored in,
//! and the model's parameter count with quantized matrices counted by value, not by byte.

use layerstream_planner::format::{TensorRef, WeightFormat};
use layerstream_planner::inventory::TensorEntry;
use layerstream_runtime::Model;
use layerstream_runtime::arch::{LayerTensor, WeightRole};
use layerstream_runtime::layer_parts::expert_of;
use std::collections::{BTreeSet, HashMap};

/// One layer's routed experts.
#[derive(Debug, Default)]
pub struct LayerExperts {
    /// Stored bytes of each expert, by expert index (bytes two roles read count once).
    pub stored_bytes: Vec<u64>,
    /// Parameters of each expert (weights and biases, as values).
    pub parameters: Vec<u64>,
    /// Bytes of each expert on the GPU when its matrices compute in bf16 (vectors in f32).
    pub bf16_bytes: Vec<u64>,
    /// How the experts' matrices are stored: `BF16`, `MXFP4`, ...
    pub matrix_formats: BTreeSet<String>,
}

impl LayerExperts {
    /// Whether any expert matrix is block-quantized.
    pub fn quantized(&self) -> bool {
        self.matrix_formats
            .iter()
            .any(|f| f == "MXFP4" || f == "FP8")
    }
}

fn is_matrix(role: WeightRole) -> bool {
    matches!(
        role,
        WeightRole::ExpertGate(_) | WeightRole::ExpertUp(_) | WeightRole::ExpertDown(_)
    )
}

fn format_name(source: &TensorRef, index: &HashMap<&str, &TensorEntry>) -> String {
    match source {
        TensorRef::Quantized {
            format: WeightFormat::Mxfp4,
            ..
        } => "MXFP4".into(),
        TensorRef::Quantized { .. } => "FP8".into(),
        other => index
            .get(other.name())
            .map_or_else(|| "?".into(), |t| t.dtype.name().to_string()),
    }
}

fn index_of(model: &Model) -> HashMap<&str, &TensorEntry> {
    layerstream_planner::split::index_by_name(model.weights.inventory())
}

/// Parameters of one weight: the values of the role's matrix or vector (`shape` is what
/// the role reads from: every `stride`-th row or column of it is the role's).
fn parameters(tensor: &LayerTensor) -> u64 {
    (tensor.shape.iter().product::<usize>() / tensor.layout.stride()) as u64
}

/// The routed experts of `layer` (empty for a dense layer).
pub fn layer_experts(model: &Model, layer: usize) -> LayerExperts {
    let index = index_of(model);
    let byte_len = |name: &str| index.get(name).map(|t| t.byte_len);
    let experts = model.spec.moe(layer).map_or(0, |m| m.num_experts);
    let mut sizes = LayerExperts {
        stored_bytes: vec![0; experts],
        parameters: vec![0; experts],
        bf16_bytes: vec![0; experts],
        matrix_formats: BTreeSet::new(),
    };
    let mut ranges: Vec<BTreeSet<(String, u64, u64)>> = vec![BTreeSet::new(); experts];
    for tensor in model.spec.layer_tensors(layer) {
        let Some(e) = expert_of(tensor.role).filter(|&e| e < experts) else {
            continue;
        };
        sizes.parameters[e] += parameters(&tensor);
        let element_bytes = if is_matrix(tensor.role) { 2 } else { 4 };
        sizes.bf16_bytes[e] += element_bytes * parameters(&tensor);
        if is_matrix(tensor.role) {
            sizes
                .matrix_formats
                .insert(format_name(&tensor.source, &index));
        }
        for range in tensor.source.byte_ranges(&byte_len).unwrap_or_default() {
            ranges[e].insert((range.name.to_string(), range.offset, range.len));
        }
    }
    for (bytes, ranges) in sizes.stored_bytes.iter_mut().zip(&ranges) {
        *bytes = ranges.iter().map(|(_, _, len)| len).sum();
    }
    sizes
}

/// Parameters of the model: every tensor's elements, except that a block-quantized
/// matrix counts its values, not its code and scale bytes.
pub fn parameter_count(model: &Model) -> u64 {
    let index = index_of(model);
    let mut quantized_tensors: BTreeSet<&str> = BTreeSet::new();
    let mut quantized_values = 0u64;
    for layer in 0..model.spec.num_layers {
        for tensor in model.spec.layer_tensors(layer) {
            if let TensorRef::Quantized { values, scales, .. } = &tensor.source {
                quantized_values += parameters(&tensor);
                for name in [values.name(), scales.name()] {
                    if let Some((&name, _)) = index.get_key_value(name) {
                        quantized_tensors.insert(name);
                    }
                }
            }
        }
    }
    let stored_elements: u64 = quantized_tensors
        .iter()
        .map(|name| index[name].numel() as u64)
        .sum();
    model.weights.inventory().parameter_count() - stored_elements + quantized_values
}
