//! The f16 path's overflow guard (`half_guard.cu`): GEMM inputs rounded to f16 with every
//! row that holds a value beyond f16's range listed on the device, the listed rows of the
//! GEMM's output recomputed in f32 afterwards, weights converted with a count of values
//! beyond range. Nothing here waits for the device.

use super::convert::StoredDtype;
use super::{check_len, grid_for, launch};
use crate::error::{KernelError, Result};
use crate::gpu::Gpu;
use crate::sources::HALF_GUARD;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};

/// u32 elements of the guard buffer for GEMM inputs of up to `rows` rows: the count, the
/// listed rows, a flag per row.
pub fn guard_len(rows: usize) -> usize {
    1 + 2 * rows
}

/// Elements of the run's totals: GEMM rows recomputed, attention sequences recomputed,
/// weight values beyond f16's range.
pub const TOTALS: usize = 3;

/// `out (rows, cols) = f16(x (rows, cols))`, round to nearest even, listing in `guard` each
/// row with a finite value that became +-inf (the guard is reset first).
pub fn f32_to_f16_guarded(
    gpu: &Gpu,
    x: &CudaView<f32>,
    out: &mut CudaViewMut<u16>,
    (rows, cols): (usize, usize),
    guard: &mut CudaViewMut<u32>,
) -> Result<()> {
    let n = rows * cols;
    check_len("f16 guarded input", x, n)?;
    check_len("f16 guarded out", out, n)?;
    check_len("f16 guard", guard, guard_len(rows))?;
    gpu.stream
        .memset_zeros(&mut guard.slice_mut(..guard_len(rows)))?;
    let (n64, cols_i, rows_i) = (n as u64, cols as i32, rows as i32);
    launch!(
        gpu,
        HALF_GUARD,
        "f32_to_f16_guarded_kernel",
        grid_for(n),
        x,
        out,
        &n64,
        &cols_i,
        &rows_i,
        guard
    )
}

/// `out (n) = f16(input)` for a weight stored as `dtype` bytes (f32 or bf16), counting values
/// beyond f16's range in `totals[2]`.
pub fn weights_to_f16(
    gpu: &Gpu,
    input: &CudaView<u8>,
    dtype: StoredDtype,
    out: &mut CudaViewMut<u16>,
    totals: &mut CudaViewMut<u64>,
) -> Result<()> {
    let n = out.len();
    let element = match dtype {
        StoredDtype::F32 => 4,
        StoredDtype::Bf16 => 2,
        StoredDtype::F16 => {
            return Err(KernelError::Unsupported(
                "f16 weights are used as stored, not converted".into(),
            ));
        }
    };
    check_len("f16 weights input", input, n * element)?;
    check_len("f16 totals", totals, TOTALS)?;
    let (dtype_i, n64) = (dtype as i32, n as u64);
    launch!(
        gpu,
        HALF_GUARD,
        "f16_weights_kernel",
        grid_for(n),
        input,
        &dtype_i,
        out,
        &n64,
        totals
    )
}

/// Blocks of the fix-up: enough warps for a few rows; none of them does anything when the
/// guard lists no row.
const FIX_UP_BLOCKS: usize = 64;

/// The fix-ups' launch: warps over the output columns, at most [`FIX_UP_BLOCKS`] blocks.
fn fix_up_config(out_features: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            out_features.div_ceil(8).clamp(1, FIX_UP_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// For each row `guard` lists: `y[row] (out) = x[row] (in) . w^T` in f32 (`w (out, in)` f16
/// bits), replacing the f16 GEMM's row; the count is added to `totals[0]`.
pub fn f16_overflow_rows(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    (rows, in_features, out_features): (usize, usize, usize),
    guard: &CudaView<u32>,
    totals: &mut CudaViewMut<u64>,
) -> Result<()> {
    check_len("f16 fix-up input", x, rows * in_features)?;
    check_len("f16 fix-up weight", w, out_features * in_features)?;
    check_len("f16 fix-up out", y, rows * out_features)?;
    check_len("f16 guard", guard, guard_len(rows))?;
    check_len("f16 totals", totals, TOTALS)?;
    let (in_i, out_i) = (in_features as i32, out_features as i32);
    launch!(
        gpu,
        HALF_GUARD,
        "f16_overflow_rows_kernel",
        fix_up_config(out_features),
        x,
        w,
        y,
        &in_i,
        &out_i,
        guard,
        totals
    )
}

/// The experts' fix-up: `guard` lists tokens of `x (tokens, in)` (as
/// [`super::moe::gather_by_expert_f16_guarded`] wrote it); every assignment of a listed token
/// grouped in this expert's rows `rows` (of the grouped order, `positions (tokens * top_k)`)
/// gets `y[positions[a] - rows.start] (out) = x[token] . w^T` in f32, replacing the f16 GEMM's
/// row of `y (rows.len(), out)`; the rows recomputed are added to `totals[0]`.
#[allow(clippy::too_many_arguments)]
pub fn f16_overflow_expert_rows(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    (in_features, out_features): (usize, usize),
    guard: &CudaView<u32>,
    positions: &CudaView<u32>,
    top_k: usize,
    rows: std::ops::Range<usize>,
    totals: &mut CudaViewMut<u64>,
) -> Result<()> {
    let tokens = x.len() / in_features.max(1);
    check_len("f16 expert fix-up positions", positions, tokens * top_k)?;
    check_len("f16 expert fix-up weight", w, out_features * in_features)?;
    check_len("f16 expert fix-up out", y, rows.len() * out_features)?;
    check_len("f16 expert guard", guard, guard_len(tokens))?;
    check_len("f16 totals", totals, TOTALS)?;
    let (in_i, out_i, k_i) = (in_features as i32, out_features as i32, top_k as i32);
    let (start, n) = (rows.start as u32, rows.len() as u32);
    launch!(
        gpu,
        HALF_GUARD,
        "f16_overflow_expert_rows_kernel",
        fix_up_config(out_features),
        x,
        w,
        y,
        &in_i,
        &out_i,
        guard,
        positions,
        &k_i,
        &start,
        &n,
        totals
    )
}
