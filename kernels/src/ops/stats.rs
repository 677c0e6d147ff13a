//! Statistics accumulated on the device (`stats.cu`): per sequence and dimension.

use super::{check_len, grid_for, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::STATS;
use cudarc::driver::{CudaSlice, CudaView};

/// Device accumulators for one capture point, `(total_sequences, width)` each.
pub struct StatsAccumulators {
    /// Largest |x|.
    pub max_abs: CudaSlice<f32>,
    /// Values with |x| >= threshold.
    pub count_ge: CudaSlice<u64>,
    /// NaN / infinite values.
    pub non_finite: CudaSlice<u64>,
    /// Sums of x, x^2, x^3, x^4: 4 planes of `(total_sequences, width)`.
    pub sums: CudaSlice<f64>,
    /// Sequences in the workload.
    pub total_sequences: usize,
    /// Hidden width.
    pub width: usize,
}

/// The accumulators copied back to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostStats {
    /// `(total_sequences, width)`.
    pub max_abs: Vec<f32>,
    /// `(total_sequences, width)`.
    pub count_ge: Vec<u64>,
    /// `(total_sequences, width)`.
    pub non_finite: Vec<u64>,
    /// `(4, total_sequences, width)`.
    pub sums: Vec<f64>,
}

impl StatsAccumulators {
    /// Zeroed accumulators.
    pub fn new(gpu: &Gpu, total_sequences: usize, width: usize) -> Result<Self> {
        let n = total_sequences * width;
        Ok(StatsAccumulators {
            max_abs: gpu.stream.alloc_zeros(n)?,
            count_ge: gpu.stream.alloc_zeros(n)?,
            non_finite: gpu.stream.alloc_zeros(n)?,
            sums: gpu.stream.alloc_zeros(4 * n)?,
            total_sequences,
            width,
        })
    }

    /// Adds a micro-batch `x (sequences * seq_len, width)` of sequences `first_sequence..`.
    pub fn accumulate(
        &mut self,
        gpu: &Gpu,
        x: &CudaView<f32>,
        sequences: usize,
        seq_len: usize,
        first_sequence: usize,
        threshold: f32,
    ) -> Result<()> {
        check_len("stats x", x, sequences * seq_len * self.width)?;
        let (s_i, t_i, w_i, f_i, total_i) = (
            sequences as i32,
            seq_len as i32,
            self.width as i32,
            first_sequence as i32,
            self.total_sequences as i32,
        );
        launch!(
            gpu,
            STATS,
            "stats_accumulate_kernel",
            grid_for(sequences * self.width),
            x,
            &s_i,
            &t_i,
            &w_i,
            &f_i,
            &total_i,
            &threshold,
            &mut self.max_abs,
            &mut self.count_ge,
            &mut self.non_finite,
            &mut self.sums
        )
    }

    /// Copies the accumulators to the host (synchronises the stream).
    pub fn download(&self, gpu: &Gpu) -> Result<HostStats> {
        Ok(HostStats {
            max_abs: gpu.stream.clone_dtoh(&self.max_abs)?,
            count_ge: gpu.stream.clone_dtoh(&self.count_ge)?,
            non_finite: gpu.stream.clone_dtoh(&self.non_finite)?,
            sums: gpu.stream.clone_dtoh(&self.sums)?,
        })
    }
}
