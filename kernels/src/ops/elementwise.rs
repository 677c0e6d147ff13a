//! Elementwise operations (`elementwise.cu`).

use super::{check_len, grid_for, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::ELEMENTWISE;
use cudarc::driver::{CudaView, CudaViewMut};

/// The gated activation of a gated MLP, `act(gate, up)` elementwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GatedActivation {
    /// `silu(gate) * up`.
    Silu,
    /// GPT-OSS's `(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`, `g = min(gate, limit)`.
    ClampedSwiglu {
        /// The clamp.
        limit: f32,
        /// The sigmoid's slope.
        alpha: f32,
    },
}

impl GatedActivation {
    /// The kernels' `(clamped, limit, alpha)` arguments.
    fn arguments(self) -> (i32, f32, f32) {
        match self {
            GatedActivation::Silu => (0, 0.0, 0.0),
            GatedActivation::ClampedSwiglu { limit, alpha } => (1, limit, alpha),
        }
    }
}

/// `gate = act(gate, up)`.
pub fn gated_activation(
    gpu: &Gpu,
    gate: &mut CudaViewMut<f32>,
    up: &CudaView<f32>,
    activation: GatedActivation,
) -> Result<()> {
    let n = up.len();
    check_len("gated activation gate", gate, n)?;
    let n64 = n as u64;
    let (clamped, limit, alpha) = activation.arguments();
    launch!(
        gpu,
        ELEMENTWISE,
        "gated_activation_kernel",
        grid_for(n),
        gate,
        up,
        &n64,
        &clamped,
        &limit,
        &alpha
    )
}

/// `out = bf16(act(gate, up))`: the same values `gated_activation` then `f32_to_bf16` give.
pub fn gated_activation_to_bf16(
    gpu: &Gpu,
    gate: &CudaView<f32>,
    up: &CudaView<f32>,
    out: &mut CudaViewMut<u16>,
    activation: GatedActivation,
) -> Result<()> {
    let n = up.len();
    check_len("gated activation gate", gate, n)?;
    check_len("gated activation out", out, n)?;
    let n64 = n as u64;
    let (clamped, limit, alpha) = activation.arguments();
    launch!(
        gpu,
        ELEMENTWISE,
        "gated_activation_bf16_kernel",
        grid_for(n),
        gate,
        up,
        out,
        &n64,
        &clamped,
        &limit,
        &alpha
    )
}

/// `gate = act(gate, up)` and `out = bf16(gate)` in one pass: the values `gated_activation`
/// then `f32_to_bf16` give.
pub fn gated_activation_with_bf16(
    gpu: &Gpu,
    gate: &mut CudaViewMut<f32>,
    up: &CudaView<f32>,
    out: &mut CudaViewMut<u16>,
    activation: GatedActivation,
) -> Result<()> {
    let n = up.len();
    check_len("gated activation gate", gate, n)?;
    check_len("gated activation out", out, n)?;
    let n64 = n as u64;
    let (clamped, limit, alpha) = activation.arguments();
    launch!(
        gpu,
        ELEMENTWISE,
        "gated_activation_dual_kernel",
        grid_for(n),
        gate,
        up,
        out,
        &n64,
        &clamped,
        &limit,
        &alpha
    )
}

