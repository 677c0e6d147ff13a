//! Statistics accumulated on the device (`stats.cu`): per sequence and dimension, a
//! histogram of |x| per point, optionally the positions of values >= threshold.

use super::attention::RaggedRows;
use super::{check_len, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::STATS;
use cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig};

/// Bins of the |x| histogram (`HIST_BINS` in stats.cu).
pub const HISTOGRAM_BINS: usize = 1538;

/// Device accumulators for one capture point, `(total_sequences, width)` each unless noted.
pub struct StatsAccumulators {
    /// Largest |x|.
    pub max_abs: CudaSlice<f32>,
    /// Values with |x| >= threshold.
    pub count_ge: CudaSlice<u64>,
    /// Of those, the positive ones.
    pub count_pos_ge: CudaSlice<u64>,
    /// Sum of their |x|.
    pub sum_abs_ge: CudaSlice<f64>,
    /// NaN / infinite values.
    pub non_finite: CudaSlice<u64>,
    /// Sums of x, x^2, x^3, x^4: 4 planes of `(total_sequences, width)`.
    pub sums: CudaSlice<f64>,
    /// `(HISTOGRAM_BINS)`.
    pub histogram: CudaSlice<u64>,
    /// `(width, position_words)` bits of values >= threshold (one word when not kept).
    pub positions: CudaSlice<u32>,
    /// Words per dimension of `positions` (0: not kept).
    pub position_words: usize,
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
    pub count_pos_ge: Vec<u64>,
    /// `(total_sequences, width)`.
    pub sum_abs_ge: Vec<f64>,
    /// `(total_sequences, width)`.
    pub non_finite: Vec<u64>,
    /// `(4, total_sequences, width)`.
    pub sums: Vec<f64>,
    /// `(HISTOGRAM_BINS)`.
    pub histogram: Vec<u64>,
    /// `(width, position_words)`, empty when not kept.
    pub positions: Vec<u32>,
}

impl StatsAccumulators {
    /// Zeroed accumulators; `position_words` > 0 keeps the positions of values >= threshold
    /// for a workload of up to `32 * position_words` tokens.
    pub fn new(
        gpu: &Gpu,
        total_sequences: usize,
        width: usize,
        position_words: usize,
    ) -> Result<Self> {
        let n = total_sequences * width;
        Ok(StatsAccumulators {
            max_abs: gpu.stream.alloc_zeros(n)?,
            count_ge: gpu.stream.alloc_zeros(n)?,
            count_pos_ge: gpu.stream.alloc_zeros(n)?,
            sum_abs_ge: gpu.stream.alloc_zeros(n)?,
            non_finite: gpu.stream.alloc_zeros(n)?,
            sums: gpu.stream.alloc_zeros(4 * n)?,
            histogram: gpu.stream.alloc_zeros(HISTOGRAM_BINS)?,
            positions: gpu.stream.alloc_zeros((width * position_words).max(1))?,
            position_words,
            total_sequences,
            width,
        })
    }

    /// Adds a micro-batch `x (sequences * seq_len, width)` of sequences `first_sequence..`;
    /// with `ragged`, `x (rows, width)` of sequences of their own lengths (`ragged.offsets`
    /// the workload's from `first_sequence`, so position bits go to the workload's tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn accumulate(
        &mut self,
        gpu: &Gpu,
        x: &CudaView<f32>,
        sequences: usize,
        seq_len: usize,
        first_sequence: usize,
        threshold: f32,
        ragged: Option<RaggedRows>,
    ) -> Result<()> {
        let rows = ragged.map_or(sequences * seq_len, |r| r.rows);
        check_len("stats x", x, rows * self.width)?;
        let mut _offsets_guard = None;
        let offsets_ptr = match ragged {
            None => 0,
            Some(ragged) => {
                check_len("stats offsets", ragged.offsets, sequences + 1)?;
                let (pointer, guard) = ragged.offsets.device_ptr(&gpu.stream);
                _offsets_guard = Some(guard);
                pointer
            }
        };
        if self.position_words > 0 && ragged.is_none() {
            check_len(
                "stats positions",
                &self.positions,
                self.width * ((first_sequence + sequences) * seq_len).div_ceil(32),
            )?;
        }
        let (s_i, t_i, w_i, f_i, total_i, words_i) = (
            sequences as i32,
            seq_len as i32,
            self.width as i32,
            first_sequence as i32,
            self.total_sequences as i32,
            self.position_words as i32,
        );
        launch!(
            gpu,
            STATS,
            "stats_accumulate_kernel",
            LaunchConfig {
                // (32 dimensions, sequence) per block of STATS_WARPS = 8 warps.
                grid_dim: (self.width.div_ceil(32) as u32, sequences as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
            x,
            &s_i,
            &t_i,
            &w_i,
            &f_i,
            &total_i,
            &threshold,
            &mut self.max_abs,
            &mut self.count_ge,
            &mut self.count_pos_ge,
            &mut self.sum_abs_ge,
            &mut self.non_finite,
            &mut self.sums,
            &mut self.histogram,
            &mut self.positions,
            &words_i,
            &offsets_ptr
        )
    }

    /// Copies the accumulators to the host (synchronises the stream). Position bits are
    /// copied only for the dimensions with a value >= threshold (the others are zero): most
    /// of a point's bytes, and usually few dimensions.
    pub fn download(&self, gpu: &Gpu) -> Result<HostStats> {
        let count_ge: Vec<u64> = gpu.stream.clone_dtoh(&self.count_ge)?;
        let words = self.position_words;
        let mut positions = vec![0u32; self.width * words];
        if words > 0 {
            let mut marked = vec![false; self.width];
            for sequence in count_ge.chunks_exact(self.width) {
                for (m, &c) in marked.iter_mut().zip(sequence) {
                    *m |= c > 0;
                }
            }
            let dims: Vec<usize> = (0..self.width).filter(|&d| marked[d]).collect();
            if dims.len() * 4 > self.width {
                positions = gpu.stream.clone_dtoh(&self.positions)?;
            } else {
                for d in dims {
                    let row = self.positions.slice(d * words..(d + 1) * words);
                    gpu.stream
                        .memcpy_dtoh(&row, &mut positions[d * words..(d + 1) * words])?;
                }
            }
        }
        Ok(HostStats {
            max_abs: gpu.stream.clone_dtoh(&self.max_abs)?,
            count_ge,
            count_pos_ge: gpu.stream.clone_dtoh(&self.count_pos_ge)?,
            sum_abs_ge: gpu.stream.clone_dtoh(&self.sum_abs_ge)?,
            non_finite: gpu.stream.clone_dtoh(&self.non_finite)?,
            sums: gpu.stream.clone_dtoh(&self.sums)?,
            histogram: gpu.stream.clone_dtoh(&self.histogram)?,
            positions: if words > 0 { positions } else { Vec::new() },
        })
    }
}
