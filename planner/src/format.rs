//! How weights are stored and what they become on the device: the size and alignment
//! rules, written once. A tensor in the staging layout starts at a [`TENSOR_ALIGN`]-byte
//! offset; 1-D tensors (norms, biases) become f32; matrices become the GEMM dtype unless
//! stored in it (then they are used in place, from the staging buffer).

use crate::inventory::{TensorDtype, TensorEntry};
use serde::Serialize;
use std::collections::HashMap;

/// Alignment of tensors in a staging region (and of every converted tensor).
pub const TENSOR_ALIGN: u64 = 256;

/// `bytes` rounded up to [`TENSOR_ALIGN`].
pub fn align(bytes: u64) -> u64 {
    bytes.div_ceil(TENSOR_ALIGN) * TENSOR_ALIGN
}

/// What the GEMMs compute in (decides which weights are converted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GemmDtype {
    /// bf16 matrices.
    Bf16,
    /// f16 matrices (the T4 path).
    F16,
    /// f32 matrices.
    F32,
}

impl GemmDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            GemmDtype::Bf16 | GemmDtype::F16 => 2,
            GemmDtype::F32 => 4,
        }
    }
}

/// How a weight's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// One element per value: F32, F16 or BF16.
    Dense(TensorDtype),
    /// MXFP4 (OCP microscaling): E2M1 codes two to a byte, 32 values per block, one E8M0 scale
    /// byte per block; stored as a blocks tensor `[.., rows, cols / 32, 16]` U8 and a scales
    /// tensor `[.., rows, cols / 32]` U8.
    Mxfp4,
    /// FP8 E4M3, one byte per value, with one f32 inverse scale per `block_rows x block_cols`
    /// block (`weight_scale_inv`, the last blocks of a row or column cut short).
    Fp8 {
        /// Rows per scale block.
        block_rows: usize,
        /// Columns per scale block.
        block_cols: usize,
    },
}

/// Values per MXFP4 block.
pub const MXFP4_BLOCK: usize = 32;

impl WeightFormat {
    /// Bytes of the values of a `rows x cols` matrix as stored, and of its scales.
    pub fn stored_bytes(self, rows: usize, cols: usize) -> (u64, u64) {
        let (rows, cols) = (rows as u64, cols as u64);
        match self {
            WeightFormat::Dense(dtype) => {
                let element = dtype.size_bytes().unwrap_or(0) as u64;
                (rows * cols * element, 0)
            }
            WeightFormat::Mxfp4 => {
                let blocks = rows * cols.div_ceil(MXFP4_BLOCK as u64);
                (blocks * MXFP4_BLOCK as u64 / 2, blocks)
            }
            WeightFormat::Fp8 {
                block_rows,
                block_cols,
            } => {
                let scale_blocks =
                    rows.div_ceil(block_rows as u64) * cols.div_ceil(block_cols as u64);
                (rows * cols, 4 * scale_blocks)
            }
        }
    }

    /// The `(rows, cols)` of the matrix whose values tensor has `shape` (leading expert
    /// dimensions left out): MXFP4 blocks `[.., rows, cols / 32, 16]`, otherwise `[.., rows, cols]`.
    pub fn matrix_of(self, shape: &[usize]) -> Option<(usize, usize)> {
        let n = shape.len();
        match self {
            WeightFormat::Mxfp4 if n >= 3 && shape[n - 1] == MXFP4_BLOCK / 2 => {
                Some((shape[n - 3], shape[n - 2] * MXFP4_BLOCK))
            }
            WeightFormat::Mxfp4 => None,
            WeightFormat::Dense(_) | WeightFormat::Fp8 { .. } if n >= 2 => {
                Some((shape[n - 2], shape[n - 1]))
            }
            WeightFormat::Dense(_) | WeightFormat::Fp8 { .. } => None,
        }
    }

