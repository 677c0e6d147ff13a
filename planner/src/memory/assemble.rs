//! `plan`: the search's choice written out as the plan (per-layer rows, regions, host and
//! disk bytes), or the refusal that says what the smallest arrangement needs.

use super::regions::{Regions, ScratchFor, ScratchManifest, head_shape};
use super::report::{LayerPlan, MemoryPlan, PartPlan, PlanError};
use super::search::{Cut, Search, Units, part_cost};
use super::shapes::{HiddenPlacement, LayerShapes, Workload};
use crate::budget::ByteSize;
use crate::format::GemmDtype;
use crate::inventory::Inventory;
use crate::split::{Bytes, LayerPart, needs_accumulator};

/// Plans a run: the largest micro-batch (up to the target) whose regions fit `budget`.
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
    let mut search = Search::new(
        inventory,
        layers,
        workload,
        gemm,
        budget,
        host_budget,
        overhead_bytes,
    );
    // The whole output head first; when nothing fits with it, the head split by vocabulary
    // rows, halved until it fits (down to HEAD_MIN_ROWS rows at a time).
    let (vocab, _) = head_shape(inventory);
    let mut heads = vec![None];
    if workload.lm_head {
        let mut rows = vocab.div_ceil(2);
        while rows >= HEAD_MIN_ROWS {
            heads.push(Some(rows));
            rows = rows.div_ceil(2);
        }
    }
    let smallest = *heads.last().expect("the whole head");
    for head_rows in heads {
        search.head_rows = head_rows;
        if let Some((units, sequences, placement)) = choose_placement(&search) {
            return Ok(memory_plan(&search, &units, sequences, placement, budget));
        }
    }
    // What the smallest arrangement needs, with the head at its smallest.
    search.head_rows = smallest;
    Err(refusal(&search))
}

/// Where the hidden states live: on the device when that leaves the target micro-batch (or
/// pinned host memory gives less than twice its micro-batch), else in pinned host memory,
/// whose micro-batches move over PCIe beside the kernels (`HIDDEN_SLOTS`), else in a file.
/// Small micro-batches cost more than the copies: a MoE layer's experts see few rows each.
fn choose_placement(search: &Search) -> Option<(Units, usize, HiddenPlacement)> {
    let device = search.choose(HiddenPlacement::Device);
    if let Some((units, sequences)) = &device
        && *sequences >= search.target
    {
        return Some((units.clone(), *sequences, HiddenPlacement::Device));
    }
    let host = search.choose(HiddenPlacement::PinnedHost);
    match (device, host) {
        (Some((units, d)), Some((_, h))) if h < 2 * d => Some((units, d, HiddenPlacement::Device)),
        (_, Some((units, h))) => Some((units, h, HiddenPlacement::PinnedHost)),
        (Some((units, d)), None) => Some((units, d, HiddenPlacement::Device)),
        (None, None) => search
            .choose(HiddenPlacement::Disk)
            .map(|(units, d)| (units, d, HiddenPlacement::Disk)),
    }
}

/// The fewest vocabulary rows the output head is split into (smaller parts would spend the
/// run re-reading the micro-batches).
pub const HEAD_MIN_ROWS: u64 = 1024;

fn memory_plan(
    search: &Search,
    units: &Units,
    sequences: usize,
    placement: HiddenPlacement,
    budget: Option<u64>,
) -> MemoryPlan {
    let regions = search.regions(units, sequences, placement);
    let rows = sequences * search.workload.seq_len;
    let layers = search
        .layers
        .iter()
        .zip(&search.groups)
        .zip(units)
        .enumerate()
        .map(|(layer, ((shapes, group), parts))| {
            let (block, moe) = ScratchManifest::for_layer(shapes, rows, ScratchFor::Gpu).bytes();
            let whole = group.part(&LayerPart::Whole);
            let largest = parts
                .iter()
                .map(|(_, b)| *b)
                .max_by_key(part_cost)
                .unwrap_or_default();
            let accumulator = match needs_accumulator(parts.iter().map(|(p, _)| p)) {
                true => regions.accumulator,
                false => 0,
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
                needs_bytes: regions.overhead
                    + part_cost(&largest)
                    + regions.hidden
                    + accumulator
                    + block
                    + moe
                    + regions.statistics
                    + regions.head,
            }
        })
        .collect();
    MemoryPlan {
        budget_bytes: budget,
        micro_batch_sequences: sequences,
        head_vocab_rows: search.head_rows,
        hidden_placement: placement,
        split_layers: units
            .iter()
            .enumerate()
            .filter(|(_, parts)| parts.len() > 1)
            .map(|(l, _)| l)
            .collect(),
        host_budget_bytes: (search.host_limit != u64::MAX).then_some(search.host_limit),
        host_bytes: search.host_bytes(units, placement),
        disk_bytes: match placement {
            HiddenPlacement::Disk => search.workload_bytes(units),
            HiddenPlacement::Device | HiddenPlacement::PinnedHost => 0,
        },
        peak_bytes: regions.total(),
        regions,
        layers,
    }
}

/// Nothing fits: what the smallest arrangement (one sequence, hidden states off the device,
/// whole or split at one expert per part, whichever needs less) needs.
fn refusal(search: &Search) -> PlanError {
    let (units, regions): (Units, Regions) = [Cut::Whole, Cut::Split(1)]
        .into_iter()
        .map(|cut| {
            let units = search.units(cut);
            let regions = search.regions(&units, 1, HiddenPlacement::Disk);
            (units, regions)
        })
        .min_by_key(|(_, r)| r.total())
        .expect("two arrangements");
    let (layer, part, bytes) = units
        .iter()
        .enumerate()
        .flat_map(|(l, parts)| parts.iter().map(move |(p, b)| (l, p.clone(), *b)))
        // The largest part; the first of equals.
        .max_by(|(la, _, a), (lb, _, b)| part_cost(a).cmp(&part_cost(b)).then(lb.cmp(la)))
        .unwrap_or((0, LayerPart::Whole, Bytes::default()));
    let needed = regions.total();
    let host_needed = search.host_bytes(&units, HiddenPlacement::Disk);
    if needed <= search.budget_bytes && host_needed > search.host_limit {
        return PlanError::HostTooSmall {
            layer,
            needed: ByteSize(host_needed),
            host_budget: ByteSize(search.host_limit),
        };
    }
    PlanError::TooSmall {
        layer,
        part: match part {
            LayerPart::Whole => String::new(),
            p => format!("split, its largest part {}: ", p.describe()),
        },
        needed: ByteSize(needed),
        weights: ByteSize(bytes.stored),
        converted: ByteSize(bytes.converted),
        activations: ByteSize(regions.activations + regions.moe),
        overhead: ByteSize(regions.overhead),
        budget: ByteSize(search.budget_bytes),
        suggest: format!("{}GiB", needed.div_ceil(1 << 30)),
    }
}
