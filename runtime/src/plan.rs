//! From a model and a request to the planner's inputs, and the run's time estimate.

use crate::arch::{FeedForward, Mixer, ModelSpec};
use crate::capture::CapturePoint;
use crate::layer_parts::tensor_groups;
use crate::model::Model;
use layerstream_planner::memory::{
    self, BlockWidths, GemmDtype, LayerShapes, MemoryPlan, MixerShapes, MoeShapes, PlanError,
    Workload,
};
use layerstream_planner::{TensorClass, TensorDtype};
use serde::Serialize;

/// The block shapes of every layer, for a workload of `seq_len`-token sequences (the
/// DeltaNet's chunked form pads each sequence to whole chunks).
pub fn layer_shapes(spec: &ModelSpec, seq_len: usize) -> Vec<LayerShapes> {
    spec.feed_forward
        .iter()
        .enumerate()
        .map(|(layer, ff)| {
            let (dense_intermediate, moe) = match ff {
                FeedForward::Dense { intermediate } => (*intermediate, None),
                FeedForward::Moe(m) => (
                    0,
                    Some(MoeShapes {
                        experts: m.num_experts,
                        top_k: m.top_k,
                        expert_intermediate: m.expert_intermediate,
                        shared_intermediate: m.shared_expert.map_or(0, |s| s.intermediate),
                    }),
                ),
            };
            LayerShapes {
                hidden: spec.hidden_size,
                q_width: spec.q_width(),
                kv_width: spec.kv_width(),
                dense_intermediate,
                mixer: mixer_shapes(spec, layer, seq_len),
                moe,
                tensors: tensor_groups(spec, layer),
            }
        })
        .collect()
}

/// The planner's shapes of `layer`'s mixer for `seq_len`-token sequences.
pub fn mixer_shapes(spec: &ModelSpec, layer: usize, seq_len: usize) -> MixerShapes {
    match spec.mixers[layer] {
        Mixer::Attention { gated } => MixerShapes::Attention { gated },
        Mixer::DeltaNet(delta) => MixerShapes::DeltaNet(delta.shapes(seq_len)),
    }
}

/// The row widths of `layer`'s block buffers.
pub fn block_widths(spec: &ModelSpec, layer: usize) -> BlockWidths {
    BlockWidths::for_mixer(
        mixer_shapes(spec, layer, 1),
        spec.q_width(),
        spec.kv_width(),
    )
}

/// Width of a capture point's activations in `layer` (0 for the router and the attention
/// sinks, which keep no accumulators, and for a point the layer does not have: the output
/// gate of an ungated attention layer, the sinks of a DeltaNet layer).
pub fn point_width(spec: &ModelSpec, layer: usize, point: CapturePoint) -> usize {
    let delta = spec.delta_net(layer).map(|d| d.shapes(1));
    let gated = matches!(spec.mixers[layer], Mixer::Attention { gated: true });
    match (point, delta) {
        (CapturePoint::Router | CapturePoint::AttnSinks, _) => 0,
        (CapturePoint::Q | CapturePoint::K, Some(d)) => d.key_width(),
        (CapturePoint::AttnInO | CapturePoint::AttnGate, Some(d)) => d.value_width(),
        (CapturePoint::AttnGate, None) if !gated => 0,
        (CapturePoint::AttnInO | CapturePoint::Q | CapturePoint::AttnGate, None) => spec.q_width(),
        (CapturePoint::K, None) => spec.kv_width(),
        _ => spec.hidden_size,
    }
}

/// The widest a capture point is in any of the first `layers` layers.
pub fn widest_point(spec: &ModelSpec, layers: usize, point: CapturePoint) -> usize {
    (0..layers.min(spec.num_layers))
        .map(|layer| point_width(spec, layer, point))
        .max()
        .unwrap_or(0)
}

