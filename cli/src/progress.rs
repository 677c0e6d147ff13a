//! A progress bar (layers done, tokens per second, ETA) around any run observer. Hidden
//! when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressStyle};
use layerstream_planner::split::{LayerPart, describe_parts};
use layerstream_runtime::analysis::PointStatistics;
use layerstream_runtime::capture::{Routing, SinkMass};
use layerstream_runtime::{CapturePoint, RunObserver, RuntimeError};
use std::time::Instant;

/// Forwards everything to `inner` and advances a bar per finished layer.
pub struct WithProgress<'a> {
    inner: &'a mut dyn RunObserver,
    bar: ProgressBar,
    started: Instant,
    /// The parts of the last split layer announced (a line only when they change).
    announced_split: Option<Vec<LayerPart>>,
}

impl<'a> WithProgress<'a> {
    /// A bar over `layers` layers.
    pub fn new(inner: &'a mut dyn RunObserver, layers: usize) -> Self {
        let bar = ProgressBar::new(layers as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} layers  {msg}  ETA {eta}")
                .expect("valid template"),
        );
        WithProgress {
            inner,
            bar,
            started: Instant::now(),
            announced_split: None,
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

impl RunObserver for WithProgress<'_> {
    fn on_capture(
        &mut self,
        layer: usize,
        point: CapturePoint,
        first: usize,
        values: &[f32],
        width: usize,
    ) {
        self.inner.on_capture(layer, point, first, values, width);
    }

    fn on_statistics(&mut self, layer: usize, point: CapturePoint, statistics: &PointStatistics) {
        self.inner.on_statistics(layer, point, statistics);
    }

    fn take_statistics(&mut self, layer: usize, point: CapturePoint, statistics: PointStatistics) {
        self.inner.take_statistics(layer, point, statistics);
    }

    fn on_router(&mut self, layer: usize, first: usize, routing: &Routing) {
        self.inner.on_router(layer, first, routing);
    }

    fn on_attention_sinks(&mut self, layer: usize, first: usize, mass: &SinkMass) {
        self.inner.on_attention_sinks(layer, first, mass);
    }

    fn on_next_token_nll(&mut self, first: usize, nll: &[f32]) {
        self.inner.on_next_token_nll(first, nll);
    }

    fn on_logits(&mut self, first: usize, logits: &[f32]) {
        self.inner.on_logits(first, logits);
    }

    fn wants_hidden_states(&mut self, layer: usize) -> bool {
        self.inner.wants_hidden_states(layer)
    }

    fn on_hidden_states(&mut self, layer: usize, hidden_states: &[f32], in_file: bool) {
        self.inner.on_hidden_states(layer, hidden_states, in_file);
    }

    fn on_notice(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("{message}"));
        self.inner.on_notice(message);
    }

    fn take_failure(&mut self) -> Option<RuntimeError> {
        self.inner.take_failure()
    }

    fn on_micro_batch_halved(&mut self, layer: usize, from: usize, to: usize, reason: &str) {
        self.bar.suspend(|| {
            eprintln!(
                "layer {layer}: {reason}; micro-batch {from} -> {to} sequence{} for the rest of the run",
                if to == 1 { "" } else { "s" }
            )
        });
        self.inner.on_micro_batch_halved(layer, from, to, reason);
    }

    fn on_layer_split(&mut self, layer: usize, parts: &[LayerPart]) {
        if self.announced_split.as_deref() != Some(parts) {
            self.bar.suspend(|| {
                eprintln!(
                    "layer {layer} runs in {} parts to fit the budget ({}); later layers split the same way are not listed",
                    parts.len(),
                    describe_parts(parts)
                )
            });
            self.announced_split = Some(parts.to_vec());
        }
        self.inner.on_layer_split(layer, parts);
    }

    fn on_layer_done(&mut self, layer: usize, layers: usize, tokens: usize) {
        self.inner.on_layer_done(layer, layers, tokens);
        self.bar.set_length(layers as u64);
        self.bar.set_position(layer as u64 + 1);
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        // Whole-model throughput: tokens through every layer per second.
        let tokens_per_second = tokens as f64 * (layer + 1) as f64 / layers as f64 / seconds;
        self.bar
            .set_message(format!("{tokens_per_second:.0} tokens/s"));
    }
}
