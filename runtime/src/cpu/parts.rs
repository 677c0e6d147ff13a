//! How a layer runs on the CPU under `--ram`: whole, in the parts the request names, or —
//! when its f32 weights and one sequence's buffers do not fit what is left — in the fewest
//! parts that do (attention, then expert groups); and whether the workload's hidden states
//! stay in memory or move to a file. The same accounting a GPU plan makes.

use crate::allocation::Budget;
use crate::arch::ModelSpec;
use crate::executor::RunRequest;
use crate::layer_parts::{num_experts, part_tensors};
use layerstream_planner::memory::{LayerShapes, ScratchFor, ScratchManifest};
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

/// Bytes of a workload-sized buffer (hidden states, a split layer's accumulator).
pub fn workload_bytes(spec: &ModelSpec, request: &RunRequest) -> u64 {
    (request.tokens() * spec.hidden_size * 4) as u64
}

/// The ways `layer` can run, fewest parts first.
fn arrangements(spec: &ModelSpec, layer: usize) -> Vec<Vec<LayerPart>> {
    let experts = num_experts(spec, layer);
    std::iter::once(vec![LayerPart::Whole])
        .chain(
            experts_per_part_candidates(experts)
                .into_iter()
                .map(|per_part| split_parts(experts, per_part)),
        )
        .collect()
}

/// Memory `layer` needs run as `parts` with one sequence per micro-batch: its largest part
/// in f32, the micro-batch buffers, and the accumulator when it is in memory.
fn need(
    spec: &ModelSpec,
    request: &RunRequest,
    layer: usize,
    shapes: &LayerShapes,
    parts: &[LayerPart],
    hidden_on_disk: bool,
) -> u64 {
    let largest = parts
        .iter()
        .map(|p| part_f32_bytes(spec, layer, p))
        .max()
        .unwrap_or(0);
    let accumulator = if needs_accumulator(parts) && !hidden_on_disk {
        workload_bytes(spec, request)
    } else {
        0
    };
    let buffers = ScratchManifest::for_layer(shapes, request.seq_len(), ScratchFor::Cpu);
    largest + accumulator + buffers.total_bytes()
}

/// Whether the hidden states must live in a file: they and the most demanding layer, in its
/// smallest arrangement, do not fit `--ram` together.
pub fn hidden_states_need_disk(
    spec: &ModelSpec,
    request: &RunRequest,
    budget: &Budget,
    shapes: &[LayerShapes],
    layers: std::ops::Range<usize>,
) -> bool {
    let Some(available) = budget.available() else {
        return false;
    };
    let least = layers
        .map(|layer| {
            arrangements(spec, layer)
                .iter()
                .map(|parts| need(spec, request, layer, &shapes[layer], parts, false))
                .min()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    workload_bytes(spec, request) + least > available
}

/// The parts `layer` runs in (see the module comment).
pub fn choose_parts(
    spec: &ModelSpec,
    request: &RunRequest,
    budget: &Budget,
    layer: usize,
    shapes: &LayerShapes,
    hidden_on_disk: bool,
) -> Vec<LayerPart> {
    if let Some(parts) = request.split_layers.get(&layer) {
        return parts.clone();
    }
    let Some(available) = budget.available() else {
        return vec![LayerPart::Whole];
    };
    let all = arrangements(spec, layer);
    all.iter()
        .find(|parts| need(spec, request, layer, shapes, parts, hidden_on_disk) <= available)
        // Nothing fits: the smallest parts, whose reservation then says what is missing.
        .unwrap_or_else(|| all.last().expect("at least the whole layer"))
        .clone()
}
