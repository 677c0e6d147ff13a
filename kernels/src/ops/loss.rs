//! Online log-sum-exp over vocabulary chunks (`loss.cu`).

use super::{block_per_row, check_len, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::LOSS;
use cudarc::driver::{CudaView, CudaViewMut};

/// Folds `logits (rows, chunk)` (vocabulary ids `first_vocab..first_vocab + chunk`) into the
/// running max / sum of exp per row and records each row's target logit (`u32::MAX`: none).
/// `running_max` starts at -inf, `running_sum` at 0.
#[allow(clippy::too_many_arguments)]
pub fn logsumexp_update(
    gpu: &Gpu,
    logits: &CudaView<f32>,
    rows: usize,
    chunk: usize,
    first_vocab: usize,
    targets: &CudaView<u32>,
    running_max: &mut CudaViewMut<f32>,
    running_sum: &mut CudaViewMut<f32>,
    target_logit: &mut CudaViewMut<f32>,
) -> Result<()> {
    check_len("logits", logits, rows * chunk)?;
    check_len("targets", targets, rows)?;
    let (rows_i, chunk_i, first_i) = (rows as i32, chunk as i32, first_vocab as i32);
    launch!(
        gpu,
        LOSS,
        "logsumexp_update_kernel",
        block_per_row(rows, 256),
        logits,
        &rows_i,
        &chunk_i,
        &first_i,
        targets,
        running_max,
        running_sum,
        target_logit
    )
}
