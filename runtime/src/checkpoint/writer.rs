//! The observer that records finished layers, and the writer thread that does the writing so
//! the GPU does not wait on the disk. Per layer, in order, each write atomic: the layer's
//! summary and statistics, the hidden states (when due); then progress.json, once for the
//! layers that were waiting together (up to four), then the previous hidden file is deleted.
//! A write failure (full disk) stops the run after the next layer; what progress.json names
//! stays valid.

use super::activations::{ActivationLayout, ActivationSaver};
use super::files::{hidden_path, layer_json_path, layer_statistics_path, write_file, write_hidden};
use super::folder::{AnalysisFolder, save_progress};
use super::layer_record::LayerSelfRecord;
use super::statistics_file::statistics_bytes;
use crate::analysis::PointStatistics;
use crate::analysis::report::LayerReport;
use crate::analysis::router::RouterSummary;
use crate::analysis::sinks::SinkSummary;
use crate::capture::{CapturePoint, Routing, SinkMass};
use crate::error::{Result, RuntimeError};
use crate::executor::RunObserver;
use crate::sequences::Sequences;
use crossbeam::channel::{Sender, bounded};
use layerstream_planner::progress::{FileRecord, HiddenRecord, LayerRecord, Progress, unix_now};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A hidden-state checkpoint waits at least this many times as long as the last one took
/// (copy and write), so checkpoints take at most about a tenth of the run: a workload's
/// hidden states can be tens of GB.
const CHECKPOINT_COST_FACTOR: u32 = 9;

/// Whether hidden states are due `elapsed` after the last ones: an interval of zero asks
/// for them after every layer; otherwise the interval has passed, and so has
/// [`CHECKPOINT_COST_FACTOR`] times what the last checkpoint took.
fn wants_checkpoint(elapsed: Duration, interval: Duration, last_cost: Duration) -> bool {
    interval.is_zero() || elapsed >= interval.max(last_cost * CHECKPOINT_COST_FACTOR)
}

/// What one save of progress.json recorded: the layers whose files it names now, and the
/// layer after which hidden states were checkpointed (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointWritten {
    /// Layers recorded.
    pub layers: Vec<usize>,
    /// A hidden-state checkpoint after this layer was recorded too.
    pub hidden_after_layer: Option<usize>,
}

/// Called on the writer thread after each save of progress.json.
pub type WrittenCallback = Box<dyn Fn(&CheckpointWritten) + Send>;

/// One finished layer, for the writer thread.
struct LayerJob {
    layer: usize,
    statistics: BTreeMap<CapturePoint, PointStatistics>,
    router: Option<RouterSummary>,
    sinks: Option<SinkSummary>,
    hidden_states: Option<HiddenJob>, // when a checkpoint is due
}

/// A layer's hidden-state checkpoint.
enum HiddenJob {
    /// A copy, `(tokens, hidden)`, for the writer thread to write.
    Values(Vec<f32>),
    /// Already written (hidden states on disk are written from their file before the next
    /// layer changes it, without a copy in memory).
    Written(FileRecord),
}

/// Records each layer as the executor finishes it (see the module docs).
pub struct CheckpointObserver<'a> {
    folder: &'a mut AnalysisFolder,
    statistics: BTreeMap<CapturePoint, PointStatistics>,
    routers: BTreeMap<usize, RouterSummary>,
    sinks: BTreeMap<usize, SinkSummary>,
    /// The workload's sequences (routing decisions are kept per sequence).
    rows: Sequences,
    activations: Option<ActivationSaver>,
    hidden_states: Option<HiddenJob>,
    hidden_width: usize,
    hidden_interval: Duration,
    last_hidden: Instant,
    /// Nanoseconds the last hidden-state checkpoint took: the copy here plus the writer
    /// thread's write.
    hidden_cost: Arc<AtomicU64>,
    jobs: Option<Sender<LayerJob>>,
    writer: Option<JoinHandle<Progress>>,
    failure: Arc<Mutex<Option<RuntimeError>>>,
    written: Arc<Mutex<Option<WrittenCallback>>>,
}

