//! The layer-major loop on a GPU. The workload's hidden states live on the device; each
//! layer's weights are uploaded once and every micro-batch runs through them; statistics
//! accumulate on the device and cross to the host once per layer and capture point.

use super::CudaBackend;
use super::head::DeviceHead;
use super::hidden::HiddenStates;
use super::layer::{DeviceCaptureSink, DeviceMicroBatch, DeviceScratch, run_part};
use super::linear::Bf16Scratch;
use super::moe::DeviceRouting;
use super::staging::{
    LayerLayout, StagedLayer, StagingBuffer, part_layout, read_layers, staging_buffers,
};
use super::weights::{DeviceLayer, FreeStaging};
use crate::allocation::{Budget, Reservation, halve_micro_batch, is_out_of_memory};
use crate::analysis::{MassiveFinds, PointStatistics};
use crate::capture::CapturePoint;
use crate::cpu::threads::default_thread_count;
use crate::error::{Result, RuntimeError};
use crate::executor::{
    CaptureMode, FinalStage, RunObserver, RunRequest, RunSummary, TransferSummary, finish_layer,
    initial_hidden_states,
};
use crate::model::Model;
use crate::plan::{dominant_weight_dtype, layer_shapes, point_width};
use crate::timeline;
use crossbeam::channel::{Receiver, Sender, bounded};
use layerstream_kernels::cudarc::driver::CudaView;
use layerstream_kernels::cudarc::driver::result::memcpy_htod_async;
use layerstream_kernels::cudarc::driver::sys::CUevent_flags;
use layerstream_kernels::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtrMut};
use layerstream_kernels::ops::stats::{self, StatsAccumulators};
use layerstream_kernels::{Gpu, KernelError};
use layerstream_planner::memory;
use layerstream_planner::memory::HiddenPlacement;
use layerstream_planner::split::needs_accumulator;
use std::collections::BTreeMap;
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
    let (seq_len, d) = (request.seq_len, spec.hidden_size);
    let mut micro_batch = request.micro_batch();
    let tokens = request.num_sequences * seq_len;
    let budget = Budget::new(request.memory_budget);
    let placement = request.hidden_placement;
    let batch_elements = micro_batch * seq_len * d;
    let hidden_bytes = if placement.off_device() {
        batch_elements * 4
    } else {
        tokens * d * 4
    };
    let _hidden_reservation =
        budget.reserve("the workload's hidden states", hidden_bytes as u64)?;
    // Embedding rows are gathered on the host from the mapped file: only the rows the
    // workload uses are read, instead of sending the whole table to the device.
    let initial = initial_hidden_states(model, request, placement == HiddenPlacement::Disk)?;
    let mut hidden_states = HiddenStates::new(gpu, initial, placement, batch_elements)?;
    timeline::mark(|| "embeddings on the device".into());
    let inv_freq = gpu
        .stream
        .clone_htod(&spec.rope.inv_freq)
        .map_err(KernelError::from)?;

    let layers_to_run = request.layers_to_run(spec.num_layers);
    let first_layer = request.first_layer();
    let shapes = layer_shapes(spec);
    // The upload order: every layer whole, or its parts one after the other.
    let layouts = (first_layer..layers_to_run)
        .flat_map(|layer| request.parts(layer).into_iter().map(move |p| (layer, p)))
        .map(|(layer, part)| part_layout(&model.weights, spec, layer, &part))
        .collect::<Result<Vec<_>>>()?;
    let staging_bytes = layouts.iter().map(|l| l.bytes).max().unwrap_or(0);
    // The feed-forward output of layers whose experts are split over several parts, for the
    // workload, placed like the hidden states.
    let accumulates = |layer: usize| needs_accumulator(&request.parts(layer));
    let mut ff_accumulator = match (first_layer..layers_to_run).any(accumulates) {
        true => Some((
            budget.reserve(
                "the split layers' feed-forward accumulator",
                hidden_bytes as u64,
            )?,
            HiddenStates::zeros(
                gpu,
                tokens * d,
                placement,
                batch_elements,
                request.spill_dir.as_deref(),
                "accumulator.f32",
            )?,
        )),
        false => None,
    };
    let copy_stream = gpu.context.new_stream().map_err(KernelError::from)?;
    let mut transfers = TransferLog::default();
    let (free_tx, free_rx) = bounded::<StagingBuffer>(2);
    let (ready_tx, ready_rx) = bounded::<Result<StagedLayer>>(2);
    for buffer in staging_buffers(&gpu.context, staging_bytes)? {
        free_tx.send(buffer).expect("receiver alive");
    }
    // The two device staging buffers, allocated once: a layer (or part) computes from one
    // while the next is uploaded into the other.
    let _staging_reservation = budget.reserve(
        &format!("two staging buffers of {staging_bytes} bytes"),
        2 * staging_bytes as u64,
    )?;
    let (device_free_tx, device_free_rx) = bounded::<FreeStaging>(2);
    for _ in 0..2 {
        // SAFETY: every upload writes the bytes its layout uses before any kernel reads them.
        let raw =
            unsafe { copy_stream.alloc::<u8>(staging_bytes.max(1)) }.map_err(KernelError::from)?;
        let free = FreeStaging {
            raw,
            last_read: None,
        };
        device_free_tx.send(free).expect("receiver alive");
    }
    let copy_threads = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(8);
    let uploads = Uploads {
        ready: ready_rx,
        free: free_tx,
        device_free: device_free_rx,
        copy_stream: &copy_stream,
    };
    // The micro-batch buffers live across layers and parts; they are made again only after
    // an out-of-memory halved the micro-batch.
    let mut scratch: Option<DeviceScratch> = None;
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(|| read_layers(&model.weights, &layouts, free_rx, ready_tx, copy_threads));
        let mut next = if layouts.is_empty() {
            None
        } else {
            let first = uploads.next(0, &mut transfers)?;
            timeline::mark(|| "first layer read and its upload started".into());
            Some(first)
        };
        let mut next_index = 1;
        for layer in first_layer..layers_to_run {
            let parts = request.parts(layer);
            if parts.len() > 1 {
                observer.on_layer_split(layer, &parts);
            }
            let mut accumulators = statistics_accumulators(gpu, spec, request, layer, &budget)?;
            for part in &parts {
                let (raw, uploaded, layout) = next.take().expect("uploaded ahead");
                let weights = DeviceLayer::from_staged(
                    gpu,
                    raw,
                    &uploaded,
                    device_free_tx.clone(),
                    &layout,
                    compute,
                    &budget,
                )?;
                detail(gpu, || format!("layer {layer}: weights ready"))?;
                // The next layer (or part) goes up on the copy stream while this one computes.
                if next_index < layouts.len() {
                    next = Some(uploads.next(next_index, &mut transfers)?);
                    next_index += 1;
                }
                detail(gpu, || format!("layer {layer}: next upload issued"))?;
                let mut next_sequence = 0;
                while next_sequence < request.num_sequences {
                    // Every buffer of a micro-batch is taken before its hidden states change,
                    // so an out-of-memory here is retried with half the micro-batch, from this
                    // sequence on.
                    let rows = micro_batch * seq_len;
                    if scratch.is_none() {
                        match DeviceScratch::new(gpu, spec, &shapes, rows, &budget, layer) {
                            Ok(made) => scratch = Some(made),
                            Err(error) if is_out_of_memory(&error) => {
                                let halved =
                                    halve_micro_batch(layer, micro_batch, &error, seq_len)?;
                                observer.on_micro_batch_halved(
                                    layer,
                                    micro_batch,
                                    halved,
                                    &error.to_string(),
                                );
                                micro_batch = halved;
                                continue;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    let scratch = scratch.as_mut().expect("made above");
                    while next_sequence < request.num_sequences {
                        let sequences = micro_batch.min(request.num_sequences - next_sequence);
                        let range =
                            next_sequence * seq_len * d..(next_sequence + sequences) * seq_len * d;
                        let mut hidden = hidden_states.begin(gpu, range.clone())?;
                        let mut accumulator = match &mut ff_accumulator {
                            Some((_, states)) if accumulates(layer) => {
                                Some(states.begin(gpu, range.clone())?)
                            }
                            _ => None,
                        };
                        let mut sink = CudaSink {
                            gpu,
                            observer: &mut *observer,
                            request,
                            layer,
                            first_sequence: next_sequence,
                            sequences,
                            accumulators: &mut accumulators,
                        };
                        let batch = DeviceMicroBatch {
                            hidden: &mut hidden,
                            sequences,
                            seq_len,
                        };
                        run_part(
                            gpu,
                            spec,
                            layer,
                            part,
                            &weights,
                            &inv_freq,
                            batch,
                            accumulator.as_mut(),
                            scratch,
                            &mut sink,
                        )?;
                        if let (Some((_, states)), true) = (&mut ff_accumulator, accumulates(layer))
                        {
                            states.end(gpu, range.clone())?;
                        }
                        hidden_states.end(gpu, range)?;
                        detail(gpu, || {
                            format!("layer {layer}: sequences from {next_sequence}")
                        })?;
                        next_sequence += sequences;
                    }
                }
            }
            let statistics = download_statistics(gpu, request, &accumulators)?;
            drop(accumulators);
            detail(gpu, || format!("layer {layer}: statistics downloaded"))?;
            let snapshot = || hidden_states.snapshot(gpu);
            finish_layer(
                model,
                observer,
                request,
                layer,
                layers_to_run,
                statistics,
                snapshot,
                default_thread_count(),
            )?;
            timeline::mark(|| format!("layer {layer} done (statistics on the host)"));
        }
        Ok(())
    })?;
    // The staging buffers are freed on the copy stream: the compute stream's last reads of
    // them finish first.
    gpu.stream.synchronize().map_err(KernelError::from)?;
    drop(scratch);
    drop(ff_accumulator);
    drop(uploads);
    summary.transfer = Some(transfers.finish()?);

    if request.final_stage != FinalStage::None {
        let rows = micro_batch * seq_len;
        let head_bytes = memory::head_bytes(model.weights.inventory(), compute.gemm(), rows);
        let _head_reservation = budget.reserve("the output head", head_bytes)?;
        let head = DeviceHead::upload(gpu, model, compute)?;
        let mut scratch = Bf16Scratch::new(
            gpu.stream
                .alloc_zeros::<u16>(rows * d)
                .map_err(KernelError::from)?,
        );
        let batch_len = micro_batch * seq_len * d;
        for (batch_index, start) in (0..tokens * d).step_by(batch_len).enumerate() {
            let end = (start + batch_len).min(tokens * d);
            let rows = (end - start) / d;
            let first_sequence = batch_index * micro_batch;
            let batch = hidden_states.begin(gpu, start..end)?;
            let batch = batch.as_view();
            let ids = &request.token_ids[first_sequence * seq_len..first_sequence * seq_len + rows];
            match request.final_stage {
                FinalStage::NextTokenNll => {
                    let nll = head.next_token_nll(gpu, &batch, ids, seq_len, &mut scratch)?;
                    observer.on_next_token_nll(first_sequence, &nll);
                }
                FinalStage::Logits => {
                    let logits = head.logits(gpu, &batch, rows, &mut scratch)?;
                    observer.on_logits(first_sequence, &logits);
                }
                FinalStage::None => unreachable!(),
            }
        }
    }
    gpu.stream.synchronize().map_err(KernelError::from)?;
    summary.peak_reserved_bytes = Some(budget.peak());
    Ok(summary)
}

