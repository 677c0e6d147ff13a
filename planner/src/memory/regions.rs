//! The regions a run holds on the device, and the micro-batch buffers as a manifest: every
//! buffer by name with its element type and count, from which the backends allocate
//! (`DeviceScratch`, `MoeBuffers` on CUDA, `LayerScratch` on the CPU) and whose sum they
//! reserve, so the plan and the allocation cannot drift apart.

use super::mixer_buffers::{BlockWidths, delta_net_buffers};
use super::{LayerShapes, MixerShapes};
use crate::format::{GemmDtype, align, tensor_bytes};
use crate::inventory::{Inventory, TensorClass};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bytes of each region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Regions {
    /// Two staging buffers together.
    pub staging: u64,
    /// Converted weights.
    pub converted: u64,
    /// Hidden states: the whole workload or micro-batches of it
    /// ([`super::HiddenPlacement::device_rows`]).
    pub hidden: u64,
    /// Feed-forward outputs of layers whose experts are split over several parts, placed
    /// like the hidden states (and as many micro-batches); 0 when none is.
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

/// Element type of a micro-batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 32-bit unsigned (expert indices, counts, positions).
    U32,
    /// bfloat16 or f16 (GEMM inputs).
    Bf16,
}

impl ElementType {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            ElementType::F32 | ElementType::U32 => 4,
            ElementType::Bf16 => 2,
        }
    }
}

/// A micro-batch buffer of the decoder block (`rows` tokens; widths from the layer shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BufferName {
    /// `(rows, hidden)`: a norm's output.
    Normed,
    /// `(rows, q_width)`.
    Q,
    /// `(rows, kv_width)`.
    K,
    /// `(rows, kv_width)`.
    V,
    /// `(rows, q_width)`: the heads' output.
    Attn,
    /// `(rows, hidden)`: a sublayer's output.
    SublayerOut,
    /// `(rows, dense intermediate)`.
    Gate,
    /// `(rows, dense intermediate)`.
    Up,
    /// `(rows, widest GEMM input)` in bf16 or f16: GEMM inputs converted for 16-bit weights,
    /// and K then V for the tensor-core attention (`(rows, 2 kv_width)`, when wider; GPU).
    Bf16Inputs,
    /// `(1 + 3 rows)` u32: the f16 path's overflow guard (the count and list of rows of a GEMM
    /// input holding values beyond f16's range, a flag per row, a flag per sequence of an
    /// attention call; GPU).
    HalfGuard,

    /// `(rows, experts)`: router logits.
    RouterLogits,
    /// `(rows, top_k)`: chosen experts.
    ChosenExperts,
    /// `(rows, top_k)`: their weights.
    ChosenWeights,
    /// `(rows, top_k)`: each assignment's row in the grouped buffers.
    Positions,
    /// `(experts)`: tokens per expert.
    ExpertCounts,
    /// `(experts)`: first grouped row of each expert.
    ExpertOffsets,
    /// `(rows * top_k, hidden)`: the experts' input rows, grouped by expert.
    Gathered,
    /// `(rows * top_k, hidden)`: the experts' outputs, grouped by expert.
    ExpertOut,
    /// `(rows, expert intermediate)`: one expert's gate (it sees a token at most once).
    ExpertGate,
    /// `(rows, expert intermediate)`.
    ExpertUp,
    /// `(rows, shared intermediate)`.
    SharedGate,
    /// `(rows, shared intermediate)`.
    SharedUp,
    /// `(rows, hidden)`.
    SharedOut,
    /// `(rows)`: the shared expert's gate logits.
    SharedGateLogits,
    /// `(rows, projected width)`: an in-projection's output (see `BlockWidths`).
    Projected,
    /// `(rows, gate width)`: the mixer's output gate.
    MixerGate,
    /// `(rows, conv channels)`: DeltaNet's convolution input.
    Mixed,
    /// `(rows, value heads)`: DeltaNet's b, then beta.
    Beta,
    /// `(rows, value heads)`: DeltaNet's a.
    Decay,
    /// `(rows, value width)`: the delta rule's output.
    DeltaCore,
    /// `(sequences, value heads, key_dim, value_dim)`: the delta rule's recurrent state.
    DeltaState,
    /// GPU, chunked delta rule: `(value heads, padded rows, key_dim)` queries.
    DeltaChunkQ,
    /// `(value heads, padded rows, key_dim)` keys.
    DeltaChunkK,
    /// `(value heads, padded rows, value_dim + key_dim)`: `[beta v | beta exp(g) k]`.
    DeltaChunkW,
    /// `(value heads, padded rows, value_dim + key_dim)`: the chunk's `T` times `W`.
    DeltaChunkU,
    /// `(value heads, padded rows, 64)`: each chunk's `T` matrix.
    DeltaChunkT,
    /// `(value heads, padded rows, 64)`: each chunk's decayed `q k^T`.
    DeltaChunkA,
    /// `(value heads, padded rows)`: cumulative log decay within the chunk.
    DeltaChunkG,
    /// `(value heads, padded rows)`: beta.
    DeltaChunkBeta,
    /// `(value heads, padded rows, value_dim)`: the chunked output.
    DeltaChunkOut,
}