struct Writer {
    /// Where the time of each hidden-state write is added (see `CheckpointObserver`).
    hidden_cost: Arc<AtomicU64>,
    dir: PathBuf,
    progress: Progress,
    keep_hidden: bool,
    hidden_width: usize,
    written: Arc<Mutex<Option<WrittenCallback>>>,
}

impl Writer {
    /// Writes the layers' files in order, then progress.json once, naming the layers whose
    /// files were written (also when a later one failed, whose error is returned).
    fn write(&mut self, batch: Vec<LayerJob>) -> Result<()> {
        let mut obsolete: Vec<FileRecord> = Vec::new();
        let mut outcome = Ok(());
        let mut written = CheckpointWritten {
            layers: Vec::new(),
            hidden_after_layer: None,
        };
        for job in batch {
            let (layer, hidden) = (job.layer, job.hidden_states.is_some());
            match self.write_files(job) {
                Ok(stale) => {
                    obsolete.extend(stale);
                    written.layers.push(layer);
                    if hidden {
                        written.hidden_after_layer = Some(layer);
                    }
                }
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
        self.progress.updated_unix = unix_now();
        save_progress(&self.dir, &self.progress)?;
        if let Some(callback) = self.written.lock().expect("not poisoned").as_ref() {
            callback(&written);
        }
        for file in obsolete {
            let _ = std::fs::remove_file(self.dir.join(&file.path));
        }
        outcome
    }

    /// Writes one layer's files and records them in `self.progress` (not saved yet);
    /// returns the hidden-state files the new checkpoint makes obsolete.
    fn write_files(&mut self, job: LayerJob) -> Result<Vec<FileRecord>> {
        let LayerJob {
            layer,
            statistics,
            router,
            sinks,
            hidden_states,
        } = job;
        // A requested layer is recorded even when it captured nothing (a dense layer of a
        // MoE model under `--points router`), so the report and `status` see it finished.
        // (Finished layers a resumed run goes through again, uncaptured, are left as they are.)
        let unfinished_request = self.progress.requested_layers.contains(&layer)
            && !self.progress.layers.contains_key(&layer);
        if !statistics.is_empty() || router.is_some() || sinks.is_some() || unfinished_request {
            let report = LayerReport::from_statistics(layer, &statistics, router, sinks);
            let json = serde_json::to_vec_pretty(&report).expect("layer report serialises");
            let files = vec![
                write_file(&self.dir, &layer_json_path(layer), &json)?,
                write_file(
                    &self.dir,
                    &layer_statistics_path(layer),
                    &statistics_bytes(&statistics)?,
                )?,
            ];
            let times = self
                .progress
                .times_computed
                .get(&layer)
                .copied()
                .unwrap_or(0)
                + 1;
            let record = LayerRecord {
                files,
                finished_unix: unix_now(),
            };
            // The layer's own record, before progress.json names it (see layer_record); the
            // count changes only once every file of the layer is written.
            LayerSelfRecord::of(&self.progress, layer, &record, times).write(&self.dir)?;
            self.progress.times_computed.insert(layer, times);
            self.progress.layers.insert(layer, record);
        }
        let mut obsolete: Vec<FileRecord> = Vec::new();
        if let Some(hidden) = hidden_states {
            let file = match hidden {
                HiddenJob::Values(values) => {
                    let started = Instant::now();
                    let file = write_hidden(
                        &self.dir,
                        &hidden_path(layer),
                        &values,
                        self.hidden_width,
                        layer,
                    )?;
                    let nanos = started.elapsed().as_nanos() as u64;
                    self.hidden_cost.fetch_add(nanos, Ordering::Relaxed);
                    file
                }
                HiddenJob::Written(file) => file,
            };
            if !self.keep_hidden {
                obsolete = self.progress.hidden.drain(..).map(|h| h.file).collect();
            }
            self.progress.hidden.push(HiddenRecord {
                after_layer: layer,
                file,
            });
        }
        Ok(obsolete)
    }
}

impl<'a> CheckpointObserver<'a> {
    pub(super) fn new(
        folder: &'a mut AnalysisFolder,
        hidden_width: usize,
        rows: Sequences,
        hidden_interval: Duration,
    ) -> Self {
        // Up to four layers may wait, bounded in memory: while the writer is behind (each
        // synced file costs the disk a flush), the layers that piled up are written together
        // and progress.json is saved once for them.
        let (jobs, queue) = bounded::<LayerJob>(4);
        let failure = Arc::new(Mutex::new(None));
        let written = Arc::new(Mutex::new(None));
        let hidden_cost = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            hidden_cost: Arc::clone(&hidden_cost),
            dir: folder.dir().to_path_buf(),
            progress: folder.progress().clone(),
            keep_hidden: folder.keep_hidden(),
            hidden_width,
            written: Arc::clone(&written),
        };
        let failure_slot = Arc::clone(&failure);
        let handle = std::thread::spawn(move || {
            while let Ok(first) = queue.recv() {
                let batch: Vec<LayerJob> = std::iter::once(first).chain(queue.try_iter()).collect();
                let already_failed = failure_slot.lock().expect("not poisoned").is_some();
                if already_failed {
                    continue;
                }
                if let Err(error) = writer.write(batch) {
                    *failure_slot.lock().expect("not poisoned") = Some(error);
                }
            }
            writer.progress
        });
        CheckpointObserver {
            folder,
            statistics: BTreeMap::new(),
            routers: BTreeMap::new(),
            sinks: BTreeMap::new(),
            rows,
            activations: None,
            hidden_states: None,
            hidden_width,
            hidden_interval,
            last_hidden: Instant::now(),
            hidden_cost,
            jobs: Some(jobs),
            writer: Some(handle),
            failure,
            written,
        }
    }

    /// Calls `callback` on the writer thread each time progress.json records layers (for
    /// progress events).
    pub fn on_written(&mut self, callback: WrittenCallback) {
        *self.written.lock().expect("not poisoned") = Some(callback);
    }

    /// Also writes the raw activations of `points` under `layout` (see [`ActivationSaver`]).
    pub fn save_activations(
        &mut self,
        points: Vec<CapturePoint>,
        token_ids: Vec<u32>,
        layout: ActivationLayout,
    ) {
        let dir = self.folder.dir().to_path_buf();
        self.activations = Some(ActivationSaver::new(&dir, points, token_ids, layout));
    }

    fn record_failure(&mut self, error: RuntimeError) {
        let mut slot = self.failure.lock().expect("not poisoned");
        if slot.is_none() {
            *slot = Some(error);
        }
    }

    /// Records a finished layer given whole (a merge of shards), as a run records it.
    pub fn record_layer(
        &mut self,
        layer: usize,
        statistics: BTreeMap<CapturePoint, PointStatistics>,
        router: Option<RouterSummary>,
        sinks: Option<SinkSummary>,
    ) -> Result<()> {
        let job = LayerJob {
            layer,
            statistics,
            router,
            sinks,
            hidden_states: None,
        };
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
        match self.take_failure() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Waits for every write, updates the folder's progress, and reports a write that failed.
    pub fn finish(mut self) -> Result<()> {
        self.close()
    }

    fn close(&mut self) -> Result<()> {
        drop(self.jobs.take());
        if let Some(handle) = self.writer.take() {
            let progress = handle.join().expect("the checkpoint writer does not panic");
            self.folder.set_progress(progress);
        }
        match self.failure.lock().expect("not poisoned").take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for CheckpointObserver<'_> {
    fn drop(&mut self) {
        // Finished layers are written even when the run stopped with an error.
        let _ = self.close();
    }
}

impl RunObserver for CheckpointObserver<'_> {
    fn on_capture(
        &mut self,
        layer: usize,
        point: CapturePoint,
        first_sequence: usize,
        values: &[f32],
        width: usize,
    ) {
        let written = self
            .activations
            .as_mut()
            .map(|saver| saver.write(layer, point, first_sequence, values, width));
        if let Some(Err(error)) = written {
            self.record_failure(error);
        }
    }

    fn on_statistics(&mut self, _layer: usize, point: CapturePoint, statistics: &PointStatistics) {
        self.statistics.insert(point, statistics.clone());
    }

    fn take_statistics(&mut self, _layer: usize, point: CapturePoint, statistics: PointStatistics) {
        self.statistics.insert(point, statistics);
    }

    fn on_router(&mut self, layer: usize, first_sequence: usize, routing: &Routing) {
        self.routers
            .entry(layer)
            .or_insert_with(|| RouterSummary::empty_like(routing))
            .add(routing, first_sequence, &self.rows);
    }

    fn on_attention_sinks(&mut self, layer: usize, _first_sequence: usize, mass: &SinkMass) {
        self.sinks.entry(layer).or_default().add(mass);
    }

    fn wants_hidden_states(&mut self, _layer: usize) -> bool {
        wants_checkpoint(
            self.last_hidden.elapsed(),
            self.hidden_interval,
            Duration::from_nanos(self.hidden_cost.load(Ordering::Relaxed)),
        )
    }

    fn on_hidden_states(&mut self, layer: usize, hidden_states: &[f32], in_file: bool) {
        let started = Instant::now();
        self.last_hidden = started;
        if !in_file {
            self.hidden_states = Some(HiddenJob::Values(hidden_states.to_vec()));
            // The writer thread adds its write's time to the copy's.
            let nanos = started.elapsed().as_nanos() as u64;
            self.hidden_cost.store(nanos, Ordering::Relaxed);
            return;
        }
        let written = write_hidden(
            self.folder.dir(),
            &hidden_path(layer),
            hidden_states,
            self.hidden_width,
            layer,
        );
        let nanos = started.elapsed().as_nanos() as u64;
        self.hidden_cost.store(nanos, Ordering::Relaxed);
        match written {
            Ok(file) => self.hidden_states = Some(HiddenJob::Written(file)),
            Err(error) => self.record_failure(error),
        }
    }

    fn on_layer_done(&mut self, layer: usize, _layers: usize, _tokens: usize) {
        // Activation files get their names before progress.json names the layer finished.
        if let Some(Err(error)) = self.activations.as_mut().map(ActivationSaver::finish_layer) {
            self.record_failure(error);
        }
        let job = LayerJob {
            layer,
            statistics: std::mem::take(&mut self.statistics),
            router: self.routers.remove(&layer),
            sinks: self.sinks.remove(&layer),
            hidden_states: self.hidden_states.take(),
        };
        if let Some(jobs) = &self.jobs {
            // The writer only stops when this observer closes the channel.
            let _ = jobs.send(job);
        }
    }

    fn take_failure(&mut self) -> Option<RuntimeError> {
        self.failure.lock().expect("not poisoned").take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_checkpoint_spaces_the_next_ones_out() {
        let s = Duration::from_secs;
        // Zero: after every layer, whatever they cost.
        assert!(wants_checkpoint(s(0), s(0), s(100)));
        // Cheap checkpoints: the interval decides.
        assert!(!wants_checkpoint(s(29), s(30), s(1)));
        assert!(wants_checkpoint(s(30), s(30), s(1)));
        // A 10 s checkpoint (tens of GB): the next one after 90 s, not 30.
        assert!(!wants_checkpoint(s(60), s(30), s(10)));
        assert!(wants_checkpoint(s(90), s(30), s(10)));
    }
}
