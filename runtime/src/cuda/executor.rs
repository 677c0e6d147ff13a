//! The layer-major loop on a GPU. The workload's hidden states live on the device; each
//! layer's weights are uploaded once and every micro-batch runs through them; statistics
//! accumulate on the device and cross to the host once per layer and capture point.

use super::CudaBackend;
use super::capture::{Accumulator, CudaCapture, download_statistics, statistics_accumulators};
use super::head_run::HeadRun;
use super::hidden::HiddenStates;
use super::layer::{DeviceMicroBatch, DeviceScratch, run_part};
use super::ops::{RaggedDevice, ragged_rows};
use super::staging::{
    LayerLayout, StagedLayer, StagingBuffer, part_layout, read_layers, staging_buffers,
};
use super::weights::{DeviceLayer, FreeStaging};
use super::{ComputeDtype, f16_overflow};
use crate::allocation::{Budget, Reservation};
use crate::capture::CapturePoint;
use crate::cpu::threads::default_thread_count;
use crate::error::{Result, RuntimeError};
use crate::executor::layer_loop::{LayerRunner, run_layers};
use crate::executor::{
    F16Overflow, FinalStage, MemoryUse, RunObserver, RunRequest, RunSummary, TransferSummary,
};
use crate::layer_end::{fill_initial_hidden_states, finish_layer, initial_hidden_states};
use crate::model::Model;
use crate::plan::{dominant_weight_dtype, layer_shapes};
use crate::timeline;
use crossbeam::channel::{Receiver, Sender, bounded};
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::result::memcpy_htod_async;
use layerstream_kernels::cudarc::driver::sys::CUevent_flags;
use layerstream_kernels::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtrMut};
use layerstream_planner::memory::{HiddenPlacement, LayerShapes};
use layerstream_planner::split::{LayerPart, needs_accumulator};
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs a validated request on the GPU.
pub fn run(
    model: &Model,
    request: &RunRequest,
    backend: &CudaBackend,
    observer: &mut dyn RunObserver,
) -> Result<RunSummary> {
    let mut summary = RunSummary::default();
    let gpu = &*backend.gpu;
    let spec = &model.spec;
    let compute = backend.compute_dtype(dominant_weight_dtype(model));
    let d = spec.hidden_size;
    let micro_batch = request.micro_batch();
    let tokens = request.tokens();
    let budget = Budget::new(request.memory_budget);
    let placement = request.hidden_placement;
    let all = &request.sequences;
    let batch_rows = all.largest_batch(0..all.count(), micro_batch);
    let batch_elements = batch_rows * d;
    // The device copies: the workload, or micro-batch slots (`HiddenStates`).
    let hidden_bytes = placement.device_rows(batch_rows, tokens) * d * 4;
    let _hidden_reservation =
        budget.reserve("the workload's hidden states", hidden_bytes as u64)?;
    // Embedding rows are gathered on the host from the mapped file: only the rows the
    // workload uses are read, instead of sending the whole table to the device.
    let mut hidden_states = match placement {
        HiddenPlacement::PinnedHost => {
            HiddenStates::pinned(gpu, tokens * d, batch_elements, |values| {
                fill_initial_hidden_states(model, request, values)
            })?
        }
        HiddenPlacement::Device | HiddenPlacement::Disk => {
            let on_disk = placement == HiddenPlacement::Disk;
            let initial = initial_hidden_states(model, request, on_disk)?;
            HiddenStates::new(gpu, initial, placement, batch_elements)?
        }
    };
    timeline::mark(|| "embeddings on the device".into());
    let inv_freq = gpu.stream.clone_htod(&spec.rope.inv_freq)?;
    let ragged = ragged_rows(gpu, &request.sequences, &budget)?;

    let layers_to_run = request.layers_to_run(spec.num_layers);
    let first_layer = request.first_layer();
    let shapes = layer_shapes(spec, request.seq_len());
    // The upload order: every layer whole, or its parts one after the other.
    let layouts = (first_layer..layers_to_run)
        .flat_map(|layer| request.parts(layer).into_iter().map(move |p| (layer, p)))
        .map(|(layer, part)| part_layout(&model.weights, spec, layer, &part))
        .collect::<Result<Vec<_>>>()?;
    let staging_bytes = layouts.iter().map(|l| l.bytes).max().unwrap_or(0);
    let mut ff_accumulator =
        match (first_layer..layers_to_run).any(|layer| needs_accumulator(&request.parts(layer))) {
            true => Some(feed_forward_accumulator(
                gpu,
                request,
                &budget,
                (tokens * d, hidden_bytes as u64, batch_elements),
            )?),
            false => None,
        };
    let copy_stream = gpu.context.new_stream()?;
    let mut transfers = TransferLog::default();
    let (free_tx, free_rx) = host_staging(gpu, staging_bytes)?;
    let (ready_tx, ready_rx) = bounded::<Result<StagedLayer>>(2);
    let _staging_reservation = budget.reserve(
        &format!("two staging buffers of {staging_bytes} bytes"),
        2 * staging_bytes as u64,
    )?;
    let (device_free_tx, device_free_rx) = device_staging(&copy_stream, staging_bytes)?;
    let copy_threads = std::thread::available_parallelism().map_or(4, |n| n.get().min(8));
    let uploads = Uploads {
        ready: ready_rx,
        free: free_tx,
        device_free: device_free_rx,
        copy_stream: &copy_stream,
    };
    let micro_batch = std::thread::scope(|scope| -> Result<usize> {
        // Moved in, so the reader's channels hang up when this closure returns, before the
        // scope waits for the reader: on an error (a stop request, a lost file) the reader
        // would otherwise wait for a free buffer forever.
        let uploads = uploads;
        scope.spawn(|| read_layers(&model.weights, &layouts, free_rx, ready_tx, copy_threads));
        let layers = (|| {
            let next = match layouts.is_empty() {
                true => None,
                false => Some(uploads.first(&mut transfers)?),
            };
            let mut runner = CudaRunner {
                half_totals: match compute {
                    ComputeDtype::F16 => Some(f16_overflow::new_totals(gpu)?),
                    _ => None,
                },
                f16_overflow: &mut summary.f16_overflow,
                gpu,
                model,
                request,
                budget: &budget,
                compute,
                shapes: &shapes,
                inv_freq: &inv_freq,
                ragged: ragged.as_ref().map(|r| (&r.positions, &r.offsets)),
                hidden_states: &mut hidden_states,
                ff_accumulator: &mut ff_accumulator,
                uploads: &uploads,
                device_free: &device_free_tx,
                transfers: &mut transfers,
                next,
                next_index: 1,
                upload_count: layouts.len(),
                layers_to_run,
            };
            run_layers(
                &mut runner,
                first_layer..layers_to_run,
                (&request.sequences, 0..request.num_sequences()),
                micro_batch,
                observer,
            )
        })();
        // The staging buffers are freed on the copy stream: the compute stream's last reads
        // of them finish first (also after an error).
        let synchronized = gpu.stream.synchronize();
        drop(uploads);
        let micro_batch = layers?;
        synchronized?;
        Ok(micro_batch)
    })?;
    drop(ff_accumulator);
    summary.transfer = Some(transfers.finish()?);

    if request.final_stage != FinalStage::None {
        let head = HeadRun {
            gpu,
            model,
            request,
            compute,
            budget: &budget,
        };
        if let Some(counts) = head.run(&mut hidden_states, micro_batch, observer)? {
            summary.f16_overflow.get_or_insert_default().add(counts);
        }
    }
    gpu.stream.synchronize()?;
    summary.peak_reserved_bytes = Some(budget.peak());
    Ok(summary)
}

