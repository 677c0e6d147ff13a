//! The plan as the run and `estimate` see it: per-layer rows, regions, placement, and the
//! refusal when nothing fits.

use super::regions::Regions;
use super::shapes::HiddenPlacement;
use crate::budget::ByteSize;
use crate::split::LayerPart;
use serde::Serialize;

/// One part of a layer as planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartPlan {
    /// Which part.
    #[serde(flatten)]
    pub part: LayerPart,
    /// Bytes stored (staging one buffer).
    pub weight_bytes: u64,
    /// Bytes converted for it.
    pub converted_bytes: u64,
}

/// One row of the per-layer table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerPlan {
    /// Layer index.
    pub layer: usize,
    /// Bytes stored (the whole layer).
    pub weight_bytes: u64,
    /// Bytes converted for it (the whole layer).
    pub converted_bytes: u64,
    /// How it streams: `[whole]`, or attention then feed-forward parts.
    pub parts: Vec<PartPlan>,
    /// Activation + MoE bytes at the chosen micro-batch.
    pub activation_bytes: u64,
    /// What this layer alone needs: overhead, two staging buffers of its largest part, its
    /// conversions, hidden states, accumulator, activations, statistics.
    pub needs_bytes: u64,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// The budget (`None`: none given; the plan shows what the run needs).
    pub budget_bytes: Option<u64>,
    /// Sequences per micro-batch.
    pub micro_batch_sequences: usize,
    /// The output head split by vocabulary rows: this many on the device at a time (absent:
    /// the whole head, or no head).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_vocab_rows: Option<u64>,
    /// Where hidden states live.
    pub hidden_placement: HiddenPlacement,
    /// Layers that stream in parts because they do not fit whole.
    pub split_layers: Vec<usize>,
    /// The host budget the placement was decided against (`None`: unlimited).
    pub host_budget_bytes: Option<u64>,
    /// Pinned host memory the run takes: two staging buffers, and the hidden states (and
    /// accumulator) when they live there.
    pub host_bytes: u64,
    /// Bytes of the files holding the hidden states (and accumulator) on disk (0 unless
    /// `hidden_placement` is `disk`).
    pub disk_bytes: u64,
    /// Region sizes; their total is the peak.
    pub regions: Regions,
    /// Peak device bytes (= regions.total()).
    pub peak_bytes: u64,
    /// Per layer.
    pub layers: Vec<LayerPlan>,
}

impl MemoryPlan {
    /// The parts of every split layer (the executor's `split_layers`).
    pub fn split_parts(&self) -> std::collections::BTreeMap<usize, Vec<LayerPart>> {
        self.layers
            .iter()
            .filter(|l| l.parts.len() > 1)
            .map(|l| (l.layer, l.parts.iter().map(|p| p.part.clone()).collect()))
            .collect()
    }
}

/// Why no plan fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The device would do, but the host cannot hold even the two pinned staging buffers.
    #[error(
        "the host budget {host_budget} cannot hold the two pinned staging buffers of layer {layer}'s largest part ({needed}); raise --ram"
    )]
    HostTooSmall {
        /// The layer with the largest part.
        layer: usize,
        /// Two staging buffers of it.
        needed: ByteSize,
        /// The host budget.
        host_budget: ByteSize,
    },
    /// Even one sequence per micro-batch, hidden states on the host and every layer split
    /// into its smallest parts do not fit.
    #[error(
        "layer {layer} needs at least {needed} ({part}weights {weights} x2 buffers, {converted} converted, one sequence of activations {activations}, overhead {overhead}); the budget is {budget}; try --vram {suggest} or a shorter --seq-len"
    )]
    TooSmall {
        /// The layer with the largest part.
        layer: usize,
        /// `"split, its largest part experts 3-3: "`, or empty when not split.
        part: String,
        /// What it needs.
        needed: ByteSize,
        /// The part's stored bytes.
        weights: ByteSize,
        /// Its converted bytes.
        converted: ByteSize,
        /// Activations of one sequence.
        activations: ByteSize,
        /// Context overhead.
        overhead: ByteSize,
        /// The budget.
        budget: ByteSize,
        /// A budget that fits, rounded up to a whole GiB.
        suggest: String,
    },
}
