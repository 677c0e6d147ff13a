//! Captures on the GPU: device statistics accumulators per layer and point (created before
//! the layer's first micro-batch, downloaded once at its end), the residual stream's
//! magnitudes and massive-activation rows, and
//! copies to the host of what the observer asks for whole.

use super::moe::DeviceRouting;
use crate::allocation::{Budget, Reservation};
use crate::analysis::magnitudes::{SequenceMagnitudes, insert_top};
use crate::analysis::position_bits::PositionBits;
use crate::analysis::{MassiveFinds, PointStatistics};
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use crate::executor::{CaptureMode, RunObserver, RunRequest};
use crate::plan::point_width;
use crate::sequences::Sequences;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView};
use layerstream_kernels::ops::attention::RaggedRows;
use layerstream_kernels::ops::magnitudes::{self, MedianScratch};
use layerstream_kernels::ops::stats::{self, StatsAccumulators};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Device accumulators for the points of `layer` the request captures as statistics,
/// created before the layer's first micro-batch (with their reservation).
pub(crate) fn statistics_accumulators(
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
        let width = point_width(spec, layer, point);
        if width == 0 || !request.captures(layer, point) {
            continue;
        }
        let shape = point.statistics_shape(width);
        let bytes = shape.accumulator_bytes(request.num_sequences(), request.tokens());
        let reservation = budget.reserve(&format!("layer {layer}'s {point} statistics"), bytes)?;
        let tokens = request.tokens();
        let words = if shape.positions {
            PointStatistics::words_for(tokens)
        } else {
            0
        };
        let stats = StatsAccumulators::new(gpu, request.num_sequences(), width, words)?;
        let magnitudes = match shape.magnitudes {
            true => Some(DeviceMagnitudes {
                row_top: gpu.stream.alloc_zeros(3 * tokens)?,
                median: MedianScratch::new(gpu, request.num_sequences())?,
            }),
            false => None,
        };
        accumulators.insert(
            point,
            Accumulator {
                stats,
                threshold,
                massive: shape.magnitudes.then(MassiveFinds::default),
                magnitudes,
                _reservation: reservation,
            },
        );
    }
    Ok(accumulators)
}

/// The device buffers of the residual stream's magnitudes.
pub(crate) struct DeviceMagnitudes {
    /// `(tokens, 3)`: each token's three largest |x| of a micro-batch.
    row_top: CudaSlice<f32>,
    /// The median selection's working buffers.
    median: MedianScratch,
}

/// One point's device accumulators.
pub(crate) struct Accumulator {
    stats: StatsAccumulators,
    threshold: f32,
    /// Massive activations found so far (`resid_post`).
    massive: Option<MassiveFinds>,
    /// Magnitudes (`resid_post`).
    magnitudes: Option<DeviceMagnitudes>,
    _reservation: Reservation,
}

/// The device accumulators of a finished layer, as host statistics.
pub(crate) fn download_statistics(
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
                rows: request.sequences.clone(),
                width: accumulator.width,
                threshold: *threshold,
                max_abs: host.max_abs,
                count_ge: host.count_ge,
                count_pos_ge: host.count_pos_ge,
                sum_abs_ge: host.sum_abs_ge,
                non_finite: host.non_finite,
                sums: host.sums,
                histogram: host.histogram,
                positions: PositionBits::from_dense(
                    accumulator.width,
                    accumulator.position_words,
                    &host.positions,
                ),
                massive: massive.clone(),
            },
        );
    }
    Ok(statistics)
}

// The device histogram and the host's have the same bins.
const _: () = assert!(stats::HISTOGRAM_BINS == layerstream_planner::statistics::HISTOGRAM_BINS);

// The device's scratch is what the planner reserves.
const _: () = assert!(
    magnitudes::MEDIAN_SCRATCH_BYTES_PER_SEQUENCE as u64
        == layerstream_planner::statistics::MEDIAN_SCRATCH_BYTES_PER_SEQUENCE
        && magnitudes::MEDIAN_SCRATCH_SEQUENCES
            == layerstream_planner::statistics::MEDIAN_SCRATCH_SEQUENCES
);

/// Each sequence's median |x| of a micro-batch `values (tokens, width)` with rows `spans`:
/// one call for sequences of one length, one per sequence otherwise.
fn sequence_medians(
    gpu: &Gpu,
    values: &CudaView<f32>,
    width: usize,
    spans: &Sequences,
    device: &mut DeviceMagnitudes,
) -> Result<Vec<f32>> {
    if let Some(len) = spans.uniform_len() {
        let count = spans.count();
        return Ok(magnitudes::sequence_median_abs(
            gpu,
            values,
            count,
            len * width,
            &mut device.median,
        )?);
    }
    let mut medians = Vec::with_capacity(spans.count());
    for rows in spans.spans() {
        let one = values.slice(rows.start * width..rows.end * width);
        let median =
            magnitudes::sequence_median_abs(gpu, &one, 1, rows.len() * width, &mut device.median)?;
        medians.push(median[0]);
    }
    Ok(medians)
}