/// The feed-forward output of layers whose experts are split over several parts, for the
/// workload, `(tokens, hidden)` placed like the hidden states (`sizes`: its elements, the
/// device bytes it takes, the elements of one micro-batch).
fn feed_forward_accumulator(
    gpu: &Gpu,
    request: &RunRequest,
    budget: &Arc<Budget>,
    (elements, device_bytes, batch_elements): (usize, u64, usize),
) -> Result<(Reservation, HiddenStates)> {
    let reservation = budget.reserve("the split layers' feed-forward accumulator", device_bytes)?;
    let states = HiddenStates::zeros(
        gpu,
        elements,
        request.hidden_placement,
        batch_elements,
        request.spill_dir.as_deref(),
        "accumulator.f32",
    )?;
    Ok((reservation, states))
}

/// The two pinned host staging buffers the reader thread fills, handed to it as free.
fn host_staging(
    gpu: &Gpu,
    staging_bytes: usize,
) -> Result<(Sender<StagingBuffer>, Receiver<StagingBuffer>)> {
    let (free_tx, free_rx) = bounded::<StagingBuffer>(2);
    for buffer in staging_buffers(&gpu.context, staging_bytes)? {
        free_tx.send(buffer).expect("receiver alive");
    }
    Ok((free_tx, free_rx))
}

