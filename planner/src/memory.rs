//! The memory model: what a run holds on the device, region by region, and the largest
//! micro-batch that fits a budget. Weight sizes come from the inventory (safetensors
//! headers); activation sizes from the block shapes and the micro-batch. The CUDA backend
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

use crate::budget::ByteSize;
use crate::inventory::{Inventory, TensorClass};
use crate::split::{
    Bytes, GroupBytes, LayerPart, LayerTensorGroups, experts_per_part_candidates, index_by_name,
    needs_accumulator, split_parts, tensor_bytes,
};
use crate::statistics::CapturedPoint;
use serde::Serialize;

/// Alignment of tensors in a staging region.
pub const TENSOR_ALIGN: u64 = 256;

/// Context + cuBLAS + modules: 0.61 GiB measured on an H200 with driver 580 and CUDA 13.0
/// (benches/results/2026-11-22-h200-memory.md), rounded up.
pub const DEFAULT_OVERHEAD_BYTES: u64 = 640 << 20;

/// What the GEMMs compute in (decides which weights are converted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmDtype {
    /// bf16 matrices.
    Bf16,
    /// f32 matrices.
    F32,
}

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

/// Bytes of each region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Regions {
    /// Two staging buffers together.
    pub staging: u64,
    /// Converted weights.
    pub converted: u64,
    /// Hidden states (whole workload or one micro-batch).
    pub hidden: u64,
    /// Feed-forward outputs of layers whose experts are split over several parts, placed
    /// like the hidden states (whole workload or one micro-batch); 0 when none is.
    pub accumulator: u64,
    /// Decoder block buffers.
    pub activations: u64,
    /// MoE buffers.
    pub moe: u64,
    /// Statistics accumulators.
    pub statistics: u64,
    /// Output head.
    pub head: u64,
    /// Context, cuBLAS, modules.
    pub overhead: u64,
}

impl Regions {
    /// Their sum: the run's device peak.
    pub fn total(&self) -> u64 {
        self.staging
            + self.converted
            + self.hidden
            + self.accumulator
            + self.activations
            + self.moe
            + self.statistics
            + self.head
            + self.overhead
    }
}

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

fn align(bytes: u64) -> u64 {
    bytes.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
}

/// Stored bytes (staging layout) and converted bytes of one layer.
pub fn layer_weight_bytes(inventory: &Inventory, layer: usize, gemm: GemmDtype) -> (u64, u64) {
    inventory
        .of_class(TensorClass::Layer(layer))
        .map(|t| tensor_bytes(&t.shape, t.dtype, t.byte_len, gemm))
        .fold((0, 0), |(s, c), (s2, c2)| (s + s2, c + c2))
}

/// Activation bytes of one micro-batch of `rows` tokens: the decoder block's buffers, and
/// the MoE buffers (router, grouping, expert and shared-expert buffers).
pub fn activation_bytes(shapes: &LayerShapes, rows: usize) -> (u64, u64) {
    let r = rows as u64;
    let (d, q, kv, dense) = (
        shapes.hidden as u64,
        shapes.q_width as u64,
        shapes.kv_width as u64,
        shapes.dense_intermediate as u64,
    );
    let mut widest_input = d.max(q).max(dense);
    let mut moe = 0;
    if let Some(m) = shapes.moe {
        let (e, k, ie, is) = (
            m.experts as u64,
            m.top_k as u64,
            m.expert_intermediate as u64,
            m.shared_intermediate as u64,
        );
        widest_input = widest_input.max(ie).max(is);
        // logits, chosen + weights, positions, counts + offsets, gathered + expert outputs,
        // expert gate + up (an expert sees at most every token once), shared expert.
        moe = 4 * (r * e + 2 * r * k + r * k + 2 * e + 2 * r * k * d + 2 * r * ie);
        if is > 0 {
            moe += 4 * (2 * r * is + r * d + r);
        }
    }
    // normed, q, k, v, attention output, sublayer output, dense gate + up (f32), bf16 inputs.
    let block = 4 * (r * d + 2 * r * q + 2 * r * kv + r * d + 2 * r * dense) + 2 * r * widest_input;
    (block, moe)
}