/// `gate (rows, cols) = act(gate, up)` and `out = f16(gate)` in one pass, with `guard`
/// (`half_guard::guard_len(rows)`, reset first) listing each row holding a value beyond f16's
/// range: the f16 path's guarded input of the next GEMM.
pub fn gated_activation_f16_guarded(
    gpu: &Gpu,
    gate: &mut CudaViewMut<f32>,
    up: &CudaView<f32>,
    out: &mut CudaViewMut<u16>,
    (rows, cols): (usize, usize),
    guard: &mut CudaViewMut<u32>,
    activation: GatedActivation,
) -> Result<()> {
    let n = rows * cols;
    check_len("gated activation gate", gate, n)?;
    check_len("gated activation up", up, n)?;
    check_len("gated activation out", out, n)?;
    let guard_len = super::half_guard::guard_len(rows);
    check_len("f16 guard", guard, guard_len)?;
    gpu.stream.memset_zeros(&mut guard.slice_mut(..guard_len))?;
    let (n64, cols_i, rows_i) = (n as u64, cols as i32, rows as i32);
    let (clamped, limit, alpha) = activation.arguments();
    launch!(
        gpu,
        ELEMENTWISE,
        "gated_activation_f16_guarded_kernel",
        grid_for(n),
        gate,
        up,
        out,
        &n64,
        &cols_i,
        &rows_i,
        guard,
        &clamped,
        &limit,
        &alpha
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

/// An activation applied to a gate in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    /// `sigmoid(x)`.
    Sigmoid,
    /// `silu(x) = x sigmoid(x)`.
    Silu,
}

/// `x = act(x)`.
pub fn gate_activation(gpu: &Gpu, x: &mut CudaViewMut<f32>, kind: GateKind) -> Result<()> {
    let n = x.len();
    let (n64, kind) = (n as u64, kind as i32);
    launch!(
        gpu,
        ELEMENTWISE,
        "gate_activation_kernel",
        grid_for(n),
        x,
        &n64,
        &kind
    )
}

/// `x *= gate`, elementwise.
pub fn multiply(gpu: &Gpu, x: &mut CudaViewMut<f32>, gate: &CudaView<f32>) -> Result<()> {
    let n = x.len();
    check_len("multiply gate", gate, n)?;
    let n64 = n as u64;
    launch!(
        gpu,
        ELEMENTWISE,
        "multiply_kernel",
        grid_for(n),
        x,
        gate,
        &n64
    )
}

/// `x += value`.
pub fn add_scalar(gpu: &Gpu, x: &mut CudaViewMut<f32>, value: f32) -> Result<()> {
    let n = x.len();
    let n64 = n as u64;
    launch!(
        gpu,
        ELEMENTWISE,
        "add_scalar_kernel",
        grid_for(n),
        x,
        &n64,
        &value
    )
}

/// Where one piece of a regrouping goes: input rows of `groups x group_width`, output rows
/// of `out_width`; columns `from .. from + width` of group `g` go to `to + g * width ..`.
#[derive(Debug, Clone, Copy)]
pub struct RegroupPiece {
    /// Groups per input row.
    pub groups: usize,
    /// Values per group.
    pub group_width: usize,
    /// Output row width.
    pub out_width: usize,
    /// First column within a group.
    pub from: usize,
    /// Columns per group.
    pub width: usize,
    /// First output column.
    pub to: usize,
}

/// Copies one piece of every row's groups of `input` into `out` (`rows` rows).
pub fn regroup(
    gpu: &Gpu,
    input: &CudaView<f32>,
    out: &mut CudaViewMut<f32>,
    rows: usize,
    piece: RegroupPiece,
) -> Result<()> {
    let p = piece;
    if p.from + p.width > p.group_width || p.to + p.groups * p.width > p.out_width {
        return Err(crate::error::KernelError::Unsupported(format!(
            "regroup: piece {p:?} outside its rows"
        )));
    }
    check_len("regroup input", input, rows * p.groups * p.group_width)?;
    check_len("regroup out", out, rows * p.out_width)?;
    let n = rows * p.groups * p.width;
    let n64 = n as u64;
    let [groups, group_width, out_width, from, width, to] =
        [p.groups, p.group_width, p.out_width, p.from, p.width, p.to].map(|v| v as i32);
    launch!(
        gpu,
        ELEMENTWISE,
        "regroup_kernel",
        grid_for(n),
        input,
        out,
        &n64,
        &groups,
        &group_width,
        &out_width,
        &from,
        &width,
        &to
    )
}