/// The two device staging buffers, allocated once on the copy stream: a layer (or part)
/// computes from one while the next is uploaded into the other.
fn device_staging(
    copy_stream: &Arc<CudaStream>,
    staging_bytes: usize,
) -> Result<(Sender<FreeStaging>, Receiver<FreeStaging>)> {
    let (device_free_tx, device_free_rx) = bounded::<FreeStaging>(2);
    for _ in 0..2 {
        // SAFETY: every upload writes the bytes its layout uses before any kernel reads them.
        let raw = unsafe { copy_stream.alloc::<u8>(staging_bytes.max(1)) }?;
        let free = FreeStaging {
            raw,
            last_read: None,
        };
        device_free_tx.send(free).expect("receiver alive");
    }
    Ok((device_free_tx, device_free_rx))
}

/// A layer in progress on the GPU.
struct CudaLayer {
    /// Device statistics of its captured points.
    accumulators: BTreeMap<CapturePoint, Accumulator>,
    /// Whether its experts are split over several parts (they add into the accumulator).
    accumulates: bool,
}

/// The GPU's steps of the layer-major loop (`executor/layer_loop.rs`).
struct CudaRunner<'a, 'u> {
    gpu: &'a Gpu,
    model: &'a Model,
    request: &'a RunRequest,
    budget: &'a Arc<Budget>,
    compute: ComputeDtype,
    shapes: &'a [LayerShapes],
    /// RoPE inverse frequencies on the device.
    inv_freq: &'a CudaSlice<f32>,
    /// Sequences of their own lengths: the workload's row positions and offsets.
    ragged: Option<(&'a CudaSlice<i32>, &'a CudaSlice<i32>)>,
    hidden_states: &'a mut HiddenStates,
    /// The split layers' feed-forward accumulator, `(num_sequences * seq_len, hidden)`.
    ff_accumulator: &'a mut Option<(Reservation, HiddenStates)>,
    uploads: &'a Uploads<'u>,
    device_free: &'a Sender<FreeStaging>,
    transfers: &'a mut TransferLog,
    /// The upload in flight: the next part's device bytes, their event and layout.
    next: Option<(CudaSlice<u8>, CudaEvent, LayerLayout)>,
    next_index: usize,
    upload_count: usize,
    layers_to_run: usize,
    /// f16 compute: the overflow totals of the layer running (`f16_overflow.rs`).
    half_totals: Option<CudaSlice<u64>>,
    /// Their sum over the layers run.
    f16_overflow: &'a mut Option<F16Overflow>,
}

impl LayerRunner for CudaRunner<'_, '_> {
    type Weights = DeviceLayer;
    type Scratch = DeviceScratch;
    type LayerState = CudaLayer;
    // Sized by the largest layer, made once (again only after a halving): per-upload
    // allocation fragmented the stream-ordered allocator.
    const SCRATCH_PER_PART: bool = false;

    fn parts(&mut self, layer: usize) -> Vec<LayerPart> {
        self.request.parts(layer)
    }

    fn begin_layer(&mut self, layer: usize, parts: &[LayerPart]) -> Result<CudaLayer> {
        let spec = &self.model.spec;
        Ok(CudaLayer {
            accumulators: statistics_accumulators(
                self.gpu,
                spec,
                self.request,
                layer,
                self.budget,
            )?,
            accumulates: needs_accumulator(parts),
        })
    }

    fn load_part(&mut self, layer: usize, _part: &LayerPart) -> Result<DeviceLayer> {
        self.model.weights.check_unchanged(layer)?;
        let (raw, uploaded, layout) = self
            .next
            .take()
            .ok_or_else(|| RuntimeError::internal(format!("layer {layer} was not uploaded")))?;
        let weights = DeviceLayer::from_staged(
            self.gpu,
            raw,
            &uploaded,
            self.device_free.clone(),
            &layout,
            self.compute,
            self.budget,
            self.half_totals.as_mut(),
        )?;
        detail(self.gpu, || format!("layer {layer}: weights ready"))?;
        // The next layer (or part) goes up on the copy stream while this one computes.
        if self.next_index < self.upload_count {
            self.next = Some(self.uploads.next(self.next_index, self.transfers)?);
            self.next_index += 1;
        }
        detail(self.gpu, || format!("layer {layer}: next upload issued"))?;
        Ok(weights)
    }

