//! Layer splitting: when one layer does not fit next to its prefetch buffer, it streams and
//! computes in parts: attention first, then the feed-forward block in groups of routed
//! experts (a dense MLP is one part). Every micro-batch runs through a part before the next
//! part's weights are needed, so a part's weights still cross PCIe once per run.
//!
//! Which tensor belongs to which part comes from the runtime (it knows each tensor's role);
//! the sizes come from the safetensors headers, like everything the planner sizes.

use crate::format::{GemmDtype, Layout, TensorRef, ref_bytes};
use crate::inventory::{Inventory, TensorEntry};
use serde::Serialize;
use std::collections::HashMap;
use std::ops::Range;

/// One weight of a layer: where its bytes are and how they are laid out for its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTensor {
    /// Its bytes.
    pub source: TensorRef,
    /// How they become the role's matrix or vector.
    pub layout: Layout,
}

impl<T: Into<TensorRef>> From<T> for GroupTensor {
    fn from(source: T) -> Self {
        GroupTensor {
            source: source.into(),
            layout: Layout::AsStored,
        }
    }
}

/// A layer's weights (by where their bytes are), grouped by the split parts that need them.
/// Weights read from the same bytes (GPT-OSS's gate and up of one fused tensor) stream once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerTensorGroups {
    /// Attention: its norms, projections and biases.
    pub attention: Vec<GroupTensor>,
    /// What every feed-forward part needs: the MLP's input and output norms, the router.
    pub routing: Vec<GroupTensor>,
    /// The dense MLP or the shared expert: in the last feed-forward part only.
    pub last: Vec<GroupTensor>,
    /// The routed experts' weights, by expert index (slices of one stacked tensor when the
    /// checkpoint fuses them).
    pub experts: Vec<Vec<GroupTensor>>,
}

/// One unit of a layer that streams and computes as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerPart {
    /// The layer, not split.
    Whole,
    /// Attention; the residual stream gets its output.
    Attention,
    /// The feed-forward block with routed experts `first_expert..end_expert` (none for a
    /// dense MLP). The first such part captures `ln2` and the router; the last adds the
    /// shared expert, the output norm and the residual.
    FeedForward {
        /// First routed expert of the part.
        first_expert: usize,
        /// One past its last routed expert.
        end_expert: usize,
    },
}

impl LayerPart {
    /// The routed experts a part runs (all of them for [`LayerPart::Whole`]).
    pub fn experts(&self, num_experts: usize) -> Range<usize> {
        match self {
            LayerPart::Whole => 0..num_experts,
            LayerPart::Attention => 0..0,
            LayerPart::FeedForward {
                first_expert,
                end_expert,
            } => *first_expert..*end_expert,
        }
    }

    /// Whether the part runs attention.
    pub fn runs_attention(&self) -> bool {
        matches!(self, LayerPart::Whole | LayerPart::Attention)
    }

    /// Whether the part runs (some of) the feed-forward block.
    pub fn runs_feed_forward(&self) -> bool {
        !matches!(self, LayerPart::Attention)
    }

    /// Whether the part starts the feed-forward block (captures `ln2` and the router).
    pub fn starts_feed_forward(&self) -> bool {
        match self {
            LayerPart::Whole => true,
            LayerPart::Attention => false,
            LayerPart::FeedForward { first_expert, .. } => *first_expert == 0,
        }
    }

    /// Whether the part finishes the feed-forward block of a layer with `num_experts`
    /// routed experts (shared expert, output norm, residual).
    pub fn finishes_feed_forward(&self, num_experts: usize) -> bool {
        match self {
            LayerPart::Whole => true,
            LayerPart::Attention => false,
            LayerPart::FeedForward { end_expert, .. } => *end_expert == num_experts,
        }
    }

    /// Whose bytes, for messages: `layer 3's` or `layer 3's attention`.
    pub fn owner(&self, layer: usize) -> String {
        match self {
            LayerPart::Whole => format!("layer {layer}'s"),
            part => format!("layer {layer}'s {}", part.describe()),
        }
    }

