//! `analyze --per-record`: statistics of records of their own lengths, several in one
//! micro-batch. The packed path's statistics are checked against the independent reference
//! of the definitions (`reference_analysis.rs`); here each record's statistics in a ragged
//! run must be the ones the same record gives alone (a workload of that one sequence):
//! every per-(sequence, dimension) entry, the position bits at the record's own tokens, the
//! histogram as the records' sum, each record's magnitudes (top three and median |x|, its own
//! median), the attention-sink mass with the record's own first token and delimiter, and the
//! router's decisions (`record_statistics.rs` on the CPU, bit for bit; `gpu_per_record.rs`
//! compares CUDA's ragged statistics with the CPU's).

use crate::{FIXTURES, Reference, assert_matches_reference, fixture_model, nmse};
use layerstream_planner::memory::HiddenPlacement;
use layerstream_runtime::analysis::PointStatistics;
use layerstream_runtime::analysis::position_bits::PositionBits;
use layerstream_runtime::backend::Backend;
use layerstream_runtime::capture::{Routing, SinkMass};
use layerstream_runtime::{
    CaptureMode, CapturePoint, FinalStage, Model, RunObserver, RunRequest, Sequences, run,
};
use std::collections::BTreeMap;

/// The statistics, sinks and routing a run reports.
#[derive(Default)]
pub struct KeepStatistics {
    /// Per (layer, point), at the layer's end.
    pub statistics: BTreeMap<(usize, CapturePoint), PointStatistics>,
    /// Per layer, `(sequences, heads)` masses in workload order.
    pub sinks: BTreeMap<usize, Vec<[f64; 3]>>,
    /// Per layer, `(tokens, top_k)` experts in workload order.
    pub experts: BTreeMap<usize, Vec<u32>>,
}

impl RunObserver for KeepStatistics {
    fn on_statistics(&mut self, layer: usize, point: CapturePoint, statistics: &PointStatistics) {
        self.statistics.insert((layer, point), statistics.clone());
    }

    fn on_attention_sinks(&mut self, layer: usize, _first: usize, mass: &SinkMass) {
        self.sinks
            .entry(layer)
            .or_default()
            .extend_from_slice(&mass.mass);
    }

    fn on_router(&mut self, layer: usize, _first: usize, routing: &Routing) {
        self.experts
            .entry(layer)
            .or_default()
            .extend_from_slice(&routing.experts);
    }
}

/// Records as (reference sequence, prefix length): lengths all different, one of 2 tokens.
pub fn record_prefixes(t: usize) -> Vec<(usize, usize)> {
    vec![(0, t), (1, t / 2 + 3), (0, 7), (1, t - 1), (1, 2)]
}

/// A statistics request (every activation point, sinks and the router, threshold 0.5 so the
/// random-init fixtures have values above it) of `records`, each with `delimiters`.
pub fn statistics_request(
    model: &Model,
    reference: &Reference,
    records: &[(usize, usize)],
    delimiters: &[Option<usize>],
    micro_batch_tokens: usize,
) -> RunRequest {
    let t = reference.seq_len;
    let mut points = CapturePoint::ACTIVATIONS.to_vec();
    points.extend([CapturePoint::AttnSinks, CapturePoint::Router]);
    RunRequest {
        token_ids: records
            .iter()
            .flat_map(|&(s, len)| reference.input_ids[s * t..s * t + len].to_vec())
            .collect(),
        first_delimiters: delimiters.to_vec(),
        sequences: Sequences::from_lengths(records.iter().map(|r| r.1)),
        capture_layers: (0..model.spec.num_layers).collect(),
        capture_points: points,
        capture_mode: CaptureMode::Statistics {
            threshold: 0.5,
            save: Default::default(),
        },
        final_stage: FinalStage::None,
        top_logprobs: None,
        head_vocab_rows: None,
        micro_batch_tokens,
        start: None,
        checkpoint_hidden_states: false,
        hidden_placement: HiddenPlacement::Device,
        spill_dir: None,
        memory_budget: None,
        split_layers: Default::default(),
    }
}

/// Runs the fixture's records together (mixed micro-batches) on `backend`.
pub fn run_records(backend: &Backend, name: &str) -> (Model, Vec<(usize, usize)>, KeepStatistics) {
    let reference = Reference::load(name);
    let model = Model::open(&fixture_model(name)).unwrap();
    let t = reference.seq_len;
    let records = record_prefixes(t);
    let delimiters = [Some(3), None, Some(1), Some(t - 2), None];
    let request = statistics_request(&model, &reference, &records, &delimiters, t + t / 2);
    let mut together = KeepStatistics::default();
    run(&model, &request, backend, &mut together).unwrap();
    (model, records, together)
}