    fn make_scratch(&mut self, layer: usize, rows: usize) -> Result<DeviceScratch> {
        DeviceScratch::new(self.gpu, self.shapes, rows, self.budget, layer)
    }

    fn run_micro_batch(
        &mut self,
        layer: usize,
        part: &LayerPart,
        weights: &DeviceLayer,
        scratch: &mut DeviceScratch,
        state: &mut CudaLayer,
        (first_sequence, sequences): (usize, usize),
        upcoming: Option<Range<usize>>,
        observer: &mut dyn RunObserver,
    ) -> Result<()> {
        let (gpu, request) = (self.gpu, self.request);
        let d = self.model.spec.hidden_size;
        let all = &request.sequences;
        let tokens = all.rows(first_sequence..first_sequence + sequences);
        let range = tokens.start * d..tokens.end * d;
        let spans = all.slice(first_sequence..first_sequence + sequences);
        let ragged = self.ragged.map(|(positions, offsets)| RaggedDevice {
            positions: positions.slice(tokens.clone()),
            offsets: offsets.slice(first_sequence..first_sequence + sequences + 1),
        });
        let accumulates = state.accumulates;
        let mut hidden = self.hidden_states.begin(gpu, range.clone())?;
        let mut accumulator = match &mut *self.ff_accumulator {
            Some((_, states)) if accumulates => Some(states.begin(gpu, range.clone())?),
            _ => None,
        };
        let capture = CudaCapture {
            gpu,
            observer,
            request,
            layer,
            first_sequence,
            spans: &spans,
            offsets: self
                .ragged
                .map(|(_, offsets)| offsets.slice(first_sequence..first_sequence + sequences + 1)),
            accumulators: &mut state.accumulators,
        };
        let batch = DeviceMicroBatch {
            hidden: &mut hidden,
            batch: &spans,
            ragged,
            longest: all.longest(),
        };
        // The guard's kernels add to the layer's totals (f16 compute).
        scratch.half.totals = self.half_totals.take();
        let ran = run_part(
            gpu,
            &self.model.spec,
            layer,
            part,
            weights,
            self.inv_freq,
            batch,
            accumulator.as_mut(),
            scratch,
            capture,
        );
        self.half_totals = scratch.half.totals.take();
        ran?;
        // The next micro-batch's inputs go up while this one computes (pinned host memory).
        if let Some(next) = upcoming {
            let rows = all.rows(next);
            let next_range = rows.start * d..rows.end * d;
            self.hidden_states.prefetch(gpu, next_range.clone())?;
            if let (Some((_, states)), true) = (&mut *self.ff_accumulator, accumulates) {
                states.prefetch(gpu, next_range)?;
            }
        }
        if let (Some((_, states)), true) = (&mut *self.ff_accumulator, accumulates) {
            states.end(gpu, range.clone())?;
        }
        self.hidden_states.end(gpu, range)?;
        detail(gpu, || {
            format!("layer {layer}: sequences from {first_sequence}")
        })
    }

    fn end_layer(
        &mut self,
        layer: usize,
        state: CudaLayer,
        observer: &mut dyn RunObserver,
    ) -> Result<()> {
        let gpu = self.gpu;
        let statistics = download_statistics(gpu, self.request, &state.accumulators)?;
        drop(state);
        if let Some(totals) = &mut self.half_totals {
            let what = format!("layer {layer}");
            let counts = f16_overflow::take_totals(gpu, totals, &what)?;
            if let Some(line) = f16_overflow::notice(&what, counts) {
                observer.on_notice(&line);
            }
            self.f16_overflow.get_or_insert_default().add(counts);
        }
        detail(gpu, || format!("layer {layer}: statistics downloaded"))?;
        let hidden_states = &*self.hidden_states;
        let snapshot = || hidden_states.snapshot(gpu);
        finish_layer(
            self.model,
            observer,
            self.request,
            layer,
            self.layers_to_run,
            statistics,
            snapshot,
            default_thread_count(),
            MemoryUse {
                peak_bytes: self.budget.peak(),
                budget_bytes: self.budget.limit(),
                device: true,
            },
        )?;
        timeline::mark(|| format!("layer {layer} done (statistics on the host)"));
        Ok(())
    }
}

