//! The layer-major executor, backend-independent part: the request, its validation, the
//! observer interface and the dispatch to a backend's loop (`cpu::executor`,
//! `cuda::executor`). Every backend runs the same shape: embed every sequence, then for
//! each layer bring its weights in once and push every micro-batch through it before moving
//! on. A layer's weights are read only while that layer runs.

pub(crate) mod layer_loop;
pub mod tee;

use crate::analysis::PointStatistics;
use crate::capture::{CapturePoint, PointSet, Routing, SinkMass};
use crate::error::{Result, RuntimeError};
use crate::layer_parts::check_parts;
use crate::model::Model;
use crate::sequences::Sequences;
use crate::top_logprobs::TopLogprobs;
use layerstream_planner::memory::HiddenPlacement;
use layerstream_planner::split::LayerPart;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

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

/// How captured activations reach the observer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CaptureMode {
    /// Every captured tensor is handed over whole (`on_capture`); on a GPU that is a copy
    /// to the host per point and micro-batch, so use it for small workloads and tests.
    Activations,
    /// Statistics accumulate where the backend computes (on the device for CUDA) and arrive
    /// once per layer and point (`on_statistics`).
    Statistics {
        /// Magnitude counted as an outlier value.
        threshold: f32,
        /// Points whose activations are also handed over whole (`on_capture`), to be saved.
        save: PointSet,
    },
}

/// A workload and what to observe of it.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Token ids, `(tokens,)`: sequence `s` at rows `sequences.span(s)`.
    pub token_ids: Vec<u32>,
    /// Per sequence, the position of its first delimiter token after position 0, for the
    /// attention-sink statistics (`analysis::massive_report::first_delimiters`); empty: none
    /// known (the mass on delimiters is 0).
    pub first_delimiters: Vec<Option<usize>>,
    /// The workload's sequences: one length (packed data) or each its own (per record).
    pub sequences: Sequences,
    /// Layers whose capture points are reported.
    pub capture_layers: BTreeSet<usize>,
    /// Which points of those layers.
    pub capture_points: Vec<CapturePoint>,
    /// How captures are delivered.
    pub capture_mode: CaptureMode,
    /// After the last layer.
    pub final_stage: FinalStage,
    /// With [`FinalStage::NextTokenNll`]: also the most likely next tokens at one position
    /// of each sequence ([`RunObserver::on_top_logprobs`]).
    pub top_logprobs: Option<TopLogprobs>,
    /// The output head split by vocabulary rows, this many on the device at a time (the
    /// plan's, when the whole head does not fit); `None`: the whole head.
    pub head_vocab_rows: Option<usize>,
    /// Tokens per micro-batch: whole sequences up to this many (at least one sequence).
    pub micro_batch_tokens: usize,
    /// Continue from saved hidden states instead of embedding the tokens.
    pub start: Option<StartPoint>,
    /// Hand the hidden states to the observer after every layer (checkpoints).
    pub checkpoint_hidden_states: bool,
    /// Where the workload's hidden states live (the plan's placement): on the device (CPU:
    /// in memory), in pinned host memory (GPU), or in a file in `spill_dir`, one
    /// micro-batch on the device at a time for the last two.
    pub hidden_placement: HiddenPlacement,
    /// Folder for workload-sized files when hidden states live on disk (the CPU backend
    /// also moves them there when they do not fit --ram); `None`: never on disk.
    pub spill_dir: Option<PathBuf>,
    /// Bytes the backend's regions may take (GPU: --vram less the context overhead; CPU:
    /// --ram); `None`: only the machine limits.
    pub memory_budget: Option<u64>,
    /// Layers that stream in parts (the plan's `split_layers`); the others run whole. The
    /// CPU backend also splits a layer on its own when its f32 weights do not fit --ram.
    pub split_layers: BTreeMap<usize, Vec<LayerPart>>,
}

/// Where a resumed run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPoint {
    /// The first layer to run.
    pub first_layer: usize,
    /// The hidden states entering it, `(tokens, hidden)`.
    pub hidden_states: StartHidden,
}

