//! The layer-major loop on the CPU.

use super::CpuBackend;
use super::head::OutputHead;
use super::layer::{LayerScratch, LayerWeights, MicroBatch, run_part};
use super::parts::{choose_parts, hidden_states_need_disk, part_f32_bytes, workload_bytes};
use super::rope::RopeTable;
use crate::allocation::{Budget, halve_micro_batch, is_out_of_memory};
use crate::analysis::PointStatistics;
use crate::arch::spec::FINAL_NORM;
use crate::capture::{CapturePoint, LayerCaptureSink, Routing};
use crate::error::Result;
use crate::executor::{
    CaptureMode, FinalStage, HiddenSnapshot, RunObserver, RunRequest, finish_layer,
    initial_hidden_states,
};
use crate::model::Model;
use crate::plan::layer_shapes;
use crate::workload_buffer::WorkloadBuffer;
use layerstream_planner::memory::HiddenPlacement;
use layerstream_planner::memory::activation_bytes;
use layerstream_planner::split::needs_accumulator;
use std::collections::BTreeMap;
use std::convert::Infallible;

/// Runs a validated request on the CPU.
pub fn run(
    model: &Model,
    request: &RunRequest,
    cpu: &CpuBackend,
    observer: &mut dyn RunObserver,
) -> Result<()> {
    let threads = cpu.threads;
    let spec = &model.spec;
    let (seq_len, d) = (request.seq_len, spec.hidden_size);
    let mut micro_batch = request.micro_batch();
    let tokens = request.num_sequences * seq_len;
    let budget = Budget::new(request.memory_budget);
    // The workload's hidden states stay in memory across layers (reserved against --ram), or
    // in a file when the request says so or when they and a layer do not fit --ram.
    let shapes = layer_shapes(spec);
    let layers_to_run = request.layers_to_run(spec.num_layers);
    let first_layer = request.first_layer();
    let hidden_bytes = workload_bytes(spec, request);
    let on_disk = request.hidden_placement == HiddenPlacement::Disk
        || (request.spill_dir.is_some()
            && hidden_states_need_disk(
                spec,
                request,
                &budget,
                &shapes,
                first_layer..layers_to_run,
            ));
    if on_disk && request.hidden_placement != HiddenPlacement::Disk {
        observer.on_notice(&format!(
            "the workload's hidden states ({}) and a layer do not fit --ram together: they live in a file in {} for this run",
            layerstream_planner::ByteSize(hidden_bytes),
            request.spill_dir.as_deref().expect("checked").display()
        ));
    }
    let _hidden_reservation = match on_disk {
        true => None,
        false => Some(budget.reserve("the workload's hidden states", hidden_bytes)?),
    };
    let mut hidden_states = initial_hidden_states(model, request, on_disk)?;

    let rope = RopeTable::new(&spec.rope.inv_freq, seq_len);
    for (layer, layer_shape) in shapes
        .iter()
        .enumerate()
        .take(layers_to_run)
        .skip(first_layer)
    {
        let parts = choose_parts(spec, request, &budget, layer, layer_shape, on_disk);
        if parts.len() > 1 {
            observer.on_layer_split(layer, &parts);
        }
        // A split layer's feed-forward output across its expert groups, for the workload,
        // placed like the hidden states.
        let (mut accumulator, _accumulator_reservation) = if needs_accumulator(&parts) {
            let reservation = match on_disk {
                true => None,
                false => Some(budget.reserve(
                    &format!("layer {layer}'s feed-forward accumulator"),
                    workload_bytes(spec, request),
                )?),
            };
            let spill = request.spill_dir.as_deref().filter(|_| on_disk);
            // (num_sequences * seq_len, hidden)
            let values = WorkloadBuffer::zeros_in(spill, "accumulator.f32", tokens * d)?;
            (Some(values), reservation)
        } else {
            (None, None)
        };
        let mut statistics = BTreeMap::new();
        for part in &parts {
            let _weights_reservation = budget.reserve(
                &format!("{} weights in f32", part.owner(layer)),
                part_f32_bytes(spec, layer, part),
            )?;
            let weights = LayerWeights::load(&model.weights, spec, layer, part)?;
            let mut next_sequence = 0;
            while next_sequence < request.num_sequences {
                // Every buffer of a micro-batch is taken before its hidden states change, so
                // an out-of-memory here is retried with half the micro-batch, from this
                // sequence on.
                let (block, moe) = activation_bytes(layer_shape, micro_batch * seq_len);
                let reservation =
                    budget.reserve(&format!("layer {layer}'s micro-batch buffers"), block + moe);
                let _buffers_reservation = match reservation {
                    Ok(r) => r,
                    Err(error) if is_out_of_memory(&error) => {
                        let halved = halve_micro_batch(layer, micro_batch, &error, seq_len)?;
                        observer.on_micro_batch_halved(
                            layer,
                            micro_batch,
                            halved,
                            &error.to_string(),
                        );
                        micro_batch = halved;
                        continue;
                    }
                    Err(error) => return Err(error),
                };
                let mut scratch = LayerScratch::new(spec, micro_batch * seq_len);
                while next_sequence < request.num_sequences {
                    let sequences = micro_batch.min(request.num_sequences - next_sequence);
                    let rows =
                        next_sequence * seq_len * d..(next_sequence + sequences) * seq_len * d;
                    let batch = MicroBatch {
                        hidden: &mut hidden_states.as_mut_slice()[rows.clone()],
                        sequences,
                        seq_len,
                    };
                    let mut sink = CpuSink {
                        observer: &mut *observer,
                        request,
                        layer,
                        first_sequence: next_sequence,
                        statistics: &mut statistics,
                    };
                    run_part(
                        spec,
                        layer,
                        part,
                        &weights,
                        &rope,
                        batch,
                        accumulator.as_mut().map(|a| &mut a.as_mut_slice()[rows]),
                        &mut scratch,
                        threads,
                        &mut sink,
                    );
                    next_sequence += sequences;
                }
            }
        }
        let snapshot = || Ok(HiddenSnapshot::of(&hidden_states));
        finish_layer(
            model,
            observer,
            request,
            layer,
            layers_to_run,
            statistics,
            snapshot,
            threads,
        )?;
    }

    if request.final_stage != FinalStage::None {
        let final_norm = model.weights.read_f32(FINAL_NORM)?;
        let head = OutputHead {
            store: &model.weights,
            final_norm: &final_norm,
            norm_eps: spec.block.norm_eps,
            lm_head: model.lm_head(),
            threads,
        };
        for (batch_index, batch) in hidden_states
            .as_slice()
            .chunks(micro_batch * seq_len * d)
            .enumerate()
        {
            let first_sequence = batch_index * micro_batch;
            let rows = batch.len() / d;
            let ids = &request.token_ids[first_sequence * seq_len..first_sequence * seq_len + rows];
            match request.final_stage {
                FinalStage::NextTokenNll => observer
                    .on_next_token_nll(first_sequence, &head.next_token_nll(batch, ids, seq_len)),
                FinalStage::Logits => observer.on_logits(first_sequence, &head.logits(batch)),
                FinalStage::None => unreachable!(),
            }
        }
    }
    Ok(())
}

