//! GEMMs through cuBLAS: `y (rows, out) = x (rows, in) @ w^T` with `w (out, in)` row-major,
//! as transformers stores linear weights. In cuBLAS's column-major terms this is
//! `y^T (out, rows) = op_T(w as (in, out)) * x^T as (in, rows)`.

use crate::error::{KernelError, Result};
use crate::gpu::Gpu;
use cudarc::cublas::{result, sys};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use std::ffi::c_void;

fn check(
    rows: usize,
    in_features: usize,
    out_features: usize,
    x: usize,
    w: usize,
    y: usize,
) -> Result<()> {
    if x < rows * in_features || w < out_features * in_features || y < rows * out_features {
        return Err(KernelError::Unsupported(format!(
            "linear ({rows} x {in_features}) @ ({out_features} x {in_features})^T: buffers of {x}, {w}, {y} elements"
        )));
    }
    Ok(())
}

/// f32 GEMM (full f32 arithmetic: cuBLAS's default math mode uses no TF32).
pub fn linear_f32(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &CudaView<f32>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
) -> Result<()> {
    check(rows, in_features, out_features, x.len(), w.len(), y.len())?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = &gpu.stream;
    let (x_ptr, _x) = x.device_ptr(stream);
    let (w_ptr, _w) = w.device_ptr(stream);
    let (y_ptr, _y) = y.device_ptr_mut(stream);
    // SAFETY: dimensions checked against the buffers above; the handle is bound to `stream`.
    unsafe {
        result::sgemm(
            *gpu.blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            out_features as i32,
            rows as i32,
            in_features as i32,
            &alpha,
            w_ptr as *const f32,
            in_features as i32,
            x_ptr as *const f32,
            in_features as i32,
            &beta,
            y_ptr as *mut f32,
            out_features as i32,
        )?;
    }
    Ok(())
}

/// bf16 x bf16 -> f32 GEMM with f32 accumulation; `x_bf16` and `w_bf16` are bf16 bit patterns.
pub fn linear_bf16(
    gpu: &Gpu,
    x_bf16: &CudaView<u16>,
    w_bf16: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
) -> Result<()> {
    let shape = (rows, in_features, out_features);
    linear_16bit(
        gpu,
        sys::cudaDataType::CUDA_R_16BF,
        x_bf16,
        w_bf16,
        y,
        shape,
    )
}

/// f16 x f16 -> f32 GEMM with f32 accumulation (tensor cores from sm_70: the T4 path);
/// `x_f16` and `w_f16` are f16 bit patterns.
pub fn linear_f16(
    gpu: &Gpu,
    x_f16: &CudaView<u16>,
    w_f16: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
) -> Result<()> {
    let shape = (rows, in_features, out_features);
    linear_16bit(gpu, sys::cudaDataType::CUDA_R_16F, x_f16, w_f16, y, shape)
}

/// `y = x w^T` with both operands in the 16-bit type `operands`, f32 out and accumulation.
fn linear_16bit(
    gpu: &Gpu,
    operands: sys::cudaDataType,
    x: &CudaView<u16>,
    w: &CudaView<u16>,
    y: &mut CudaViewMut<f32>,
    (rows, in_features, out_features): (usize, usize, usize),
) -> Result<()> {
    check(rows, in_features, out_features, x.len(), w.len(), y.len())?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let stream = &gpu.stream;
    let (x_ptr, _x) = x.device_ptr(stream);
    let (w_ptr, _w) = w.device_ptr(stream);
    let (y_ptr, _y) = y.device_ptr_mut(stream);
    // SAFETY: as in linear_f32; the dtypes given match the buffers.
    unsafe {
        result::gemm_ex(
            *gpu.blas.handle(),
            sys::cublasOperation_t::CUBLAS_OP_T,
            sys::cublasOperation_t::CUBLAS_OP_N,
            out_features as i32,
            rows as i32,
            in_features as i32,
            (&alpha as *const f32).cast::<c_void>(),
            w_ptr as *const c_void,
            operands,
            in_features as i32,
            x_ptr as *const c_void,
            operands,
            in_features as i32,
            (&beta as *const f32).cast::<c_void>(),
            y_ptr as *mut c_void,
            sys::cudaDataType::CUDA_R_32F,
            out_features as i32,
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// One operand of [`batched_row_major`]: a row-major matrix at a device address, its row
/// stride, the distance between batch members (elements), and whether it is used transposed.
#[derive(Debug, Clone, Copy)]
pub struct Operand {
    /// Device address of the first member's first element.
    pub ptr: u64,
    /// Row stride (elements).
    pub ld: usize,
    /// Elements between batch members.
    pub stride: usize,
    /// `op(X) = X^T` (the stored matrix is `cols x rows` of the product's view).
    pub transposed: bool,
}

/// `C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C` for `batch` members, all f32
/// row-major. `tf32`: tensor cores with TF32 inputs (bf16 runs); otherwise full f32.
#[derive(Debug, Clone, Copy)]
pub struct BatchedGemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// Left operand.
    pub a: Operand,
    /// Right operand.
    pub b: Operand,
    /// Output (never transposed).
    pub c: Operand,
    /// Members.
    pub batch: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C's old values.
    pub beta: f32,
    /// TF32 tensor cores.
    pub tf32: bool,
}

/// Runs a [`BatchedGemm`]: as cuBLAS is column-major, `C^T = op(B)^T op(A)^T`.
///
/// # Safety
/// Every operand's address must be valid for `batch` members of its extent, and `c` may
/// overlap neither input.
pub unsafe fn batched_row_major(gpu: &Gpu, g: &BatchedGemm) -> Result<()> {
    use sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
    let compute = match g.tf32 {
        true => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        false => sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let f32_type = sys::cudaDataType::CUDA_R_32F;
    // SAFETY: the caller's contract; the handle is bound to the compute stream.
    unsafe {
        result::gemm_strided_batched_ex(
            *gpu.blas.handle(),
            op(g.b.transposed),
            op(g.a.transposed),
            g.n as i32,
            g.m as i32,
            g.k as i32,
            (&g.alpha as *const f32).cast::<c_void>(),
            g.b.ptr as *const c_void,
            f32_type,
            g.b.ld as i32,
            g.b.stride as i64,
            g.a.ptr as *const c_void,
            f32_type,
            g.a.ld as i32,
            g.a.stride as i64,
            (&g.beta as *const f32).cast::<c_void>(),
            g.c.ptr as *mut c_void,
            f32_type,
            g.c.ld as i32,
            g.c.stride as i64,
            g.batch as i32,
            compute,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}
