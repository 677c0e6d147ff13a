//! The end of a GPU run: the final norm and the LM head over the hidden states after the last
//! layer, micro-batch by micro-batch (whole sequences): next-token NLL, logits (tests), and the
//! most likely next tokens at each sequence's chosen position.

use super::ComputeDtype;
use super::head::DeviceHead;
use super::hidden::HiddenStates;
use super::linear::Bf16Scratch;
use crate::allocation::Budget;
use crate::error::Result;
use crate::executor::{FinalStage, RunObserver, RunRequest};
use crate::model::Model;
use crate::top_logprobs::top_k_logprobs;
use layerstream_kernels::Gpu;
use layerstream_planner::memory;
use std::sync::Arc;

/// The final norm and LM head over the hidden states after the last layer (score, tests).
pub(super) struct HeadRun<'a> {
    pub gpu: &'a Gpu,
    pub model: &'a Model,
    pub request: &'a RunRequest,
    pub compute: ComputeDtype,
    pub budget: &'a Arc<Budget>,
}

impl HeadRun<'_> {
    pub fn run(
        &self,
        hidden_states: &mut HiddenStates,
        micro_batch: usize,
        observer: &mut dyn RunObserver,
    ) -> Result<()> {
        let HeadRun {
            gpu,
            model,
            request,
            compute,
            budget,
        } = *self;
        let d = model.spec.hidden_size;
        let all = &request.sequences;
        let rows = all.largest_batch(0..all.count(), micro_batch);
        let head_bytes = memory::head_bytes(model.weights.inventory(), compute.gemm(), rows);
        let _head_reservation = budget.reserve("the output head", head_bytes)?;
        let head = DeviceHead::upload(gpu, model, compute)?;
        let mut scratch = Bf16Scratch::new(gpu.stream.alloc_zeros::<u16>(rows * d)?);
        let mut first_sequence = 0;
        while first_sequence < all.count() {
            let count = all.batch_from(first_sequence, all.count(), micro_batch);
            let sequences = first_sequence..first_sequence + count;
            let tokens = all.rows(sequences.clone());
            let (start, end) = (tokens.start * d, tokens.end * d);
            let batch = hidden_states.begin(gpu, start..end)?;
            let batch = batch.as_view();
            let ids = &request.token_ids[tokens.clone()];
            match request.final_stage {
                FinalStage::NextTokenNll => {
                    let spans = all.slice(sequences);
                    let nll = head.next_token_nll(gpu, &batch, ids, &spans, &mut scratch)?;
                    observer.on_next_token_nll(first_sequence, &nll);
                }
                FinalStage::Logits => {
                    let logits = head.logits(gpu, &batch, tokens.len(), &mut scratch)?;
                    observer.on_logits(first_sequence, &logits);
                }
                FinalStage::None => {}
            }
            if let Some(top) = &request.top_logprobs {
                // The hidden state of each sequence's chosen position, `(count, hidden)`.
                let mut gathered = Vec::with_capacity(count * d);
                for s in first_sequence..first_sequence + count {
                    let row = all.start(s) + top.positions[s] - tokens.start;
                    gathered.extend(
                        gpu.stream
                            .clone_dtoh(&batch.slice(row * d..(row + 1) * d))?,
                    );
                }
                let gathered = gpu.stream.clone_htod(&gathered)?;
                let logits = head.logits(gpu, &gathered.as_view(), count, &mut scratch)?;
                let vocab = model.lm_head().shape[0];
                observer.on_top_logprobs(first_sequence, &top_k_logprobs(&logits, vocab, top.k));
            }
            first_sequence += count;
        }
        Ok(())
    }
}