/// A timeline mark inside a layer; waits for the GPU first with `LAYERSTREAM_TIMELINE=sync`.
fn detail(gpu: &Gpu, event: impl FnOnce() -> String) -> Result<()> {
    if timeline::on() {
        if timeline::syncing() {
            gpu.stream.synchronize().map_err(KernelError::from)?;
        }
        timeline::mark(event);
    }
    Ok(())
}

/// Device accumulators for the points of `layer` the request captures as statistics,
/// created before the layer's first micro-batch (with their reservation).
fn statistics_accumulators(
    gpu: &Gpu,
    spec: &crate::arch::ModelSpec,
    request: &RunRequest,
    layer: usize,
    budget: &Arc<Budget>,
) -> Result<BTreeMap<CapturePoint, Accumulator>> {
    let CaptureMode::Statistics { threshold, .. } = request.capture_mode else {
        return Ok(BTreeMap::new());
    };
    let mut accumulators = BTreeMap::new();
    for &point in &request.capture_points {
        let width = point_width(spec, point);
        if width == 0 || !request.captures(layer, point) {
            continue;
        }
        let shape = point.statistics_shape(width);
        let bytes = shape.accumulator_bytes(request.num_sequences, request.seq_len);
        let reservation = budget.reserve(&format!("layer {layer}'s {point} statistics"), bytes)?;
        let tokens = request.num_sequences * request.seq_len;
        let words = if shape.positions {
            PointStatistics::words_for(tokens)
        } else {
            0
        };
        let stats = StatsAccumulators::new(gpu, request.num_sequences, width, words)?;
        let row_maxima = match shape.row_maxima {
            true => Some(gpu.stream.alloc_zeros(tokens).map_err(KernelError::from)?),
            false => None,
        };
        accumulators.insert(
            point,
            Accumulator {
                stats,
                threshold,
                massive: shape.row_maxima.then(MassiveFinds::default),
                row_maxima,
                _reservation: reservation,
            },
        );
    }
    Ok(accumulators)
}

