//! The end of a GPU run: the final norm and the LM head over the hidden states after the last
//! layer, micro-batch by micro-batch (whole sequences): next-token NLL, logits (tests), and the
//! most likely next tokens at each sequence's chosen position. A head split by vocabulary rows
//! (the plan's `head_vocab_rows`: the whole one does not fit next to the micro-batch) is
//! uploaded one part at a time, layer-major: every micro-batch goes through a part before the
//! next is uploaded, each row's running log-sum-exp and the top candidates kept on the host.

use super::head::{DeviceHead, RunningLogSumExp, next_tokens, nll_of};
use super::hidden::HiddenStates;
use super::linear::HalfScratch;
use super::{ComputeDtype, f16_overflow};
use crate::allocation::Budget;
use crate::error::Result;
use crate::executor::{F16Overflow, FinalStage, RunObserver, RunRequest};
use crate::model::Model;
use crate::sequences::Sequences;
use crate::top_logprobs::top_k_logprobs;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::CudaView;
use layerstream_planner::memory;
use std::ops::Range;
use std::sync::Arc;

/// The final norm and LM head over the hidden states after the last layer (score, tests).
pub(super) struct HeadRun<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a Model,
    pub request: &'a RunRequest,
    pub compute: ComputeDtype,
    pub budget: &'a Arc<Budget>,
}

/// The micro-batches of the head: sequence ranges.
fn batches(all: &Sequences, micro_batch: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut first = 0;
    while first < all.count() {
        let count = all.batch_from(first, all.count(), micro_batch);
        batches.push(first..first + count);
        first += count;
    }
    batches
}