/// Every fixture: each record's statistics in a ragged run equal its statistics alone, bit
/// for bit (the CPU computes each row and each sequence's attention alone).
pub fn check_records_match_each_alone(backend: &Backend) {
    for name in FIXTURES {
        let (model, records, together) = run_records(backend, name);
        let reference = Reference::load(name);
        let t = reference.seq_len;
        let delimiters = [Some(3), None, Some(1), Some(t - 2), None];
        let rows = Sequences::from_lengths(records.iter().map(|r| r.1));
        let alone: Vec<KeepStatistics> = records
            .iter()
            .zip(delimiters)
            .map(|(&record, delimiter)| {
                let request = statistics_request(&model, &reference, &[record], &[delimiter], t);
                let mut kept = KeepStatistics::default();
                run(&model, &request, backend, &mut kept).unwrap();
                kept
            })
            .collect();
        assert!(!together.statistics.is_empty(), "{name}: statistics");
        for (key, all) in &together.statistics {
            let what = format!("{name} layer {} {}", key.0, key.1);
            let parts: Vec<&PointStatistics> = alone.iter().map(|a| &a.statistics[key]).collect();
            assert_record_entries(&what, all, &parts, &rows);
        }
        for (layer, mass) in &together.sinks {
            let expect: Vec<[f64; 3]> = alone.iter().flat_map(|a| a.sinks[layer].clone()).collect();
            assert_eq!(mass, &expect, "{name} layer {layer}: sink mass per record");
        }
        for (layer, experts) in &together.experts {
            let expect: Vec<u32> = alone
                .iter()
                .flat_map(|a| a.experts[layer].clone())
                .collect();
            assert_eq!(experts, &expect, "{name} layer {layer}: router choices");
        }
        let sinks_layers = (0..model.spec.num_layers)
            .filter(|&l| model.spec.delta_net(l).is_none())
            .count();
        assert_eq!(
            together.sinks.len(),
            sinks_layers,
            "{name}: sinks of every attention layer"
        );
    }
}

/// `all`'s entries of sequence `s` are `parts[s]`'s (its only sequence).
fn assert_record_entries(
    what: &str,
    all: &PointStatistics,
    parts: &[&PointStatistics],
    rows: &Sequences,
) {
    let w = all.width;
    assert_eq!(all.sequences, parts.len(), "{what}: sequences");
    assert_eq!(all.tokens(), rows.tokens(), "{what}: real tokens only");
    let plane = all.sequences * w;
    let mut histogram = vec![0u64; all.histogram.len()];
    for (s, part) in parts.iter().enumerate() {
        let at = s * w..(s + 1) * w;
        assert_eq!(
            all.max_abs[at.clone()],
            part.max_abs[..],
            "{what} record {s}: max |x|"
        );
        assert_eq!(
            all.count_ge[at.clone()],
            part.count_ge[..],
            "{what} record {s}: counts"
        );
        assert_eq!(
            all.count_pos_ge[at.clone()],
            part.count_pos_ge[..],
            "{what} record {s}"
        );
        assert_eq!(
            all.sum_abs_ge[at.clone()],
            part.sum_abs_ge[..],
            "{what} record {s}"
        );
        assert_eq!(
            all.non_finite[at.clone()],
            part.non_finite[..],
            "{what} record {s}"
        );
        for m in 0..4 {
            let mine = &all.sums[m * plane + s * w..m * plane + (s + 1) * w];
            assert_eq!(
                mine,
                &part.sums[m * w..(m + 1) * w],
                "{what} record {s}: moment {m}"
            );
        }
        for (total, &count) in histogram.iter_mut().zip(&part.histogram) {
            *total += count;
        }
        // Position bits: the record's token t is the workload's rows.start(s) + t.
        let words = all.position_words();
        for d in (0..w).filter(|_| words > 0) {
            for t in 0..rows.len_of(s) {
                let u = rows.start(s) + t;
                let bit = |bits: &PositionBits, i: usize| {
                    bits.row(d).map_or(0, |row| row[i / 32] >> (i % 32) & 1)
                };
                assert_eq!(
                    bit(&all.positions, u),
                    bit(&part.positions, t),
                    "{what} record {s} dim {d} position {t}"
                );
            }
        }
        if let (Some(mine), Some(its)) = (&all.massive, &part.massive) {
            let (a, b) = (&mine.sequences[s], &its.sequences[0]);
            assert_eq!(
                (a.sequence, a.top, a.median),
                (s, b.top, b.median),
                "{what} record {s}: magnitudes"
            );
        }
    }
    assert_eq!(all.histogram, histogram, "{what}: histogram");
    assert_eq!(
        all.positions.is_kept(),
        parts[0].positions.is_kept(),
        "{what}"
    );
}

