//! Dtype conversion and embedding gather (`convert.cu`).

use super::{block_per_row, check_len, grid_for, launch};
use crate::error::Result;
use crate::gpu::Gpu;
use crate::sources::CONVERT;
use cudarc::driver::{CudaView, CudaViewMut};

/// Storage dtype of a weight buffer (raw 16-bit patterns for bf16 / f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    /// f32.
    F32 = 0,
    /// bfloat16.
    Bf16 = 1,
    /// IEEE half.
    F16 = 2,
}

/// `out (n) = f32(input (n))` for bf16 or f16 input bits.
pub fn half_to_f32(
    gpu: &Gpu,
    dtype: StoredDtype,
    input: &CudaView<u16>,
    out: &mut CudaViewMut<f32>,
) -> Result<()> {
    let n = input.len();
    check_len("half_to_f32 out", out, n)?;
    let n64 = n as u64;
    match dtype {
        StoredDtype::Bf16 => launch!(
            gpu,
            CONVERT,
            "bf16_to_f32_kernel",
            grid_for(n),
            input,
            out,
            &n64
        ),
        StoredDtype::F16 => launch!(
            gpu,
            CONVERT,
            "f16_to_f32_kernel",
            grid_for(n),
            input,
            out,
            &n64
        ),
        StoredDtype::F32 => unreachable!("f32 needs no conversion"),
    }
}

/// `out (n) = bf16(input (n))`, round to nearest even.
pub fn f32_to_bf16(gpu: &Gpu, input: &CudaView<f32>, out: &mut CudaViewMut<u16>) -> Result<()> {
    let n = input.len();
    check_len("f32_to_bf16 out", out, n)?;
    let n64 = n as u64;
    launch!(
        gpu,
        CONVERT,
        "f32_to_bf16_kernel",
        grid_for(n),
        input,
        out,
        &n64
    )
}

/// `out (tokens, width) = table[ids]` for a `(vocab, width)` table stored as `dtype` bytes.
pub fn embedding_gather(
    gpu: &Gpu,
    table: &CudaView<u8>,
    dtype: StoredDtype,
    ids: &CudaView<u32>,
    out: &mut CudaViewMut<f32>,
    width: usize,
) -> Result<()> {
    let tokens = ids.len();
    check_len("embedding out", out, tokens * width)?;
    let (dtype_code, tokens_i, width_i) = (dtype as i32, tokens as i32, width as i32);
    launch!(
        gpu,
        CONVERT,
        "embedding_gather_kernel",
        block_per_row(tokens, 128),
        table,
        &dtype_code,
        ids,
        out,
        &tokens_i,
        &width_i
    )
}