/// The output head on the device: the LM head matrix in the GEMM dtype (the embedding when
/// no output-class matrix exists: tied), the final norm, normed rows and one logits chunk.
pub fn head_bytes(inventory: &Inventory, gemm: GemmDtype, rows: usize) -> u64 {
    let matrices: Vec<_> = inventory
        .of_class(TensorClass::Output)
        .filter(|t| t.shape.len() == 2)
        .collect();
    let head = if matrices.is_empty() {
        inventory
            .of_class(TensorClass::Input)
            .filter(|t| t.shape.len() == 2)
            .collect()
    } else {
        matrices
    };
    let element = match gemm {
        GemmDtype::Bf16 => 2,
        GemmDtype::F32 => 4,
    };
    let (vocab, width) = head
        .first()
        .map_or((0, 0), |t| (t.shape[0] as u64, t.shape[1] as u64));
    let rows = rows as u64;
    let chunk = ((64u64 << 20) / rows.max(1))
        .clamp(256, vocab.max(1))
        .min(vocab);
    align(vocab * width * element)
        + align(width * 4)
        + 4 * rows * width
        + 4 * rows * chunk
        + 2 * rows * width
}

/// How the layers are cut into streaming units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Every layer whole.
    Whole,
    /// Layers larger than their split parts are split, at most this many experts per part.
    Split(usize),
}

/// The parts of every layer under a cut, with their bytes.
fn layer_units(groups: &[GroupBytes], cut: Cut) -> Vec<Vec<(LayerPart, Bytes)>> {
    let whole = |g: &GroupBytes| vec![(LayerPart::Whole, g.part(&LayerPart::Whole))];
    let Cut::Split(experts_per_part) = cut else {
        return groups.iter().map(whole).collect();
    };
    let split: Vec<Vec<(LayerPart, Bytes)>> = groups
        .iter()
        .map(|g| {
            split_parts(g.num_experts(), experts_per_part)
                .into_iter()
                .map(|p| {
                    let bytes = g.part(&p);
                    (p, bytes)
                })
                .collect()
        })
        .collect();
    let cost = |b: &Bytes| 2 * b.stored + b.converted;
    let cap = split
        .iter()
        .flatten()
        .map(|(_, b)| cost(b))
        .max()
        .unwrap_or(0);
    // A layer no larger than the largest part stays whole: fewer, larger uploads.
    groups
        .iter()
        .zip(split)
        .map(|(g, parts)| {
            if cost(&g.part(&LayerPart::Whole)) <= cap {
                whole(g)
            } else {
                parts
            }
        })
        .collect()
}

