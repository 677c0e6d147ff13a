//! Rotary embedding (`rope.cu`).

use super::{check_len, grid_for, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::ROPE;
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr};

/// Rotates the first `2 * inv_freq.len()` dimensions of every head of `x (rows, heads *
/// head_dim)`; row `r` is at position `r % seq_len`, or `positions[r]` when given (`(rows)`,
/// sequences of their own lengths); cos and sin times `attention_scaling`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    inv_freq: &CudaView<f32>,
    rows: usize,
    heads: usize,
    head_dim: usize,
    seq_len: usize,
    attention_scaling: f32,
    positions: Option<&CudaView<i32>>,
) -> Result<()> {
    let rotary_dim = 2 * inv_freq.len();
    check_len("rope x", x, rows * heads * head_dim)?;
    let mut _guard = None;
    let positions_ptr = match positions {
        None => 0,
        Some(positions) => {
            check_len("rope positions", positions, rows)?;
            let (pointer, guard) = positions.device_ptr(&gpu.stream);
            _guard = Some(guard);
            pointer
        }
    };
    let (rows_i, heads_i, head_dim_i, rotary_i, seq_i) = (
        rows as i32,
        heads as i32,
        head_dim as i32,
        rotary_dim as i32,
        seq_len as i32,
    );
    launch!(
        gpu,
        ROPE,
        "rope_kernel",
        grid_for(rows * heads * inv_freq.len()),
        x,
        inv_freq,
        &rows_i,
        &heads_i,
        &head_dim_i,
        &rotary_i,
        &seq_i,
        &attention_scaling,
        &positions_ptr
    )
}