/// One point's device accumulators.
struct Accumulator {
    stats: StatsAccumulators,
    threshold: f32,
    /// Massive activations found so far (`resid_post`).
    massive: Option<MassiveFinds>,
    /// `(tokens)`: per-token max |x| of a micro-batch (`resid_post`).
    row_maxima: Option<CudaSlice<f32>>,
    _reservation: Reservation,
}

/// The upload side of the pipeline.
struct Uploads<'a> {
    ready: Receiver<Result<StagedLayer>>,
    free: Sender<StagingBuffer>,
    device_free: Receiver<FreeStaging>,
    copy_stream: &'a Arc<CudaStream>,
}

impl Uploads<'_> {
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
        .map_err(|_| RuntimeError::InvalidRequest("the weight reader thread stopped".into()))??;
    transfers.reader_wait += waiting.elapsed();
    if staged.index != index {
        return Err(RuntimeError::InvalidRequest(format!(
            "the weight reader delivered upload {} where upload {index} was due",
            staged.index
        )));
    }
    let bytes = staged.layout.bytes;
    // One buffer is computed from, the other came back when the layer before it was dropped.
    let FreeStaging { mut raw, last_read } = device_free.try_recv().map_err(|_| {
        RuntimeError::InvalidRequest(format!(
            "no device staging buffer is free for upload {index} ({})",
            staged.layout.part.owner(staged.layout.layer)
        ))
    })?;
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = {
        let source = &staged.buffer.pinned.as_slice().map_err(KernelError::from)?[..bytes];
        // The copy stream first waits for the kernels that last read this buffer; the
        // timing starts after that wait.
        if let Some(last_read) = &last_read {
            copy_stream.wait(last_read).map_err(KernelError::from)?;
        }
        let (destination, _recorded) = raw.device_ptr_mut(copy_stream);
        let start = copy_stream
            .record_event(timing)
            .map_err(KernelError::from)?;
        // SAFETY: `raw` holds `bytes` bytes; the pinned source stays alive and untouched
        // until the reader has waited on `upload_done` below.
        unsafe { memcpy_htod_async(destination, source, copy_stream.cu_stream()) }
            .map_err(KernelError::from)?;
        let end = copy_stream
            .record_event(timing)
            .map_err(KernelError::from)?;
        (start, end)
    };
    transfers.copies.push((start, end, bytes));
    // The compute stream waits on this before the layer's kernels read the buffer.
    let uploaded = copy_stream.record_event(None).map_err(KernelError::from)?;
    let mut buffer = staged.buffer;
    buffer.upload_done = Some(copy_stream.record_event(None).map_err(KernelError::from)?);
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
            copy_seconds += start.elapsed_ms(end).map_err(KernelError::from)? as f64 / 1e3;
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

