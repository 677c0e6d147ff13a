//! Progress around any run observer, on stderr (`--progress`): a bar (layers done, tokens
//! per second, ETA) on a terminal; lines (one per finished layer, and one at least every
//! 30 s inside a long layer) in logs (a Kaggle cell, a Slurm log, `nohup`); json (one object
//! per event: run started, layer finished, layer still running, layer split, micro-batch
//! halved, checkpoint written, resume, notices; with `--progress json` every other stderr
//! line is an event too, see `output.rs`) for notebooks and dashboards; or none. Layer lines
//! give the parts of a split layer and the memory the run's regions took (device memory on
//! a GPU, against --vram; host memory on the CPU, against --ram).

use indicatif::{ProgressBar, ProgressStyle};
use layerstream_planner::ByteSize;
use layerstream_planner::split::{LayerPart, describe_parts};
use layerstream_runtime::analysis::PointStatistics;
use layerstream_runtime::capture::{Routing, SinkMass};
use layerstream_runtime::checkpoint::CheckpointWritten;
use layerstream_runtime::executor::MemoryUse;
use layerstream_runtime::{CapturePoint, RunObserver, RuntimeError};
use serde_json::json;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// The bar on a terminal, lines otherwise.
    Auto,
    /// A bar.
    Bar,
    /// Lines.
    Lines,
    /// One JSON object per event.
    Json,
    /// Nothing.
    None,
}

impl FromStr for ProgressMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ProgressMode::Auto),
            "bar" => Ok(ProgressMode::Bar),
            "lines" => Ok(ProgressMode::Lines),
            "json" => Ok(ProgressMode::Json),
            "none" => Ok(ProgressMode::None),
            other => Err(format!(
                "unknown progress mode {other:?}; choose auto, bar, lines, json or none"
            )),
        }
    }
}

/// A line inside a long layer at least this often (lines and json).
const STILL_RUNNING_EVERY: Duration = Duration::from_secs(30);