/// `gpu`'s statistics, sinks and magnitudes equal `cpu`'s within f32 tolerance (counts and
/// position bits may differ only for values within rounding of the threshold: at most 2 plus
/// one in 100,000 values).
pub fn assert_statistics_close(
    name: &str,
    model: &Model,
    cpu: &KeepStatistics,
    gpu: &KeepStatistics,
) {
    assert_eq!(
        cpu.statistics.len(),
        gpu.statistics.len(),
        "{name}: same points reported"
    );
    // Attention sinks, per attention layer (a DeltaNet has none) and (sequence, head).
    let attention_layers = (0..model.spec.num_layers)
        .filter(|&l| model.spec.delta_net(l).is_none())
        .count();
    assert_eq!(
        (cpu.sinks.len(), gpu.sinks.len()),
        (attention_layers, attention_layers),
        "{name}: sinks of every attention layer"
    );
    for (layer, c) in &cpu.sinks {
        let g = &gpu.sinks[layer];
        assert_eq!(c.len(), g.len(), "{name} layer {layer}: sinks");
        for (i, (a, b)) in c.iter().zip(g).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{name} layer {layer} (sequence, head) {i}: sinks {a:?} vs {b:?}"
                );
            }
        }
    }
    for (key, c) in &cpu.statistics {
        let g = &gpu.statistics[key];
        let what = format!("{name} layer {} {}", key.0, key.1);
        assert_matches_reference(&format!("{what} max |x|"), &g.max_abs, &c.max_abs);
        let sums_c: Vec<f32> = c.sums.iter().map(|&v| v as f32).collect();
        let sums_g: Vec<f32> = g.sums.iter().map(|&v| v as f32).collect();
        assert!(
            nmse(&sums_g, &sums_c) < 1e-9,
            "{what}: sums NMSE {}",
            nmse(&sums_g, &sums_c)
        );
        let (cs, gs) = (c.summary(5), g.summary(5));
        let flips = 2 + cs.numel / 100_000;
        let diff = cs.count_ge_threshold.abs_diff(gs.count_ge_threshold);
        assert!(
            diff <= flips,
            "{what}: count >= threshold differs by {diff}"
        );
        assert_eq!(cs.non_finite, gs.non_finite, "{what}");
        assert_eq!(cs.numel, gs.numel, "{what}");
        // Histogram bins (32 per octave): a value moves when the backends' rounding puts
        // it across a bin edge, which near-zero values (large relative differences) do
        // most; allow 0.5% of the values (each move changes two bins). The binning itself
        // is checked element by element on identical inputs in gpu_kernels.
        let moved: u64 = c
            .histogram
            .iter()
            .zip(&g.histogram)
            .map(|(a, b)| a.abs_diff(*b))
            .sum();
        assert!(
            moved <= 2 * (cs.numel / 200).max(4),
            "{what}: histogram moved {moved} of {} values",
            cs.numel
        );
        let ones = |bits: &PositionBits| {
            bits.held_rows()
                .flat_map(|(_, row)| row.iter())
                .map(|w| w.count_ones() as u64)
                .sum::<u64>()
        };
        let bits_diff = ones(&c.positions).abs_diff(ones(&g.positions));
        assert!(
            bits_diff <= flips,
            "{what}: position bits differ by {bits_diff}"
        );
        let positive = |s: &PointStatistics| s.count_pos_ge.iter().sum::<u64>();
        assert!(
            positive(c).abs_diff(positive(g)) <= flips,
            "{what}: positive counts"
        );
        let massive = |s: &PointStatistics| {
            s.massive
                .as_ref()
                .map(|m| (m.primary.total, m.per_token.total))
        };
        assert_eq!(massive(c), massive(g), "{what}: massive activations");
        if let (Some(mc), Some(mg)) = (&c.massive, &g.massive) {
            assert_eq!(mc.sequences.len(), c.sequences);
            assert_eq!(mc.sequences.len(), mg.sequences.len(), "{what}");
            for (a, b) in mc.sequences.iter().zip(&mg.sequences) {
                assert_eq!(a.sequence, b.sequence, "{what}");
                let pairs = a.top.iter().zip(&b.top).chain([(&a.median, &b.median)]);
                for (x, y) in pairs {
                    assert!(
                        (x - y).abs() <= 1e-4 * x.abs().max(1e-6),
                        "{what}: sequence {} magnitudes {a:?} vs {b:?}",
                        a.sequence
                    );
                }
            }
        }
    }
}