/// The device accumulators of a finished layer, as host statistics.
fn download_statistics(
    gpu: &Gpu,
    request: &RunRequest,
    accumulators: &BTreeMap<CapturePoint, Accumulator>,
) -> Result<BTreeMap<CapturePoint, PointStatistics>> {
    let mut statistics = BTreeMap::new();
    for (
        &point,
        Accumulator {
            stats: accumulator,
            threshold,
            massive,
            ..
        },
    ) in accumulators
    {
        let host = accumulator.download(gpu)?;
        statistics.insert(
            point,
            PointStatistics {
                sequences: accumulator.total_sequences,
                seq_len: request.seq_len,
                width: accumulator.width,
                threshold: *threshold,
                max_abs: host.max_abs,
                count_ge: host.count_ge,
                count_pos_ge: host.count_pos_ge,
                sum_abs_ge: host.sum_abs_ge,
                non_finite: host.non_finite,
                sums: host.sums,
                histogram: host.histogram,
                positions: host.positions,
                massive: massive.clone(),
            },
        );
    }
    Ok(statistics)
}

// The device histogram and the host's have the same bins.
const _: () = assert!(stats::HISTOGRAM_BINS == layerstream_planner::statistics::HISTOGRAM_BINS);

/// Looks for massive activations in a micro-batch `values (tokens, width)` of sequences
/// `first_sequence..`: per-token maxima on the device, then only the rows that can hold one
/// are copied to the host and scanned there (the CPU backend's code).
fn find_massive(
    gpu: &Gpu,
    values: &CudaView<f32>,
    width: usize,
    seq_len: usize,
    first_sequence: usize,
    row_maxima: &mut CudaSlice<f32>,
    massive: &mut MassiveFinds,
) -> Result<()> {
    let tokens = values.len() / width;
    stats::row_max_abs(gpu, values, tokens, width, row_maxima)?;
    let maxima = gpu
        .stream
        .clone_dtoh(&row_maxima.slice(..tokens))
        .map_err(KernelError::from)?;
    let rows: Vec<usize> = (0..tokens)
        .filter(|&r| MassiveFinds::row_may_hold(maxima[r]))
        .collect();
    // Few rows: one copy each; many: the whole micro-batch at once.
    let whole = if rows.len() > 64 {
        Some(gpu.stream.clone_dtoh(values).map_err(KernelError::from)?)
    } else {
        None
    };
    for r in rows {
        let row = match &whole {
            Some(all) => all[r * width..(r + 1) * width].to_vec(),
            None => gpu
                .stream
                .clone_dtoh(&values.slice(r * width..(r + 1) * width))
                .map_err(KernelError::from)?,
        };
        massive.scan_row(&row, first_sequence + r / seq_len, r % seq_len);
    }
    Ok(())
}

