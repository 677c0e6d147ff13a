//! Elementwise operations (`elementwise.cu`).

use super::{check_len, grid_for, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::ELEMENTWISE;
use cudarc::driver::{CudaView, CudaViewMut};

/// `gate = silu(gate) * up`.
pub fn silu_mul(gpu: &Gpu, gate: &mut CudaViewMut<f32>, up: &CudaView<f32>) -> Result<()> {
    let n = up.len();
    check_len("silu_mul gate", gate, n)?;
    let n64 = n as u64;
    launch!(
        gpu,
        ELEMENTWISE,
        "silu_mul_kernel",
        grid_for(n),
        gate,
        up,
        &n64
    )
}

/// `out = bf16(silu(gate) * up)`: the same values `silu_mul` then `f32_to_bf16` give.
pub fn silu_mul_to_bf16(
    gpu: &Gpu,
    gate: &CudaView<f32>,
    up: &CudaView<f32>,
    out: &mut CudaViewMut<u16>,
) -> Result<()> {
    let n = up.len();
    check_len("silu_mul gate", gate, n)?;
    check_len("silu_mul out", out, n)?;
    let n64 = n as u64;
    launch!(
        gpu,
        ELEMENTWISE,
        "silu_mul_bf16_kernel",
        grid_for(n),
        gate,
        up,
        out,
        &n64
    )
}

/// `acc += x`.
pub fn add(gpu: &Gpu, acc: &mut CudaViewMut<f32>, x: &CudaView<f32>) -> Result<()> {
    let n = x.len();
    check_len("add acc", acc, n)?;
    let n64 = n as u64;
    launch!(gpu, ELEMENTWISE, "add_kernel", grid_for(n), acc, x, &n64)
}

/// `x = clamp(x, -limit, limit)`.
pub fn clamp(gpu: &Gpu, x: &mut CudaViewMut<f32>, limit: f32) -> Result<()> {
    let n = x.len();
    let n64 = n as u64;
    launch!(
        gpu,
        ELEMENTWISE,
        "clamp_kernel",
        grid_for(n),
        x,
        &n64,
        &limit
    )
}

/// `y (rows, width) += bias (width)`.
pub fn add_bias(gpu: &Gpu, y: &mut CudaViewMut<f32>, bias: &CudaView<f32>) -> Result<()> {
    let n = y.len();
    let (n64, width) = (n as u64, bias.len() as i32);
    launch!(
        gpu,
        ELEMENTWISE,
        "add_bias_kernel",
        grid_for(n),
        y,
        bias,
        &n64,
        &width
    )
}
