//! Layer weights on the device. A layer holds the device staging buffer its bytes were
//! uploaded into (one of two, allocated once per run): matrices already stored in the GEMM
//! dtype are used there in place; other matrices are converted to the GEMM dtype and 1-D
//! tensors to f32 (the planner's `converted` region).

use super::ComputeDtype;
use super::staging::{LayerLayout, StagedTensor};
use crate::allocation::{Budget, Reservation};
use crate::arch::{Layout, WeightRole};
use crate::error::{Result, RuntimeError};
use crossbeam::channel::Sender;
use layerstream_kernels::Gpu;
use layerstream_kernels::cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, CudaView, ValidAsZeroBits,
};
use layerstream_kernels::ops::convert::{
    self, MatrixElement, StoredDtype, f32_to_bf16, fp8_dequantize, half_to_f32, mxfp4_dequantize,
};
use layerstream_kernels::ops::elementwise::add_scalar;
use layerstream_kernels::ops::half_guard::weights_to_f16;
use layerstream_planner::TensorDtype;
use layerstream_planner::format::{GemmDtype, WeightFormat, converted_bytes};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A weight matrix `(out, in)` in the GEMM dtype, owned.
pub enum DeviceMatrix {
    /// f32 values.
    F32(CudaSlice<f32>),
    /// bf16 bit patterns.
    Bf16(CudaSlice<u16>),
    /// f16 bit patterns (the f16 path).
    F16(CudaSlice<u16>),
}

/// A view of matrix rows in the GEMM dtype.
pub enum MatrixRows<'a> {
    /// f32 rows.
    F32(CudaView<'a, f32>),
    /// bf16 rows.
    Bf16(CudaView<'a, u16>),
    /// f16 rows.
    F16(CudaView<'a, u16>),
}

impl MatrixRows<'_> {
    /// Whether the GEMMs with it run in bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self, MatrixRows::Bf16(_))
    }

    /// Whether the GEMMs with it run in f16 (with the overflow guard).
    pub fn is_f16(&self) -> bool {
        matches!(self, MatrixRows::F16(_))
    }

    /// Whether its GEMMs take a 16-bit copy of their input.
    pub fn is_half(&self) -> bool {
        !matches!(self, MatrixRows::F32(_))
    }
}

impl DeviceMatrix {
    /// A view of `n` rows from `first`.
    pub fn rows(&self, first: usize, n: usize, width: usize) -> MatrixRows<'_> {
        let range = first * width..(first + n) * width;
        match self {
            DeviceMatrix::F32(m) => MatrixRows::F32(m.slice(range)),
            DeviceMatrix::Bf16(m) => MatrixRows::Bf16(m.slice(range)),
            DeviceMatrix::F16(m) => MatrixRows::F16(m.slice(range)),
        }
    }

    /// The whole matrix.
    pub fn all(&self) -> MatrixRows<'_> {
        match self {
            DeviceMatrix::F32(m) => MatrixRows::F32(m.as_view()),
            DeviceMatrix::Bf16(m) => MatrixRows::Bf16(m.as_view()),
            DeviceMatrix::F16(m) => MatrixRows::F16(m.as_view()),
        }
    }
}

/// Where a layer's matrix lives.
enum Placed {
    /// In the staging bytes: offset, elements, dtype (the GEMM dtype).
    InPlace(usize, usize, TensorDtype),
    /// Converted.
    Converted(DeviceMatrix),
}

/// A device staging buffer going back to the uploads, with an event recorded on the compute
/// stream after the last kernel that read it: the next upload into it waits on the event.
/// (Streams are ordered explicitly: cudarc's per-buffer event tracking is off, see `Gpu`.)
pub struct FreeStaging {
    /// The buffer.
    pub raw: CudaSlice<u8>,
    /// Recorded after its last reader; `None` for a buffer not used yet.
    pub last_read: Option<CudaEvent>,
}

/// One layer's (or split part's) weights on the device. It holds one of the run's two
/// device staging buffers and gives it back when dropped.
pub struct DeviceLayer {
    raw: Option<CudaSlice<u8>>,
    stream: Arc<CudaStream>,
    give_back: Sender<FreeStaging>,
    matrices: BTreeMap<WeightRole, Placed>,
    vectors: BTreeMap<WeightRole, CudaSlice<f32>>,
    _converted_reservation: Reservation,
}