    /// A short name for logs and tables: `whole`, `attention`, `mlp`, `experts 8-15`.
    pub fn describe(&self) -> String {
        match self {
            LayerPart::Whole => "whole".into(),
            LayerPart::Attention => "attention".into(),
            LayerPart::FeedForward {
                first_expert,
                end_expert,
            } if first_expert == end_expert => "mlp".into(),
            LayerPart::FeedForward {
                first_expert,
                end_expert,
            } if end_expert - first_expert == 1 => format!("expert {first_expert}"),
            LayerPart::FeedForward {
                first_expert,
                end_expert,
            } => format!("experts {first_expert}-{}", end_expert - 1),
        }
    }
}

/// A layer's parts for a log line: `attention, experts 0-3, experts 4-7`, or for many
/// parts `attention, then 64 groups of up to 2 experts`.
pub fn describe_parts(parts: &[LayerPart]) -> String {
    let groups = parts.iter().filter(|p| p.runs_feed_forward()).count();
    if groups <= 4 {
        return parts
            .iter()
            .map(LayerPart::describe)
            .collect::<Vec<_>>()
            .join(", ");
    }
    let largest = parts
        .iter()
        .map(|p| match p {
            LayerPart::FeedForward {
                first_expert,
                end_expert,
            } => end_expert - first_expert,
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    format!(
        "attention, then {groups} groups of up to {largest} expert{}",
        if largest == 1 { "" } else { "s" }
    )
}

/// The parts of a layer with `num_experts` routed experts split with at most
/// `experts_per_part` experts per feed-forward part (dense: attention, then the MLP).
pub fn split_parts(num_experts: usize, experts_per_part: usize) -> Vec<LayerPart> {
    let mut parts = vec![LayerPart::Attention];
    if num_experts == 0 {
        parts.push(LayerPart::FeedForward {
            first_expert: 0,
            end_expert: 0,
        });
        return parts;
    }
    let per_part = experts_per_part.clamp(1, num_experts);
    for first in (0..num_experts).step_by(per_part) {
        parts.push(LayerPart::FeedForward {
            first_expert: first,
            end_expert: (first + per_part).min(num_experts),
        });
    }
    parts
}

/// Experts per part worth trying for layers of up to `num_experts` routed experts, largest
/// first: one value per distinct number of parts (`[1]` for dense models).
pub fn experts_per_part_candidates(num_experts: usize) -> Vec<usize> {
    if num_experts == 0 {
        return vec![1];
    }
    let mut candidates: Vec<usize> = (1..=num_experts)
        .map(|parts| num_experts.div_ceil(parts))
        .collect();
    candidates.dedup();
    candidates
}

/// Whether the feed-forward block of a layer split into `parts` needs an accumulator for
/// the workload (its routed experts are spread over more than one part).
pub fn needs_accumulator<'a>(parts: impl IntoIterator<Item = &'a LayerPart>) -> bool {
    parts
        .into_iter()
        .filter(|p| matches!(p, LayerPart::FeedForward { first_expert, end_expert } if end_expert > first_expert))
        .count()
        > 1
}

/// The weights a part needs.
pub fn part_tensor_refs<'a>(
    groups: &'a LayerTensorGroups,
    part: &LayerPart,
) -> Vec<&'a GroupTensor> {
    let num_experts = groups.experts.len();
    let mut refs: Vec<&GroupTensor> = Vec::new();
    if part.runs_attention() {
        refs.extend(&groups.attention);
    }
    if part.runs_feed_forward() {
        refs.extend(&groups.routing);
        for expert in part.experts(num_experts) {
            refs.extend(&groups.experts[expert]);
        }
        if part.finishes_feed_forward(num_experts) {
            refs.extend(&groups.last);
        }
    }
    refs
}

/// The names of the tensors holding a part's weights.
pub fn part_tensor_names<'a>(groups: &'a LayerTensorGroups, part: &LayerPart) -> Vec<&'a str> {
    part_tensor_refs(groups, part)
        .into_iter()
        .map(|t| t.source.name())
        .collect()
}

