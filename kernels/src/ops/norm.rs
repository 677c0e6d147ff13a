//! RMSNorm and LayerNorm (`norm.cu`).

use super::{block_per_row, check_len, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::NORM;
use cudarc::driver::{CudaView, CudaViewMut};

fn threads_for(width: usize) -> u32 {
    (width.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// `y (rows, width) = rms_norm(x) * weight`.
pub fn rms_norm(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weight: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    eps: f32,
) -> Result<()> {
    let width = weight.len();
    check_len("rms_norm x", x, rows * width)?;
    check_len("rms_norm y", y, rows * width)?;
    let (rows_i, width_i) = (rows as i32, width as i32);
    launch!(
        gpu,
        NORM,
        "rms_norm_kernel",
        block_per_row(rows, threads_for(width)),
        x,
        weight,
        y,
        &rows_i,
        &width_i,
        &eps
    )
}

/// `x (rows, width) = rms_norm(x) * weight`, in place (per-head q/k norms, output norms).
pub fn rms_norm_in_place(
    gpu: &Gpu,
    x: &mut CudaViewMut<f32>,
    weight: &CudaView<f32>,
    rows: usize,
    eps: f32,
) -> Result<()> {
    let width = weight.len();
    check_len("rms_norm x", x, rows * width)?;
    let (rows_i, width_i) = (rows as i32, width as i32);
    launch!(
        gpu,
        NORM,
        "rms_norm_in_place_kernel",
        block_per_row(rows, threads_for(width)),
        x,
        weight,
        &rows_i,
        &width_i,
        &eps
    )
}

/// `y = (x - mean) / sqrt(var + eps) * weight (+ bias)`.
pub fn layer_norm(
    gpu: &Gpu,
    x: &CudaView<f32>,
    weight: &CudaView<f32>,
    bias: Option<&CudaView<f32>>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    eps: f32,
) -> Result<()> {
    let width = weight.len();
    check_len("layer_norm x", x, rows * width)?;
    check_len("layer_norm y", y, rows * width)?;
    let (rows_i, width_i, has_bias) = (rows as i32, width as i32, bias.is_some() as i32);
    let bias = bias.unwrap_or(weight);
    launch!(
        gpu,
        NORM,
        "layer_norm_kernel",
        block_per_row(rows, threads_for(width)),
        x,
        weight,
        bias,
        &has_bias,
        y,
        &rows_i,
        &width_i,
        &eps
    )
}
