//! `y = x W^T (+ b)` on the device, in the GEMM dtype of the weights. f16 GEMMs carry the
//! overflow guard: rows of `x` holding values beyond f16's range are recomputed in f32 after
//! the GEMM, on the device (`half_guard.cu`).

use super::weights::MatrixRows;
use crate::error::{Result, RuntimeError};
use layerstream_kernels::cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use layerstream_kernels::ops::half_guard::{self, guard_len};
use layerstream_kernels::ops::{convert, elementwise};
use layerstream_kernels::{Gpu, gemm};

/// Space for 16-bit (bf16 or f16) copies of GEMM inputs, `(rows, widest input)` (also the
/// tensor-core attention's K and V), and the f16 path's overflow guard, taken with the
/// micro-batch's other buffers.
pub struct HalfScratch {
    buffer: CudaSlice<u16>,
    /// `(1 + 3 rows)`: `half_guard.cu`'s guard of the last f16 conversion (count, listed
    /// rows, a flag per row), then a flag per sequence for attention.
    guard: CudaSlice<u32>,
    /// The overflow totals (3) while an f16 part runs; `None` otherwise.
    pub totals: Option<CudaSlice<u64>>,
}

impl HalfScratch {
    /// Wraps the buffers (`guard`: the manifest's `HalfGuard`).
    pub fn new(buffer: CudaSlice<u16>, guard: CudaSlice<u32>) -> Self {
        HalfScratch {
            buffer,
            guard,
            totals: None,
        }
    }

    /// Rows the guard has room for.
    fn guard_rows(&self) -> usize {
        (self.guard.len().saturating_sub(1)) / 3
    }

    /// Writes the 16-bit copy of `x (rows, cols)` for weights like `w` into the first
    /// `rows * cols` elements; for f16 weights, the rows with values beyond f16's range are
    /// listed in the guard.
    pub fn convert(
        &mut self,
        gpu: &Gpu,
        x: &CudaView<f32>,
        (rows, cols): (usize, usize),
        w: &MatrixRows,
    ) -> Result<()> {
        let n = rows * cols;
        if !w.is_f16() {
            let mut copy = self.first(n)?;
            convert::f32_to_bf16(gpu, &x.slice(..n), &mut copy)?;
            return Ok(());
        }
        let (mut copy, mut guard) = self.f16_input(rows, cols)?;
        half_guard::f32_to_f16_guarded(gpu, &x.slice(..n), &mut copy, (rows, cols), &mut guard)?;
        Ok(())
    }

    /// Its first `n` elements, for a GEMM input made in bf16 directly.
    pub fn first(&mut self, n: usize) -> Result<CudaViewMut<'_, u16>> {
        if self.buffer.len() < n {
            return Err(scratch_too_small(self.buffer.len(), n));
        }
        Ok(self.buffer.slice_mut(..n))
    }

    /// The first `rows * cols` elements and the guard of `rows` rows, for an f16 GEMM input
    /// (rows, cols) a fused kernel writes with its guard (then [`linear_converted`]).
    pub fn f16_input(
        &mut self,
        rows: usize,
        cols: usize,
    ) -> Result<(CudaViewMut<'_, u16>, CudaViewMut<'_, u32>)> {
        let capacity = self.guard_rows();
        let HalfScratch { buffer, guard, .. } = self;
        if buffer.len() < rows * cols {
            return Err(scratch_too_small(buffer.len(), rows * cols));
        }
        if rows > capacity {
            return Err(RuntimeError::internal(format!(
                "an f16 guard for {capacity} rows given {rows} (a sizing bug)"
            )));
        }
        Ok((
            buffer.slice_mut(..rows * cols),
            guard.slice_mut(..guard_len(rows)),
        ))
    }

    /// The tensor-core attention's K/V scratch (the buffer's first `kv_len` elements) and, for
    /// f16 operands, the flags of the call's sequences and the totals.
    #[allow(clippy::type_complexity)]
    pub fn attention(
        &mut self,
        kv_len: usize,
        f16: bool,
    ) -> Result<(
        CudaViewMut<'_, u16>,
        Option<(CudaViewMut<'_, u32>, CudaViewMut<'_, u64>)>,
    )> {
        let rows = self.guard_rows();
        let HalfScratch {
            buffer,
            guard,
            totals,
        } = self;
        if buffer.len() < kv_len {
            return Err(scratch_too_small(buffer.len(), kv_len));
        }
        let kv = buffer.slice_mut(..kv_len);
        if !f16 {
            return Ok((kv, None));
        }
        let totals = totals
            .as_mut()
            .ok_or_else(|| RuntimeError::internal("f16 attention without the run's totals"))?;
        Ok((
            kv,
            Some((guard.slice_mut(guard_len(rows)..), totals.as_view_mut())),
        ))
    }
}

fn scratch_too_small(len: usize, n: usize) -> RuntimeError {
    RuntimeError::internal(format!(
        "16-bit scratch of {len} elements for {n} (a sizing bug)"
    ))
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
            "a bf16 GEMM input with f32 or f16 weights (a dispatch bug)",
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
    scratch: &mut HalfScratch,
) -> Result<()> {
    if w.is_half() {
        scratch.convert(gpu, x, (rows, in_features), w)?;
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

/// [`linear`] with `x`'s 16-bit copy (and for f16 its guard) already in `scratch` when `w`
/// is bf16 or f16 (consecutive GEMMs of one input convert it once).
pub fn linear_converted(
    gpu: &Gpu,
    x: &CudaView<f32>,
    w: &MatrixRows,
    bias: Option<&CudaSlice<f32>>,
    y: &mut CudaViewMut<f32>,
    (rows, in_features, out_features): (usize, usize, usize),
    scratch: &mut HalfScratch,
) -> Result<()> {
    match w {
        MatrixRows::F32(w) => gemm::linear_f32(gpu, x, w, y, rows, in_features, out_features)?,
        MatrixRows::Bf16(w) => {
            let x_bf16 = scratch.first(rows * in_features)?;
            let x_bf16 = x_bf16.as_view();
            gemm::linear_bf16(gpu, &x_bf16, w, y, rows, in_features, out_features)?;
        }
        MatrixRows::F16(w) => {
            let HalfScratch {
                buffer,
                guard,
                totals,
            } = scratch;
            let x_f16 = buffer.slice(..rows * in_features);
            gemm::linear_f16(gpu, &x_f16, w, y, rows, in_features, out_features)?;
            let totals = totals
                .as_mut()
                .ok_or_else(|| RuntimeError::internal("an f16 GEMM without the run's totals"))?;
            half_guard::f16_overflow_rows(
                gpu,
                x,
                w,
                y,
                (rows, in_features, out_features),
                &guard.slice(..guard_len(rows)),
                &mut totals.as_view_mut(),
            )?;
        }
    }
    if let Some(bias) = bias {
        elementwise::add_bias(gpu, y, &bias.as_view())?;
    }
    Ok(())
}