impl Drop for DeviceLayer {
    fn drop(&mut self) {
        // The next upload into it waits on this event, recorded after every kernel of this
        // layer was queued, so it can be refilled as soon as it is back. The executor may
        // have stopped (then the send fails and the buffer is freed).
        if let Some(raw) = self.raw.take() {
            let last_read = self.stream.record_event(None).ok();
            let _ = self.give_back.send(FreeStaging { raw, last_read });
        }
    }
}

impl DeviceLayer {
    /// Builds a layer (or split part) from its uploaded bytes (`raw`, laid out as `layout`),
    /// converting with kernels on the compute stream, which first waits for `uploaded` (the
    /// event after the upload on the copy stream). f16 compute counts weight values beyond
    /// f16's range in `f16_totals[2]`.
    #[allow(clippy::too_many_arguments)]
    pub fn from_staged(
        gpu: &Gpu,
        raw: CudaSlice<u8>,
        uploaded: &CudaEvent,
        give_back: Sender<FreeStaging>,
        layout: &LayerLayout,
        compute: ComputeDtype,
        budget: &Arc<Budget>,
        mut f16_totals: Option<&mut CudaSlice<u64>>,
    ) -> Result<Self> {
        let gemm = compute.gemm();
        let converted_bytes: u64 = layout.tensors.iter().map(|t| converted(t, gemm)).sum();
        let what = format!("{} converted weights", layout.part.owner(layout.layer));
        let converted_reservation = budget.reserve(&what, converted_bytes)?;
        gpu.stream.wait(uploaded)?;
        let mut matrices = BTreeMap::new();
        let mut vectors = BTreeMap::new();
        for tensor in &layout.tensors {
            let bytes = raw.slice(tensor.values.range());
            let n: usize = tensor.shape.iter().product();
            if let Some((format, scales)) = &tensor.scales {
                let scales = raw.slice(scales.range());
                let matrix = dequantize(gpu, tensor, *format, (&bytes, &scales), compute)?;
                matrices.insert(
                    tensor.role,
                    Placed::Converted(for_compute(
                        gpu,
                        compute,
                        matrix,
                        f16_totals.as_deref_mut(),
                    )?),
                );
                continue;
            }
            if tensor.shape.len() == 1 {
                let mut vector = match tensor.layout {
                    Layout::AsStored => device_to_f32(gpu, &bytes, tensor.dtype, n)?,
                    layout => strided_vector(gpu, &bytes, tensor.dtype, n, layout)?,
                };
                if tensor.unit_offset {
                    add_scalar(gpu, &mut vector.as_view_mut(), 1.0)?;
                }
                vectors.insert(tensor.role, vector);
                continue;
            }
            let placed = match (compute, tensor.dtype, tensor.layout) {
                (_, _, Layout::InMajorColumns { stride, offset }) => {
                    let matrix = in_major_columns(gpu, &bytes, tensor, (stride, offset), compute)?;
                    Placed::Converted(for_compute(
                        gpu,
                        compute,
                        matrix,
                        f16_totals.as_deref_mut(),
                    )?)
                }
                (_, _, Layout::Rows { .. }) => {
                    return Err(RuntimeError::internal(format!(
                        "{:?}: every other row of a dense matrix is no layout a family uses",
                        tensor.role
                    )));
                }
                (ComputeDtype::Bf16, TensorDtype::Bf16, Layout::AsStored)
                | (ComputeDtype::F16, TensorDtype::F16, Layout::AsStored)
                | (ComputeDtype::F32, TensorDtype::F32, Layout::AsStored) => {
                    Placed::InPlace(tensor.values.offset, n, tensor.dtype)
                }
                (ComputeDtype::F32, _, Layout::AsStored) => Placed::Converted(DeviceMatrix::F32(
                    device_to_f32(gpu, &bytes, tensor.dtype, n)?,
                )),
                (ComputeDtype::Bf16, _, Layout::AsStored) => Placed::Converted(DeviceMatrix::Bf16(
                    device_to_bf16(gpu, &bytes, tensor.dtype, n)?,
                )),
                (ComputeDtype::F16, _, Layout::AsStored) => {
                    let totals = f16_totals.as_deref_mut().ok_or_else(no_totals)?;
                    let stored = stored_dtype(tensor.dtype);
                    let mut out = gpu.stream.alloc_zeros::<u16>(n)?;
                    weights_to_f16(
                        gpu,
                        &bytes,
                        stored,
                        &mut out.as_view_mut(),
                        &mut totals.as_view_mut(),
                    )?;
                    Placed::Converted(DeviceMatrix::F16(out))
                }
            };
            matrices.insert(tensor.role, placed);
        }
        Ok(DeviceLayer {
            raw: Some(raw),
            stream: gpu.stream.clone(),
            give_back,
            matrices,
            vectors,
            _converted_reservation: converted_reservation,
        })
    }

