//! `y = x W^T (+ b)` on the device, in the GEMM dtype of the weights.

use super::weights::MatrixRows;
use crate::error::{Result, RuntimeError};
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::{convert, elementwise};
use layerstream_kernels::{Gpu, gemm};

/// Space for bf16 copies of GEMM inputs, `(rows, widest input)`, taken with the
/// micro-batch's other buffers.
pub struct Bf16Scratch {
    buffer: CudaSlice<u16>,
}

impl Bf16Scratch {
    /// Wraps a buffer.
    pub fn new(buffer: CudaSlice<u16>) -> Self {
        Bf16Scratch { buffer }
    }

    /// Writes the bf16 copy of `x`'s first `n` elements into its first `n`.
    pub fn convert(&mut self, gpu: &Gpu, x: &CudaView<f32>, n: usize) -> Result<()> {
        let mut copy = self.first(n)?;
        convert::f32_to_bf16(gpu, &x.slice(..n), &mut copy)?;
        Ok(())
    }

    /// Its first `n` elements, for a GEMM input made in bf16 directly.
    pub fn first(&mut self, n: usize) -> Result<CudaViewMut<'_, u16>> {
        if self.buffer.len() < n {
            return Err(RuntimeError::internal(format!(
                "bf16 scratch of {} elements for {n} (a sizing bug)",
                self.buffer.len()
            )));
        }
        Ok(self.buffer.slice_mut(..n))
    }
}

/// `y (rows, out) = x (rows, in) @ w^T` for an input already in bf16 (`w` must be bf16).
pub fn linear_bf16_input(
    gpu: &Gpu,
    x_bf16: &CudaView<u16>,
    w: &MatrixRows,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
) -> Result<()> {
    let MatrixRows::Bf16(w) = w else {
        return Err(RuntimeError::internal(
            "a bf16 GEMM input with f32 weights (a dispatch bug)",
        ));
    };
    gemm::linear_bf16(gpu, x_bf16, w, y, rows, in_features, out_features)?;
    Ok(())
}

/// `y (rows, out) = x (rows, in) @ w^T (+ bias)`; `w` may be a block of rows (vocabulary chunks).
#[allow(clippy::too_many_arguments)]
pub fn linear(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &MatrixRows,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
    scratch: &mut Bf16Scratch,
) -> Result<()> {
    if w.is_bf16() {
        scratch.convert(gpu, x, rows * in_features)?;
    }
    linear_converted(
        gpu,
        x,
        w,
        bias,
        y,
        (rows, in_features, out_features),
        scratch,
    )
}

/// [`linear`] with `x`'s bf16 copy already in `scratch` when `w` is bf16 (consecutive GEMMs
/// of one input convert it once).
pub fn linear_converted(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &MatrixRows,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaViewMut<f32>,
    (rows, in_features, out_features): (usize, usize, usize),
    scratch: &mut Bf16Scratch,
) -> Result<()> {
    match w {
        MatrixRows::F32(w) => gemm::linear_f32(gpu, x, w, y, rows, in_features, out_features)?,
        MatrixRows::Bf16(w) => {
            let x_bf16 = scratch.first(rows * in_features)?;
            let x_bf16 = x_bf16.as_view();
            gemm::linear_bf16(gpu, &x_bf16, w, y, rows, in_features, out_features)?;
        }
    }
    if let Some(bias) = bias {
        elementwise::add_bias(gpu, y, &bias.as_view())?;
    }
    Ok(())
}
