//! The residual stream's magnitudes on the device (`magnitudes.cu`): the three largest |x|
//! of every row, and the exact lower median of |x| over each sequence's values (a radix
//! selection in three passes over the values, integer counts only).

use super::{block_per_row, check_len, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::MAGNITUDES;
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};

/// The digits of the selection, high to low: (shift, bits) of the 31 bits of |x|.
const DIGITS: [(u32, u32); 3] = [(20, 11), (9, 11), (0, 9)];
/// Bins of the widest digit (`MAGNITUDE_DIGIT_BINS`).
const DIGIT_BINS: usize = 2048;
/// Threads per block of the histogram passes.
const HISTOGRAM_THREADS: u32 = 256;
/// Values each histogram block walks at least (fewer blocks for short sequences).
const VALUES_PER_BLOCK: usize = 16 * HISTOGRAM_THREADS as usize;
/// Blocks per sequence at most.
const MAX_BLOCKS_PER_SEQUENCE: usize = 64;
/// Threads of a pick block (`PICK_THREADS`); every digit has at least as many bins.
const PICK_THREADS: u32 = 256;
const _: () = assert!(DIGITS[2].1 >= 8);

/// Device bytes of [`MedianScratch`] per sequence.
pub const MEDIAN_SCRATCH_BYTES_PER_SEQUENCE: usize = DIGIT_BINS * 4 + 4 + 8 + 4;
/// Sequences a [`MedianScratch`] holds at most (more are selected in turns).
pub const MEDIAN_SCRATCH_SEQUENCES: usize = 4;

/// Working buffers of the median selection for up to `sequences` sequences at once.
pub struct MedianScratch {
    /// `(sequences, DIGIT_BINS)` counts of one pass.
    histogram: CudaSlice<u32>,
    /// `(sequences)`: the bits found so far.
    prefix: CudaSlice<u32>,
    /// `(sequences)`: the wanted rank inside the prefix.
    rank: CudaSlice<u64>,
    /// `(sequences)`: the medians of the last call.
    median: CudaSlice<f32>,
    /// Sequences it holds.
    pub sequences: usize,
}

impl MedianScratch {
    /// Buffers for `sequences` sequences (at most [`MEDIAN_SCRATCH_SEQUENCES`]).
    pub fn new(gpu: &Gpu, sequences: usize) -> Result<Self> {
        let n = sequences.clamp(1, MEDIAN_SCRATCH_SEQUENCES);
        Ok(MedianScratch {
            histogram: gpu.stream.alloc_zeros(n * DIGIT_BINS)?,
            prefix: gpu.stream.alloc_zeros(n)?,
            rank: gpu.stream.alloc_zeros(n)?,
            median: gpu.stream.alloc_zeros(n)?,
            sequences: n,
        })
    }
}

/// `out (rows, 3)`: the three largest finite |x| of each row of `x (rows, width)`, largest
/// first (0 for missing ones).
pub fn row_top3_abs(
    gpu: &Gpu,
    x: &CudaView<f32>,
    rows: usize,
    width: usize,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    check_len("row top-3 x", x, rows * width)?;
    check_len("row top-3 out", out, rows * 3)?;
    let (r_i, w_i) = (rows as i32, width as i32);
    launch!(
        gpu,
        MAGNITUDES,
        "row_top3_abs_kernel",
        block_per_row(rows, 256),
        x,
        &r_i,
        &w_i,
        out
    )
}

/// The lower median of the finite |x| of each of `sequences` consecutive blocks of
/// `per_sequence` values of `x` (torch.median's choice), copied to the host; as many
/// sequences at a time as `scratch` holds.
pub fn sequence_median_abs(
    gpu: &Gpu,
    x: &CudaView<f32>,
    sequences: usize,
    per_sequence: usize,
    scratch: &mut MedianScratch,
) -> Result<Vec<f32>> {
    check_len("median x", x, sequences * per_sequence)?;
    if per_sequence >= 1 << 32 {
        return Err(crate::error::KernelError::Unsupported(format!(
            "median of {per_sequence} values per sequence: the counts are 32-bit"
        )));
    }
    let mut medians = Vec::with_capacity(sequences);
    for first in (0..sequences).step_by(scratch.sequences) {
        let count = scratch.sequences.min(sequences - first);
        let values = x.slice(first * per_sequence..(first + count) * per_sequence);
        medians.extend(select_medians(gpu, &values, count, per_sequence, scratch)?);
    }
    Ok(medians)
}

/// [`sequence_median_abs`] for at most `scratch.sequences` sequences.
fn select_medians(
    gpu: &Gpu,
    x: &CudaView<f32>,
    sequences: usize,
    per_sequence: usize,
    scratch: &mut MedianScratch,
) -> Result<Vec<f32>> {
    let blocks = per_sequence
        .div_ceil(VALUES_PER_BLOCK)
        .clamp(1, MAX_BLOCKS_PER_SEQUENCE);
    let histogram_config = LaunchConfig {
        grid_dim: (blocks as u32, sequences as u32, 1),
        block_dim: (HISTOGRAM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let pick_config = LaunchConfig {
        grid_dim: (sequences as u32, 1, 1),
        block_dim: (PICK_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    gpu.stream.memset_zeros(&mut scratch.prefix)?;
    let (per_sequence_u64, sequences_i) = (per_sequence as u64, sequences as i32);
    let mut prefix_mask = 0u32;
    for (pass, &(shift, bits)) in DIGITS.iter().enumerate() {
        gpu.stream.memset_zeros(&mut scratch.histogram)?;
        let (shift_i, bits_i) = (shift as i32, bits as i32);
        launch!(
            gpu,
            MAGNITUDES,
            "magnitude_digit_histogram_kernel",
            histogram_config,
            x,
            &per_sequence_u64,
            &scratch.prefix,
            &prefix_mask,
            &shift_i,
            &bits_i,
            &mut scratch.histogram
        )?;
        let (first, last) = ((pass == 0) as i32, (pass == DIGITS.len() - 1) as i32);
        launch!(
            gpu,
            MAGNITUDES,
            "magnitude_digit_pick_kernel",
            pick_config,
            &scratch.histogram,
            &sequences_i,
            &shift_i,
            &bits_i,
            &first,
            &last,
            &mut scratch.prefix,
            &mut scratch.rank,
            &mut scratch.median
        )?;
        prefix_mask |= ((1u32 << bits) - 1) << shift;
    }
    Ok(gpu.stream.clone_dtoh(&scratch.median.slice(..sequences))?)
}
