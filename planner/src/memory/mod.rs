//! The memory model: what a run holds on the device, region by region, and the largest
//! micro-batch that fits a budget. Weight sizes come from the inventory (safetensors
//! headers); activation sizes from the block shapes and the micro-batch, listed once as the
//! buffer manifest ([`ScratchManifest`]) the backends allocate from. The CUDA backend
//! allocates exactly these regions once per run, so the plan's peak is the run's peak.
//!
//! Regions (bytes):
//! - staging: 2 x the largest layer (or split part) as stored (tensors 256-byte aligned):
//!   layer l computes from one while layer l+1 uploads into the other; matrices already in
//!   the GEMM dtype are used in place;
//! - converted: the largest layer's tensors that need another dtype (1-D tensors to f32;
//!   matrices to the GEMM dtype);
//! - hidden: the workload's hidden states (f32) on the device, or one micro-batch of them
//!   when they live in pinned host memory;
//! - accumulator: when a layer's routed experts are split over several parts (see
//!   `split.rs`), their summed outputs, placed and sized like the hidden states;
//! - activations: the decoder block's buffers for one micro-batch;
//! - moe: router, grouping and expert buffers for one micro-batch;
//! - statistics: accumulators of one layer's captured points;
//! - head: final norm and LM head (score only);
//! - overhead: CUDA context, cuBLAS and kernel modules.
//!
//! Files: `shapes.rs` (what the model is given), `regions.rs` (regions and the buffer
//! manifest), `search.rs` (placement, cut, micro-batch), `assemble.rs` (the plan or the
//! refusal), `report.rs` (the plan's types).

mod assemble;
mod mixer_buffers;
#[cfg(test)]
mod placement_tests;
mod regions;
mod report;
mod search;
mod shapes;
#[cfg(test)]
mod tests;

pub use crate::format::{GemmDtype, TENSOR_ALIGN};
pub use assemble::{HEAD_MIN_ROWS, plan};
pub use mixer_buffers::BlockWidths;
pub use regions::{
    BufferName, ElementType, Regions, ScratchFor, ScratchManifest, activation_bytes,
    half_guard_len, head_bytes, head_logits_chunk, head_shape, layer_weight_bytes,
};
pub use report::{LayerPlan, MemoryPlan, PartPlan, PlanError};
pub use shapes::{
    DEFAULT_OVERHEAD_BYTES, DELTA_CHUNK, DeltaNetShapes, HIDDEN_SLOTS, HiddenPlacement,
    LayerShapes, MixerShapes, MoeShapes, Workload,
};