/// A timeline mark inside a layer; waits for the GPU first with `LAYERSTREAM_TIMELINE=sync`.
fn detail(gpu: &Gpu, event: impl FnOnce() -> String) -> Result<()> {
    if timeline::on() {
        if timeline::syncing() {
            gpu.stream.synchronize()?;
        }
        timeline::mark(event);
    }
    Ok(())
}

/// The upload side of the pipeline.
struct Uploads<'a> {
    ready: Receiver<Result<StagedLayer>>,
    free: Sender<StagingBuffer>,
    device_free: Receiver<FreeStaging>,
    copy_stream: &'a Arc<CudaStream>,
}

impl Uploads<'_> {
    /// Starts the first upload.
    fn first(
        &self,
        transfers: &mut TransferLog,
    ) -> Result<(CudaSlice<u8>, CudaEvent, LayerLayout)> {
        let first = upload_next(0, self, transfers)?;
        timeline::mark(|| "first layer read and its upload started".into());
        Ok(first)
    }

    fn next(
        &self,
        index: usize,
        transfers: &mut TransferLog,
    ) -> Result<(CudaSlice<u8>, CudaEvent, LayerLayout)> {
        upload_next(index, self, transfers)
    }
}

/// Takes the next staged layer (or part; `index` in the upload order) from the reader,
/// starts its upload on the copy stream and hands the staging buffer back (the reader waits
/// on the upload's event before refilling).
fn upload_next(
    index: usize,
    uploads: &Uploads,
    transfers: &mut TransferLog,
) -> Result<(CudaSlice<u8>, CudaEvent, LayerLayout)> {
    let Uploads {
        ready,
        free,
        device_free,
        copy_stream,
    } = uploads;
    let waiting = Instant::now();
    let staged = ready
        .recv()
        .map_err(|_| RuntimeError::internal("the weight reader thread stopped"))??;
    transfers.reader_wait += waiting.elapsed();
    if staged.index != index {
        return Err(RuntimeError::internal(format!(
            "the weight reader delivered upload {} where upload {index} was due",
            staged.index
        )));
    }
    let bytes = staged.layout.bytes;
    // One buffer is computed from, the other came back when the layer before it was dropped.
    let FreeStaging { mut raw, last_read } = device_free.try_recv().map_err(|_| {
        RuntimeError::internal(format!(
            "no device staging buffer is free for upload {index} ({})",
            staged.layout.part.owner(staged.layout.layer)
        ))
    })?;
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = {
        let source = &staged.buffer.pinned.as_slice()?[..bytes];
        // The copy stream first waits for the kernels that last read this buffer; the
        // timing starts after that wait.
        if let Some(last_read) = &last_read {
            copy_stream.wait(last_read)?;
        }
        let (destination, _recorded) = raw.device_ptr_mut(copy_stream);
        let start = copy_stream.record_event(timing)?;
        // SAFETY: `raw` holds `bytes` bytes; the pinned source stays alive and untouched
        // until the reader has waited on `upload_done` below.
        unsafe { memcpy_htod_async(destination, source, copy_stream.cu_stream()) }?;
        let end = copy_stream.record_event(timing)?;
        (start, end)
    };
    transfers.copies.push((start, end, bytes));
    // The compute stream waits on this before the layer's kernels read the buffer.
    let uploaded = copy_stream.record_event(None)?;
    let mut buffer = staged.buffer;
    buffer.upload_done = Some(copy_stream.record_event(None)?);
    // The reader may have finished already; then the buffer is simply dropped.
    let _ = free.send(buffer);
    Ok((raw, uploaded, staged.layout))
}

/// Measurements of the weight uploads.
#[derive(Default)]
struct TransferLog {
    copies: Vec<(CudaEvent, CudaEvent, usize)>,
    reader_wait: Duration,
}

impl TransferLog {
    fn finish(self) -> Result<TransferSummary> {
        let mut copy_seconds = 0.0;
        let mut bytes = 0;
        for (start, end, n) in &self.copies {
            copy_seconds += start.elapsed_ms(end)? as f64 / 1e3;
            bytes += *n as u64;
        }
        Ok(TransferSummary {
            bytes,
            copy_seconds,
            reader_wait_seconds: self.reader_wait.as_secs_f64(),
            uploads: self.copies.len(),
        })
    }
}