impl BufferName {
    /// Whether the buffer belongs to the MoE block (the plan's `moe` region).
    pub fn is_moe(self) -> bool {
        !matches!(
            self,
            BufferName::Normed
                | BufferName::Q
                | BufferName::K
                | BufferName::V
                | BufferName::Attn
                | BufferName::SublayerOut
                | BufferName::Gate
                | BufferName::Up
                | BufferName::Bf16Inputs
                | BufferName::HalfGuard
                | BufferName::Projected
                | BufferName::MixerGate
                | BufferName::Mixed
                | BufferName::Beta
                | BufferName::Decay
                | BufferName::DeltaCore
                | BufferName::DeltaState
                | BufferName::DeltaChunkQ
                | BufferName::DeltaChunkK
                | BufferName::DeltaChunkW
                | BufferName::DeltaChunkU
                | BufferName::DeltaChunkT
                | BufferName::DeltaChunkA
                | BufferName::DeltaChunkG
                | BufferName::DeltaChunkBeta
                | BufferName::DeltaChunkOut
        )
    }

    /// Its element type.
    pub fn element(self) -> ElementType {
        match self {
            BufferName::Bf16Inputs => ElementType::Bf16,
            BufferName::ChosenExperts
            | BufferName::Positions
            | BufferName::ExpertCounts
            | BufferName::ExpertOffsets
            | BufferName::HalfGuard => ElementType::U32,
            _ => ElementType::F32,
        }
    }
}

/// Which backend a manifest is for: the CPU computes in f32 and has no bf16 GEMM inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchFor {
    /// The CUDA backend.
    Gpu,
    /// The CPU reference.
    Cpu,
}

/// The micro-batch buffers of a run (or of one layer): element counts by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScratchManifest {
    counts: BTreeMap<BufferName, usize>,
}

impl ScratchManifest {
    /// The buffers one layer of `shapes` needs for `rows` tokens.
    pub fn for_layer(shapes: &LayerShapes, rows: usize, backend: ScratchFor) -> Self {
        use BufferName::*;
        let (d, dense) = (shapes.hidden, shapes.dense_intermediate);
        let widths = BlockWidths::of(shapes);
        let mut counts = BTreeMap::new();
        for (name, width) in [(Normed, d), (SublayerOut, d), (Gate, dense), (Up, dense)] {
            counts.insert(name, rows * width);
        }
        for (name, width) in widths.buffers() {
            if width > 0 || matches!(name, Q | K | V | Attn) {
                counts.insert(name, rows * width);
            }
        }
        for (name, count) in delta_net_buffers(shapes, rows, backend) {
            counts.insert(name, count);
        }
        let mut widest_input = d.max(widths.attn).max(dense);
        if let MixerShapes::Attention { .. } = shapes.mixer {
            // The tensor-core attention's K and V share the GEMM inputs' 16-bit scratch.
            widest_input = widest_input.max(2 * shapes.kv_width);
        }
        if let Some(m) = shapes.moe {
            let (e, k) = (m.experts, m.top_k);
            widest_input = widest_input
                .max(m.expert_intermediate)
                .max(m.shared_intermediate);
            for (name, count) in [
                (RouterLogits, rows * e),
                (ChosenExperts, rows * k),
                (ChosenWeights, rows * k),
                (Positions, rows * k),
                (ExpertCounts, e),
                (ExpertOffsets, e),
                (Gathered, rows * k * d),
                (ExpertOut, rows * k * d),
                (ExpertGate, rows * m.expert_intermediate),
                (ExpertUp, rows * m.expert_intermediate),
            ] {
                counts.insert(name, count);
            }
            if m.shared_intermediate > 0 {
                for (name, count) in [
                    (SharedGate, rows * m.shared_intermediate),
                    (SharedUp, rows * m.shared_intermediate),
                    (SharedOut, rows * d),
                    (SharedGateLogits, rows),
                ] {
                    counts.insert(name, count);
                }
            }
        }
        if backend == ScratchFor::Gpu {
            counts.insert(Bf16Inputs, rows * widest_input);
            counts.insert(HalfGuard, half_guard_len(rows));
        }
        ScratchManifest { counts }
    }