    /// A matrix the spec's table lists, in the GEMM dtype.
    pub fn matrix(&self, role: WeightRole) -> MatrixRows<'_> {
        match self
            .matrices
            .get(&role)
            .unwrap_or_else(|| panic!("{role:?} is in the spec's table"))
        {
            Placed::Converted(m) => m.all(),
            Placed::InPlace(offset, n, dtype) => {
                let bytes = self
                    .raw
                    .as_ref()
                    .expect("held until dropped")
                    .slice(*offset..);
                match dtype {
                    TensorDtype::Bf16 => MatrixRows::Bf16(reinterpret(&bytes, *n)),
                    TensorDtype::F16 => MatrixRows::F16(reinterpret(&bytes, *n)),
                    _ => MatrixRows::F32(reinterpret(&bytes, *n)),
                }
            }
        }
    }

    /// A vector the spec's table lists.
    pub fn vector(&self, role: WeightRole) -> &CudaSlice<f32> {
        self.maybe_vector(role)
            .unwrap_or_else(|| panic!("{role:?} is in the spec's table"))
    }

    /// Whether the layer (or part) holds `role`.
    pub fn has(&self, role: WeightRole) -> bool {
        self.matrices.contains_key(&role) || self.vectors.contains_key(&role)
    }

    /// A vector only some configurations have.
    pub fn maybe_vector(&self, role: WeightRole) -> Option<&CudaSlice<f32>> {
        self.vectors.get(&role)
    }
}

fn reinterpret<'a, T>(bytes: &CudaView<'a, u8>, n: usize) -> CudaView<'a, T> {
    // SAFETY: staged tensors start at 256-byte offsets and hold n elements of T.
    unsafe { bytes.transmute::<T>(n) }.expect("staged tensor holds n elements")
}

fn device_to_f32(
    gpu: &Gpu,
    bytes: &CudaView<u8>,
    dtype: TensorDtype,
    n: usize,
) -> Result<CudaSlice<f32>> {
    let mut out = gpu.stream.alloc_zeros::<f32>(n)?;
    match dtype {
        TensorDtype::F32 => gpu
            .stream
            .memcpy_dtod(&reinterpret::<f32>(bytes, n), &mut out)?,
        TensorDtype::Bf16 => half_to_f32(
            gpu,
            StoredDtype::Bf16,
            &reinterpret(bytes, n),
            &mut out.as_view_mut(),
        )?,
        TensorDtype::F16 => half_to_f32(
            gpu,
            StoredDtype::F16,
            &reinterpret(bytes, n),
            &mut out.as_view_mut(),
        )?,
        other => unreachable!("{} weights are refused when the model opens", other.name()),
    }
    Ok(out)
}

/// Device bytes of a staged weight after conversion for the GEMM (the planner's rule).
fn converted(tensor: &StagedTensor, gemm: GemmDtype) -> u64 {
    let format = tensor
        .scales
        .as_ref()
        .map_or(WeightFormat::Dense(tensor.dtype), |(format, _)| *format);
    converted_bytes(&tensor.shape, format, tensor.layout, gemm)
}