    /// Whether a matrix in this format is used by the GEMM as stored (no converted copy).
    pub fn used_in_place(self, gemm: GemmDtype) -> bool {
        matches!(
            (self, gemm),
            (WeightFormat::Dense(TensorDtype::Bf16), GemmDtype::Bf16)
                | (WeightFormat::Dense(TensorDtype::F16), GemmDtype::F16)
                | (WeightFormat::Dense(TensorDtype::F32), GemmDtype::F32)
        )
    }

    /// Bytes of a `rows x cols` matrix after conversion for the GEMM (0: used in place).
    pub fn converted_bytes(self, rows: usize, cols: usize, gemm: GemmDtype) -> u64 {
        match self.used_in_place(gemm) {
            true => 0,
            false => align(rows as u64 * cols as u64 * gemm.size_bytes()),
        }
    }
}

/// How a stored tensor (or slice) becomes the matrix a role needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// As stored: `(out, in)` matrices, vectors.
    #[default]
    AsStored,
    /// Every `stride`-th column from `offset` of an in-major `(in, stride * out)` slice,
    /// transposed to `(out, in)` (GPT-OSS's fused `gate_up_proj`: gate the even columns, up
    /// the odd ones; `down_proj` with stride 1).
    InMajorColumns {
        /// Columns apart.
        stride: usize,
        /// The first.
        offset: usize,
    },
    /// Every `stride`-th row from `offset` of an out-major `(stride * out, in)` matrix or a
    /// `(stride * out)` vector (MXFP4 `gate_up`, fused biases).
    Rows {
        /// Rows apart.
        stride: usize,
        /// The first.
        offset: usize,
    },
}

impl Layout {
    /// Stored elements per element of the result (1 as stored).
    pub fn stride(self) -> usize {
        match self {
            Layout::AsStored => 1,
            Layout::InMajorColumns { stride, .. } | Layout::Rows { stride, .. } => stride.max(1),
        }
    }
}

/// Bytes of a weight after conversion for the GEMM, from the shape its values are stored in
/// (`shape`: a dense tensor or slice; for a quantized one, its matrix `[rows, cols]`):
/// vectors become f32; matrices the GEMM dtype, used in place (0 bytes) only when stored in
/// it and not re-laid out.
pub fn converted_bytes(
    shape: &[usize],
    format: WeightFormat,
    layout: Layout,
    gemm: GemmDtype,
) -> u64 {
    let numel: usize = shape.iter().product();
    let elements = (numel / layout.stride()) as u64;
    match shape.len() {
        1 => align(elements * 4),
        _ if layout == Layout::AsStored => {
            let cols = shape.last().copied().unwrap_or(0).max(1);
            format.converted_bytes(numel / cols, cols, gemm)
        }
        _ => align(elements * gemm.size_bytes()),
    }
}

/// Stored bytes (staging layout, aligned) and converted bytes of one tensor of `shape`
/// stored as `dtype` in `byte_len` bytes: 1-D tensors become f32; matrices (the last two
/// dimensions) the GEMM dtype unless stored in it.
pub fn tensor_bytes(
    shape: &[usize],
    dtype: TensorDtype,
    byte_len: u64,
    gemm: GemmDtype,
) -> (u64, u64) {
    let converted = converted_bytes(shape, WeightFormat::Dense(dtype), Layout::AsStored, gemm);
    (align(byte_len), converted)
}

/// Stored bytes (staging layout) and bytes after conversion for the GEMM of the weight
/// `tensor` refers to, read with `layout` (`None`: a tensor it needs is not in `index`).
pub fn ref_bytes(
    tensor: &TensorRef,
    layout: Layout,
    index: &HashMap<&str, &TensorEntry>,
    gemm: GemmDtype,
) -> Option<(u64, u64)> {
    let byte_len = |name: &str| index.get(name).map(|t| t.byte_len);
    let stored = tensor.staged_bytes(&byte_len)?;
    let t = index.get(tensor.name())?;
    let (shape, format) = match tensor {
        TensorRef::Whole(_) => (t.shape.clone(), WeightFormat::Dense(t.dtype)),
        TensorRef::Stacked { rows, .. } => {
            // One expert's rows: [rows, ...] of the [count, total_rows, ...] tensor.
            let mut shape = t.shape.get(1..)?.to_vec();
            *shape.first_mut()? = rows.len();
            (shape, WeightFormat::Dense(t.dtype))
        }
        TensorRef::Quantized { format, .. } => {
            let (rows, cols) = format.matrix_of(&t.shape)?;
            (vec![rows, cols], *format)
        }
    };
    Some((stored, converted_bytes(&shape, format, layout, gemm)))
}