/// Stored and converted bytes of each group of a layer, looked up once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bytes {
    /// As stored (staging).
    pub stored: u64,
    /// Converted on the device.
    pub converted: u64,
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, other: Bytes) -> Bytes {
        Bytes {
            stored: self.stored + other.stored,
            converted: self.converted + other.converted,
        }
    }
}

/// The byte sizes of a layer's groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupBytes {
    attention: Bytes,
    routing: Bytes,
    last: Bytes,
    experts: Vec<Bytes>,
}

impl GroupBytes {
    /// Sizes the groups from the inventory (`index`: the inventory by name).
    pub fn new(
        index: &HashMap<&str, &TensorEntry>,
        groups: &LayerTensorGroups,
        gemm: GemmDtype,
    ) -> Self {
        let sum = |tensors: &[GroupTensor]| {
            let mut bytes = Bytes::default();
            for (i, t) in tensors.iter().enumerate() {
                let Some((stored, converted)) = ref_bytes(&t.source, t.layout, index, gemm) else {
                    continue;
                };
                // Bytes another weight of the group reads too are staged once.
                let staged_before = tensors[..i].iter().any(|o| o.source == t.source);
                bytes.stored += if staged_before { 0 } else { stored };
                bytes.converted += converted;
            }
            bytes
        };
        GroupBytes {
            attention: sum(&groups.attention),
            routing: sum(&groups.routing),
            last: sum(&groups.last),
            experts: groups.experts.iter().map(|e| sum(e)).collect(),
        }
    }

    /// The bytes of one part.
    pub fn part(&self, part: &LayerPart) -> Bytes {
        let num_experts = self.experts.len();
        let mut bytes = Bytes::default();
        if part.runs_attention() {
            bytes = bytes + self.attention;
        }
        if part.runs_feed_forward() {
            bytes = bytes + self.routing;
            for expert in part.experts(num_experts) {
                bytes = bytes + self.experts[expert];
            }
            if part.finishes_feed_forward(num_experts) {
                bytes = bytes + self.last;
            }
        }
        bytes
    }

    /// Routed experts of the layer.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }
}

