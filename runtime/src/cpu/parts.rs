//! How a layer runs on the CPU: whole, in the parts the request names, or — when its f32
//! weights and one sequence's buffers do not fit what is left of `--ram` — in the fewest
//! parts that do (attention, then expert groups), the same accounting a GPU plan makes.

use crate::allocation::Budget;
use crate::arch::ModelSpec;
use crate::executor::RunRequest;
use crate::layer_parts::{num_experts, part_tensors};
use layerstream_planner::memory::{LayerShapes, activation_bytes};
use layerstream_planner::split::{
    LayerPart, experts_per_part_candidates, needs_accumulator, split_parts,
};

/// Bytes of `part`'s tensors in f32.
pub fn part_f32_bytes(spec: &ModelSpec, layer: usize, part: &LayerPart) -> u64 {
    part_tensors(spec, layer, part)
        .iter()
        .map(|t| 4 * t.shape.iter().product::<usize>() as u64)
        .sum()
}

/// Bytes of the feed-forward accumulator of a split layer: the workload's width.
pub fn accumulator_bytes(spec: &ModelSpec, request: &RunRequest) -> u64 {
    (request.num_sequences * request.seq_len * spec.hidden_size * 4) as u64
}

/// The parts `layer` runs in (see the module comment).
pub fn choose_parts(
    spec: &ModelSpec,
    request: &RunRequest,
    budget: &Budget,
    layer: usize,
    shapes: &LayerShapes,
) -> Vec<LayerPart> {
    if let Some(parts) = request.split_layers.get(&layer) {
        return parts.clone();
    }
    let Some(available) = budget.available() else {
        return vec![LayerPart::Whole];
    };
    let (block, moe) = activation_bytes(shapes, request.seq_len);
    let fits = |parts: &[LayerPart]| {
        let largest = parts
            .iter()
            .map(|p| part_f32_bytes(spec, layer, p))
            .max()
            .unwrap_or(0);
        let accumulator = if needs_accumulator(parts) {
            accumulator_bytes(spec, request)
        } else {
            0
        };
        largest + accumulator + block + moe <= available
    };
    if fits(&[LayerPart::Whole]) {
        return vec![LayerPart::Whole];
    }
    let experts = num_experts(spec, layer);
    experts_per_part_candidates(experts)
        .into_iter()
        .map(|per_part| split_parts(experts, per_part))
        .find(|parts| fits(parts))
        // Nothing fits: the smallest parts, whose reservation then says what is missing.
        .unwrap_or_else(|| split_parts(experts, 1))
}
