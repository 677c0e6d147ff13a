//! The layer-major loop, once for every backend: for each layer, each of its parts (the
//! whole layer, or attention then expert groups) is loaded once and every micro-batch of the
//! run's sequences goes through it; the micro-batch buffers are taken before a micro-batch's
//! hidden states change, so an out-of-memory there halves the micro-batch and the layer
//! continues from its first unprocessed sequence. Backends supply the steps
//! ([`LayerRunner`]).

use crate::allocation::{halve_micro_batch, is_out_of_memory};
use crate::error::Result;
use crate::executor::RunObserver;
use crate::sequences::Sequences;
use layerstream_planner::split::LayerPart;
use std::ops::Range;

/// A backend's steps of the layer-major loop.
pub(crate) trait LayerRunner {
    /// A layer part's weights where the backend computes (held while the part runs).
    type Weights;
    /// The buffers of one micro-batch.
    type Scratch;
    /// What a layer keeps across its parts and micro-batches (statistics, accumulator).
    type LayerState;
    /// Whether the micro-batch buffers are made again for every part (sized by the layer)
    /// rather than kept across parts and layers (sized by the largest layer).
    const SCRATCH_PER_PART: bool;

    /// How `layer` streams.
    fn parts(&mut self, layer: usize) -> Vec<LayerPart>;
    /// Starts `layer` (run as `parts`).
    fn begin_layer(&mut self, layer: usize, parts: &[LayerPart]) -> Result<Self::LayerState>;
    /// Brings `part` of `layer` where the backend computes.
    fn load_part(&mut self, layer: usize, part: &LayerPart) -> Result<Self::Weights>;
    /// The buffers of micro-batches of up to `rows` tokens (an out-of-memory error halves
    /// the micro-batch).
    fn make_scratch(&mut self, layer: usize, rows: usize) -> Result<Self::Scratch>;
    /// Runs `part` of `layer` on `batch`: `(first_sequence, sequences)`;
    /// `upcoming`: the sequences of the part's next micro-batch, if any (a backend may
    /// start moving their inputs meanwhile).
    #[allow(clippy::too_many_arguments)]
    fn run_micro_batch(
        &mut self,
        layer: usize,
        part: &LayerPart,
        weights: &Self::Weights,
        scratch: &mut Self::Scratch,
        state: &mut Self::LayerState,
        batch: (usize, usize),
        upcoming: Option<Range<usize>>,
        observer: &mut dyn RunObserver,
    ) -> Result<()>;
    /// Finishes `layer`: its results go to the observer.
    fn end_layer(
        &mut self,
        layer: usize,
        state: Self::LayerState,
        observer: &mut dyn RunObserver,
    ) -> Result<()>;
}

/// Runs `layers` over sequences `range` of `all`, in micro-batches of whole sequences up to
/// `micro_batch` tokens; returns the micro-batch the run ended with (after any halving).
pub(crate) fn run_layers<R: LayerRunner>(
    runner: &mut R,
    layers: Range<usize>,
    (all, sequences): (&Sequences, Range<usize>),
    mut micro_batch: usize,
    observer: &mut dyn RunObserver,
) -> Result<usize> {
    let mut scratch: Option<R::Scratch> = None;
    for layer in layers {
        crate::stop::check_stop()?;
        let parts = runner.parts(layer);
        if parts.len() > 1 {
            observer.on_layer_split(layer, &parts);
        }
        let mut state = runner.begin_layer(layer, &parts)?;
        for part in &parts {
            let weights = runner.load_part(layer, part)?;
            let mut next_sequence = sequences.start;
            while next_sequence < sequences.end {
                let buffers = match scratch.take() {
                    Some(buffers) => buffers,
                    None => match runner
                        .make_scratch(layer, all.largest_batch(sequences.clone(), micro_batch))
                    {
                        Ok(made) => made,
                        Err(error) if is_out_of_memory(&error) => {
                            let halved = halve_micro_batch(layer, micro_batch, &error, all)?;
                            // Packed data counts in sequences, records in tokens.
                            let (from, to, unit) = match all.uniform_len() {
                                Some(len) => (micro_batch / len, halved / len, "sequence"),
                                None => (micro_batch, halved, "token"),
                            };
                            observer.on_micro_batch_halved(
                                layer,
                                (from, to, unit),
                                &error.to_string(),
                            );
                            micro_batch = halved;
                            continue;
                        }
                        Err(error) => return Err(error),
                    },
                };
                let buffers = scratch.insert(buffers);
                while next_sequence < sequences.end {
                    crate::stop::check_stop()?;
                    let batch = all.batch_from(next_sequence, sequences.end, micro_batch);
                    let after = next_sequence + batch;
                    let upcoming = (after < sequences.end)
                        .then(|| after..after + all.batch_from(after, sequences.end, micro_batch));
                    runner.run_micro_batch(
                        layer,
                        part,
                        &weights,
                        buffers,
                        &mut state,
                        (next_sequence, batch),
                        upcoming,
                        observer,
                    )?;
                    next_sequence += batch;
                }
            }
            if R::SCRATCH_PER_PART {
                scratch = None;
            }
        }
        runner.end_layer(layer, state, observer)?;
    }
    Ok(micro_batch)
}
