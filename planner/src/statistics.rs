//! The device memory of one captured point's statistics accumulators, in one place so the
//! plan and the CUDA backend's reservations agree.

/// Bins of the |x| histogram: zero and values below 2^-24, 32 linear bins per octave from
/// 2^-24 to 2^24 (the exponent and the top five mantissa bits of the f32), and 2^24 up.
pub const HISTOGRAM_BINS: usize = 2 + 48 * 32;

/// Bytes per (sequence, dimension) accumulator entry: max (4), counts >= threshold, of them
/// positive, non-finite (24), sums of x..x^4 and of |x| >= threshold (40).
const BYTES_PER_ENTRY: u64 = 68;

/// Bytes per token of the three largest |x| of its row.
const ROW_TOP_BYTES: u64 = 12;
/// Device bytes per sequence of the median selection's scratch: a 2048-bin histogram of
/// u32 counts, the prefix (4), rank (8) and median (4).
pub const MEDIAN_SCRATCH_BYTES_PER_SEQUENCE: u64 = 2048 * 4 + 16;
/// Sequences the median scratch holds (more are selected in turns).
pub const MEDIAN_SCRATCH_SEQUENCES: usize = 4;

/// A captured point as the accumulators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapturedPoint {
    /// Its width.
    pub width: usize,
    /// Whether the positions of values >= threshold are kept (one bit per token and
    /// dimension: the outlier-feature points).
    pub positions: bool,
    /// Whether the residual stream's magnitudes are computed (the massive-activation point):
    /// each token's three largest |x| and each sequence's median |x|.
    pub magnitudes: bool,
}

impl CapturedPoint {
    /// Device bytes of its accumulators for a workload of `sequences` x `seq_len` tokens.
    pub fn accumulator_bytes(&self, sequences: usize, tokens: usize) -> u64 {
        let tokens = tokens as u64;
        let width = self.width as u64;
        let mut bytes = BYTES_PER_ENTRY * sequences as u64 * width + 8 * HISTOGRAM_BINS as u64;
        if self.positions {
            bytes += 4 * tokens.div_ceil(32) * width;
        }
        if self.magnitudes {
            let scratch_sequences = sequences.min(MEDIAN_SCRATCH_SEQUENCES) as u64;
            bytes += ROW_TOP_BYTES * tokens + MEDIAN_SCRATCH_BYTES_PER_SEQUENCE * scratch_sequences;
        }
        bytes
    }
}