/// The `(stride, offset)` of the rows a layout keeps (every row as stored).
fn kept_rows(tensor: &StagedTensor) -> Result<(usize, usize)> {
    match tensor.layout {
        Layout::AsStored => Ok((1, 0)),
        Layout::Rows { stride, offset } => Ok((stride, offset)),
        Layout::InMajorColumns { .. } => Err(RuntimeError::internal(format!(
            "{:?}: a quantized matrix is out-major; in-major columns are no layout of it",
            tensor.role
        ))),
    }
}

/// A quantized matrix `(rows, cols)`, the rows its layout keeps, dequantized into the GEMM
/// dtype.
fn dequantize(
    gpu: &Gpu,
    tensor: &StagedTensor,
    format: WeightFormat,
    (blocks, scales): (&CudaView<u8>, &CudaView<u8>),
    compute: ComputeDtype,
) -> Result<DeviceMatrix> {
    let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
    let (stride, offset) = kept_rows(tensor)?;
    let n = rows.saturating_sub(offset).div_ceil(stride) * cols;
    let quantized = Quantized {
        format,
        values: blocks,
        scales,
        cols,
        rows_kept: (stride, offset),
    };
    Ok(match compute {
        ComputeDtype::Bf16 => DeviceMatrix::Bf16(quantized.dequantize_into::<u16>(gpu, n)?),
        // f16: through f32 (one matrix at a time), then `to_f16`.
        ComputeDtype::F32 | ComputeDtype::F16 => {
            DeviceMatrix::F32(quantized.dequantize_into::<f32>(gpu, n)?)
        }
    })
}

/// A staged quantized matrix with rows of `cols`, of which every `rows_kept.0`-th row from
/// `rows_kept.1` is the role's.
struct Quantized<'a, 'b> {
    format: WeightFormat,
    /// MXFP4 blocks or FP8 values.
    values: &'a CudaView<'b, u8>,
    /// MXFP4 E8M0 bytes or FP8 f32 inverse scales.
    scales: &'a CudaView<'b, u8>,
    cols: usize,
    rows_kept: (usize, usize),
}

impl Quantized<'_, '_> {
    /// `n` values dequantized into a new device buffer of `T` (bf16 bits or f32).
    fn dequantize_into<T: MatrixElement + ValidAsZeroBits>(
        &self,
        gpu: &Gpu,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        let mut out = gpu.stream.alloc_zeros::<T>(n)?;
        match self.format {
            WeightFormat::Mxfp4 => mxfp4_dequantize(
                gpu,
                self.values,
                self.scales,
                &mut out.as_view_mut(),
                self.cols,
                self.rows_kept,
            )?,
            WeightFormat::Fp8 {
                block_rows,
                block_cols,
            } => {
                if self.rows_kept != (1, 0) {
                    return Err(RuntimeError::internal(
                        "an FP8 matrix is read whole; no family reads every other row of one",
                    ));
                }
                let scale_count = self.scales.len() / 4;
                fp8_dequantize(
                    gpu,
                    self.values,
                    &reinterpret::<f32>(self.scales, scale_count),
                    &mut out.as_view_mut(),
                    self.cols,
                    (block_rows, block_cols),
                )?
            }
            WeightFormat::Dense(dtype) => {
                return Err(RuntimeError::internal(format!(
                    "a {} matrix reached the dequantizer",
                    dtype.name()
                )));
            }
        }
        Ok(out)
    }
}

/// The kernels' name for a dense stored dtype.
fn stored_dtype(dtype: TensorDtype) -> StoredDtype {
    match dtype {
        TensorDtype::Bf16 => StoredDtype::Bf16,
        TensorDtype::F16 => StoredDtype::F16,
        _ => StoredDtype::F32,
    }
}