/// What the still-running ticker knows.
struct Ticker {
    /// The layer running and since when; the last line's time.
    state: Arc<Mutex<(usize, Instant, Instant, bool)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(json: bool, started: Instant) -> Self {
        let state = Arc::new(Mutex::new((0usize, Instant::now(), Instant::now(), false)));
        let shared = Arc::clone(&state);
        let every = std::env::var("LAYERSTREAM_PROGRESS_EVERY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(STILL_RUNNING_EVERY, Duration::from_millis);
        let thread = std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100).min(every));
                let mut s = shared.lock().expect("not poisoned");
                if s.3 {
                    return;
                }
                if s.2.elapsed() < every {
                    continue;
                }
                let (layer, running, elapsed) = (
                    s.0,
                    s.1.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64(),
                );
                s.2 = Instant::now();
                drop(s);
                match json {
                    true => eprintln!(
                        "{}",
                        json!({"event": "layer_running", "layer": layer, "running_s": round(running), "elapsed_s": round(elapsed)})
                    ),
                    false => eprintln!(
                        "layer {layer} still running: {running:.0} s in it, {elapsed:.0} s elapsed"
                    ),
                }
            }
        });
        Ticker {
            state,
            thread: Some(thread),
        }
    }

    /// A line was printed (the next still-running line is due in 30 s), `layer` now runs.
    fn printed(&self, layer: Option<usize>) {
        let mut s = self.state.lock().expect("not poisoned");
        s.2 = Instant::now();
        if let Some(layer) = layer {
            s.0 = layer;
            s.1 = Instant::now();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.state.lock().expect("not poisoned").3 = true;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `, device memory peak 3.9 GiB of 8.0 GiB` (what the run's regions reserved).
fn describe_memory(memory: MemoryUse) -> String {
    let place = if memory.device { "device" } else { "host" };
    let peak = ByteSize(memory.peak_bytes);
    match memory.budget_bytes {
        Some(budget) => format!(", {place} memory peak {peak} of {}", ByteSize(budget)),
        None => format!(", {place} memory peak {peak}"),
    }
}

/// The `checkpoint_written` event (json progress): the layers progress.json now records.
pub fn checkpoint_event(written: &CheckpointWritten) -> String {
    json!({"event": "checkpoint_written", "layers": written.layers, "hidden_after_layer": written.hidden_after_layer}).to_string()
}

fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

/// How progress is shown, `auto` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Bar,
    Lines,
    Json,
    Nothing,
}

/// Forwards everything to `inner` and shows progress per finished layer.
pub struct WithProgress<'a> {
    inner: &'a mut dyn RunObserver,
    bar: ProgressBar,
    shown: Shown,
    ticker: Option<Ticker>,
    started: Instant,
    /// The parts of the last split layer announced (a line only when they change).
    announced_split: Option<Vec<LayerPart>>,
    /// Parts of the layer running (1 unless split).
    parts: usize,
    /// The memory reported at the last layer's end.
    memory: Option<MemoryUse>,
}

impl<'a> WithProgress<'a> {
    /// Progress over `layers` layers, shown as `mode` says.
    pub fn new(inner: &'a mut dyn RunObserver, layers: usize, mode: ProgressMode) -> Self {
        let shown = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => Shown::Bar,
            ProgressMode::Auto | ProgressMode::Lines => Shown::Lines,
            ProgressMode::Bar => Shown::Bar,
            ProgressMode::Json => Shown::Json,
            ProgressMode::None => Shown::Nothing,
        };
        let bar = match shown {
            Shown::Bar => ProgressBar::new(layers as u64),
            _ => ProgressBar::hidden(),
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} layers  {msg}  ETA {eta}")
                .expect("valid template"),
        );
        let started = Instant::now();
        if shown == Shown::Json {
            eprintln!("{}", json!({"event": "run_started", "layers": layers}));
        }
        let ticker = matches!(shown, Shown::Lines | Shown::Json)
            .then(|| Ticker::start(shown == Shown::Json, started));
        WithProgress {
            inner,
            bar,
            shown,
            ticker,
            started,
            announced_split: None,
            parts: 1,
            memory: None,
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }

    /// A message: above the bar, as a line, or as a json event built by `event`.
    fn say(&self, line: String, event: impl FnOnce() -> serde_json::Value) {
        match self.shown {
            Shown::Bar => self.bar.suspend(|| eprintln!("{line}")),
            Shown::Lines => eprintln!("{line}"),
            Shown::Json => eprintln!("{}", event()),
            Shown::Nothing => {}
        }
        if let Some(ticker) = &self.ticker {
            ticker.printed(None);
        }
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

    fn on_top_logprobs(&mut self, first: usize, top: &[Vec<(u32, f32)>]) {
        self.inner.on_top_logprobs(first, top);
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
        self.say(
            message.to_string(),
            || json!({"event": "notice", "message": message}),
        );
        self.inner.on_notice(message);
    }

    fn take_failure(&mut self) -> Option<RuntimeError> {
        self.inner.take_failure()
    }

    fn on_micro_batch_halved(
        &mut self,
        layer: usize,
        (from, to, unit): (usize, usize, &str),
        reason: &str,
    ) {
        let line = format!(
            "layer {layer}: {reason}; micro-batch {from} -> {to} {unit}{} for the rest of the run",
            if to == 1 { "" } else { "s" }
        );
        let event = || json!({"event": "micro_batch_halved", "layer": layer, "from": from, "to": to, "unit": unit, "reason": reason});
        self.say(line, event);
        self.inner
            .on_micro_batch_halved(layer, (from, to, unit), reason);
    }

    fn on_memory(&mut self, layer: usize, memory: MemoryUse) {
        self.memory = Some(memory);
        self.inner.on_memory(layer, memory);
    }

    fn on_layer_split(&mut self, layer: usize, parts: &[LayerPart]) {
        self.parts = parts.len();
        if self.announced_split.as_deref() != Some(parts) || self.shown == Shown::Json {
            let line = format!(
                "layer {layer} runs in {} parts to fit the budget ({}); later layers split the same way are not listed",
                parts.len(),
                describe_parts(parts)
            );
            let names: Vec<String> = parts.iter().map(|p| p.describe()).collect();
            self.say(
                line,
                || json!({"event": "layer_split", "layer": layer, "parts": names}),
            );
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
        let eta = seconds / (layer + 1) as f64 * layers.saturating_sub(layer + 1) as f64;
        let parts = std::mem::replace(&mut self.parts, 1);
        let memory = self.memory.map(describe_memory).unwrap_or_default();
        let line = format!(
            "layer {layer} done ({}/{layers}{}), {tokens_per_second:.0} tokens/s, {seconds:.1} s elapsed, ETA {eta:.0} s{memory}",
            layer + 1,
            if parts > 1 {
                format!(", {parts} parts")
            } else {
                String::new()
            }
        );
        let event = || {
            let mut event = json!({"event": "layer_finished", "layer": layer, "layers": layers, "parts": parts, "tokens_per_second": tokens_per_second.round(), "elapsed_s": round(seconds), "eta_s": round(eta)});
            if let Some(m) = self.memory {
                event["memory"] = json!({"where": if m.device { "device" } else { "host" }, "peak_bytes": m.peak_bytes, "budget_bytes": m.budget_bytes});
            }
            event
        };
        if self.shown != Shown::Bar {
            self.say(line, event);
        }
        if let Some(ticker) = &self.ticker {
            ticker.printed(Some(layer + 1));
        }
    }
}