/// Delivers one layer's captures of one micro-batch, as the request asks.
struct CpuSink<'a> {
    observer: &'a mut dyn RunObserver,
    request: &'a RunRequest,
    layer: usize,
    first_sequence: usize,
    statistics: &'a mut BTreeMap<CapturePoint, PointStatistics>,
}

impl LayerCaptureSink for CpuSink<'_> {
    fn activation(&mut self, point: CapturePoint, values: &[f32], width: usize) {
        if !self.request.captures(self.layer, point) {
            return;
        }
        match self.request.capture_mode {
            CaptureMode::Activations => {
                self.observer
                    .on_capture(self.layer, point, self.first_sequence, values, width)
            }
            CaptureMode::Statistics { threshold, save } => {
                self.statistics
                    .entry(point)
                    .or_insert_with(|| {
                        PointStatistics::new(
                            self.request.num_sequences,
                            self.request.seq_len,
                            point.statistics_shape(width),
                            threshold,
                        )
                    })
                    .accumulate(values, self.first_sequence);
                if save.contains(point) {
                    self.observer
                        .on_capture(self.layer, point, self.first_sequence, values, width)
                }
            }
        }
    }

    fn routing(&mut self, routing: &Routing) {
        if self.request.captures(self.layer, CapturePoint::Router) {
            self.observer
                .on_router(self.layer, self.first_sequence, routing);
        }
    }

    fn moe_input(&mut self, values: &[f32], width: usize) {
        if let Some(massive) = self
            .statistics
            .get_mut(&CapturePoint::ResidPost)
            .and_then(|s| s.massive.as_mut())
        {
            let rows = |r: usize| Ok::<_, Infallible>(values[r * width..(r + 1) * width].to_vec());
            let Ok(()) = massive.keep_inputs(self.first_sequence, self.request.seq_len, rows);
        }
    }
}