/// Every `stride`-th column from `offset` of an in-major `(inputs, columns)` weight as an
/// `(out, in)` matrix in the GEMM dtype.
fn in_major_columns(
    gpu: &Gpu,
    bytes: &CudaView<u8>,
    tensor: &StagedTensor,
    (stride, offset): (usize, usize),
    compute: ComputeDtype,
) -> Result<DeviceMatrix> {
    let (inputs, columns) = (tensor.shape[0], tensor.shape[1]);
    let n = columns.saturating_sub(offset).div_ceil(stride.max(1)) * inputs;
    let dtype = stored_dtype(tensor.dtype);
    let shape = (inputs, columns);
    let picked = (stride, offset);
    Ok(match compute {
        ComputeDtype::Bf16 => {
            DeviceMatrix::Bf16(columns_into::<u16>(gpu, (bytes, dtype), n, shape, picked)?)
        }
        ComputeDtype::F32 | ComputeDtype::F16 => {
            DeviceMatrix::F32(columns_into::<f32>(gpu, (bytes, dtype), n, shape, picked)?)
        }
    })
}

/// `n` values of every `stride`-th column from `offset` of an in-major `(inputs, columns)`
/// matrix stored as `dtype`, transposed into a new device buffer of `T` (bf16 bits or f32).
fn columns_into<T: MatrixElement + ValidAsZeroBits>(
    gpu: &Gpu,
    (bytes, dtype): (&CudaView<u8>, StoredDtype),
    n: usize,
    shape: (usize, usize),
    picked: (usize, usize),
) -> Result<CudaSlice<T>> {
    let mut out = gpu.stream.alloc_zeros::<T>(n)?;
    convert::in_major_columns(gpu, bytes, dtype, &mut out.as_view_mut(), shape, picked)?;
    Ok(out)
}

/// Every `stride`-th element from `offset` of a stored vector of `n`, as f32.
fn strided_vector(
    gpu: &Gpu,
    bytes: &CudaView<u8>,
    dtype: TensorDtype,
    n: usize,
    layout: Layout,
) -> Result<CudaSlice<f32>> {
    let (stride, offset) = match layout {
        Layout::Rows { stride, offset } | Layout::InMajorColumns { stride, offset } => {
            (stride.max(1), offset)
        }
        Layout::AsStored => (1, 0),
    };
    let mut out = gpu
        .stream
        .alloc_zeros::<f32>(n.saturating_sub(offset).div_ceil(stride))?;
    convert::strided_to_f32(
        gpu,
        bytes,
        stored_dtype(dtype),
        &mut out.as_view_mut(),
        (stride, offset),
    )?;
    Ok(out)
}

fn device_to_bf16(
    gpu: &Gpu,
    bytes: &CudaView<u8>,
    dtype: TensorDtype,
    n: usize,
) -> Result<CudaSlice<u16>> {
    let mut out = gpu.stream.alloc_zeros::<u16>(n)?;
    if dtype == TensorDtype::F32 {
        f32_to_bf16(gpu, &reinterpret(bytes, n), &mut out.as_view_mut())?;
    } else {
        // f16: through f32 (transient, one tensor at a time).
        let wide = device_to_f32(gpu, bytes, dtype, n)?;
        f32_to_bf16(gpu, &wide.as_view(), &mut out.as_view_mut())?;
    }
    Ok(out)
}

/// On the f16 path, an f32 matrix (a quantized or in-major weight) as f16, counting values
/// beyond f16's range in `totals[2]`; other matrices as they are.
fn for_compute(
    gpu: &Gpu,
    compute: ComputeDtype,
    matrix: DeviceMatrix,
    totals: Option<&mut CudaSlice<u64>>,
) -> Result<DeviceMatrix> {
    let (ComputeDtype::F16, DeviceMatrix::F32(values)) = (compute, &matrix) else {
        return Ok(matrix);
    };
    let totals = totals.ok_or_else(no_totals)?;
    let n = values.len();
    let mut out = gpu.stream.alloc_zeros::<u16>(n)?;
    // SAFETY: the f32 buffer's bytes, read as bytes.
    let bytes = unsafe { values.as_view().transmute::<u8>(4 * n) }
        .expect("an f32 buffer holds 4 bytes per value");
    weights_to_f16(
        gpu,
        &bytes,
        StoredDtype::F32,
        &mut out.as_view_mut(),
        &mut totals.as_view_mut(),
    )?;
    Ok(DeviceMatrix::F16(out))
}

fn no_totals() -> RuntimeError {
    RuntimeError::internal("f16 weights converted without the run's overflow totals")
}