impl HeadRun<'_> {
    /// Runs the head; f16 compute returns what its overflow guard recomputed.
    pub fn run(
        &self,
        hidden_states: &mut HiddenStates,
        micro_batch: usize,
        observer: &mut dyn RunObserver,
    ) -> Result<Option<F16Overflow>> {
        let (model, request, budget) = (self.model, self.request, self.budget);
        let all = &request.sequences;
        let rows = all.largest_batch(0..all.count(), micro_batch);
        let split = request.head_vocab_rows.filter(|&r| {
            request.final_stage == FinalStage::NextTokenNll && r < model.lm_head().shape[0]
        });
        let head_bytes = memory::head_bytes(
            model.weights.inventory(),
            self.compute.gemm(),
            rows,
            split.map(|r| r as u64),
        );
        let _head_reservation = budget.reserve("the output head", head_bytes)?;
        let d = model.spec.hidden_size;
        let mut scratch = HalfScratch::new(
            self.gpu.stream.alloc_zeros::<u16>(rows * d)?,
            self.gpu
                .stream
                .alloc_zeros::<u32>(memory::half_guard_len(rows))?,
        );
        if self.compute == ComputeDtype::F16 {
            scratch.totals = Some(f16_overflow::new_totals(self.gpu)?);
        }
        match split {
            None => self.whole(hidden_states, micro_batch, observer, &mut scratch)?,
            Some(vocab_rows) => self.split(
                hidden_states,
                micro_batch,
                vocab_rows,
                observer,
                &mut scratch,
            )?,
        }
        let Some(totals) = &mut scratch.totals else {
            return Ok(None);
        };
        let what = "the output head";
        let counts = f16_overflow::take_totals(self.gpu, totals, what)?;
        if let Some(line) = f16_overflow::notice(what, counts) {
            observer.on_notice(&line);
        }
        Ok(Some(counts))
    }

    /// The whole head on the device, every micro-batch once.
    fn whole(
        &self,
        hidden_states: &mut HiddenStates,
        micro_batch: usize,
        observer: &mut dyn RunObserver,
        scratch: &mut HalfScratch,
    ) -> Result<()> {
        let (gpu, model, request) = (self.gpu, self.model, self.request);
        let head = DeviceHead::upload(gpu, model, self.compute)?;
        let all = &request.sequences;
        let d = model.spec.hidden_size;
        for sequences in batches(all, micro_batch) {
            let first_sequence = sequences.start;
            let tokens = all.rows(sequences.clone());
            let batch = hidden_states.read(gpu, tokens.start * d..tokens.end * d)?;
            let batch = batch.as_view();
            let ids = &request.token_ids[tokens.clone()];
            match request.final_stage {
                FinalStage::NextTokenNll => {
                    let spans = all.slice(sequences.clone());
                    let nll = head.next_token_nll(gpu, &batch, ids, &spans, scratch)?;
                    observer.on_next_token_nll(first_sequence, &nll);
                }
                FinalStage::Logits => {
                    let logits = head.logits(gpu, &batch, tokens.len(), scratch)?;
                    observer.on_logits(first_sequence, &logits);
                }
                FinalStage::None => {}
            }
            if let Some(top) = &request.top_logprobs {
                let chosen = self.chosen_rows(&batch, sequences.clone(), tokens.start)?;
                let logits = head.logits(gpu, &chosen.as_view(), sequences.len(), scratch)?;
                let vocab = model.lm_head().shape[0];
                observer.on_top_logprobs(first_sequence, &top_k_logprobs(&logits, vocab, top.k));
            }
        }
        Ok(())
    }

    /// `(sequences, hidden)`: the hidden state of each sequence's top-k position, from the
    /// micro-batch `batch` whose first row is the workload's `first_row`.
    fn chosen_rows(
        &self,
        batch: &CudaView<f32>,
        sequences: Range<usize>,
        first_row: usize,
    ) -> Result<layerstream_kernels::cudarc::driver::CudaSlice<f32>> {
        let (gpu, request) = (self.gpu, self.request);
        let top = request.top_logprobs.as_ref().expect("asked");
        let d = self.model.spec.hidden_size;
        let mut gathered = Vec::with_capacity(sequences.len() * d);
        for s in sequences {
            let row = request.sequences.start(s) + top.positions[s] - first_row;
            gathered.extend(
                gpu.stream
                    .clone_dtoh(&batch.slice(row * d..(row + 1) * d))?,
            );
        }
        Ok(gpu.stream.clone_htod(&gathered)?)
    }

    /// The head `vocab_rows` rows at a time: each part uploaded once, every micro-batch
    /// through it; NLL (and top-k) from the running sums once every part is seen.
    fn split(
        &self,
        hidden_states: &mut HiddenStates,
        micro_batch: usize,
        vocab_rows: usize,
        observer: &mut dyn RunObserver,
        scratch: &mut HalfScratch,
    ) -> Result<()> {
        let (gpu, model, request) = (self.gpu, self.model, self.request);
        let all = &request.sequences;
        let d = model.spec.hidden_size;
        let vocab = model.lm_head().shape[0];
        let batches = batches(all, micro_batch);
        let targets: Vec<Vec<u32>> = batches
            .iter()
            .map(|s| {
                next_tokens(
                    &request.token_ids[all.rows(s.clone())],
                    &all.slice(s.clone()),
                )
            })
            .collect();
        let mut running: Vec<RunningLogSumExp> = targets
            .iter()
            .map(|t| RunningLogSumExp::new(t.len()))
            .collect();
        // Per sequence, the best (id, logit) candidates seen so far.
        let k = request.top_logprobs.as_ref().map_or(0, |t| t.k);
        let mut candidates: Vec<Vec<(u32, f32)>> = vec![Vec::new(); all.count()];
        for first in (0..vocab).step_by(vocab_rows) {
            let part = first..(first + vocab_rows).min(vocab);
            let head = DeviceHead::upload_rows(gpu, model, self.compute, part.clone())?;
            for (index, sequences) in batches.iter().enumerate() {
                let tokens = all.rows(sequences.clone());
                let batch = hidden_states.read(gpu, tokens.start * d..tokens.end * d)?;
                let batch = batch.as_view();
                head.update_running(gpu, &batch, &targets[index], &mut running[index], scratch)?;
                if k > 0 {
                    let chosen = self.chosen_rows(&batch, sequences.clone(), tokens.start)?;
                    let logits = head.logits(gpu, &chosen.as_view(), sequences.len(), scratch)?;
                    for (s, row) in sequences.clone().zip(logits.chunks_exact(part.len())) {
                        let list = &mut candidates[s];
                        list.extend(
                            row.iter()
                                .enumerate()
                                .map(|(i, &x)| ((part.start + i) as u32, x)),
                        );
                        list.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                        list.truncate(k);
                    }
                }
            }
        }
        for (index, sequences) in batches.iter().enumerate() {
            observer.on_next_token_nll(sequences.start, &nll_of(&targets[index], &running[index]));
            if let Some(top) = &request.top_logprobs {
                let best: Vec<Vec<(u32, f32)>> = sequences
                    .clone()
                    .map(|s| {
                        let row = all.start(s) + top.positions[s] - all.start(sequences.start);
                        let norm = running[index].log_norm(row);
                        candidates[s]
                            .iter()
                            .map(|&(id, logit)| (id, (logit as f64 - norm) as f32))
                            .collect()
                    })
                    .collect();
                observer.on_top_logprobs(sequences.start, &best);
            }
        }
        Ok(())
    }
}
