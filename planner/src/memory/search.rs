//! The search over arrangements: where the hidden states live (device, pinned host, disk),
//! how layers are cut (whole, or split at most G experts per part) and the micro-batch.
//! Every candidate is priced by its regions; the first placement with an arrangement that
//! fits wins.

use super::regions::{Regions, ScratchFor, ScratchManifest, head_bytes};
use super::shapes::{HiddenPlacement, LayerShapes, Workload};
use crate::format::GemmDtype;
use crate::inventory::Inventory;
use crate::split::{
    Bytes, GroupBytes, LayerPart, experts_per_part_candidates, index_by_name, needs_accumulator,
    split_parts,
};

/// Every layer's parts with their bytes.
pub(super) type Units = Vec<Vec<(LayerPart, Bytes)>>;

/// How the layers are cut into streaming units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// Every layer whole.
    Whole,
    /// Layers larger than their split parts are split, at most this many experts per part.
    Split(usize),
}

/// What the search prices arrangements against.
pub(super) struct Search<'a> {
    pub inventory: &'a Inventory,
    pub layers: &'a [LayerShapes],
    pub workload: &'a Workload,
    pub gemm: GemmDtype,
    pub groups: Vec<GroupBytes>,
    /// Residual width.
    pub width: u64,
    /// Statistics accumulators of one layer.
    pub statistics: u64,
    /// Tokens of the workload.
    pub tokens: u64,
    pub overhead_bytes: u64,
    pub budget_bytes: u64,
    pub host_limit: u64,
    /// Largest micro-batch asked for, in sequences.
    pub target: usize,
    /// The output head split by vocabulary rows: this many rows on the device at a time
    /// (`None`: the whole head).
    pub head_rows: Option<u64>,
}

/// A cost that orders parts: two staging buffers and the conversions.
pub(super) fn part_cost(bytes: &Bytes) -> u64 {
    2 * bytes.stored + bytes.converted
}

impl<'a> Search<'a> {
    pub fn new(
        inventory: &'a Inventory,
        layers: &'a [LayerShapes],
        workload: &'a Workload,
        gemm: GemmDtype,
        budget: Option<u64>,
        host_budget: Option<u64>,
        overhead_bytes: u64,
    ) -> Self {
        let index = index_by_name(inventory);
        let groups = layers
            .iter()
            .map(|l| GroupBytes::new(&index, &l.tensors, gemm))
            .collect();
        let statistics = workload
            .captured_points
            .iter()
            .map(|p| p.accumulator_bytes(workload.sequences, workload.sequences * workload.seq_len))
            .sum();
        Search {
            inventory,
            layers,
            workload,
            gemm,
            groups,
            width: layers.first().map_or(0, |l| l.hidden) as u64,
            statistics,
            tokens: (workload.sequences * workload.seq_len) as u64,
            overhead_bytes,
            budget_bytes: budget.unwrap_or(u64::MAX),
            host_limit: host_budget.unwrap_or(u64::MAX),
            target: (workload.target_micro_batch_tokens / workload.seq_len.max(1))
                .clamp(1, workload.sequences.max(1)),
            head_rows: None,
        }
    }

    /// The parts of every layer under a cut, with their bytes.
    pub fn units(&self, cut: Cut) -> Units {
        let whole = |g: &GroupBytes| vec![(LayerPart::Whole, g.part(&LayerPart::Whole))];
        let Cut::Split(experts_per_part) = cut else {
            return self.groups.iter().map(whole).collect();
        };
        let split: Units = self
            .groups
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
        let cap = split
            .iter()
            .flatten()
            .map(|(_, b)| part_cost(b))
            .max()
            .unwrap_or(0);
        // A layer no larger than the largest part stays whole: fewer, larger uploads.
        self.groups
            .iter()
            .zip(split)
            .map(
                |(g, parts)| match part_cost(&g.part(&LayerPart::Whole)) <= cap {
                    true => whole(g),
                    false => parts,
                },
            )
            .collect()
    }

    /// The micro-batch buffers of `sequences` sequences, kept across layers.
    pub fn scratch(&self, sequences: usize) -> ScratchManifest {
        let rows = sequences * self.workload.seq_len;
        ScratchManifest::for_layers(self.layers, rows, ScratchFor::Gpu)
    }

    /// The device regions of an arrangement.
    pub fn regions(&self, units: &Units, sequences: usize, placement: HiddenPlacement) -> Regions {
        let rows = sequences * self.workload.seq_len;
        let (block, moe) = self.scratch(sequences).bytes();
        let head = match self.workload.lm_head {
            true => head_bytes(self.inventory, self.gemm, rows, self.head_rows),
            false => 0,
        };
        let workload_rows = placement.device_rows(rows, self.tokens as usize) as u64;
        let largest =
            |f: fn(&Bytes) -> u64| units.iter().flatten().map(|(_, b)| f(b)).max().unwrap_or(0);
        Regions {
            staging: 2 * largest(|b| b.stored),
            converted: largest(|b| b.converted),
            hidden: workload_rows * self.width * 4,
            accumulator: match accumulates(units) {
                true => workload_rows * self.width * 4,
                false => 0,
            },
            activations: block,
            moe,
            statistics: self.statistics,
            head,
            overhead: self.overhead_bytes,
        }
    }

    /// The workload's hidden states (and accumulator) outside the device.
    pub fn workload_bytes(&self, units: &Units) -> u64 {
        let copies = if accumulates(units) { 2 } else { 1 };
        copies * self.tokens * self.width * 4
    }

    /// Pinned host memory: two staging buffers, and the hidden states when they live there.
    pub fn host_bytes(&self, units: &Units, placement: HiddenPlacement) -> u64 {
        let staging = units
            .iter()
            .flatten()
            .map(|(_, b)| b.stored)
            .max()
            .unwrap_or(0);
        2 * staging
            + match placement {
                HiddenPlacement::PinnedHost => self.workload_bytes(units),
                HiddenPlacement::Device | HiddenPlacement::Disk => 0,
            }
    }

    fn largest_fitting(&self, units: &Units, placement: HiddenPlacement) -> Option<usize> {
        if self.host_bytes(units, placement) > self.host_limit {
            return None;
        }
        (1..=self.target)
            .rev()
            .find(|&m| self.regions(units, m, placement).total() <= self.budget_bytes)
    }

    /// The arrangement for `placement`: layers whole if they fit, else the split with the
    /// largest micro-batch, then the fewest parts.
    pub fn choose(&self, placement: HiddenPlacement) -> Option<(Units, usize)> {
        let whole = self.units(Cut::Whole);
        if let Some(m) = self.largest_fitting(&whole, placement) {
            return Some((whole, m));
        }
        let most_experts = self.groups.iter().map(GroupBytes::num_experts).max();
        let mut chosen: Option<(Units, usize)> = None;
        for experts_per_part in experts_per_part_candidates(most_experts.unwrap_or(0)) {
            let units = self.units(Cut::Split(experts_per_part));
            if let Some(m) = self.largest_fitting(&units, placement) {
                if chosen.as_ref().is_none_or(|(_, best)| m > *best) {
                    chosen = Some((units, m));
                }
                if m == self.target {
                    break;
                }
            }
        }
        chosen
    }
}

/// Whether any layer's experts are split over several parts.
pub(super) fn accumulates(units: &Units) -> bool {
    units
        .iter()
        .any(|parts| needs_accumulator(parts.iter().map(|(p, _)| p)))
}