/// The hidden states entering a resumed run's first layer.
#[derive(Debug, Clone, PartialEq)]
pub enum StartHidden {
    /// In memory.
    Values(Vec<f32>),
    /// f32 little-endian values in a checkpoint file from `data_offset` on (read straight
    /// into wherever the run keeps its hidden states; they may not fit in memory).
    File {
        /// The checkpoint.
        path: PathBuf,
        /// Where the values start.
        data_offset: u64,
    },
}

impl StartHidden {
    /// How many values there are.
    pub fn len(&self) -> Result<usize> {
        match self {
            StartHidden::Values(values) => Ok(values.len()),
            StartHidden::File { path, data_offset } => {
                let bytes = std::fs::metadata(path)
                    .map_err(|e| RuntimeError::io("cannot read", path, e))?
                    .len();
                Ok((bytes.saturating_sub(*data_offset) / 4) as usize)
            }
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Copies them into `into`, which holds exactly as many values.
    pub fn fill(&self, into: &mut [f32]) -> Result<()> {
        match self {
            StartHidden::Values(values) => into.copy_from_slice(values),
            StartHidden::File { path, data_offset } => {
                let read_error = |e| RuntimeError::io("cannot read", path, e);
                let mut file = std::fs::File::open(path).map_err(read_error)?;
                file.seek(SeekFrom::Start(*data_offset))
                    .map_err(read_error)?;
                let mut bytes = vec![0u8; 4 << 20];
                for chunk in into.chunks_mut(bytes.len() / 4) {
                    let bytes = &mut bytes[..chunk.len() * 4];
                    file.read_exact(bytes).map_err(read_error)?;
                    for (value, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
                        *value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Memory a run's regions took (reserved against its budget), reported at each layer's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Most bytes reserved at once so far.
    pub peak_bytes: u64,
    /// The budget (`--vram` less the context overhead, or `--ram`); `None`: none given.
    pub budget_bytes: Option<u64>,
    /// Device memory (GPU) rather than host memory (CPU).
    pub device: bool,
}

/// Receives what the run produces. Every method has a default that ignores it.
pub trait RunObserver {
    /// Activations at `point` of `layer` for sequences `first_sequence..`:
    /// `values` is `(rows of those sequences, width)` ([`CaptureMode::Activations`]).
    fn on_capture(
        &mut self,
        _layer: usize,
        _point: CapturePoint,
        _first_sequence: usize,
        _values: &[f32],
        _width: usize,
    ) {
    }
    /// Statistics of `point` of `layer` over the whole workload ([`CaptureMode::Statistics`]).
    fn on_statistics(
        &mut self,
        _layer: usize,
        _point: CapturePoint,
        _statistics: &PointStatistics,
    ) {
    }
    /// The same, handing the statistics over (an observer that keeps them need not copy
    /// them); calls [`Self::on_statistics`] unless overridden.
    fn take_statistics(&mut self, layer: usize, point: CapturePoint, statistics: PointStatistics) {
        self.on_statistics(layer, point, &statistics);
    }
    /// Router decisions of MoE layer `layer` for sequences `first_sequence..`.
    fn on_router(&mut self, _layer: usize, _first_sequence: usize, _routing: &Routing) {}
    /// Attention-sink mass of `layer` for sequences `first_sequence..` (`attn_sinks`).
    fn on_attention_sinks(&mut self, _layer: usize, _first_sequence: usize, _mass: &SinkMass) {}
    /// Next-token NLL of sequences `first_sequence..`: each sequence's `len - 1` values
    /// (position `p` predicts token `p + 1`), back to back.
    fn on_next_token_nll(&mut self, _first_sequence: usize, _nll: &[f32]) {}
    /// The most likely next tokens (id, log-probability; most likely first) at the requested
    /// position of sequences `first_sequence..`, one list per sequence.
    fn on_top_logprobs(&mut self, _first_sequence: usize, _top: &[Vec<(u32, f32)>]) {}
    /// Logits of sequences `first_sequence..`: `(rows of those sequences, vocab)`.
    fn on_logits(&mut self, _first_sequence: usize, _logits: &[f32]) {}
    /// Whether the observer wants the hidden states after `layer` (a checkpoint is due);
    /// asked only when the request has `checkpoint_hidden_states`.
    fn wants_hidden_states(&mut self, _layer: usize) -> bool {
        false
    }
    /// The hidden states after `layer`, `(tokens, hidden)`, when wanted;
    /// called before `on_layer_done`. `in_file`: they are a mapped file (hidden states on
    /// disk), so copying them into memory may not be possible; the next layer changes them
    /// after this returns.
    fn on_hidden_states(&mut self, _layer: usize, _hidden_states: &[f32], _in_file: bool) {}
    /// Something about how the run goes that the person running it should see (hidden
    /// states moved to disk).
    fn on_notice(&mut self, _message: &str) {}
    /// The memory the run's regions took up to the end of `layer` (called before
    /// [`Self::on_layer_done`]).
    fn on_memory(&mut self, _layer: usize, _memory: MemoryUse) {}
    /// Layer `layer` finished for the whole workload (`layers_to_run` in all).
    fn on_layer_done(&mut self, _layer: usize, _layers_to_run: usize, _tokens: usize) {}
    /// The micro-batch was halved after an out-of-memory at `layer` (`reason`); the run goes on
    /// with micro-batches of `to` (from `from`) `unit`s: sequences for packed data, tokens for
    /// sequences of their own lengths.
    fn on_micro_batch_halved(
        &mut self,
        _layer: usize,
        (_from, _to, _unit): (usize, usize, &str),
        _reason: &str,
    ) {
    }
    /// `layer` is about to run in `parts` (it does not fit whole).
    fn on_layer_split(&mut self, _layer: usize, _parts: &[LayerPart]) {}
    /// A failure the observer met (a checkpoint that could not be written); the executor
    /// asks after every layer and stops with it, leaving finished layers as they are.
    fn take_failure(&mut self) -> Option<RuntimeError> {
        None
    }
}

impl RunRequest {
    /// The first delimiters of sequences `first_sequence..first_sequence + sequences`
    /// (`None` where none is known).
    pub fn delimiters(&self, first_sequence: usize, sequences: usize) -> Vec<Option<usize>> {
        (first_sequence..first_sequence + sequences)
            .map(|s| self.first_delimiters.get(s).copied().flatten())
            .zip(first_sequence..)
            .map(|(d, s)| d.filter(|&d| d < self.sequences.len_of(s)))
            .collect()
    }

    /// Sequences in the workload.
    pub fn num_sequences(&self) -> usize {
        self.sequences.count()
    }

    /// Tokens of the longest sequence (of every sequence, for packed data).
    pub fn seq_len(&self) -> usize {
        self.sequences.longest()
    }

    /// Tokens in the workload.
    pub fn tokens(&self) -> usize {
        self.sequences.tokens()
    }

    /// Checks the request against the model before anything runs.
    pub fn validate(&self, model: &Model) -> Result<()> {
        let spec = &model.spec;
        if self.sequences.count() == 0 || self.sequences.shortest() == 0 {
            return Err(RuntimeError::InvalidRequest(
                "the workload is empty: --num-samples and --seq-len must be at least 1".into(),
            ));
        }
        if self.token_ids.len() != self.sequences.tokens() {
            return Err(RuntimeError::InvalidRequest(format!(
                "{} token ids given for {} sequences of {} tokens in all",
                self.token_ids.len(),
                self.sequences.count(),
                self.sequences.tokens()
            )));
        }
        model.check_seq_len(self.sequences.longest())?;
        if self.final_stage == FinalStage::NextTokenNll && self.sequences.shortest() < 2 {
            return Err(RuntimeError::InvalidRequest(
                "scoring needs sequences of at least 2 tokens (each token is predicted from the ones before it)".into(),
            ));
        }
        if let Some(top) = &self.top_logprobs {
            let bad = top.positions.len() != self.sequences.count()
                || top
                    .positions
                    .iter()
                    .enumerate()
                    .any(|(s, &p)| p >= self.sequences.len_of(s));
            if bad || self.final_stage != FinalStage::NextTokenNll || top.k == 0 {
                return Err(RuntimeError::internal(
                    "top log-probabilities asked at positions outside the sequences".to_string(),
                ));
            }
        }
        if let Some(start) = &self.start {
            let expected = self.sequences.tokens() * spec.hidden_size;
            let given = start.hidden_states.len()?;
            if given != expected || start.first_layer > spec.num_layers {
                return Err(RuntimeError::InvalidRequest(format!(
                    "saved hidden states of {given} values cannot enter layer {} (expected {expected})",
                    start.first_layer
                )));
            }
        }
        if self.hidden_placement == HiddenPlacement::Disk && self.spill_dir.is_none() {
            return Err(RuntimeError::InvalidRequest(
                "hidden states on disk need a folder for them (spill_dir)".into(),
            ));
        }
        for (&layer, parts) in &self.split_layers {
            if layer >= spec.num_layers {
                return Err(RuntimeError::InvalidRequest(format!(
                    "layer {layer} cannot be split: the model has {} layers",
                    spec.num_layers
                )));
            }
            check_parts(spec, layer, parts)?;
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

    /// Tokens per micro-batch: at least the longest sequence, at most the workload.
    pub fn micro_batch(&self) -> usize {
        self.micro_batch_tokens
            .clamp(self.sequences.longest(), self.sequences.tokens().max(1))
    }

    /// Whether anything is captured as statistics or sinks (which need one sequence length).
    pub fn collects_statistics(&self) -> bool {
        !self.capture_layers.is_empty()
            && (matches!(self.capture_mode, CaptureMode::Statistics { .. })
                || self.capture_points.contains(&CapturePoint::AttnSinks))
    }

    /// The first layer to run.
    pub fn first_layer(&self) -> usize {
        self.start.as_ref().map_or(0, |s| s.first_layer)
    }

    /// How `layer` streams: its parts, or `[whole]`.
    pub fn parts(&self, layer: usize) -> Vec<LayerPart> {
        self.split_layers
            .get(&layer)
            .cloned()
            .unwrap_or_else(|| vec![LayerPart::Whole])
    }

    /// Whether `point` of `layer` is to be captured.
    pub fn captures(&self, layer: usize, point: CapturePoint) -> bool {
        self.capture_layers.contains(&layer) && self.capture_points.contains(&point)
    }
}

/// How the weights reached the device (CUDA backend).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferSummary {
    /// Bytes uploaded.
    pub bytes: u64,
    /// Seconds the copy engine spent on them, from events around each upload.
    pub copy_seconds: f64,
    /// Seconds the executor waited for the reader thread to fill a staging buffer.
    pub reader_wait_seconds: f64,
    /// Uploads: one per layer, one per part of a split layer.
    pub uploads: usize,
}

impl TransferSummary {
    /// Achieved host-to-device bandwidth in GB/s (10^9 bytes).
    pub fn gigabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.copy_seconds.max(1e-12) / 1e9
    }
}

/// What a finished run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// Weight uploads, on a GPU.
    pub transfer: Option<TransferSummary>,
    /// Most device bytes reserved at once for the run's regions (without the context
    /// overhead), on a GPU.
    pub peak_reserved_bytes: Option<u64>,
    /// f16 compute: what its overflow guard recomputed in f32 over the layers (and head) this
    /// run computed.
    pub f16_overflow: Option<F16Overflow>,
}

/// What the f16 path's overflow guard recomputed in f32: values beyond f16's range (65504)
/// are the outlier features a study looks for, so they are counted, never rounded to inf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct F16Overflow {
    /// GEMM output rows recomputed (a row counts once per GEMM it feeds).
    pub gemm_rows: u64,
    /// Attention calls' sequences recomputed (every head of the sequence).
    pub attention_sequences: u64,
}

impl F16Overflow {
    /// The two counts added.
    pub fn add(&mut self, other: F16Overflow) {
        self.gemm_rows += other.gemm_rows;
        self.attention_sequences += other.attention_sequences;
    }
}
