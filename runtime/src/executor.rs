//! The layer-major executor: embed every sequence, then for each layer bring its weights in
//! once and push every micro-batch through it before moving on. A layer's weights are read
//! only while that layer runs.

use crate::arch::spec::FINAL_NORM;
use crate::backend::Backend;
use crate::capture::{CapturePoint, LayerCaptureSink, Routing};
use crate::cpu::head::{OutputHead, embed_tokens};
use crate::cpu::layer::{LayerScratch, LayerWeights, decoder_layer};
use crate::cpu::rope::RopeTable;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use std::collections::BTreeSet;

/// What happens after the last layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalStage {
    /// Nothing: stop after the last captured layer.
    None,
    /// Next-token negative log-likelihoods (for `score`).
    NextTokenNll,
    /// Full logits per micro-batch (small vocabularies, tests).
    Logits,
}

/// A workload and what to observe of it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Token ids, `(num_sequences, seq_len)`.
    pub token_ids: Vec<u32>,
    /// Sequences in the workload.
    pub num_sequences: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Layers whose capture points are reported.
    pub capture_layers: BTreeSet<usize>,
    /// Which points of those layers.
    pub capture_points: Vec<CapturePoint>,
    /// After the last layer.
    pub final_stage: FinalStage,
    /// Sequences per micro-batch.
    pub micro_batch_sequences: usize,
}

/// Receives what the run produces. Every method has a default that ignores it.
pub trait RunObserver {
    /// Activations at `point` of `layer` for sequences `first_sequence..`:
    /// `values` is `(sequences * seq_len, width)`.
    fn on_capture(
        &mut self,
        _layer: usize,
        _point: CapturePoint,
        _first_sequence: usize,
        _values: &[f32],
        _width: usize,
    ) {
    }
    /// Router decisions of MoE layer `layer` for sequences `first_sequence..`.
    fn on_router(&mut self, _layer: usize, _first_sequence: usize, _routing: &Routing) {}
    /// Next-token NLL of sequences `first_sequence..`: `(sequences, seq_len - 1)`.
    fn on_next_token_nll(&mut self, _first_sequence: usize, _nll: &[f32]) {}
    /// Logits of sequences `first_sequence..`: `(sequences * seq_len, vocab)`.
    fn on_logits(&mut self, _first_sequence: usize, _logits: &[f32]) {}
    /// Layer `layer` finished for the whole workload (`layers_to_run` in all).
    fn on_layer_done(&mut self, _layer: usize, _layers_to_run: usize, _tokens: usize) {}
}

impl RunRequest {
    /// Checks the request against the model before anything runs.
    pub fn validate(&self, model: &Model) -> Result<()> {
        let spec = &model.spec;
        if self.num_sequences == 0 || self.seq_len == 0 {
            return Err(RuntimeError::InvalidRequest(
                "the workload is empty: --num-samples and --seq-len must be at least 1".into(),
            ));
        }
        if self.token_ids.len() != self.num_sequences * self.seq_len {
            return Err(RuntimeError::InvalidRequest(format!(
                "{} token ids given for {} sequences of {} tokens",
                self.token_ids.len(),
                self.num_sequences,
                self.seq_len
            )));
        }
        model.check_seq_len(self.seq_len)?;
        if self.final_stage == FinalStage::NextTokenNll && self.seq_len < 2 {
            return Err(RuntimeError::InvalidRequest(
                "scoring needs --seq-len of at least 2 (each token is predicted from the ones before it)".into(),
            ));
        }
        if let Some(&layer) = self.capture_layers.iter().find(|&&l| l >= spec.num_layers) {
            return Err(RuntimeError::InvalidRequest(format!(
                "layer {layer} is out of range: the model has {} layers (0-{})",
                spec.num_layers,
                spec.num_layers - 1
            )));
        }
        Ok(())
    }

    /// Layers that must run: up to the last captured one, or all when logits are needed.
    pub fn layers_to_run(&self, num_layers: usize) -> usize {
        match self.final_stage {
            FinalStage::None => self.capture_layers.last().map_or(0, |&l| l + 1),
            FinalStage::NextTokenNll | FinalStage::Logits => num_layers,
        }
    }
}

/// Runs `request` on `model` layer by layer, reporting to `observer`.
pub fn run(
    model: &Model,
    request: &RunRequest,
    backend: &Backend,
    observer: &mut dyn RunObserver,
) -> Result<()> {
    request.validate(model)?;
    let Backend::Cpu(cpu) = backend;
    let threads = cpu.threads;
    let spec = &model.spec;
    let (seq_len, d) = (request.seq_len, spec.hidden_size);
    let micro_batch = request
        .micro_batch_sequences
        .clamp(1, request.num_sequences);
    let tokens = request.num_sequences * seq_len;

    // The hidden states of the whole workload stay in memory across layers.
    let mut hidden_states = vec![0f32; tokens * d]; // (num_sequences * seq_len, hidden)
    embed_tokens(
        &model.weights,
        model.embedding(),
        &request.token_ids,
        &mut hidden_states,
    )?;

    let rope = RopeTable::new(&spec.rope.inv_freq, seq_len);
    let layers_to_run = request.layers_to_run(spec.num_layers);
    let mut scratch = LayerScratch::new(spec, micro_batch * seq_len);
    for layer in 0..layers_to_run {
        let weights = LayerWeights::load(&model.weights, spec, layer)?;
        let capturing = request.capture_layers.contains(&layer);
        for (batch_index, batch) in hidden_states
            .chunks_mut(micro_batch * seq_len * d)
            .enumerate()
        {
            let first_sequence = batch_index * micro_batch;
            let sequences = batch.len() / (seq_len * d);
            let mut sink = ExecutorSink {
                observer: &mut *observer,
                request,
                layer,
                first_sequence,
                capturing,
            };
            decoder_layer(
                spec,
                layer,
                &weights,
                &rope,
                batch,
                sequences,
                seq_len,
                &mut scratch,
                threads,
                &mut sink,
            );
        }
        drop(weights);
        observer.on_layer_done(layer, layers_to_run, tokens);
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
        for (batch_index, batch) in hidden_states.chunks(micro_batch * seq_len * d).enumerate() {
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

/// Hands one layer's captures for one micro-batch to the observer, if they were asked for.
struct ExecutorSink<'a> {
    observer: &'a mut dyn RunObserver,
    request: &'a RunRequest,
    layer: usize,
    first_sequence: usize,
    capturing: bool,
}

impl LayerCaptureSink for ExecutorSink<'_> {
    fn activation(&mut self, point: CapturePoint, values: &[f32], width: usize) {
        if self.capturing && self.request.capture_points.contains(&point) {
            self.observer
                .on_capture(self.layer, point, self.first_sequence, values, width);
        }
    }

    fn routing(&mut self, routing: &Routing) {
        if self.capturing && self.request.capture_points.contains(&CapturePoint::Router) {
            self.observer
                .on_router(self.layer, self.first_sequence, routing);
        }
    }
}