    /// Buffers every layer of `layers` can run in: each buffer at the largest count any
    /// layer needs (what buffers kept across layers hold).
    pub fn for_layers(layers: &[LayerShapes], rows: usize, backend: ScratchFor) -> Self {
        let mut merged = ScratchManifest::default();
        for shapes in layers {
            for (name, count) in ScratchManifest::for_layer(shapes, rows, backend).counts {
                let entry = merged.counts.entry(name).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        merged
    }

    /// Elements of `name` (0 when the manifest does not list it).
    pub fn count(&self, name: BufferName) -> usize {
        self.counts.get(&name).copied().unwrap_or(0)
    }

    /// Whether it lists `name`.
    pub fn lists(&self, name: BufferName) -> bool {
        self.counts.contains_key(&name)
    }

    /// Every buffer and its element count.
    pub fn buffers(&self) -> impl Iterator<Item = (BufferName, usize)> + '_ {
        self.counts.iter().map(|(&name, &count)| (name, count))
    }

    /// Bytes of the decoder block's buffers and of the MoE buffers.
    pub fn bytes(&self) -> (u64, u64) {
        self.buffers().fold((0, 0), |(block, moe), (name, count)| {
            let bytes = count as u64 * name.element().size_bytes();
            match name.is_moe() {
                true => (block, moe + bytes),
                false => (block + bytes, moe),
            }
        })
    }

    /// Their sum.
    pub fn total_bytes(&self) -> u64 {
        let (block, moe) = self.bytes();
        block + moe
    }
}

/// Activation bytes of one micro-batch of `rows` tokens on a GPU: the decoder block's
/// buffers and the MoE buffers of one layer ([`ScratchManifest::for_layer`]).
pub fn activation_bytes(shapes: &LayerShapes, rows: usize) -> (u64, u64) {
    ScratchManifest::for_layer(shapes, rows, ScratchFor::Gpu).bytes()
}

/// Stored bytes (staging layout) and converted bytes of one layer.
pub fn layer_weight_bytes(inventory: &Inventory, layer: usize, gemm: GemmDtype) -> (u64, u64) {
    inventory
        .of_class(TensorClass::Layer(layer))
        .map(|t| tensor_bytes(&t.shape, t.dtype, t.byte_len, gemm))
        .fold((0, 0), |(s, c), (s2, c2)| (s + s2, c + c2))
}

/// The output head's shape: `(vocab, width)` of the LM head matrix (the embedding when no
/// output-class matrix exists: tied).
pub fn head_shape(inventory: &Inventory) -> (u64, u64) {
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
    head.first()
        .map_or((0, 0), |t| (t.shape[0] as u64, t.shape[1] as u64))
}

/// Vocabulary rows of one logits chunk for `rows` hidden rows against a head holding `held`
/// vocabulary rows: about 64 Mi f32 logits (256 MiB), at least 256 vocabulary rows, never more than
/// the head holds (a split head's part may hold fewer than 256).
pub fn head_logits_chunk(rows: usize, held: usize) -> usize {
    ((64usize << 20) / rows.max(1)).max(256).min(held).max(1)
}

/// The output head on the device for micro-batches of `rows`: the LM head matrix in the GEMM
/// dtype (whole, or `vocab_rows` of its rows at a time when it is split by vocabulary rows,
/// with the rows' running log-sum-exp), the final norm, normed rows and one logits chunk.
pub fn head_bytes(
    inventory: &Inventory,
    gemm: GemmDtype,
    rows: usize,
    vocab_rows: Option<u64>,
) -> u64 {
    let (vocab, width) = head_shape(inventory);
    let held = vocab_rows.map_or(vocab, |r| r.min(vocab));
    let rows = rows as u64;
    let chunk = head_logits_chunk(rows as usize, held as usize) as u64;
    let running = match vocab_rows {
        Some(_) => 3 * 4 * rows,
        None => 0,
    };
    align(held * width * gemm.size_bytes())
        + align(width * 4)
        + 4 * rows * width
        + 4 * rows * chunk
        + 2 * rows * width
        + 4 * half_guard_len(rows as usize) as u64
        + running
}

/// u32 elements of the f16 path's overflow guard for micro-batches of `rows` tokens (the
/// manifest's `HalfGuard`): the count, the listed rows and a flag per row of a GEMM input, a
/// flag per sequence of an attention call.
pub fn half_guard_len(rows: usize) -> usize {
    1 + 3 * rows
}

#[cfg(test)]
mod head_chunk_tests {
    use super::head_logits_chunk;

    #[test]
    fn a_logits_chunk_never_exceeds_the_rows_a_head_part_holds() {
        // A split head's part of 107 vocabulary rows (fewer than the 256-row floor).
        assert_eq!(head_logits_chunk(24, 107), 107);
        assert_eq!(head_logits_chunk(24, 0), 1);
        // 64 Mi logits (256 MiB of f32) per chunk, at least 256 rows.
        assert_eq!(head_logits_chunk(4096, 1 << 20), 16384);
        assert_eq!(head_logits_chunk(1 << 20, 128_256), 256);
        assert_eq!(head_logits_chunk(1, 1000), 1000);
    }
}