/// Where a weight's bytes are in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorRef {
    /// A whole tensor.
    Whole(String),
    /// Rows `rows` of slice `index` of a tensor stacked over `count` experts
    /// (`[count, total_rows, ...]`), e.g. one expert's gate rows of a fused `gate_up_proj`.
    Stacked {
        /// The stacked tensor.
        name: String,
        /// The expert.
        index: usize,
        /// Experts in the tensor.
        count: usize,
        /// The rows of the expert's slice.
        rows: std::ops::Range<usize>,
        /// Rows of one expert's slice.
        total_rows: usize,
    },
    /// A block-quantized matrix: its values and its scales.
    Quantized {
        /// The format.
        format: WeightFormat,
        /// The values (MXFP4 blocks, FP8 weight).
        values: Box<TensorRef>,
        /// The scales.
        scales: Box<TensorRef>,
    },
}

/// A range of a tensor's bytes: `len` bytes from `offset`, counted from the tensor's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorBytes<'a> {
    /// The tensor.
    pub name: &'a str,
    /// First byte within it.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

impl From<String> for TensorRef {
    fn from(name: String) -> Self {
        TensorRef::Whole(name)
    }
}

impl From<&str> for TensorRef {
    fn from(name: &str) -> Self {
        TensorRef::Whole(name.to_string())
    }
}

impl TensorRef {
    /// The tensor holding the values.
    pub fn name(&self) -> &str {
        match self {
            TensorRef::Whole(name) | TensorRef::Stacked { name, .. } => name,
            TensorRef::Quantized { values, .. } => values.name(),
        }
    }