/// The inventory by tensor name (the planner's lookups stay linear in the tensor count).
pub fn index_by_name(inventory: &Inventory) -> HashMap<&str, &TensorEntry> {
    inventory
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_every_expert_once_in_ascending_groups() {
        let parts = split_parts(10, 4);
        assert_eq!(parts[0], LayerPart::Attention);
        let ranges: Vec<_> = parts[1..].iter().map(|p| p.experts(10)).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
        assert!(parts[1].starts_feed_forward() && !parts[2].starts_feed_forward());
        assert!(parts[3].finishes_feed_forward(10) && !parts[2].finishes_feed_forward(10));
        assert!(needs_accumulator(&parts));
        assert!(!needs_accumulator(&split_parts(10, 10)), "one expert part");
        let dense = split_parts(0, 1);
        assert_eq!(dense.len(), 2);
        assert!(dense[1].starts_feed_forward() && dense[1].finishes_feed_forward(0));
        assert_eq!(dense[1].describe(), "mlp");
        assert_eq!(parts[2].describe(), "experts 4-7");
        assert_eq!(
            describe_parts(&parts),
            "attention, experts 0-3, experts 4-7, experts 8-9"
        );
        assert_eq!(
            describe_parts(&split_parts(10, 1)),
            "attention, then 10 groups of up to 1 expert"
        );
        assert_eq!(split_parts(10, 1)[1].describe(), "expert 0");
        assert_eq!(experts_per_part_candidates(8), vec![8, 4, 3, 2, 1]);
        assert_eq!(experts_per_part_candidates(0), vec![1]);
    }

    /// GPT-OSS as the hub ships it: per expert, gate and up are the even and odd rows of one
    /// MXFP4 `gate_up_proj` and of one fused bias; staged once, converted as two halves.
    #[test]
    fn gpt_oss_gate_and_up_stage_their_shared_bytes_once_and_convert_half_each() {
        use crate::format::{TENSOR_ALIGN, WeightFormat};
        use crate::inventory::{TensorClass, TensorDtype};
        let (experts, hidden, inter) = (4usize, 64usize, 32usize);
        let entry = |name: &str, dtype: TensorDtype, shape: Vec<usize>, element: u64| TensorEntry {
            name: name.to_string(),
            byte_len: element * shape.iter().product::<usize>() as u64,
            shape,
            dtype,
            file_index: 0,
            byte_offset: 0,
            class: TensorClass::Layer(0),
            expert: None,
        };
        let u8 = TensorDtype::Other("U8");
        let entries = [
            entry(
                "gu_blocks",
                u8,
                vec![experts, 2 * inter, hidden / 32, 16],
                1,
            ),
            entry("gu_scales", u8, vec![experts, 2 * inter, hidden / 32], 1),
            entry("gu_bias", TensorDtype::Bf16, vec![experts, 2 * inter], 2),
        ];
        let index: HashMap<&str, &TensorEntry> =
            entries.iter().map(|t| (t.name.as_str(), t)).collect();
        let slice = |name: &str, e: usize, rows: usize| TensorRef::Stacked {
            name: name.into(),
            index: e,
            count: experts,
            rows: 0..rows,
            total_rows: rows,
        };
        let expert = |e: usize| {
            let matrix = TensorRef::Quantized {
                format: WeightFormat::Mxfp4,
                values: Box::new(slice("gu_blocks", e, 2 * inter)),
                scales: Box::new(slice("gu_scales", e, 2 * inter)),
            };
            let bias = slice("gu_bias", e, 2 * inter);
            let mut weights = Vec::new();
            for offset in 0..2 {
                let layout = Layout::Rows { stride: 2, offset };
                weights.push(GroupTensor {
                    source: matrix.clone(),
                    layout,
                });
                weights.push(GroupTensor {
                    source: bias.clone(),
                    layout,
                });
            }
            weights
        };
        let groups = LayerTensorGroups {
            experts: (0..experts).map(expert).collect(),
            ..LayerTensorGroups::default()
        };
        let bytes = GroupBytes::new(&index, &groups, GemmDtype::Bf16);
        let one = bytes.part(&LayerPart::FeedForward {
            first_expert: 1,
            end_expert: 2,
        });
        let aligned = |b: u64| b.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN;
        // Staged once: the expert's blocks, its scales and its bias slice.
        let blocks = (2 * inter * hidden / 2) as u64;
        let scales = (2 * inter * hidden / 32) as u64;
        let bias = 2 * 2 * inter as u64;
        assert_eq!(
            one.stored,
            aligned(blocks) + aligned(scales) + aligned(bias)
        );
        // Converted twice, half each: gate and up `(inter, hidden)` in bf16, their biases in f32.
        let half_matrix = aligned((inter * hidden * 2) as u64);
        let half_bias = aligned(inter as u64 * 4);
        assert_eq!(one.converted, 2 * (half_matrix + half_bias));
        assert_eq!(
            bytes.part(&LayerPart::Whole),
            Bytes {
                stored: 4 * one.stored,
                converted: 4 * one.converted,
            }
        );
    }

    #[test]
    fn part_names_put_the_shared_tensors_in_the_last_part_and_routing_in_every_part() {
        let groups = LayerTensorGroups {
            attention: vec!["q".into()],
            routing: vec!["router".into()],
            last: vec!["shared".into()],
            experts: (0..4).map(|e| vec![format!("e{e}").into()]).collect(),
        };
        let parts = split_parts(4, 2);
        assert_eq!(part_tensor_names(&groups, &parts[0]), vec!["q"]);
        assert_eq!(
            part_tensor_names(&groups, &parts[1]),
            vec!["router", "e0", "e1"]
        );
        assert_eq!(
            part_tensor_names(&groups, &parts[2]),
            vec!["router", "e2", "e3", "shared"]
        );
        let mut whole = part_tensor_names(&groups, &LayerPart::Whole);
        whole.sort();
        assert_eq!(whole, vec!["e0", "e1", "e2", "e3", "q", "router", "shared"]);
    }
}