/// Delivers one layer's captures of one micro-batch, as the request asks.
struct CudaSink<'a> {
    gpu: &'a Gpu,
    observer: &'a mut dyn RunObserver,
    request: &'a RunRequest,
    layer: usize,
    first_sequence: usize,
    sequences: usize,
    accumulators: &'a mut BTreeMap<CapturePoint, Accumulator>,
}

impl DeviceCaptureSink for CudaSink<'_> {
    fn activation(
        &mut self,
        point: CapturePoint,
        values: &CudaView<f32>,
        width: usize,
    ) -> Result<()> {
        if !self.request.captures(self.layer, point) {
            return Ok(());
        }
        match self.request.capture_mode {
            CaptureMode::Activations => {
                let host = self
                    .gpu
                    .stream
                    .clone_dtoh(values)
                    .map_err(KernelError::from)?;
                self.observer
                    .on_capture(self.layer, point, self.first_sequence, &host, width);
            }
            CaptureMode::Statistics { threshold, save } => {
                if save.contains(point) {
                    let host = self
                        .gpu
                        .stream
                        .clone_dtoh(values)
                        .map_err(KernelError::from)?;
                    self.observer
                        .on_capture(self.layer, point, self.first_sequence, &host, width);
                }
                let accumulator = self
                    .accumulators
                    .get_mut(&point)
                    .expect("created before the layer's first micro-batch");
                debug_assert_eq!(accumulator.stats.width, width);
                accumulator.stats.accumulate(
                    self.gpu,
                    values,
                    self.sequences,
                    self.request.seq_len,
                    self.first_sequence,
                    threshold,
                )?;
                if let (Some(massive), Some(row_maxima)) =
                    (&mut accumulator.massive, &mut accumulator.row_maxima)
                {
                    find_massive(
                        self.gpu,
                        values,
                        width,
                        self.request.seq_len,
                        self.first_sequence,
                        row_maxima,
                        massive,
                    )?;
                }
            }
        }
        Ok(())
    }

    fn moe_input(&mut self, values: &CudaView<f32>, width: usize) -> Result<()> {
        let Some(massive) = self
            .accumulators
            .get_mut(&CapturePoint::ResidPost)
            .and_then(|a| a.massive.as_mut())
        else {
            return Ok(());
        };
        let stream = &self.gpu.stream;
        massive.keep_inputs(self.first_sequence, self.request.seq_len, |r| {
            stream
                .clone_dtoh(&values.slice(r * width..(r + 1) * width))
                .map_err(|e| RuntimeError::from(KernelError::from(e)))
        })
    }

    fn routing(&mut self, routing: &DeviceRouting) -> Result<()> {
        if self.request.captures(self.layer, CapturePoint::Router) {
            let host = routing.to_host(self.gpu)?;
            self.observer
                .on_router(self.layer, self.first_sequence, &host);
        }
        Ok(())
    }
}