    /// Its bytes in the checkpoint, given each tensor's stored length (`None`: the tensor is
    /// missing): the values' range, then the scales' for a quantized matrix.
    pub fn byte_ranges<'a>(
        &'a self,
        byte_len: &dyn Fn(&str) -> Option<u64>,
    ) -> Option<Vec<TensorBytes<'a>>> {
        match self {
            TensorRef::Whole(name) => Some(vec![TensorBytes {
                name,
                offset: 0,
                len: byte_len(name)?,
            }]),
            TensorRef::Stacked {
                name,
                index,
                count,
                rows,
                total_rows,
            } => {
                let expert = byte_len(name)? / (*count).max(1) as u64;
                let row = expert / (*total_rows).max(1) as u64;
                Some(vec![TensorBytes {
                    name,
                    offset: *index as u64 * expert + rows.start as u64 * row,
                    len: rows.len() as u64 * row,
                }])
            }
            TensorRef::Quantized { values, scales, .. } => {
                let mut ranges = values.byte_ranges(byte_len)?;
                ranges.extend(scales.byte_ranges(byte_len)?);
                Some(ranges)
            }
        }
    }

    /// Stored bytes in the staging layout (each range aligned), or `None` when a tensor is
    /// missing.
    pub fn staged_bytes(&self, byte_len: &dyn Fn(&str) -> Option<u64>) -> Option<u64> {
        Some(
            self.byte_ranges(byte_len)?
                .iter()
                .map(|r| align(r.len))
                .sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mxfp4_is_4_25_bits_per_weight_and_fp8_one_byte_plus_block_scales() {
        // GPT-OSS-20B gate_up of one expert: 5760 x 2880 in MXFP4.
        let (values, scales) = WeightFormat::Mxfp4.stored_bytes(5760, 2880);
        assert_eq!((values, scales), (5760 * 90 * 16, 5760 * 90));
        let bits = 8.0 * (values + scales) as f64 / (5760.0 * 2880.0);
        assert!((bits - 4.25).abs() < 1e-9, "{bits}");
        // GLM-4.5-Air expert down_proj 4096 x 1408, 128 x 128 blocks: 32 x 11 scales.
        let fp8 = WeightFormat::Fp8 {
            block_rows: 128,
            block_cols: 128,
        };
        assert_eq!(fp8.stored_bytes(4096, 1408), (4096 * 1408, 4 * 32 * 11));
        // Quantized matrices are always converted; dense ones only when not in the GEMM dtype.
        assert_eq!(
            fp8.converted_bytes(4096, 1408, GemmDtype::Bf16),
            4096 * 1408 * 2
        );
        assert_eq!(
            WeightFormat::Mxfp4.converted_bytes(64, 64, GemmDtype::F32),
            64 * 64 * 4
        );
        let bf16 = WeightFormat::Dense(TensorDtype::Bf16);
        assert_eq!(bf16.converted_bytes(64, 64, GemmDtype::Bf16), 0);
        // The f16 path uses f16 checkpoints in place and converts bf16 ones to 2 bytes.
        let f16 = WeightFormat::Dense(TensorDtype::F16);
        assert_eq!(f16.converted_bytes(64, 64, GemmDtype::F16), 0);
        assert_eq!(bf16.converted_bytes(64, 64, GemmDtype::F16), 64 * 64 * 2);
        assert_eq!(f16.converted_bytes(64, 64, GemmDtype::Bf16), 64 * 64 * 2);
        assert_eq!(bf16.stored_bytes(64, 64), (64 * 64 * 2, 0));
    }

    #[test]
    fn a_stacked_expert_slice_is_its_byte_range_of_the_fused_tensor() {
        // [4 experts, 2 x 6 rows (gate then up), 8 cols] bf16: 192 bytes per expert.
        let len = |name: &str| (name == "gate_up").then_some(4 * 12 * 8 * 2);
        let up_of_expert_2 = TensorRef::Stacked {
            name: "gate_up".into(),
            index: 2,
            count: 4,
            rows: 6..12,
            total_rows: 12,
        };
        let ranges = up_of_expert_2.byte_ranges(&len).unwrap();
        assert_eq!(
            ranges,
            vec![TensorBytes {
                name: "gate_up",
                offset: 2 * 192 + 6 * 16,
                len: 96
            }]
        );
        assert_eq!(up_of_expert_2.staged_bytes(&len), Some(256));
        assert_eq!(TensorRef::Whole("missing".into()).byte_ranges(&len), None);
        let quantized = TensorRef::Quantized {
            format: WeightFormat::Mxfp4,
            values: Box::new(TensorRef::Whole("gate_up".into())),
            scales: Box::new(up_of_expert_2),
        };
        let ranges = quantized.byte_ranges(&len).unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(quantized.name(), "gate_up");
        assert_eq!(
            WeightFormat::Mxfp4.matrix_of(&[32, 5760, 90, 16]),
            Some((5760, 2880))
        );
        let fp8 = WeightFormat::Fp8 {
            block_rows: 128,
            block_cols: 128,
        };
        assert_eq!(fp8.matrix_of(&[4096, 1408]), Some((4096, 1408)));
    }

    #[test]
    fn vectors_become_f32_and_matrices_the_gemm_dtype_unless_stored_in_it() {
        let bf16 = TensorDtype::Bf16;
        assert_eq!(tensor_bytes(&[100], bf16, 200, GemmDtype::Bf16), (256, 512));
        assert_eq!(tensor_bytes(&[4, 64], bf16, 512, GemmDtype::Bf16), (512, 0));
        assert_eq!(
            tensor_bytes(&[4, 64], bf16, 512, GemmDtype::F32),
            (512, 1024)
        );
        let f32 = TensorDtype::F32;
        assert_eq!(
            tensor_bytes(&[4, 64], f32, 1024, GemmDtype::Bf16),
            (1024, 512)
        );
        assert_eq!(tensor_bytes(&[3, 3], f32, 36, GemmDtype::F32), (256, 0));
    }
}
