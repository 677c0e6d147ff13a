//! The f16 path's overflow totals on the device (`half_guard.cu`'s TOTALS): accumulated by
//! the guard's kernels without host synchronisation, read once per layer at its end (where
//! the statistics are read anyway) and reset.

use crate::error::{Result, RuntimeError};
use crate::executor::F16Overflow;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::CudaSlice;
use layerstream_kernels::ops::half_guard::TOTALS;

/// `(3)` u64 on the device: GEMM rows recomputed, attention sequences recomputed, weight
/// values beyond f16's range.
pub fn new_totals(gpu: &Gpu) -> Result<CudaSlice<u64>> {
    Ok(gpu.stream.alloc_zeros::<u64>(TOTALS)?)
}

/// Reads and resets `totals` after `what` (`layer 3`, `the output head`): the counts, or an
/// error when weights held values beyond f16's range (nothing computed with them is kept).
pub fn take_totals(gpu: &Gpu, totals: &mut CudaSlice<u64>, what: &str) -> Result<F16Overflow> {
    let values = gpu.stream.clone_dtoh(&*totals)?;
    gpu.stream.memset_zeros(totals)?;
    if values[2] > 0 {
        return Err(RuntimeError::InvalidRequest(format!(
            "{what}: {} weight values are beyond f16's range (65504), so --compute-dtype f16 cannot hold them; run with --compute-dtype f32 (or bf16 on a GPU with bf16 arithmetic)",
            values[2]
        )));
    }
    Ok(F16Overflow {
        gemm_rows: values[0],
        attention_sequences: values[1],
    })
}

/// The log line for a layer whose guard recomputed something, `None` for nothing.
pub fn notice(what: &str, counts: F16Overflow) -> Option<String> {
    (counts != F16Overflow::default()).then(|| {
        format!(
            "{what}: {} GEMM rows and {} attention sequences held values beyond f16's range and were recomputed in f32",
            counts.gemm_rows, counts.attention_sequences
        )
    })
}
