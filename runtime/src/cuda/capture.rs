//! Captures on the GPU: device statistics accumulators per layer and point (created before
//! the layer's first micro-batch, downloaded once at its end), massive-activation rows, and
//! copies to the host of what the observer asks for whole.

use super::moe::DeviceRouting;
use crate::allocation::{Budget, Reservation};
use crate::analysis::{MassiveFinds, PointStatistics};
use crate::capture::CapturePoint;
use crate::error::{Result, RuntimeError};
use crate::executor::{CaptureMode, RunObserver, RunRequest};
use crate::plan::point_width;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView};
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
            true => Some(gpu.stream.alloc_zeros(tokens)?),
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
pub(crate) struct Accumulator {
    stats: StatsAccumulators,
    threshold: f32,
    /// Massive activations found so far (`resid_post`).
    massive: Option<MassiveFinds>,
    /// `(tokens)`: per-token max |x| of a micro-batch (`resid_post`).
    row_maxima: Option<CudaSlice<f32>>,
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
    let maxima = gpu.stream.clone_dtoh(&row_maxima.slice(..tokens))?;
    let rows: Vec<usize> = (0..tokens)
        .filter(|&r| MassiveFinds::row_may_hold(maxima[r]))
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
        massive.scan_row(&row, first_sequence + r / seq_len, r % seq_len);
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
    /// Sequences in the micro-batch.
    pub sequences: usize,
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
        let accumulator = self.accumulators.get_mut(&point).ok_or_else(|| {
            RuntimeError::internal(format!(
                "no accumulator for {point} of layer {}: they are made before the layer's first micro-batch",
                self.layer
            ))
        })?;
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
        Ok(())
    }

    /// Keeps the MoE inputs `(rows, width)` of tokens holding massive activations.
    pub fn keep_moe_input(&mut self, values: &CudaView<f32>, width: usize) -> Result<()> {
        let Some(massive) = self
            .accumulators
            .get_mut(&CapturePoint::ResidPost)
            .and_then(|a| a.massive.as_mut())
        else {
            return Ok(());
        };
        let stream = &self.gpu.stream;
        massive.keep_inputs(self.first_sequence, self.request.seq_len, |r| {
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
