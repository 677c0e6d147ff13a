//! How weights are stored and what they become on the device: the size and alignment
//! rules, written once. A tensor in the staging layout starts at a [`TENSOR_ALIGN`]-byte
//! offset; 1-D tensors (norms, biases) become f32; matrices become the GEMM dtype unless
//! stored in it (then they are used in place, from the staging buffer).

use crate::inventory::TensorDtype;
use serde::Serialize;

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
    /// f32 matrices.
    F32,
}

impl GemmDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            GemmDtype::Bf16 => 2,
            GemmDtype::F32 => 4,
        }
    }
}

/// Stored bytes (staging layout, aligned) and converted bytes of one tensor of `shape`
/// stored as `dtype` in `byte_len` bytes.
pub fn tensor_bytes(
    shape: &[usize],
    dtype: TensorDtype,
    byte_len: u64,
    gemm: GemmDtype,
) -> (u64, u64) {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    let converted = if shape.len() == 1 {
        align(numel * 4)
    } else {
        match (gemm, dtype) {
            (GemmDtype::Bf16, TensorDtype::Bf16) | (GemmDtype::F32, TensorDtype::F32) => 0,
            (gemm, _) => align(numel * gemm.size_bytes()),
        }
    };
    (align(byte_len), converted)
}

#[cfg(test)]
mod tests {
    use super::*;

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
