//! The CPU backend's steps of the layer-major loop (`executor/layer_loop.rs`): hidden states
//! in memory (or a file when they and a layer do not fit --ram), each part's weights read and
//! converted to f32, buffers reserved against --ram, statistics on the host.

use super::CpuBackend;
use super::head::OutputHead;
use super::layer::{LayerScratch, LayerWeights, MicroBatch, run_part};
use super::ops::CpuCapture;
use super::parts::{choose_parts, hidden_states_need_disk, part_f32_bytes, workload_bytes};
use super::rope::RopeTable;
use crate::allocation::{Budget, Reservation};
use crate::analysis::PointStatistics;
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use crate::executor::layer_loop::{LayerRunner, run_layers};
use crate::executor::{FinalStage, MemoryUse, RunObserver, RunRequest};
use crate::layer_end::{HiddenSnapshot, finish_layer, initial_hidden_states};
use crate::model::Model;
use crate::plan::layer_shapes;
use crate::top_logprobs::top_k_logprobs;
use crate::workload_buffer::WorkloadBuffer;
use layerstream_planner::memory::{HiddenPlacement, LayerShapes, ScratchFor, ScratchManifest};
use layerstream_planner::split::{LayerPart, needs_accumulator};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

/// Runs a validated request on the CPU.
pub fn run(
    model: &Model,
    request: &RunRequest,
    cpu: &CpuBackend,
    observer: &mut dyn RunObserver,
) -> Result<()> {
    let spec = &model.spec;
    let budget = Budget::new(request.memory_budget);
    let shapes = layer_shapes(spec, request.seq_len());
    let layers_to_run = request.layers_to_run(spec.num_layers);
    let first_layer = request.first_layer();
    // The workload's hidden states stay in memory across layers (reserved against --ram), or
    // in a file when the request says so or when they and a layer do not fit --ram.
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
    let mut runner = CpuRunner {
        model,
        request,
        threads: cpu.threads,
        hidden_states: initial_hidden_states(model, request, on_disk)?,
        rope: RopeTable::new(
            &spec.rope.inv_freq,
            request.seq_len(),
            spec.rope.attention_scaling,
        ),
        budget,
        shapes,
        on_disk,
        layers_to_run,
    };
    let micro_batch = run_layers(
        &mut runner,
        first_layer..layers_to_run,
        (&request.sequences, 0..request.num_sequences()),
        request.micro_batch(),
        observer,
    )?;
    if request.final_stage != FinalStage::None {
        final_stage(model, request, &runner, micro_batch, observer)?;
    }
    Ok(())
}

/// Final norm and LM head over the hidden states after the last layer.
fn final_stage(
    model: &Model,
    request: &RunRequest,
    runner: &CpuRunner,
    micro_batch: usize,
    observer: &mut dyn RunObserver,
) -> Result<()> {
    let d = model.spec.hidden_size;
    let final_norm = model.final_norm()?;
    let head = OutputHead {
        store: &model.weights,
        final_norm: &final_norm,
        norm_eps: model.spec.block.norm_eps,
        lm_head: model.lm_head(),
        threads: runner.threads,
    };
    let all = &request.sequences;
    let hidden = runner.hidden_states.as_slice();
    let mut first_sequence = 0;
    while first_sequence < all.count() {
        let count = all.batch_from(first_sequence, all.count(), micro_batch);
        let sequences = first_sequence..first_sequence + count;
        let rows = all.rows(sequences.clone());
        let batch = &hidden[rows.start * d..rows.end * d];
        let ids = &request.token_ids[rows];
        let spans = all.slice(sequences);
        match request.final_stage {
            FinalStage::NextTokenNll => {
                observer.on_next_token_nll(first_sequence, &head.next_token_nll(batch, ids, &spans))
            }
            FinalStage::Logits => observer.on_logits(first_sequence, &head.logits(batch)),
            FinalStage::None => {}
        }
        if let Some(top) = &request.top_logprobs {
            // The hidden state of each sequence's chosen position, `(count, hidden)`.
            let gathered: Vec<f32> = (first_sequence..first_sequence + count)
                .flat_map(|s| {
                    let row = all.start(s) + top.positions[s];
                    hidden[row * d..(row + 1) * d].iter().copied()
                })
                .collect();
            let vocab = model.lm_head().shape[0];
            let best = top_k_logprobs(&head.logits(&gathered), vocab, top.k);
            observer.on_top_logprobs(first_sequence, &best);
        }
        first_sequence += count;
    }
    Ok(())
}

struct CpuRunner<'a> {
    model: &'a Model,
    request: &'a RunRequest,
    threads: usize,
    /// `(num_sequences * seq_len, hidden)`, in memory or a mapped file.
    hidden_states: WorkloadBuffer,
    rope: RopeTable,
    budget: Arc<Budget>,
    shapes: Vec<LayerShapes>,
    on_disk: bool,
    layers_to_run: usize,
}