/// Plans a run: the largest micro-batch (up to the target) whose regions fit `budget_bytes`.
/// Preference: hidden states on the device, layers whole; on the device, layers split; in
/// pinned host memory (when they fit `host_budget` there), layers whole, then split; on disk,
/// layers whole, then split. Among splits, the largest micro-batch, then the fewest parts.
pub fn plan(
    inventory: &Inventory,
    layers: &[LayerShapes],
    workload: &Workload,
    gemm: GemmDtype,
    budget: Option<u64>,
    host_budget: Option<u64>,
    overhead_bytes: u64,
) -> Result<MemoryPlan, PlanError> {
    let budget_bytes = budget.unwrap_or(u64::MAX);
    let index = index_by_name(inventory);
    let groups: Vec<GroupBytes> = layers
        .iter()
        .map(|l| GroupBytes::new(&index, &l.tensors, gemm))
        .collect();
    let width = layers.first().map_or(0, |l| l.hidden) as u64;
    let statistics = workload
        .captured_points
        .iter()
        .map(|p| p.accumulator_bytes(workload.sequences, workload.seq_len))
        .sum::<u64>();
    let tokens = (workload.sequences * workload.seq_len) as u64;
    let regions_for = |units: &[Vec<(LayerPart, Bytes)>],
                       sequences: usize,
                       placement: HiddenPlacement|
     -> Regions {
        let rows = sequences * workload.seq_len;
        let (block, moe) = layers
            .iter()
            .map(|s| activation_bytes(s, rows))
            .fold((0, 0), |(b, m), (b2, m2)| (b.max(b2), m.max(m2)));
        let head = if workload.lm_head {
            head_bytes(inventory, gemm, rows)
        } else {
            0
        };
        let workload_rows = match placement {
            HiddenPlacement::Device => tokens,
            HiddenPlacement::PinnedHost | HiddenPlacement::Disk => rows as u64,
        };
        let accumulates = units
            .iter()
            .any(|parts| needs_accumulator(parts.iter().map(|(p, _)| p)));
        let largest =
            |f: fn(&Bytes) -> u64| units.iter().flatten().map(|(_, b)| f(b)).max().unwrap_or(0);
        Regions {
            staging: 2 * largest(|b| b.stored),
            converted: largest(|b| b.converted),
            hidden: workload_rows * width * 4,
            accumulator: if accumulates {
                workload_rows * width * 4
            } else {
                0
            },
            activations: block,
            moe,
            statistics,
            head,
            overhead: overhead_bytes,
        }
    };
    let target = (workload.target_micro_batch_tokens / workload.seq_len.max(1))
        .clamp(1, workload.sequences.max(1));
    // Outside the device: the workload's hidden states (and accumulator), in pinned host
    // memory or on disk; the pinned staging buffers are always on the host.
    let workload_bytes = |units: &[Vec<(LayerPart, Bytes)>]| {
        let copies = if units
            .iter()
            .any(|p| needs_accumulator(p.iter().map(|(p, _)| p)))
        {
            2
        } else {
            1
        };
        copies * tokens * width * 4
    };
    let host_bytes_for = |units: &[Vec<(LayerPart, Bytes)>], placement: HiddenPlacement| {
        let staging = units
            .iter()
            .flatten()
            .map(|(_, b)| b.stored)
            .max()
            .unwrap_or(0);
        2 * staging
            + match placement {
                HiddenPlacement::PinnedHost => workload_bytes(units),
                HiddenPlacement::Device | HiddenPlacement::Disk => 0,
            }
    };
    let host_limit = host_budget.unwrap_or(u64::MAX);
    let largest_fitting = |units: &[Vec<(LayerPart, Bytes)>], placement| {
        if host_bytes_for(units, placement) > host_limit {
            return None;
        }
        (1..=target)
            .rev()
            .find(|&m| regions_for(units, m, placement).total() <= budget_bytes)
    };
    let candidates = experts_per_part_candidates(
        groups
            .iter()
            .map(GroupBytes::num_experts)
            .max()
            .unwrap_or(0),
    );
    for placement in [
        HiddenPlacement::Device,
        HiddenPlacement::PinnedHost,
        HiddenPlacement::Disk,
    ] {
        let whole = layer_units(&groups, Cut::Whole);
        let mut chosen = largest_fitting(&whole, placement).map(|m| (whole, m));
        if chosen.is_none() {
            for &experts_per_part in &candidates {
                let units = layer_units(&groups, Cut::Split(experts_per_part));
                if let Some(m) = largest_fitting(&units, placement) {
                    if chosen.as_ref().is_none_or(|(_, best)| m > *best) {
                        chosen = Some((units, m));
                    }
                    if m == target {
                        break;
                    }
                }
            }
        }
        if let Some((units, sequences)) = chosen {
            let regions = regions_for(&units, sequences, placement);
            let rows = sequences * workload.seq_len;
            let layer_plans = layers
                .iter()
                .zip(&groups)
                .zip(&units)
                .enumerate()
                .map(|(layer, ((shapes, group), parts))| {
                    let (block, moe) = activation_bytes(shapes, rows);
                    let whole = group.part(&LayerPart::Whole);
                    let largest = parts
                        .iter()
                        .map(|(_, b)| *b)
                        .max_by_key(|b| 2 * b.stored + b.converted)
                        .unwrap_or_default();
                    let accumulator = if needs_accumulator(parts.iter().map(|(p, _)| p)) {
                        regions.accumulator
                    } else {
                        0
                    };
                    LayerPlan {
                        layer,
                        weight_bytes: whole.stored,
                        converted_bytes: whole.converted,
                        parts: parts
                            .iter()
                            .map(|(part, b)| PartPlan {
                                part: part.clone(),
                                weight_bytes: b.stored,
                                converted_bytes: b.converted,
                            })
                            .collect(),
                        activation_bytes: block + moe,
                        needs_bytes: overhead_bytes
                            + 2 * largest.stored
                            + largest.converted
                            + regions.hidden
                            + accumulator
                            + block
                            + moe
                            + statistics
                            + regions.head,
                    }
                })
                .collect();
            return Ok(MemoryPlan {
                budget_bytes: budget,
                micro_batch_sequences: sequences,
                hidden_placement: placement,
                split_layers: units
                    .iter()
                    .enumerate()
                    .filter(|(_, parts)| parts.len() > 1)
                    .map(|(l, _)| l)
                    .collect(),
                host_budget_bytes: host_budget,
                host_bytes: host_bytes_for(&units, placement),
                disk_bytes: if placement == HiddenPlacement::Disk {
                    workload_bytes(&units)
                } else {
                    0
                },
                peak_bytes: regions.total(),
                regions,
                layers: layer_plans,
            });
        }
    }
    // Nothing fits: report the smallest arrangement (one sequence, hidden states off the
    // device, whole or split at one expert per part, whichever needs less).
    let smallest = [Cut::Whole, Cut::Split(1)]
        .into_iter()
        .map(|cut| {
            let units = layer_units(&groups, cut);
            let regions = regions_for(&units, 1, HiddenPlacement::Disk);
            (units, regions)
        })
        .min_by_key(|(_, r)| r.total())
        .expect("two arrangements");
    let (units, regions) = smallest;
    let (layer, part, bytes) = units
        .iter()
        .enumerate()
        .flat_map(|(l, parts)| parts.iter().map(move |(p, b)| (l, p.clone(), *b)))
        // The largest part; the first of equals.
        .max_by(|(la, _, a), (lb, _, b)| {
            (2 * a.stored + a.converted)
                .cmp(&(2 * b.stored + b.converted))
                .then(lb.cmp(la))
        })
        .unwrap_or((0, LayerPart::Whole, Bytes::default()));
    let needed = regions.total();
    let host_needed = host_bytes_for(&units, HiddenPlacement::Disk);
    if needed <= budget_bytes && host_needed > host_limit {
        return Err(PlanError::HostTooSmall {
            layer,
            needed: ByteSize(host_needed),
            host_budget: ByteSize(host_limit),
        });
    }
    Err(PlanError::TooSmall {
        layer,
        part: match part {
            LayerPart::Whole => String::new(),
            p => format!("split, its largest part {}: ", p.describe()),
        },
        needed: ByteSize(needed),
        weights: ByteSize(bytes.stored),
        converted: ByteSize(bytes.converted),
        activations: ByteSize(regions.activations + regions.moe),
        overhead: ByteSize(overhead_bytes),
        budget: ByteSize(budget_bytes),
        suggest: format!("{}GiB", needed.div_ceil(1 << 30)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{TensorDtype, TensorEntry, classify_expert, classify_tensor_name};
    use std::path::PathBuf;

    /// A dense 4-layer model: hidden 1024, MLP 4096, bf16, vocabulary 32000.
    fn dense() -> (Inventory, Vec<LayerShapes>) {
        let mut tensors = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let numel: usize = shape.iter().product();
            tensors.push(TensorEntry {
                class: classify_tensor_name(&name),
                expert: classify_expert(&name),
                name,
                shape,
                dtype: TensorDtype::Bf16,
                file_index: 0,
                byte_offset: 0,
                byte_len: 2 * numel as u64,
            });
        };
        add("model.embed_tokens.weight".into(), vec![32000, 1024]);
        add("model.norm.weight".into(), vec![1024]);
        add("lm_head.weight".into(), vec![32000, 1024]);
        for l in 0..4 {
            for (n, s) in [
                ("self_attn.q_proj.weight", vec![1024, 1024]),
                ("self_attn.k_proj.weight", vec![256, 1024]),
                ("self_attn.v_proj.weight", vec![256, 1024]),
                ("self_attn.o_proj.weight", vec![1024, 1024]),
                ("mlp.gate_proj.weight", vec![4096, 1024]),
                ("mlp.up_proj.weight", vec![4096, 1024]),
                ("mlp.down_proj.weight", vec![1024, 4096]),
                ("input_layernorm.weight", vec![1024]),
                ("post_attention_layernorm.weight", vec![1024]),
            ] {
                add(format!("model.layers.{l}.{n}"), s);
            }
        }
        let shapes = (0..4)
            .map(|l| LayerShapes {
                hidden: 1024,
                q_width: 1024,
                kv_width: 256,
                dense_intermediate: 4096,
                moe: None,
                tensors: LayerTensorGroups {
                    attention: ["q", "k", "v", "o"]
                        .iter()
                        .map(|p| format!("model.layers.{l}.self_attn.{p}_proj.weight"))
                        .chain([format!("model.layers.{l}.input_layernorm.weight")])
                        .collect(),
                    routing: vec![format!("model.layers.{l}.post_attention_layernorm.weight")],
                    last: ["gate", "up", "down"]
                        .iter()
                        .map(|p| format!("model.layers.{l}.mlp.{p}_proj.weight"))
                        .collect(),
                    experts: Vec::new(),
                },
            })
            .collect();
        (
            Inventory::new(vec![PathBuf::from("m.safetensors")], tensors),
            shapes,
        )
    }

    fn workload() -> Workload {
        Workload {
            sequences: 16,
            seq_len: 2048,
            captured_points: vec![
                CapturedPoint {
                    width: 1024,
                    positions: false,
                    row_maxima: false,
                };
                6
            ],
            lm_head: false,
            target_micro_batch_tokens: 8192,
        }
    }

    #[test]
    fn weights_from_headers_and_conversions_by_gemm_dtype() {
        let (inventory, _) = dense();
        let (stored, converted) = layer_weight_bytes(&inventory, 0, GemmDtype::Bf16);
        let matrices = 2 * (2 * 1024 * 1024 + 2 * 256 * 1024 + 3 * 4096 * 1024) as u64;
        assert_eq!(stored, matrices + 2 * 2048);
        assert_eq!(converted, 2 * 4096, "only the two norms, to f32");
        let (_, converted_f32) = layer_weight_bytes(&inventory, 0, GemmDtype::F32);
        assert_eq!(
            converted_f32,
            2 * matrices + 2 * 4096,
            "bf16 matrices become f32"
        );
    }

    #[test]
    fn the_largest_micro_batch_that_fits_is_chosen_and_the_peak_is_the_regions() {
        let (inventory, shapes) = dense();
        let roomy = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(80 << 30),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        assert_eq!(roomy.micro_batch_sequences, 4, "the 8192-token target");
        assert_eq!(roomy.hidden_placement, HiddenPlacement::Device);
        assert_eq!(roomy.peak_bytes, roomy.regions.total());
        // Just enough for 2 sequences per micro-batch.
        let two = plan(
            &inventory,
            &shapes,
            &Workload {
                target_micro_batch_tokens: 2 * 2048,
                ..workload()
            },
            GemmDtype::Bf16,
            Some(80 << 30),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        let tight = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(two.peak_bytes),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        assert_eq!(tight.micro_batch_sequences, 2);
        assert!(tight.peak_bytes <= two.peak_bytes);
        for layer in &tight.layers {
            assert!(layer.needs_bytes <= tight.peak_bytes);
        }
    }

    #[test]
    fn hidden_states_move_to_the_host_when_they_do_not_fit() {
        let (inventory, shapes) = dense();
        let device = plan(
            &inventory,
            &shapes,
            &Workload {
                target_micro_batch_tokens: 2048,
                ..workload()
            },
            GemmDtype::Bf16,
            Some(80 << 30),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        let whole_hidden = 16 * 2048 * 1024 * 4;
        let budget = device.peak_bytes - whole_hidden / 2;
        let host = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(budget),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        assert_eq!(host.hidden_placement, HiddenPlacement::PinnedHost);
        assert!(host.peak_bytes <= budget);
        assert_eq!(host.host_bytes, host.regions.staging + whole_hidden);
        assert_eq!(host.disk_bytes, 0);
        // A host budget below the workload's hidden states: they go to disk, with the same
        // device regions.
        let disk = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(budget),
            Some(whole_hidden / 2),
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        assert_eq!(disk.hidden_placement, HiddenPlacement::Disk);
        assert_eq!(disk.regions, host.regions);
        assert_eq!(disk.disk_bytes, whole_hidden);
        assert_eq!(disk.host_bytes, disk.regions.staging);
        // Not even the pinned staging buffers fit the host: refused, naming the host.
        let error = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(budget),
            Some(1 << 20),
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap_err()
        .to_string();
        assert!(
            error
                .starts_with("the host budget 1.00 MiB cannot hold the two pinned staging buffers"),
            "{error}"
        );
    }

    #[test]
    fn a_budget_too_small_for_one_layer_says_what_it_needs() {
        let (inventory, shapes) = dense();
        let error = plan(
            &inventory,
            &shapes,
            &workload(),
            GemmDtype::Bf16,
            Some(512 << 20),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("layer 0 needs at least"), "{message}");
        assert!(
            message.contains("x2 buffers")
                && message.contains("the budget is 512.00 MiB")
                && message.contains("try --vram 1GiB"),
            "{message}"
        );
    }

    /// A MoE 2-layer model: hidden 1024, 8 experts of width 2048, bf16.
    fn moe() -> (Inventory, Vec<LayerShapes>) {
        let mut tensors = Vec::new();
        let mut add = |name: String, shape: Vec<usize>| {
            let numel: usize = shape.iter().product();
            tensors.push(TensorEntry {
                class: classify_tensor_name(&name),
                expert: classify_expert(&name),
                name,
                shape,
                dtype: TensorDtype::Bf16,
                file_index: 0,
                byte_offset: 0,
                byte_len: 2 * numel as u64,
            });
        };
        add("model.embed_tokens.weight".into(), vec![32000, 1024]);
        let mut shapes = Vec::new();
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            let mut groups = LayerTensorGroups::default();
            for n in ["q", "k", "v", "o"] {
                groups
                    .attention
                    .push(format!("{p}.self_attn.{n}_proj.weight"));
                add(groups.attention.last().unwrap().clone(), vec![1024, 1024]);
            }
            groups.attention.push(format!("{p}.input_layernorm.weight"));
            add(groups.attention.last().unwrap().clone(), vec![1024]);
            groups
                .routing
                .push(format!("{p}.post_attention_layernorm.weight"));
            add(groups.routing.last().unwrap().clone(), vec![1024]);
            groups.routing.push(format!("{p}.mlp.gate.weight"));
            add(groups.routing.last().unwrap().clone(), vec![8, 1024]);
            for e in 0..8 {
                let names: Vec<String> = ["gate", "up", "down"]
                    .iter()
                    .map(|n| format!("{p}.mlp.experts.{e}.{n}_proj.weight"))
                    .collect();
                add(names[0].clone(), vec![2048, 1024]);
                add(names[1].clone(), vec![2048, 1024]);
                add(names[2].clone(), vec![1024, 2048]);
                groups.experts.push(names);
            }
            shapes.push(LayerShapes {
                hidden: 1024,
                q_width: 1024,
                kv_width: 1024,
                dense_intermediate: 0,
                moe: Some(MoeShapes {
                    experts: 8,
                    top_k: 2,
                    expert_intermediate: 2048,
                    shared_intermediate: 0,
                }),
                tensors: groups,
            });
        }
        (
            Inventory::new(vec![PathBuf::from("m.safetensors")], tensors),
            shapes,
        )
    }

    fn small_workload() -> Workload {
        Workload {
            sequences: 4,
            seq_len: 128,
            captured_points: vec![
                CapturedPoint {
                    width: 1024,
                    positions: false,
                    row_maxima: false,
                };
                6
            ],
            lm_head: false,
            target_micro_batch_tokens: 512,
        }
    }

    #[test]
    fn a_layer_that_does_not_fit_whole_is_split_into_attention_and_expert_groups() {
        let (inventory, shapes) = moe();
        let overhead = 16 << 20;
        let plan_for = |budget| {
            plan(
                &inventory,
                &shapes,
                &small_workload(),
                GemmDtype::Bf16,
                Some(budget),
                None,
                overhead,
            )
        };
        let whole = plan(
            &inventory,
            &shapes,
            &small_workload(),
            GemmDtype::Bf16,
            None,
            None,
            overhead,
        )
        .unwrap();
        assert!(whole.split_layers.is_empty());
        assert_eq!(whole.layers[0].parts.len(), 1);
        let layer_bytes = whole.layers[0].weight_bytes;
        let expert_bytes = 3 * 2048 * 1024 * 2;
        assert_eq!(
            layer_bytes,
            4 * 1024 * 1024 * 2 + 8 * expert_bytes + 2048 + 16 * 1024 + 2048
        );
        assert_eq!(whole.regions.staging, 2 * layer_bytes);
        assert_eq!(whole.regions.accumulator, 0);

        // Half a layer less than the whole plan: the layers split, the peak fits.
        let budget = whole.peak_bytes - layer_bytes / 2;
        let split = plan_for(budget).unwrap();
        assert_eq!(split.split_layers, vec![0, 1]);
        assert_eq!(split.hidden_placement, HiddenPlacement::Device);
        assert!(split.peak_bytes <= budget);
        let parts = &split.layers[0].parts;
        assert_eq!(parts[0].part, LayerPart::Attention);
        assert!(parts.len() >= 3, "attention and at least two expert groups");
        let largest = parts.iter().map(|p| p.weight_bytes).max().unwrap();
        assert_eq!(split.regions.staging, 2 * largest);
        assert_eq!(
            parts.iter().map(|p| p.weight_bytes).sum::<u64>(),
            layer_bytes + (parts.len() as u64 - 2) * (2048 + 16 * 1024),
            "every tensor once; the routing tensors in every feed-forward part"
        );
        assert_eq!(
            split.regions.accumulator,
            4 * 128 * 1024 * 4,
            "the workload's width"
        );
        assert_eq!(split.micro_batch_sequences, 4);

        // Smaller still: one expert per part at most, then refused with the smallest part named.
        let tighter = plan_for(split.peak_bytes - 2 * expert_bytes).unwrap();
        assert!(tighter.layers[0].parts.len() > parts.len());
        let error = plan_for(overhead + 2 * expert_bytes)
            .unwrap_err()
            .to_string();
        assert!(error.contains("(split, its largest part "), "{error}");
    }

    #[test]
    fn a_dense_layer_splits_into_attention_and_mlp() {
        let (inventory, shapes) = dense();
        let one_sequence = Workload {
            target_micro_batch_tokens: 2048,
            ..workload()
        };
        let roomy = plan(
            &inventory,
            &shapes,
            &one_sequence,
            GemmDtype::Bf16,
            None,
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        let mlp_bytes = 3 * 4096 * 1024 * 2;
        let budget = roomy.peak_bytes - (roomy.regions.staging - 2 * (mlp_bytes + 2048)) / 2;
        let split = plan(
            &inventory,
            &shapes,
            &one_sequence,
            GemmDtype::Bf16,
            Some(budget),
            None,
            DEFAULT_OVERHEAD_BYTES,
        )
        .unwrap();
        assert_eq!(split.split_layers, vec![0, 1, 2, 3]);
        let parts: Vec<_> = split.layers[0]
            .parts
            .iter()
            .map(|p| p.part.describe())
            .collect();
        assert_eq!(parts, vec!["attention", "mlp"]);
        assert_eq!(split.regions.accumulator, 0, "one feed-forward part");
        assert_eq!(split.regions.staging, 2 * (mlp_bytes + 2048));
        assert!(split.peak_bytes <= budget);
    }

    #[test]
    fn moe_buffers_grow_with_top_k_and_tokens() {
        let shapes = LayerShapes {
            hidden: 2048,
            q_width: 2048,
            kv_width: 2048,
            dense_intermediate: 0,
            moe: Some(MoeShapes {
                experts: 64,
                top_k: 8,
                expert_intermediate: 1024,
                shared_intermediate: 0,
            }),
            tensors: LayerTensorGroups::default(),
        };
        let (_, one) = activation_bytes(&shapes, 2048);
        let (_, two) = activation_bytes(&shapes, 4096);
        assert_eq!(
            two,
            2 * one - 4 * 2 * 64,
            "linear in tokens except the per-expert counts"
        );
        // gathered + expert outputs dominate: 2 x tokens x top_k x hidden x 4 bytes.
        assert!(one > 2 * 2048 * 8 * 2048 * 4);
    }
}
