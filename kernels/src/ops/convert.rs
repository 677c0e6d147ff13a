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

/// What the layout kernels write: f32 values or bf16 bit patterns (`u16`).
pub trait MatrixElement: cudarc::driver::DeviceRepr {
    /// The kernels' `out_bf16` flag.
    const BF16: i32;
}

impl MatrixElement for f32 {
    const BF16: i32 = 0;
}

impl MatrixElement for u16 {
    const BF16: i32 = 1;
}

/// Every `stride`-th row from `offset` of an MXFP4 matrix, dequantized:
/// `out (out_rows, cols)` from `blocks (stored_rows, cols / 32, 16)` U8 and
/// `scales (stored_rows, cols / 32)` U8, exactly (every MXFP4 value is a bf16 value).
pub fn mxfp4_dequantize<T: MatrixElement>(
    gpu: &Gpu,
    blocks: &CudaView<u8>,
    scales: &CudaView<u8>,
    out: &mut CudaViewMut<T>,
    cols: usize,
    (stride, offset): (usize, usize),
) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(32) || stride == 0 {
        return Err(crate::error::KernelError::Unsupported(format!(
            "MXFP4 rows of {cols} values with row stride {stride}"
        )));
    }
    let stored_rows = blocks.len() / (cols / 2);
    let out_rows = (stored_rows.saturating_sub(offset)).div_ceil(stride);
    check_len("mxfp4 scales", scales, stored_rows * (cols / 32))?;
    check_len("mxfp4 out", out, out_rows * cols)?;
    let n = out_rows * (cols / 2);
    let (flag, rows64, cols_i, stride_i, offset_i) = (
        T::BF16,
        out_rows as u64,
        cols as i32,
        stride as i32,
        offset as i32,
    );
    launch!(
        gpu,
        CONVERT,
        "mxfp4_dequant_kernel",
        grid_for(n),
        blocks,
        scales,
        out,
        &flag,
        &rows64,
        &cols_i,
        &stride_i,
        &offset_i
    )
}

/// An FP8 matrix dequantized: `out (rows, cols)` from `values (rows, cols)` E4M3 bytes and
/// `scales (ceil(rows / block_rows), ceil(cols / block_cols))` f32, each value one f32
/// product (exact as transformers computes it), rounded once to bf16 for a bf16 `out`.
pub fn fp8_dequantize<T: MatrixElement>(
    gpu: &Gpu,
    values: &CudaView<u8>,
    scales: &CudaView<f32>,
    out: &mut CudaViewMut<T>,
    cols: usize,
    (block_rows, block_cols): (usize, usize),
) -> Result<()> {
    if cols == 0 || block_rows == 0 || block_cols == 0 {
        return Err(crate::error::KernelError::Unsupported(format!(
            "FP8 rows of {cols} values in blocks of {block_rows} x {block_cols}"
        )));
    }
    let rows = values.len() / cols;
    check_len(
        "fp8 scales",
        scales,
        rows.div_ceil(block_rows) * cols.div_ceil(block_cols),
    )?;
    check_len("fp8 out", out, rows * cols)?;
    let (flag, rows64, cols_i, block_rows_i, block_cols_i) = (
        T::BF16,
        rows as u64,
        cols as i32,
        block_rows as i32,
        block_cols as i32,
    );
    launch!(
        gpu,
        CONVERT,
        "fp8_dequant_kernel",
        grid_for(rows * cols),
        values,
        scales,
        out,
        &flag,
        &rows64,
        &cols_i,
        &block_rows_i,
        &block_cols_i
    )
}

/// Every `stride`-th column from `offset` of an in-major `(inputs, columns)` matrix stored as
/// `dtype` bytes, transposed into `out (outputs, inputs)` (an `(out, in)` weight).
pub fn in_major_columns<T: MatrixElement>(
    gpu: &Gpu,
    input: &CudaView<u8>,
    dtype: StoredDtype,
    out: &mut CudaViewMut<T>,
    (inputs, columns): (usize, usize),
    (stride, offset): (usize, usize),
) -> Result<()> {
    let element = if dtype == StoredDtype::F32 { 4 } else { 2 };
    check_len("in-major matrix", input, inputs * columns * element)?;
    if stride == 0 || offset >= columns.max(1) {
        return Err(crate::error::KernelError::Unsupported(format!(
            "columns {offset}, {offset} + {stride}, .. of a matrix of {columns} columns"
        )));
    }
    let outputs = (columns - offset).div_ceil(stride);
    check_len("in-major columns out", out, outputs * inputs)?;
    let config = cudarc::driver::LaunchConfig {
        grid_dim: (
            outputs.div_ceil(32).max(1) as u32,
            inputs.div_ceil(32).max(1) as u32,
            1,
        ),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    let (dtype_i, flag, inputs_i, columns_i, stride_i, offset_i) = (
        dtype as i32,
        T::BF16,
        inputs as i32,
        columns as i32,
        stride as i32,
        offset as i32,
    );
    launch!(
        gpu,
        CONVERT,
        "in_major_columns_kernel",
        config,
        input,
        &dtype_i,
        out,
        &flag,
        &inputs_i,
        &columns_i,
        &stride_i,
        &offset_i
    )
}

/// `out (n) = f32(input[offset + stride * i])` for a tensor stored as `dtype` bytes.
pub fn strided_to_f32(
    gpu: &Gpu,
    input: &CudaView<u8>,
    dtype: StoredDtype,
    out: &mut CudaViewMut<f32>,
    (stride, offset): (usize, usize),
) -> Result<()> {
    let n = out.len();
    let element = if dtype == StoredDtype::F32 { 4 } else { 2 };
    let needed = if n == 0 {
        0
    } else {
        offset + stride * (n - 1) + 1
    };
    check_len("strided input", input, needed * element)?;
    let (dtype_i, n64, stride_i, offset_i) = (dtype as i32, n as u64, stride as i32, offset as i32);
    launch!(
        gpu,
        CONVERT,
        "strided_to_f32_kernel",
        grid_for(n),
        input,
        &dtype_i,
        out,
        &n64,
        &stride_i,
        &offset_i
    )
}
