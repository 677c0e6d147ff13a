//! Two observers as one: every event goes to both (a run that records its layers in a
//! checkpoint folder and also keeps its scores).

use super::{MemoryUse, RunObserver};
use crate::analysis::PointStatistics;
use crate::capture::{CapturePoint, Routing, SinkMass};
use crate::error::RuntimeError;
use layerstream_planner::split::LayerPart;

/// Hands every event to `first`, then to `second`.
pub struct Tee<'a> {
    /// Told first.
    pub first: &'a mut dyn RunObserver,
    /// Told second.
    pub second: &'a mut dyn RunObserver,
}

impl RunObserver for Tee<'_> {
    fn on_capture(
        &mut self,
        layer: usize,
        point: CapturePoint,
        first_sequence: usize,
        values: &[f32],
        width: usize,
    ) {
        self.first
            .on_capture(layer, point, first_sequence, values, width);
        self.second
            .on_capture(layer, point, first_sequence, values, width);
    }
    fn on_statistics(&mut self, layer: usize, point: CapturePoint, statistics: &PointStatistics) {
        self.first.on_statistics(layer, point, statistics);
        self.second.on_statistics(layer, point, statistics);
    }
    fn on_router(&mut self, layer: usize, first_sequence: usize, routing: &Routing) {
        self.first.on_router(layer, first_sequence, routing);
        self.second.on_router(layer, first_sequence, routing);
    }
    fn on_attention_sinks(&mut self, layer: usize, first_sequence: usize, mass: &SinkMass) {
        self.first.on_attention_sinks(layer, first_sequence, mass);
        self.second.on_attention_sinks(layer, first_sequence, mass);
    }
    fn on_next_token_nll(&mut self, first_sequence: usize, nll: &[f32]) {
        self.first.on_next_token_nll(first_sequence, nll);
        self.second.on_next_token_nll(first_sequence, nll);
    }
    fn on_top_logprobs(&mut self, first_sequence: usize, top: &[Vec<(u32, f32)>]) {
        self.first.on_top_logprobs(first_sequence, top);
        self.second.on_top_logprobs(first_sequence, top);
    }
    fn on_logits(&mut self, first_sequence: usize, logits: &[f32]) {
        self.first.on_logits(first_sequence, logits);
        self.second.on_logits(first_sequence, logits);
    }
    fn wants_hidden_states(&mut self, layer: usize) -> bool {
        // Both are asked (each keeps its own schedule).
        let first = self.first.wants_hidden_states(layer);
        self.second.wants_hidden_states(layer) || first
    }
    fn on_hidden_states(&mut self, layer: usize, hidden_states: &[f32], in_file: bool) {
        self.first.on_hidden_states(layer, hidden_states, in_file);
        self.second.on_hidden_states(layer, hidden_states, in_file);
    }
    fn on_notice(&mut self, message: &str) {
        self.first.on_notice(message);
        self.second.on_notice(message);
    }
    fn on_memory(&mut self, layer: usize, memory: MemoryUse) {
        self.first.on_memory(layer, memory);
        self.second.on_memory(layer, memory);
    }
    fn on_layer_done(&mut self, layer: usize, layers_to_run: usize, tokens: usize) {
        self.first.on_layer_done(layer, layers_to_run, tokens);
        self.second.on_layer_done(layer, layers_to_run, tokens);
    }
    fn on_micro_batch_halved(&mut self, layer: usize, change: (usize, usize, &str), reason: &str) {
        self.first.on_micro_batch_halved(layer, change, reason);
        self.second.on_micro_batch_halved(layer, change, reason);
    }
    fn on_layer_split(&mut self, layer: usize, parts: &[LayerPart]) {
        self.first.on_layer_split(layer, parts);
        self.second.on_layer_split(layer, parts);
    }
    fn take_failure(&mut self) -> Option<RuntimeError> {
        let first = self.first.take_failure();
        let second = self.second.take_failure();
        first.or(second)
    }
}