/// A layer in progress on the CPU.
struct CpuLayer {
    statistics: BTreeMap<CapturePoint, PointStatistics>,
    /// A split layer's feed-forward output across its expert groups, for the workload,
    /// `(num_sequences * seq_len, hidden)`, placed like the hidden states.
    accumulator: Option<(Option<Reservation>, WorkloadBuffer)>,
}

impl LayerRunner for CpuRunner<'_> {
    type Weights = (Reservation, LayerWeights);
    type Scratch = (Reservation, LayerScratch);
    type LayerState = CpuLayer;
    // Sized by the layer running, so a small --ram fits the layers it can.
    const SCRATCH_PER_PART: bool = true;

    fn parts(&mut self, layer: usize) -> Vec<LayerPart> {
        let spec = &self.model.spec;
        let shapes = &self.shapes[layer];
        choose_parts(
            spec,
            self.request,
            &self.budget,
            layer,
            shapes,
            self.on_disk,
        )
    }

    fn begin_layer(&mut self, layer: usize, parts: &[LayerPart]) -> Result<CpuLayer> {
        let (spec, request) = (&self.model.spec, self.request);
        let accumulator = match needs_accumulator(parts) {
            true => {
                let reservation = match self.on_disk {
                    true => None,
                    false => Some(self.budget.reserve(
                        &format!("layer {layer}'s feed-forward accumulator"),
                        workload_bytes(spec, request),
                    )?),
                };
                let spill = request.spill_dir.as_deref().filter(|_| self.on_disk);
                let len = request.tokens() * spec.hidden_size;
                let values = WorkloadBuffer::zeros_in(spill, "accumulator.f32", len)?;
                Some((reservation, values))
            }
            false => None,
        };
        Ok(CpuLayer {
            statistics: BTreeMap::new(),
            accumulator,
        })
    }

    fn load_part(&mut self, layer: usize, part: &LayerPart) -> Result<Self::Weights> {
        let spec = &self.model.spec;
        let reservation = self.budget.reserve(
            &format!("{} weights in f32", part.owner(layer)),
            part_f32_bytes(spec, layer, part),
        )?;
        self.model.weights.check_unchanged(layer)?;
        let weights = LayerWeights::load(&self.model.weights, spec, layer, part)?;
        Ok((reservation, weights))
    }

    fn make_scratch(&mut self, layer: usize, rows: usize) -> Result<Self::Scratch> {
        let manifest = ScratchManifest::for_layer(&self.shapes[layer], rows, ScratchFor::Cpu);
        let reservation = self.budget.reserve(
            &format!("layer {layer}'s micro-batch buffers"),
            manifest.total_bytes(),
        )?;
        let scratch = LayerScratch::new(&manifest, rows);
        // The plan is the allocation: what the buffers hold is what was reserved.
        if scratch.allocated_bytes() != manifest.total_bytes() {
            return Err(RuntimeError::internal(format!(
                "layer {layer}'s micro-batch buffers hold {} bytes, the manifest lists {}",
                scratch.allocated_bytes(),
                manifest.total_bytes()
            )));
        }
        Ok((reservation, scratch))
    }

    fn run_micro_batch(
        &mut self,
        layer: usize,
        part: &LayerPart,
        (_, weights): &Self::Weights,
        (_, scratch): &mut Self::Scratch,
        state: &mut CpuLayer,
        (first_sequence, sequences): (usize, usize),
        _upcoming: Option<Range<usize>>,
        observer: &mut dyn RunObserver,
    ) -> Result<()> {
        let d = self.model.spec.hidden_size;
        let range = first_sequence..first_sequence + sequences;
        let tokens = self.request.sequences.rows(range.clone());
        let rows = tokens.start * d..tokens.end * d;
        let spans = self.request.sequences.slice(range);
        let batch = MicroBatch {
            hidden: &mut self.hidden_states.as_mut_slice()[rows.clone()],
            batch: &spans,
        };
        let capture = CpuCapture {
            observer,
            request: self.request,
            layer,
            first_sequence,
            spans: &spans,
            statistics: &mut state.statistics,
        };
        let accumulator = state
            .accumulator
            .as_mut()
            .map(|(_, values)| &mut values.as_mut_slice()[rows]);
        run_part(
            &self.model.spec,
            layer,
            part,
            weights,
            &self.rope,
            batch,
            accumulator,
            scratch,
            self.threads,
            capture,
        )
    }

    fn end_layer(
        &mut self,
        layer: usize,
        state: CpuLayer,
        observer: &mut dyn RunObserver,
    ) -> Result<()> {
        let hidden_states = &self.hidden_states;
        let snapshot = || Ok(HiddenSnapshot::of(hidden_states));
        finish_layer(
            self.model,
            observer,
            self.request,
            layer,
            self.layers_to_run,
            state.statistics,
            snapshot,
            self.threads,
            MemoryUse {
                peak_bytes: self.budget.peak(),
                budget_bytes: self.budget.limit(),
                device: false,
            },
        )
    }
}
