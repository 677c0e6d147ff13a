//! `y = x W^T (+ b)` on the device, in the GEMM dtype of the weights.

use super::weights::{DeviceMatrix, MatrixRows};
use crate::error::Result;
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::{convert, elementwise};
use layerstream_kernels::{Gpu, KernelError, gemm};

/// Space for bf16 copies of GEMM inputs, grown on demand.
#[derive(Default)]
pub struct Bf16Scratch {
    buffer: Option<CudaSlice<u16>>,
}

impl Bf16Scratch {
    fn get(&mut self, gpu: &Gpu, n: usize) -> Result<&mut CudaSlice<u16>> {
        if self.buffer.as_ref().is_none_or(|b| b.len() < n) {
            self.buffer = Some(gpu.stream.alloc_zeros(n).map_err(KernelError::from)?);
        }
        Ok(self.buffer.as_mut().expect("just allocated"))
    }
}

/// `y (rows, out) = x (rows, in) @ w^T (+ bias)`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &DeviceMatrix,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
    scratch: &mut Bf16Scratch,
) -> Result<()> {
    linear_rows(
        gpu,
        x,
        &w.all(),
        y,
        rows,
        in_features,
        out_features,
        scratch,
    )?;
    if let Some(bias) = bias {
        elementwise::add_bias(gpu, y, &bias.as_view())?;
    }
    Ok(())
}

/// `y (rows, n) = x (rows, in) @ w_rows^T` for a block of weight rows (vocabulary chunks).
#[allow(clippy::too_many_arguments)]
pub fn linear_rows(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &MatrixRows,
    y: &mut CudaViewMut<f32>,
    rows: usize,
    in_features: usize,
    out_features: usize,
    scratch: &mut Bf16Scratch,
) -> Result<()> {
    match w {
        MatrixRows::F32(w) => gemm::linear_f32(gpu, x, w, y, rows, in_features, out_features)?,
        MatrixRows::Bf16(w) => {
            let x_bf16 = scratch.get(gpu, rows * in_features)?;
            let mut x_bf16 = x_bf16.slice_mut(..rows * in_features);
            convert::f32_to_bf16(gpu, &x.slice(..rows * in_features), &mut x_bf16)?;
            gemm::linear_bf16(
                gpu,
                &x_bf16.as_view(),
                w,
                y,
                rows,
                in_features,
                out_features,
            )?;
        }
    }
    Ok(())
}
