//! What every backend does at a layer's end (statistics finished, massive activations
//! attributed, results to the observer, hidden-state checkpoints) and where a run's hidden
//! states start (embeddings or a checkpoint).

use crate::analysis::PointStatistics;
use crate::analysis::attribution::attribute_massive;
use crate::capture::CapturePoint;
use crate::error::Result;
use crate::executor::{FinalStage, MemoryUse, RunObserver, RunRequest};
use crate::model::Model;
use crate::workload_buffer::WorkloadBuffer;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Everything the observer is told once a layer is done; stops the run on its failure.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_layer<'a>(
    model: &Model,
    observer: &mut dyn RunObserver,
    request: &RunRequest,
    layer: usize,
    layers_to_run: usize,
    mut statistics: BTreeMap<CapturePoint, PointStatistics>,
    hidden_states: impl FnOnce() -> Result<HiddenSnapshot<'a>>,
    threads: usize,
    memory: MemoryUse,
) -> Result<()> {
    for point in statistics.values_mut() {
        point.finish();
    }
    if let Some(massive) = statistics
        .get_mut(&CapturePoint::ResidPost)
        .and_then(|s| s.massive.as_mut())
    {
        attribute_massive(&model.weights, &model.spec, layer, massive, threads)?;
    }
    for (point, stats) in statistics {
        observer.take_statistics(layer, point, stats);
    }
    // After the model's last layer an analysis needs no hidden states (nothing comes after
    // it); scoring keeps them for the head.
    let nothing_after =
        layer + 1 == model.spec.num_layers && request.final_stage == FinalStage::None;
    if request.checkpoint_hidden_states && !nothing_after && observer.wants_hidden_states(layer) {
        let snapshot = hidden_states()?;
        observer.on_hidden_states(layer, &snapshot.values, snapshot.in_file);
    }
    observer.on_memory(layer, memory);
    observer.on_layer_done(layer, layers_to_run, request.tokens());
    match observer.take_failure() {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// The hidden states after a layer, for a checkpoint.
pub(crate) struct HiddenSnapshot<'a> {
    /// Borrowed where they live on the host, copied from the device otherwise.
    pub values: Cow<'a, [f32]>,
    /// They are a mapped file.
    pub in_file: bool,
}

impl<'a> HiddenSnapshot<'a> {
    /// A snapshot of a host buffer.
    pub fn of(buffer: &'a WorkloadBuffer) -> Self {
        HiddenSnapshot {
            values: Cow::Borrowed(buffer.as_slice()),
            in_file: buffer.on_disk(),
        }
    }
}

/// The host buffer a run's hidden states start in: on disk in `request.spill_dir` when
/// `on_disk`, in memory otherwise; filled with the embeddings, or the start point's states.
pub(crate) fn initial_hidden_states(
    model: &Model,
    request: &RunRequest,
    on_disk: bool,
) -> Result<WorkloadBuffer> {
    let len = request.tokens() * model.spec.hidden_size;
    let spill = request.spill_dir.as_deref().filter(|_| on_disk);
    let mut buffer = WorkloadBuffer::zeros_in(spill, "hidden_states.f32", len)?;
    fill_initial_hidden_states(model, request, buffer.as_mut_slice())?;
    Ok(buffer)
}

/// Writes the hidden states the run starts from into `values (tokens, hidden)`: the
/// embedding rows of the workload's tokens, or the checkpoint's states.
pub(crate) fn fill_initial_hidden_states(
    model: &Model,
    request: &RunRequest,
    values: &mut [f32],
) -> Result<()> {
    match &request.start {
        Some(start) => start.hidden_states.fill(values),
        // Only the embedding rows the workload uses are read from the mapped file.
        None => model
            .weights
            .embed_tokens(model.embedding(), &request.token_ids, values),
    }
}
