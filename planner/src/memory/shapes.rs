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
    /// The token mixer: softmax attention (of `q_width` / `kv_width`) or a Gated DeltaNet.
    pub mixer: MixerShapes,
    /// Experts, if the layer is MoE.
    pub moe: Option<MoeShapes>,
    /// Its tensors by split part.
    pub tensors: LayerTensorGroups,
}

/// The token mixer of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixerShapes {
    /// Softmax attention; `gated`: q_proj emits a gate of `q_width` next to the queries
    /// (Qwen3-Next), and the heads' output is multiplied by its sigmoid.
    Attention {
        /// Whether the attention has an output gate.
        gated: bool,
    },
    /// A Gated DeltaNet (Qwen3-Next's linear attention).
    DeltaNet(DeltaNetShapes),
}

/// The shapes of a Gated DeltaNet mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetShapes {
    /// Query/key heads.
    pub key_heads: usize,
    /// Value heads (a multiple of the key heads).
    pub value_heads: usize,
    /// Per-head query/key width.
    pub key_dim: usize,
    /// Per-head value width.
    pub value_dim: usize,
    /// Tokens per sequence of the workload (the chunked form pads each to whole chunks).
    pub seq_len: usize,
}

/// Tokens per chunk of the chunked delta rule (transformers' and fla's 64).
pub const DELTA_CHUNK: usize = 64;

impl DeltaNetShapes {
    /// All query (or key) heads together.
    pub fn key_width(&self) -> usize {
        self.key_heads * self.key_dim
    }

    /// All value heads together.
    pub fn value_width(&self) -> usize {
        self.value_heads * self.value_dim
    }

    /// Channels of the causal convolution: queries, keys and values.
    pub fn conv_channels(&self) -> usize {
        2 * self.key_width() + self.value_width()
    }

    /// Width of `in_proj_qkvz`'s output: queries, keys, values and the output gate z.
    pub fn qkvz_width(&self) -> usize {
        2 * self.key_width() + 2 * self.value_width()
    }

    /// Sequences in a micro-batch of `rows` tokens.
    pub fn sequences(&self, rows: usize) -> usize {
        rows.div_ceil(self.seq_len.max(1))
    }

    /// Rows of a micro-batch of `rows` tokens with every sequence padded to whole chunks.
    pub fn padded_rows(&self, rows: usize) -> usize {
        self.sequences(rows) * self.seq_len.div_ceil(DELTA_CHUNK) * DELTA_CHUNK
    }
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
    /// In pinned host memory, [`HIDDEN_SLOTS`] micro-batches on the device (the next one
    /// uploading, one computing, the last one downloading).
    PinnedHost,
    /// In a file in the output folder, mapped into memory (the OS pages it in and out), one
    /// micro-batch on the device at a time: when they do not fit the host budget either.
    Disk,
}

/// Device micro-batch buffers of hidden states kept in pinned host memory: the next one is
/// uploaded and the last one downloaded while the current one computes.
pub const HIDDEN_SLOTS: usize = 3;

impl HiddenPlacement {
    /// Rows of hidden states the device holds: the whole workload's `workload_rows`, or
    /// micro-batches of `micro_batch_rows` ([`HIDDEN_SLOTS`] from pinned host memory, one
    /// from a file).
    pub fn device_rows(self, micro_batch_rows: usize, workload_rows: usize) -> usize {
        match self {
            HiddenPlacement::Device => workload_rows,
            HiddenPlacement::PinnedHost => HIDDEN_SLOTS * micro_batch_rows,
            HiddenPlacement::Disk => micro_batch_rows,
        }
    }
}