/// Looks for massive activations in a micro-batch `values (tokens, width)` of sequences
/// `first_sequence..` (rows `spans`): each token's top three |x| and each sequence's median
/// |x| on the device, then only the rows that can hold one are copied to the host and
/// scanned there (the CPU backend's code).
fn find_massive(
    gpu: &Gpu,
    values: &CudaView<f32>,
    (width, spans, first_sequence): (usize, &Sequences, usize),
    device: &mut DeviceMagnitudes,
    massive: &mut MassiveFinds,
) -> Result<()> {
    let tokens = values.len() / width;
    magnitudes::row_top3_abs(gpu, values, tokens, width, &mut device.row_top)?;
    let row_top = gpu.stream.clone_dtoh(&device.row_top.slice(..3 * tokens))?;
    let medians = sequence_medians(gpu, values, width, spans, device)?;
    for (s, &median) in medians.iter().enumerate() {
        let mut top = [0f32; 3];
        let rows = spans.span(s);
        for row in row_top[3 * rows.start..3 * rows.end].chunks_exact(3) {
            row.iter().for_each(|&m| insert_top(&mut top, m));
        }
        massive.add_sequence(SequenceMagnitudes {
            sequence: first_sequence + s,
            top,
            median,
        });
    }
    let rows: Vec<usize> = (0..tokens)
        .filter(|&r| MassiveFinds::row_may_hold(row_top[3 * r]))
        .collect();
    // Few rows: one copy each; many: the whole micro-batch at once.
    let whole = if rows.len() > 64 {
        Some(gpu.stream.clone_dtoh(values)?)
    } else {
        None
    };
    for r in rows {
        let row = match &whole {
            Some(all) => all[r * width..(r + 1) * width].to_vec(),
            None => gpu
                .stream
                .clone_dtoh(&values.slice(r * width..(r + 1) * width))?,
        };
        let sequence = spans.sequence_of(r);
        massive.scan_row(
            &row,
            first_sequence + sequence,
            r - spans.start(sequence),
            medians[sequence],
        );
    }
    Ok(())
}

/// Where one micro-batch's captures go on the GPU.
pub(crate) struct CudaCapture<'a> {
    /// The GPU.
    pub gpu: &'a Gpu,
    /// The run's observer.
    pub observer: &'a mut dyn RunObserver,
    /// The request (workload shape).
    pub request: &'a RunRequest,
    /// The layer.
    pub layer: usize,
    /// The micro-batch's first sequence in the workload.
    pub first_sequence: usize,
    /// The micro-batch's sequences, offsets from 0.
    pub spans: &'a Sequences,
    /// `(sequences + 1)`: the workload's row offsets from the micro-batch's first sequence
    /// (sequences of their own lengths; `None` for packed data).
    pub offsets: Option<CudaView<'a, i32>>,
    /// The layer's device accumulators, per point.
    pub accumulators: &'a mut BTreeMap<CapturePoint, Accumulator>,
}

impl CudaCapture<'_> {
    /// Copies `values (rows, width)` at `point` to the host for the observer.
    pub fn hand_over(
        &mut self,
        point: CapturePoint,
        values: &CudaView<f32>,
        width: usize,
    ) -> Result<()> {
        let host = self.gpu.stream.clone_dtoh(values)?;
        self.observer
            .on_capture(self.layer, point, self.first_sequence, &host, width);
        Ok(())
    }

    /// Adds `values (rows, width)` at `point` to the device statistics (and looks for
    /// massive activations where the point keeps them).
    pub fn accumulate(
        &mut self,
        point: CapturePoint,
        values: &CudaView<f32>,
        width: usize,
        threshold: f32,
    ) -> Result<()> {
        let spans = self.spans;
        let accumulator = self.accumulators.get_mut(&point).ok_or_else(|| {
            RuntimeError::internal(format!(
                "no accumulator for {point} of layer {}: they are made before the layer's first micro-batch",
                self.layer
            ))
        })?;
        debug_assert_eq!(accumulator.stats.width, width);
        let ragged = self.offsets.as_ref().map(|offsets| RaggedRows {
            offsets,
            rows: values.len() / width,
        });
        accumulator.stats.accumulate(
            self.gpu,
            values,
            spans.count(),
            self.request.seq_len(),
            self.first_sequence,
            threshold,
            ragged,
        )?;
        if let (Some(massive), Some(device)) =
            (&mut accumulator.massive, &mut accumulator.magnitudes)
        {
            find_massive(
                self.gpu,
                values,
                (width, spans, self.first_sequence),
                device,
                massive,
            )?;
        }
        Ok(())
    }

    /// Keeps the MoE inputs `(rows, width)` of tokens holding massive activations.
    pub fn keep_moe_input(&mut self, values: &CudaView<f32>, width: usize) -> Result<()> {
        let spans = self.spans;
        let Some(massive) = self
            .accumulators
            .get_mut(&CapturePoint::ResidPost)
            .and_then(|a| a.massive.as_mut())
        else {
            return Ok(());
        };
        let stream = &self.gpu.stream;
        massive.keep_inputs(self.first_sequence, spans, |r| {
            Ok::<_, RuntimeError>(stream.clone_dtoh(&values.slice(r * width..(r + 1) * width))?)
        })
    }

    /// Copies the router's decisions to the host for the observer.
    pub fn routing(&mut self, routing: &DeviceRouting) -> Result<()> {
        let host = routing.to_host(self.gpu)?;
        self.observer
            .on_router(self.layer, self.first_sequence, &host);
        Ok(())
    }
}