/// The dtype most layer weight bytes are stored in (MXFP4 blocks and scales, the only U8
/// weights a model opens with, count as bf16: every value they hold is a bf16 value, and
/// transformers computes them in bf16; FP8 weights count as bf16, what transformers
/// dequantizes them to).
pub fn dominant_weight_dtype(model: &Model) -> TensorDtype {
    let mut bytes: Vec<(TensorDtype, u64)> = Vec::new();
    for tensor in model
        .weights
        .inventory()
        .tensors
        .iter()
        .filter(|t| matches!(t.class, TensorClass::Layer(_)))
    {
        let dtype = match tensor.dtype {
            TensorDtype::Other("U8" | "F8_E4M3") => TensorDtype::Bf16,
            dtype => dtype,
        };
        match bytes.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, b)) => *b += tensor.byte_len,
            None => bytes.push((dtype, tensor.byte_len)),
        }
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map_or(TensorDtype::F32, |(d, _)| d)
}

/// Plans `model` for a workload on a device of `budget_bytes` and a host of
/// `host_budget_bytes` (pinned memory for the hidden states).
pub fn plan_model(
    model: &Model,
    workload: &Workload,
    gemm: GemmDtype,
    budget_bytes: Option<u64>,
    host_budget_bytes: Option<u64>,
    overhead_bytes: u64,
) -> Result<MemoryPlan, PlanError> {
    memory::plan(
        model.weights.inventory(),
        &layer_shapes(&model.spec, workload.seq_len),
        workload,
        gemm,
        budget_bytes,
        host_budget_bytes,
        overhead_bytes,
    )
}

/// Rates the time estimate assumes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// Pinned host-to-device copy, GB/s.
    pub host_to_device_gbps: f64,
    /// Reading weights from disk when not in the page cache, GB/s.
    pub disk_gbps: f64,
    /// Arithmetic layerstream sustains, TFLOP/s.
    pub tflops: f64,
}

/// How long the run should take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimeEstimate {
    /// Weights over PCIe, once.
    pub transfer_seconds: f64,
    /// Weights from disk, when the page cache is cold.
    pub disk_seconds: f64,
    /// Arithmetic: 2 FLOP per active weight per token plus attention.
    pub compute_seconds: f64,
    /// Warm page cache: transfer overlaps compute.
    pub warm_seconds: f64,
    /// Cold page cache: the disk read overlaps too, whichever is slowest wins.
    pub cold_seconds: f64,
    /// The rates assumed.
    pub rates: Rates,
}

/// Estimates the run time from the layers' weight bytes and an active-parameter count.
pub fn estimate_time(
    model: &Model,
    layers_run: usize,
    tokens: usize,
    seq_len: usize,
    rates: Rates,
) -> TimeEstimate {
    let inventory = model.weights.inventory();
    let spec = &model.spec;
    let weight_bytes: u64 = (0..layers_run)
        .map(|l| inventory.class_bytes(TensorClass::Layer(l)))
        .sum();
    let mut active_parameters = 0f64;
    for layer in 0..layers_run {
        let total: u64 = inventory
            .of_class(TensorClass::Layer(layer))
            .map(|t| t.numel() as u64)
            .sum();
        let routed = inventory.routed_expert_parameters(layer);
        let routed_total: u64 = routed.values().sum();
        let top_k = spec.moe(layer).map_or(0, |m| m.top_k) as u64;
        active_parameters += (total - routed_total) as f64
            + (routed_total * top_k) as f64 / routed.len().max(1) as f64;
    }
    // Per token: causal attention's two products over half the sequence on average; a
    // DeltaNet's chunked products (chunks of 64) and its state reads and updates.
    let attention: f64 = (0..layers_run.min(spec.num_layers))
        .map(|layer| match spec.delta_net(layer) {
            None => 2.0 * seq_len as f64 * spec.q_width() as f64,
            Some(d) => {
                let (chunk, dk, dv) = (64.0, d.key_dim as f64, d.value_dim as f64);
                let per_head =
                    2.0 * (2.0 * chunk * dk + chunk * (dk + dv) + chunk * dv + 3.0 * dk * dv);
                per_head * d.value_heads as f64
            }
        })
        .sum();
    let flops = tokens as f64 * (2.0 * active_parameters + attention);
    let transfer = weight_bytes as f64 / (rates.host_to_device_gbps * 1e9);
    let disk = weight_bytes as f64 / (rates.disk_gbps * 1e9);
    let compute = flops / (rates.tflops * 1e12);
    TimeEstimate {
        transfer_seconds: transfer,
        disk_seconds: disk,
        compute_seconds: compute,
        warm_seconds: transfer.max(compute),
        cold_seconds: disk.max(transfer).max(compute),
        rates,
    }
}
