//! What the memory model is given: the shapes of each layer's blocks and the workload.

use crate::split::LayerTensorGroups;
use crate::statistics::CapturedPoint;
use serde::Serialize;

/// Context + cuBLAS + modules: 0.61 GiB measured on an H200 with driver 580 and CUDA 13.0
/// (benches/results/2026-11-22-h200-memory.md), rounded up.
pub const DEFAULT_OVERHEAD_BYTES: u64 = 640 << 20;

/// The shapes of one layer's blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerShapes {
    /// Residual width.
    pub hidden: usize,
    /// Query heads x head_dim.
    pub q_width: usize,
    /// Key/value heads x head_dim.
    pub kv_width: usize,
    /// Dense MLP width (0 for a MoE layer).
    pub dense_intermediate: usize,
    /// Experts, if the layer is MoE.
    pub moe: Option<MoeShapes>,
    /// Its tensors by split part.
    pub tensors: LayerTensorGroups,
}

/// The shapes of a MoE block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShapes {
    /// Routed experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Expert MLP width.
    pub expert_intermediate: usize,
    /// Shared expert MLP width (0: none).
    pub shared_intermediate: usize,
}

/// What the run does.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Sequences.
    pub sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// The points captured per analysed layer (statistics accumulators).
    pub captured_points: Vec<CapturedPoint>,
    /// Whether the LM head runs (score).
    pub lm_head: bool,
    /// Micro-batch the user aims for, in tokens (the plan takes the largest that fits, up to this).
    pub target_micro_batch_tokens: usize,
}

/// Where the workload's hidden states live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HiddenPlacement {
    /// On the device for the whole run.
    Device,
    /// In pinned host memory, one micro-batch on the device at a time.
    PinnedHost,
    /// In a file in the output folder, mapped into memory (the OS pages it in and out), one
    /// micro-batch on the device at a time: when they do not fit the host budget either.
    Disk,
}

impl HiddenPlacement {
    /// Whether the device holds only one micro-batch of them.
    pub fn off_device(self) -> bool {
        self != HiddenPlacement::Device
    }
}
